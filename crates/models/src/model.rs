//! One type for every supported architecture: loading from an HF directory or a GGUF file, and
//! dispatch to the architecture's [`Decoder`]; the forward pass they all share (masks, positions,
//! KV cache, hooks) is in `decoder.rs`, so hooks mean the same thing whichever model runs.
//!
//! ```no_run
//! use axbench_models::{model::{Model, LoadOptions}, hooks::{Hooks, Logits}};
//! let model = Model::load("gemma-3-270m.gguf".as_ref(), &LoadOptions::default())?;
//! let ids = tch::Tensor::from_slice(&[2i64, 651, 6037]).view([1, 3]);
//! let out = model.forward(&ids, None, &Hooks::none().capture(9), Logits::None, None)?;
//! let acts = out.hidden(9).unwrap(); // [1, 3, 640], the residual stream after layer 9
//! # Ok::<(), axbench_models::model::ModelError>(())
//! ```

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::config::{Arch, ModelInfo};
use crate::decoder::Decoder;
use crate::device::{DType, DeviceSpec};
pub use crate::error::ModelError;
use crate::hooks::{ForwardOutput, Hooks, Logits};
use crate::layers::KvCache;
use crate::weights::{TensorStore, Weights};
use crate::{gemma2, gemma3, llama};

/// Where to load a model and in which precision.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    pub dtype: DType,
}

/// A loaded causal language model.
#[derive(Debug)]
pub enum Model {
    Gemma2(gemma2::Model),
    Gemma3(gemma3::Model),
    Llama(llama::Model),
}

impl Model {
    /// Loads an HF model directory (`config.json` + safetensors) or a `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let device = opts.device.resolve()?;
        let kind = opts.dtype.kind();
        let _guard = tch::no_grad_guard();
        if path.is_dir() {
            Self::load_hf_dir(path, kind, device)
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let (file, config) = crate::weights::open_gguf(path)?;
            Self::from_tensor_store(path, Box::new(file), config, kind, device)
        } else if !path.exists() {
            Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        } else {
            Err(ModelError::Format {
                path: path.to_path_buf(),
                msg: "expected an HF model directory or a .gguf file".into(),
            })
        }
    }

    fn load_hf_dir(dir: &Path, kind: Kind, device: Device) -> Result<Model, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&cfg_path, e))?;
        let weights = Weights::from_hf_dir(dir, kind, device)?;
        Self::from_config_json(&cfg_path, json, &weights)
    }

    /// Builds the architecture named by `model_type` in `json` (an HF `config.json` value).
    pub(crate) fn from_config_json(cfg_path: &Path, json: serde_json::Value, w: &Weights) -> Result<Model, ModelError> {
        // Gemma-3 multimodal checkpoints nest the language model under `text_config`.
        let json = match json.get("text_config") {
            Some(tc) if json.get("model_type").and_then(|t| t.as_str()) == Some("gemma3") => {
                let mut tc = tc.clone();
                tc["model_type"] = "gemma3_text".into();
                tc
            }
            _ => json,
        };
        let model_type = json
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArch {
            path: cfg_path.to_path_buf(),
            arch: model_type.clone(),
        })?;
        let bad = |e: serde_json::Error| ModelError::Config {
            path: cfg_path.to_path_buf(),
            msg: e.to_string(),
        };
        Ok(match arch {
            Arch::Gemma2 => Model::Gemma2(gemma2::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
            Arch::Gemma3 => Model::Gemma3(gemma3::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
            Arch::Llama => Model::Llama(llama::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
        })
    }

    /// Builds a model from any [`TensorStore`] in llama.cpp naming plus an HF-style config.
    pub fn from_tensor_store(
        path: &Path,
        store: Box<dyn TensorStore>,
        config: serde_json::Value,
        kind: Kind,
        device: Device,
    ) -> Result<Model, ModelError> {
        let _guard = tch::no_grad_guard();
        let model_type = config
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArch {
            path: path.to_path_buf(),
            arch: model_type.clone(),
        })?;
        let heads = config.get("num_attention_heads").and_then(|v| v.as_i64()).unwrap_or(0);
        let kv = config
            .get("num_key_value_heads")
            .and_then(|v| v.as_i64())
            .unwrap_or(heads);
        let w = Weights::from_gguf(path, store, arch, heads, kv, kind, device);
        Self::from_config_json(path, config, &w)
    }

    pub(crate) fn decoder(&self) -> &dyn Decoder {
        match self {
            Model::Gemma2(m) => m,
            Model::Gemma3(m) => m,
            Model::Llama(m) => m,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        self.decoder().info()
    }
    pub fn device(&self) -> Device {
        self.decoder().device()
    }
    pub fn kind(&self) -> Kind {
        self.decoder().kind()
    }

    /// An empty KV cache with room for `capacity` positions of `batch` rows.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let d = self.decoder();
        let (kv, hd) = d.kv_shape();
        KvCache::with_capacity(d.info().num_layers, batch, kv, hd, capacity, d.kind(), d.device())
    }

    /// One forward pass over `input_ids: [B, T]` (int64).
    ///
    /// `attention_mask: [B, past + T]` marks real tokens (nonzero) versus padding, left or right;
    /// `None` means no padding. With a `cache`, the `past` positions already stored are attended
    /// to and the new keys/values are appended. Position ids count real tokens, so a left-padded
    /// row gets the same positions as the unpadded sequence (as HF `generate` does).
    ///
    /// Runs with or without grad: wrap it in `tch::no_grad` for inference.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &Hooks,
        logits: Logits,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput, ModelError> {
        crate::decoder::forward(self.decoder(), input_ids, attention_mask, hooks, logits, cache)
    }
}

/// Which side padding goes on when rows of different lengths share a batch. Generation needs
/// `Left` (every row's next token at the last column); either works for [`Model::forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Left,
    Right,
}

/// Packs token rows into `(input_ids, attention_mask)`, both `[B, T]` int64 on the CPU.
pub fn pad(rows: &[Vec<i64>], pad_id: i64, side: Padding) -> (Tensor, Tensor) {
    let b = rows.len();
    let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0i64; b * t];
    for (r, row) in rows.iter().enumerate() {
        let off = r * t + if side == Padding::Left { t - row.len() } else { 0 };
        ids[off..off + row.len()].copy_from_slice(row);
        mask[off..off + row.len()].fill(1);
    }
    (
        Tensor::from_slice(&ids).view([b as i64, t as i64]),
        Tensor::from_slice(&mask).view([b as i64, t as i64]),
    )
}

impl Model {
    /// The residual stream after `layer` for a padded batch, `[B, T, hidden]`, computed without
    /// grad and without running the layers above it (AxBench's activation extraction).
    pub fn activations(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let out = self.forward(
            input_ids,
            attention_mask,
            &Hooks::none().capture(layer),
            Logits::None,
            None,
        )?;
        Ok(out.hidden.into_iter().next().map(|(_, h)| h).expect("captured layer"))
    }
}

// --- training support (crate::train) ---
impl Model {
    /// Final norm, vocabulary projection and any soft-cap applied to hidden states `[..., D]` from
    /// the last layer. A training loss needs logits only at response positions: capturing the last
    /// layer and projecting just those rows avoids a `[B, T, vocab]` tensor (262k columns for Gemma).
    pub fn head(&self, h: &Tensor) -> Tensor {
        self.decoder().head(h)
    }

    /// Every weight tensor by HF name, sharing storage with the model (RMSNorm multipliers are
    /// named `.scale`; tied embeddings appear once). Full finetuning sets `requires_grad` on
    /// these; loading a finetuned checkpoint copies into them. Call it on a model of your own, not
    /// one shared with other users.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Gemma2(m) => m.named_parameters(),
            Model::Gemma3(m) => m.named_parameters(),
            Model::Llama(m) => m.named_parameters(),
        }
    }
}
// --- end training support ---

/// Checks a divisibility the config must satisfy (heads into key/value groups).
pub(crate) fn check_divisible(path: &Path, what: &str, a: i64, b: i64) -> Result<(), ModelError> {
    if b == 0 || a % b != 0 {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            msg: format!("{what}: {a} is not divisible by {b}"),
        });
    }
    Ok(())
}
