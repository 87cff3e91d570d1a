//! `axbench.evaluate`: gathers every (concept, method) score table and computes AxBench's latent evaluators per
//! concept (evaluate.py latent):
//! * AUCROCEvaluator: ROC AUC of the min-max normalised `max_act`, positives vs negatives (hard negatives dropped);
//! * HardNegativeEvaluator: at the Youden-J threshold, accuracy on positives and on hard negatives, and their mean;
//! * max F1 over the PR curve, positives vs negatives (LatentStatsEvaluator);
//! * the imbalanced max F1 (paper Fig. 3, inference.py `latent_imbalance`): the concept's positives against the
//!   detector's scores on the shared negative pool (36 × 100 = 3600 in AxBench), when the infer node scored one
//!   (`pool_scores.parquet`, see [`super::infer`]); null otherwise. The ratio is the pool's size over the positives.
//!
//! Every input is a gathered set of score nodes, each with `scores.parquet` and `infer.json`: `axbench.infer` nodes
//! and `axbench.prompt_detect` nodes alike, under any input names (`inputs = { scores = "infer", prompt_scores =
//! "prompt_detect" }`).
//!
//! Outputs `results.parquet` ([`detection_results_schema`](axbench_data::tables::detection_results_schema), readable by
//! pandas and polars), `results.json` (`{"detection": [...]}`, the same rows) and `results.md` (the AUROC table per
//! method: mean over concepts and per concept), which `axbench run` and `axbench results` print.

use std::collections::BTreeMap;

use axbench_engine::{ParamSpec, Stage, StageContext, StageError};

use super::infer::{InferMeta, read_scores};
use super::{fail, read_json, write_json};
use axbench_data::dataset::Category;
use axbench_data::metrics::mean_over_concepts;
use axbench_data::results::{ResultRow, Results};
use axbench_data::tables::{self, DetectionResultRow};

pub struct Evaluate;

/// The evaluators on one concept's scores ([`axbench_data::metrics::evaluate_concept`]); `pool` holds the detector's scores
/// on the imbalanced negative pool, when the infer node scored one.
pub fn evaluate_concept(
    model: &str,
    layer: i64,
    method: &str,
    concept_id: i64,
    max_acts: &[f64],
    categories: &[Category],
    pool: Option<&[f64]>,
) -> DetectionResultRow {
    axbench_data::metrics::evaluate_concept(max_acts, categories, pool).to_row(model, layer, method, concept_id)
}

/// Each method's rows, for one (model, layer).
type MethodRows<'a> = Vec<(String, Vec<&'a ResultRow>)>;

fn fmt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

/// The AUROC table: one line per method (best mean first), mean AUROC, mean max-F1, mean hard-negative accuracy,
/// and per-concept AUROC when there are at most 12 concepts.
pub fn markdown(results: &Results) -> String {
    let mut groups: BTreeMap<(String, i64, String), Vec<&ResultRow>> = BTreeMap::new();
    for r in &results.detection {
        groups
            .entry((r.model.clone(), r.layer, r.method.clone()))
            .or_default()
            .push(r);
    }
    let concepts: std::collections::BTreeSet<i64> = results.detection.iter().map(|r| r.concept_id).collect();
    let per_concept = concepts.len() <= 12;
    let imbalanced = results.detection.iter().any(|r| r.f1_imbalanced.is_some());
    let mut by_model: BTreeMap<(String, i64), MethodRows> = BTreeMap::new();
    for ((model, layer, method), rows) in groups {
        by_model.entry((model, layer)).or_default().push((method, rows));
    }
    let mut out = String::new();
    for ((model, layer), mut methods) in by_model {
        let mean = |rows: &[&ResultRow], f: fn(&ResultRow) -> Option<f64>| {
            let (m, n) = mean_over_concepts(rows.iter().map(|r| f(r).unwrap_or(f64::NAN)));
            (n > 0).then_some(m)
        };
        methods.sort_by(|a, b| {
            let (x, y) = (
                mean(&a.1, |r| r.auroc).unwrap_or(-1.0),
                mean(&b.1, |r| r.auroc).unwrap_or(-1.0),
            );
            y.total_cmp(&x).then(a.0.cmp(&b.0))
        });
        out.push_str(&format!(
            "Concept detection on {model}, layer {layer}: ROC AUC, positives vs negatives ({} concepts)\n\n",
            concepts.len()
        ));
        out.push_str("| method | mean AUROC | mean max-F1 | mean hard-neg. acc. |");
        if imbalanced {
            out.push_str(" mean max-F1 (pool) |");
        }
        if per_concept {
            for c in &concepts {
                out.push_str(&format!(" c{c} |"));
            }
        }
        out.push('\n');
        out.push_str("|---|---:|---:|---:|");
        if imbalanced {
            out.push_str("---:|");
        }
        if per_concept {
            out.push_str(&"---:|".repeat(concepts.len()));
        }
        out.push('\n');
        for (method, rows) in &methods {
            out.push_str(&format!(
                "| {method} | {} | {} | {} |",
                fmt(mean(rows, |r| r.auroc)),
                fmt(mean(rows, |r| r.f1)),
                fmt(mean(rows, |r| r.hard_negative_accuracy))
            ));
            if imbalanced {
                out.push_str(&format!(" {} |", fmt(mean(rows, |r| r.f1_imbalanced))));
            }
            if per_concept {
                for c in &concepts {
                    out.push_str(&format!(
                        " {} |",
                        fmt(rows.iter().find(|r| r.concept_id == *c).and_then(|r| r.auroc))
                    ));
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

impl Stage for Evaluate {
    fn kind(&self) -> &str {
        "axbench.evaluate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    fn doc(&self) -> &str {
        "AUROC, hard-negative accuracy and max-F1 per concept and method (results.parquet, results.json, results.md)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let mut rows = Vec::new();
        let names: Vec<String> = ctx.input_names().into_iter().map(str::to_owned).collect();
        if names.is_empty() {
            return Err(StageError::Input {
                name: "scores".into(),
                message: "not bound: gather infer (and prompt_detect) nodes, e.g. inputs = { scores = \"infer\" }"
                    .into(),
            });
        }
        let arts: Vec<&axbench_engine::InputArtifact> = names
            .iter()
            .map(|n| ctx.inputs(n))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        for art in arts {
            let meta: InferMeta = read_json(art.file("infer.json")?)?;
            let scores = read_scores(art.file("scores.parquet")?)?;
            let max_acts: Vec<f64> = scores.iter().map(|s| s.max_act).collect();
            let cats: Vec<Category> = scores.iter().map(|s| s.category).collect();
            let pool: Option<Vec<f64>> = match art.files.get(super::infer::POOL_SCORES) {
                Some(p) => Some(read_scores(p)?.iter().map(|s| s.max_act).collect()),
                None => None,
            };
            rows.push(evaluate_concept(
                &meta.model,
                meta.layer,
                &meta.method_class,
                meta.concept_id,
                &max_acts,
                &cats,
                pool.as_deref(),
            ));
        }
        rows.sort_by(|a, b| {
            (&a.model, a.layer, &a.method, a.concept_id).cmp(&(&b.model, b.layer, &b.method, b.concept_id))
        });
        let results = Results {
            detection: rows.iter().cloned().map(ResultRow::from).collect(),
        };
        let batch = tables::detection_results_batch(&rows).map_err(|e| fail("results", e))?;
        tables::write_parquet_atomic(&ctx.output_path("results.parquet")?, &batch).map_err(|e| fail("results", e))?;
        let md = markdown(&results);
        ctx.write_output("results.md", md.as_bytes())?;
        write_json(ctx, "results.json", &results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category::{HardNegative as H, Negative as N, Positive as P};

    #[test]
    fn evaluators_on_a_small_concept() {
        // Positives 3, 5; negatives 1, 4; hard negative 6 (dropped from the AUROC).
        // sklearn: roc_auc_score([1,1,0,0], [3,5,1,4]) = 0.75; best F1 over the PR curve = 0.8 (threshold 3).
        let r = ResultRow::from(evaluate_concept(
            "m",
            9,
            "DiffMean",
            0,
            &[3.0, 5.0, 1.0, 4.0, 6.0],
            &[P, P, N, N, H],
            None,
        ));
        assert_eq!(r.auroc, Some(0.75));
        assert!((r.f1.unwrap() - 0.8).abs() < 1e-12);
        assert_eq!((r.n_positive, r.n_negative, r.n_hard_negative), (2, 2, 1));
        // The hard negative scores above every positive: all misclassified at the Youden-J threshold.
        assert_eq!(r.hard_negative_accuracy, Some(0.0));
        let md = markdown(&Results { detection: vec![r] });
        assert!(md.contains("| DiffMean | 0.750 | 0.800 | 0.000 | 0.750 |"), "{md}");
    }
}
