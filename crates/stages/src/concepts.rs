//! `axbench.concepts`: the concepts of an AxBench data directory, as the list the per-concept stages fan out over.
//!
//! The data comes from the `dataset` param (a directory in AxBench's released layout) or, when the pipeline binds an
//! input named `dataset` (`inputs = { dataset = "synthesize" }`), from that node's three files: an
//! `axbench.synthesize` node writes exactly that layout, so synthesized data flows through the same stages.
//! `axbench.activations` takes the same input ([`open_dataset`]).
//!
//! Reads `metadata.jsonl` (and checks that `train_data.parquet` and `latent_eval_data.parquet` are there), keeps the
//! first `limit` concepts in metadata order (train.py `df_list[:max_concepts]`), and writes their ids to `list.json`
//! plus the concepts themselves to `concepts.json`. Nothing downstream takes this node as an *input*: per-concept
//! nodes are keyed by their concept id and the dataset's content, so a longer list only adds nodes.

use std::path::{Path, PathBuf};

use axbench_engine::{OutputKind, ParamSpec, ParamType, Stage, StageContext, StageError, Value};

use super::{fail, write_json};
use axbench_data::dataset::{AxBenchData, read_metadata};

pub struct Concepts;

/// Checks that `dir` looks like an AxBench data directory; the error names the directory and what is missing.
pub fn check_dataset_dir(dir: &Path) -> Result<(), StageError> {
    if !dir.is_dir() {
        return Err(StageError::Param {
            name: "dataset".into(),
            message: format!(
                "{} is not a directory (expected AxBench's released layout: {}, {}, {}; set it with --set dataset.dir=DIR)",
                dir.display(),
                AxBenchData::METADATA,
                AxBenchData::TRAIN,
                AxBenchData::EVAL
            ),
        });
    }
    for f in [AxBenchData::METADATA, AxBenchData::TRAIN, AxBenchData::EVAL] {
        if !dir.join(f).is_file() {
            return Err(StageError::Param {
                name: "dataset".into(),
                message: format!("{}: missing {f}", dir.display()),
            });
        }
    }
    Ok(())
}

/// Name of the optional input that supplies the data instead of the `dataset` param (an `axbench.synthesize` node).
pub const DATASET_INPUT: &str = "dataset";

/// The three files of the stage's AxBench data: from the `dataset` input when the pipeline binds one (an
/// `axbench.synthesize` node's outputs, keyed by their digests), else from the `dataset` param directory (keyed by
/// its content). Errors name the param or input and the missing file.
pub fn dataset_files(ctx: &StageContext) -> Result<(String, [PathBuf; 3]), StageError> {
    let names = [AxBenchData::METADATA, AxBenchData::TRAIN, AxBenchData::EVAL];
    if ctx.input_names().contains(&DATASET_INPUT) {
        let art = ctx.input(DATASET_INPUT)?;
        let files = names.map(|n| art.file(n).map(Path::to_path_buf));
        let [a, b, c] = files;
        return Ok((format!("input `{DATASET_INPUT}` ({})", art.node), [a?, b?, c?]));
    }
    if ctx.param_str("dataset")?.is_empty() {
        return Err(StageError::Param {
            name: "dataset".into(),
            message: format!(
                "not set and no `{DATASET_INPUT}` input bound: give an AxBench data directory or an axbench.synthesize node"
            ),
        });
    }
    let dir = ctx.param_path("dataset")?;
    check_dataset_dir(&dir)?;
    Ok((dir.display().to_string(), names.map(|n| dir.join(n))))
}

/// Reads the stage's AxBench data ([`dataset_files`]). `dir` of the result names where it came from.
pub fn open_dataset(ctx: &StageContext) -> Result<AxBenchData, StageError> {
    let (origin, [meta, train, eval]) = dataset_files(ctx)?;
    Ok(AxBenchData {
        dir: PathBuf::from(&origin),
        concepts: read_metadata(&meta).map_err(|e| fail(&origin, e))?,
        train: axbench_data::dataset::read_examples(&train).map_err(|e| fail(&origin, e))?,
        eval: Some(axbench_data::dataset::read_examples(&eval).map_err(|e| fail(&origin, e))?),
    })
}

impl Stage for Concepts {
    fn kind(&self) -> &str {
        "axbench.concepts"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "dataset",
                ParamType::Path,
                "",
                "AxBench data directory (metadata.jsonl, train_data.parquet, latent_eval_data.parquet); unset when the `dataset` input is bound",
            ),
            ParamSpec::optional(
                "limit",
                ParamType::Int,
                0,
                "keep the first N concepts in metadata order (0: all)",
            ),
        ]
    }
    fn output_kind(&self) -> OutputKind {
        OutputKind::List
    }
    fn doc(&self) -> &str {
        "Lists the concepts of an AxBench data directory (list.json of concept ids, concepts.json)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let (origin, [metadata, _, _]) = dataset_files(ctx)?;
        let limit = ctx.param_i64("limit")?;
        if limit < 0 {
            return Err(StageError::Param {
                name: "limit".into(),
                message: format!("must be >= 0 (0 keeps all), got {limit}"),
            });
        }
        let all = read_metadata(&metadata).map_err(|e| fail("reading concepts", e))?;
        if all.is_empty() {
            return Err(StageError::msg(format!(
                "{origin}: {}: no concepts",
                AxBenchData::METADATA
            )));
        }
        let kept = axbench_data::dataset::limit_concepts(&all, (limit > 0).then_some(limit as usize));
        let mut seen = std::collections::BTreeSet::new();
        for c in kept {
            if !seen.insert(c.id) {
                return Err(StageError::msg(format!(
                    "{origin}: {}: concept_id {} appears twice",
                    AxBenchData::METADATA,
                    c.id
                )));
            }
        }
        ctx.log(format!("{} of {} concepts", kept.len(), all.len()));
        write_json(ctx, "concepts.json", &kept)?;
        ctx.write_list(&kept.iter().map(|c| Value::Int(c.id)).collect::<Vec<_>>())
    }
}
