//! The process-wide model cache every model stage goes through: one model (with its tokenizer, chat
//! format and stop tokens) stays loaded between nodes, so a run of many nodes on one model — or one
//! Slurm task running several nodes (`nodes_per_task`) — loads it once. Loading goes through
//! [`axbench_models::open`], the one place that decides where a model's parts come from.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axbench_engine::StageError;
use axbench_models::chat::ChatTemplate;
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::open::open_model;
use axbench_models::tokenizer::Tokenizer;
use axbench_models::{LoadOptions, Model};

use super::fail;

/// A model with its tokenizer and chat format, loaded once per process (see [`with_model`]).
pub struct LoadedModel {
    pub key: (PathBuf, DeviceSpec, DType),
    pub name: String,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The tokens that end a generation ([`axbench_models::open::ModelVocab::stop_tokens`]).
    pub stop_tokens: Vec<i64>,
}

static MODEL: Mutex<Option<LoadedModel>> = Mutex::new(None);

/// Model name for tables: the GGUF's file stem or the HF directory's name.
pub fn model_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    p.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn load_model(path: &Path, device: DeviceSpec, dtype: DType) -> Result<LoadedModel, StageError> {
    let opened = open_model(path, &LoadOptions { device, dtype }).map_err(|e| fail("model.path", e))?;
    let template = opened.vocab.require_template(path).map_err(|e| fail("model.path", e))?;
    let stop_tokens = opened.vocab.stop_tokens();
    Ok(LoadedModel {
        key: (path.to_path_buf(), device, dtype),
        name: model_name(path),
        model: opened.model,
        tokenizer: opened.vocab.tokenizer,
        template,
        stop_tokens,
    })
}

/// Runs `f` with the model at `path`, loading it unless the last one loaded in this process is the same.
pub fn with_model<T>(
    path: &Path,
    device: DeviceSpec,
    dtype: DType,
    f: impl FnOnce(&LoadedModel) -> Result<T, StageError>,
) -> Result<T, StageError> {
    let mut guard = MODEL.lock().unwrap_or_else(|e| e.into_inner());
    let key = (path.to_path_buf(), device, dtype);
    if guard.as_ref().is_none_or(|m| m.key != key) {
        *guard = None; // free the old one first
        *guard = Some(load_model(path, device, dtype)?);
    }
    f(guard.as_ref().unwrap())
}
