//! `axbench.infer`: scores one concept's latent eval rows with one fitted detector (inference.py latent,
//! `predict_latent`): per-token scores on the tokens after the chat-template prefix of the eval form, rounded to 3
//! decimals and max-pooled per example; BoW scores the eval-form texts.
//!
//! With the optional input `pool` (an `axbench.activations` node with `concept = -2`: the imbalanced negative pool),
//! the detector also scores every pool row, into `pool_scores.parquet` (same schema, no per-token scores), which
//! `axbench.evaluate` turns into the 1:100 max-F1. Wiring: `inputs = { fit = "fit", acts = "activations", pool =
//! "pool" }` with `[stages.pool] kind = "axbench.activations", params = { concept = -2, ... }`.
//!
//! Outputs `scores.parquet` ([`latent_scores_schema`](axbench_data::tables::latent_scores_schema): one row per eval example
//! with `max_act`, `max_act_idx` and the per-token `acts`) and `infer.json` (model, layer, method).

use std::path::Path;

use axbench_engine::{ParamSpec, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

use super::activations::{ActivationSet, End, Split};
use super::fit::FitMeta;
use super::{fail, read_json, write_json};
use axbench_data::dataset::Category;
use axbench_data::tables::{self, LatentScoreRow};
use axbench_methods::{FittedArtifact, MethodResources, ScoreInput};

pub struct Infer;

/// `infer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferMeta {
    pub model: String,
    pub layer: i64,
    pub concept_id: i64,
    pub method: String,
    pub method_class: String,
    pub n_examples: usize,
}

/// One scored eval example, as read back from `scores.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub concept_id: i64,
    pub example_index: u32,
    pub category: Category,
    pub max_act: f64,
}

/// Reads `scores.parquet` (the columns evaluation needs); errors name the file and column.
pub fn read_scores(path: &Path) -> Result<Vec<Score>, StageError> {
    use arrow::array::{Array, Float64Array, UInt32Array};
    use arrow::datatypes::DataType;
    let batch = tables::read_parquet(path).map_err(|e| fail("scores", e))?;
    let concept = tables::int64_column(&batch, path, tables::col::CONCEPT_ID).map_err(|e| fail("scores", e))?;
    let cat = tables::string_column(&batch, path, tables::col::CATEGORY).map_err(|e| fail("scores", e))?;
    let idx = tables::column_as(&batch, path, tables::col::EXAMPLE_INDEX, &DataType::UInt32)
        .map_err(|e| fail("scores", e))?;
    let idx = idx.as_any().downcast_ref::<UInt32Array>().expect("cast to UInt32");
    let max =
        tables::column_as(&batch, path, tables::col::MAX_ACT, &DataType::Float64).map_err(|e| fail("scores", e))?;
    let max = max.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
    (0..batch.num_rows())
        .map(|i| {
            let category = Category::parse(cat.value(i)).ok_or_else(|| {
                fail(
                    path.display(),
                    format!("row {i}: column `category`: unknown value {:?}", cat.value(i)),
                )
            })?;
            Ok(Score {
                concept_id: concept.value(i),
                example_index: idx.value(i),
                category,
                max_act: if max.is_null(i) { f64::NAN } else { max.value(i) },
            })
        })
        .collect()
}

/// Optional input: the imbalanced negative pool (an `axbench.activations` node with `concept = -2`).
pub const POOL_INPUT: &str = "pool";
/// Output when the pool is bound: the detector's scores on it (per-token scores left out).
pub const POOL_SCORES: &str = "pool_scores.parquet";

/// Scores every row of the imbalanced pool with the concept's detector (eval form, after the prefix, max-pooled).
fn score_pool(
    art: &axbench_engine::InputArtifact,
    concept: &ActivationSet,
    detector: &dyn axbench_methods::Detector,
    fit: &FitMeta,
) -> Result<Vec<LatentScoreRow>, StageError> {
    let pool = ActivationSet::load(art)?;
    if pool.meta.model != concept.meta.model || pool.meta.layer != concept.meta.layer {
        return Err(StageError::Input {
            name: POOL_INPUT.into(),
            message: format!(
                "holds {} layer {}, the concept {} layer {}",
                pool.meta.model, pool.meta.layer, concept.meta.model, concept.meta.layer
            ),
        });
    }
    let all: Vec<usize> = (0..pool.rows.len()).collect();
    let acts = pool
        .slice(&all, pool.meta.prefix_length, End::Eval)
        .map_err(|e| fail(&fit.method, e))?;
    let texts: Vec<String> = pool.rows.iter().map(|r| r.eval_text.clone()).collect();
    let scores = detector
        .score(&ScoreInput {
            activations: Some(&acts),
            texts: Some(&texts),
        })
        .map_err(|e| fail(&fit.method, e))?;
    Ok(pool
        .rows
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(k, (r, s))| LatentScoreRow {
            concept_id: r.concept_id,
            example_index: k as u32,
            method: fit.method_class.clone(),
            category: r.category.as_str().to_owned(),
            max_act: s.max_act,
            max_act_idx: s.max_act_idx.map(|x| x as u32),
            acts: Vec::new(),
        })
        .collect())
}

impl Stage for Infer {
    fn kind(&self) -> &str {
        "axbench.infer"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    fn doc(&self) -> &str {
        "Scores a concept's eval rows with a fitted detector (scores.parquet: max-pooled and per-token scores)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let fit_art = ctx.input("fit")?;
        let fit: FitMeta = read_json(fit_art.file("fit.json")?)?;
        let artifact: FittedArtifact = read_json(fit_art.file("detector.json")?)?;
        let set = ActivationSet::load(ctx.input("acts")?)?;
        if set.meta.concept_id != fit.concept_id {
            return Err(StageError::msg(format!(
                "detector of concept {} given activations of concept {}",
                fit.concept_id, set.meta.concept_id
            )));
        }
        let detector = artifact
            .into_detector(&MethodResources::default())
            .map_err(|e| fail(&fit.method, e))?;
        let eval: Vec<usize> = (0..set.rows.len())
            .filter(|&i| set.rows[i].split == Split::Eval)
            .collect();
        if eval.is_empty() {
            return Err(StageError::msg(format!(
                "concept {}: no latent eval rows",
                fit.concept_id
            )));
        }
        let acts = set
            .slice(&eval, set.meta.prefix_length, End::Eval)
            .map_err(|e| fail(&fit.method, e))?;
        let texts: Vec<String> = eval.iter().map(|&i| set.rows[i].eval_text.clone()).collect();
        let scores = detector
            .score(&ScoreInput {
                activations: Some(&acts),
                texts: Some(&texts),
            })
            .map_err(|e| fail(&fit.method, e))?;
        if scores.len() != eval.len() {
            return Err(StageError::msg(format!(
                "{}: {} scores for {} examples",
                fit.method,
                scores.len(),
                eval.len()
            )));
        }
        if let Some(warning) = constant_scores_warning(&fit.method, scores.iter().map(|s| s.max_act)) {
            tracing::warn!("concept {}: {warning}", fit.concept_id);
            ctx.log(warning);
        }
        let rows: Vec<LatentScoreRow> = eval
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(k, (&i, s))| LatentScoreRow {
                concept_id: set.meta.concept_id,
                example_index: k as u32,
                method: fit.method_class.clone(),
                category: set.rows[i].category.as_str().to_owned(),
                max_act: s.max_act,
                max_act_idx: s.max_act_idx.map(|x| x as u32),
                acts: s.acts.clone(),
            })
            .collect();
        let batch = tables::latent_scores_batch(&rows).map_err(|e| fail("scores", e))?;
        tables::write_parquet_atomic(&ctx.output_path("scores.parquet")?, &batch).map_err(|e| fail("scores", e))?;
        if ctx.input_names().contains(&POOL_INPUT) {
            let pool = score_pool(ctx.input(POOL_INPUT)?, &set, detector.as_ref(), &fit)?;
            let batch = tables::latent_scores_batch(&pool).map_err(|e| fail("pool scores", e))?;
            tables::write_parquet_atomic(&ctx.output_path(POOL_SCORES)?, &batch).map_err(|e| fail("pool scores", e))?;
        }
        write_json(
            ctx,
            "infer.json",
            &InferMeta {
                model: set.meta.model.clone(),
                layer: set.meta.layer,
                concept_id: set.meta.concept_id,
                method: fit.method.clone(),
                method_class: fit.method_class.clone(),
                n_examples: rows.len(),
            },
        )
    }
}

/// A warning when every eval row gets the same score: such a detector cannot rank anything (its AUROC is 0.5), which
/// a user should hear about before reading the table. For ReLU detectors (ReFT-r1, SAEs) it means the latent is dead
/// on this data: ReFT-r1 on gemma-3-270m does that (BENCHMARKS.md, "ReFT-r1 on Concept10").
fn constant_scores_warning(method: &str, max_acts: impl Iterator<Item = f64>) -> Option<String> {
    let mut acts = max_acts.filter(|a| !a.is_nan());
    let first = acts.next()?;
    if !acts.all(|a| a == first) {
        return None;
    }
    let dead = if first == 0.0 {
        " (a ReLU latent that never fires: for ReFT-r1 or an SAE feature, a dead latent)"
    } else {
        ""
    };
    Some(format!(
        "{method}: every eval row scores {first}{dead}; this detector cannot rank them (AUROC 0.5)"
    ))
}

#[cfg(test)]
mod tests {
    use super::constant_scores_warning;

    #[test]
    fn constant_scores_are_reported_and_varied_ones_are_not() {
        let w = constant_scores_warning("reft_r1", [0.0, 0.0, f64::NAN, 0.0].into_iter()).unwrap();
        assert!(
            w.contains("every eval row scores 0") && w.contains("dead latent"),
            "{w}"
        );
        assert!(
            constant_scores_warning("probe", [0.3, 0.3].into_iter())
                .unwrap()
                .contains("scores 0.3;")
        );
        assert_eq!(constant_scores_warning("probe", [0.0, 0.1].into_iter()), None);
        assert_eq!(constant_scores_warning("probe", std::iter::empty()), None);
    }
}
