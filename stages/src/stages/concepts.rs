//! `axbench.concepts`: the concepts of an AxBench data directory, as the list the per-concept stages fan out over.
//!
//! Reads `metadata.jsonl` (and checks that `train_data.parquet` and `latent_eval_data.parquet` are there), keeps the
//! first `limit` concepts in metadata order (train.py `df_list[:max_concepts]`), and writes their ids to `list.json`
//! plus the concepts themselves to `concepts.json`. Nothing downstream takes this node as an *input*: per-concept
//! nodes are keyed by their concept id and the dataset's content, so a longer list only adds nodes.

use std::path::Path;

use axbench_engine::{OutputKind, ParamSpec, ParamType, Stage, StageContext, StageError, Value};

use super::{fail, write_json};
use crate::data::{AxBenchData, read_metadata};

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
            return Err(StageError::Param { name: "dataset".into(), message: format!("{}: missing {f}", dir.display()) });
        }
    }
    Ok(())
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
            ParamSpec::required("dataset", ParamType::Path, "AxBench data directory (metadata.jsonl, train_data.parquet, latent_eval_data.parquet)"),
            ParamSpec::optional("limit", ParamType::Int, 0, "keep the first N concepts in metadata order (0: all)"),
        ]
    }
    fn output_kind(&self) -> OutputKind {
        OutputKind::List
    }
    fn doc(&self) -> &str {
        "Lists the concepts of an AxBench data directory (list.json of concept ids, concepts.json)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let dir = ctx.param_path("dataset")?;
        check_dataset_dir(&dir)?;
        let limit = ctx.param_i64("limit")?;
        if limit < 0 {
            return Err(StageError::Param { name: "limit".into(), message: format!("must be >= 0 (0 keeps all), got {limit}") });
        }
        let all = read_metadata(&dir.join(AxBenchData::METADATA)).map_err(|e| fail("reading concepts", e))?;
        if all.is_empty() {
            return Err(StageError::msg(format!("{}: no concepts", dir.join(AxBenchData::METADATA).display())));
        }
        let kept = crate::data::limit_concepts(&all, (limit > 0).then_some(limit as usize));
        let mut seen = std::collections::BTreeSet::new();
        for c in kept {
            if !seen.insert(c.id) {
                return Err(StageError::msg(format!("{}: concept_id {} appears twice", dir.join(AxBenchData::METADATA).display(), c.id)));
            }
        }
        ctx.log(format!("{} of {} concepts", kept.len(), all.len()));
        write_json(ctx, "concepts.json", &kept)?;
        ctx.write_list(&kept.iter().map(|c| Value::Int(c.id)).collect::<Vec<_>>())
    }
}
