//! `axbench.aggregate`: gathers every judge node (and, optionally, the evaluate node) into AxBench's final numbers
//! and the paper-style report (evaluate.py steering / winrate, `get_best_factors`, and the paper's Tables 1–3).
//!
//! * **Factor selection.** Per (model/layer, concept, method), the factor with the best mean score on the selection
//!   half (`input_id < n - round(n * split_ratio)`, `n` = the concept's instruction count) is chosen, smallest among
//!   ties (`np.argmax`); the held-out half is reported at that factor: its mean score, its three mean ratings and,
//!   when the judged table has a `perplexity` column, its mean perplexity ([`axbench_lm::judge::select_factors`]).
//!   A method with one factor (prompting) simply uses it.
//! * **Win rate** of every method against `baseline` on the held-out half, each at its own chosen factor, paired by
//!   (concept, instruction), ties counting half ([`axbench_lm::judge::win_rate`]).
//! * **Per-factor means** on each half (mean over concepts of each concept's mean), for the plots.
//!
//! Where a judged row's model and layer come from, first that applies: `model`/`layer` in its `judge.json`; the
//! optional `steer` input (the steer nodes' `steer.json`, matched by concept and method); the detection input when it
//! holds a single model/layer. Otherwise the node fails and says which input to bind.
//!
//! Outputs `steering.parquet` ([`steering_schema`]: one row per model/layer × concept × method),
//! `steering_by_factor.parquet` ([`by_factor_schema`]), `summary.json` ([`Summary`]), `report.md`, `report.html`
//! (self-contained, plots inline) and the SVG plots ([`axbench_report::plots`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use axbench_engine::{InputArtifact, ParamSpec, ParamType, Stage, StageContext, StageError};

use super::judge::read_judged;
use super::{fail, read_json, write_json};
use axbench_data::results::{ResultRow, Results};
use axbench_data::tables;
use axbench_lm::judge::{ScoredGeneration, select_factors, selection_split, win_rate};
use axbench_report::{self as report, FactorMeans, Half, JudgeCounts, Setting, SteeringResult, Summary, WinRateResult};

pub struct Aggregate;

/// One judged generation, with the model/layer it was steered on.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub model: String,
    pub layer: i64,
    pub concept_id: i64,
    pub method: String,
    pub factor: f64,
    pub input_id: u32,
    pub score: f64,
    pub concept_rating: f64,
    pub instruction_rating: f64,
    pub fluency_rating: f64,
    pub perplexity: Option<f64>,
    /// Of the three ratings, how many were unreadable (counted as 0).
    pub unreadable: u32,
}

/// How to aggregate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Method to compare the others to; `None`: a prompting method if there is one, else the first method.
    pub baseline: Option<String>,
    /// Share of each concept's instructions held out (AxBench's `winrate_split_ratio`, 0.5).
    pub split_ratio: f64,
    /// Column header for the (single) model/layer; `None`: `<model> L<layer>`.
    pub model_label: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            baseline: None,
            split_ratio: 0.5,
            model_label: None,
        }
    }
}

/// Aggregation cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("param `baseline`: no steering method {baseline:?} in the judged tables (methods: {methods})")]
    UnknownBaseline { baseline: String, methods: String },
    #[error("param `split_ratio`: {0} is not in [0, 1)")]
    SplitRatio(f64),
}

/// The baseline among `methods` (AxBench class names): `wanted` exactly, case-insensitively or by its short name
/// (`prompt` finds `PromptSteering`); with no `wanted`, a prompting method if present, else the first method.
pub fn resolve_baseline(wanted: Option<&str>, methods: &BTreeSet<String>) -> Result<Option<String>, AggregateError> {
    let prompting = || {
        methods
            .iter()
            .find(|m| m.to_ascii_lowercase().starts_with("prompt"))
            .cloned()
    };
    let Some(w) = wanted else {
        return Ok(prompting().or_else(|| methods.iter().next().cloned()));
    };
    let found = methods
        .iter()
        .find(|m| m.as_str() == w)
        .or_else(|| methods.iter().find(|m| m.eq_ignore_ascii_case(w)))
        .cloned()
        .or_else(|| super::method_class(w).and_then(|c| methods.iter().find(|m| m.as_str() == c).cloned()))
        .or_else(|| {
            if w.eq_ignore_ascii_case("prompt") {
                prompting()
            } else {
                None
            }
        });
    match found {
        Some(m) => Ok(Some(m)),
        None if methods.is_empty() => Ok(None),
        None => Err(AggregateError::UnknownBaseline {
            baseline: w.to_string(),
            methods: methods.iter().cloned().collect::<Vec<_>>().join(", "),
        }),
    }
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (s, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// AxBench's steering aggregation over `samples` (see the module docs). `descriptions` names concepts by id;
/// `detection` rows are passed through for Table 1.
pub fn aggregate(
    samples: &[Sample],
    descriptions: &BTreeMap<i64, String>,
    detection: Vec<ResultRow>,
    opts: &Options,
) -> Result<Summary, AggregateError> {
    if !(0.0..1.0).contains(&opts.split_ratio) {
        return Err(AggregateError::SplitRatio(opts.split_ratio));
    }
    let mut keys: BTreeSet<(String, i64)> = samples.iter().map(|s| (s.model.clone(), s.layer)).collect();
    keys.extend(detection.iter().map(|r| (r.model.clone(), r.layer)));
    let label = |model: &str, layer: i64| match &opts.model_label {
        Some(l) if !l.is_empty() && keys.len() == 1 => l.clone(),
        _ => report::default_label(model, layer),
    };
    let settings: Vec<Setting> = keys
        .iter()
        .map(|(m, l)| Setting {
            model: m.clone(),
            layer: *l,
            label: label(m, *l),
        })
        .collect();
    let methods: BTreeSet<String> = samples.iter().map(|s| s.method.clone()).collect();
    let baseline = resolve_baseline(opts.baseline.as_deref().filter(|b| !b.is_empty()), &methods)?;

    let mut summary = Summary {
        settings: settings.clone(),
        baseline: baseline.clone(),
        split_ratio: opts.split_ratio,
        detection,
        ..Default::default()
    };
    summary.judge = JudgeCounts {
        generations: samples.len() as u64,
        unreadable_ratings: samples.iter().map(|s| s.unreadable as u64).sum(),
    };
    for setting in &settings {
        let rows: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.model == setting.model && s.layer == setting.layer)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let scored: Vec<ScoredGeneration> = rows
            .iter()
            .map(|s| ScoredGeneration {
                concept_id: s.concept_id,
                method: s.method.clone(),
                input_id: s.input_id,
                factor: s.factor,
                score: s.score,
            })
            .collect();
        // The split point per concept, as select_factors computes it: n = the concept's largest input_id + 1.
        let mut n_ids: BTreeMap<i64, u32> = BTreeMap::new();
        for s in &rows {
            let n = n_ids.entry(s.concept_id).or_default();
            *n = (*n).max(s.input_id + 1);
        }
        let half = |s: &Sample| {
            if s.input_id < selection_split(n_ids[&s.concept_id], opts.split_ratio) {
                Half::Selection
            } else {
                Half::Test
            }
        };

        let choices = select_factors(&scored, opts.split_ratio);
        for c in &choices {
            let test: Vec<&&Sample> = rows
                .iter()
                .filter(|s| {
                    s.concept_id == c.concept_id
                        && s.method == c.method
                        && s.factor == c.factor
                        && half(s) == Half::Test
                })
                .collect();
            summary.steering.push(SteeringResult {
                model: setting.model.clone(),
                layer: setting.layer,
                method: c.method.clone(),
                concept_id: c.concept_id,
                description: descriptions.get(&c.concept_id).cloned().unwrap_or_default(),
                factor: c.factor,
                selection_score: c.selection_score,
                score: c.test_score,
                concept_rating: mean(test.iter().map(|s| s.concept_rating)),
                instruction_rating: mean(test.iter().map(|s| s.instruction_rating)),
                fluency_rating: mean(test.iter().map(|s| s.fluency_rating)),
                perplexity: mean(test.iter().filter_map(|s| s.perplexity)),
                n_test: c.n_test,
            });
        }

        // (method, factor bits, half) → concept → its samples; factors compare exactly, as selection does.
        let mut groups: BTreeMap<(String, u64, Half), BTreeMap<i64, Vec<&Sample>>> = BTreeMap::new();
        for s in &rows {
            groups
                .entry((s.method.clone(), s.factor.to_bits(), half(s)))
                .or_default()
                .entry(s.concept_id)
                .or_default()
                .push(s);
        }
        let mut by_factor: Vec<FactorMeans> = groups
            .into_iter()
            .map(|((method, bits, half), concepts)| {
                let over_concepts = |f: fn(&Sample) -> Option<f64>| {
                    mean(concepts.values().filter_map(|ss| mean(ss.iter().filter_map(|s| f(s)))))
                };
                FactorMeans {
                    model: setting.model.clone(),
                    layer: setting.layer,
                    method,
                    factor: f64::from_bits(bits),
                    half,
                    score: over_concepts(|s| Some(s.score)).unwrap_or(f64::NAN),
                    concept_rating: over_concepts(|s| Some(s.concept_rating)).unwrap_or(f64::NAN),
                    instruction_rating: over_concepts(|s| Some(s.instruction_rating)).unwrap_or(f64::NAN),
                    fluency_rating: over_concepts(|s| Some(s.fluency_rating)).unwrap_or(f64::NAN),
                    perplexity: over_concepts(|s| s.perplexity),
                    n_concepts: concepts.len(),
                    n_samples: concepts.values().map(Vec::len).sum(),
                }
            })
            .collect();
        by_factor.sort_by(|a, b| {
            (&a.method, a.half)
                .cmp(&(&b.method, b.half))
                .then(a.factor.total_cmp(&b.factor))
        });
        summary.by_factor.extend(by_factor);

        if let Some(b) = &baseline {
            let here: BTreeSet<&str> = rows.iter().map(|s| s.method.as_str()).collect();
            if here.contains(b.as_str()) {
                for m in here.iter().filter(|m| **m != b) {
                    let w = win_rate(&scored, &choices, m, b, opts.split_ratio);
                    summary.win_rates.push(WinRateResult {
                        model: setting.model.clone(),
                        layer: setting.layer,
                        method: m.to_string(),
                        baseline: b.clone(),
                        wins: w.wins,
                        losses: w.losses,
                        ties: w.ties,
                        win_rate: w.rate(),
                    });
                }
            }
        }
    }
    Ok(summary)
}

/// `steering.parquet`: one row per (model, layer, concept, method).
pub fn steering_schema() -> SchemaRef {
    let f = |n: &str, nullable| Field::new(n, DataType::Float64, nullable);
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("layer", DataType::Int64, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("concept_id", DataType::Int64, false),
        Field::new("description", DataType::Utf8, false),
        f("factor", false),
        f("selection_score", false),
        f("score", true),
        f("concept_rating", true),
        f("instruction_rating", true),
        f("fluency_rating", true),
        f("perplexity", true),
        Field::new("n_test", DataType::Int64, false),
    ]))
}

pub fn steering_batch(rows: &[SteeringResult]) -> Result<RecordBatch, StageError> {
    let f =
        |g: fn(&SteeringResult) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter(rows.iter().map(g))) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.layer))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.concept_id))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.description.as_str()),
        )),
        f(|r| Some(r.factor)),
        f(|r| Some(r.selection_score)),
        f(|r| r.score),
        f(|r| r.concept_rating),
        f(|r| r.instruction_rating),
        f(|r| r.fluency_rating),
        f(|r| r.perplexity),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_test as i64))),
    ];
    RecordBatch::try_new(steering_schema(), columns).map_err(|e| fail("steering", e))
}

/// `steering_by_factor.parquet`: one row per (model, layer, method, factor, half).
pub fn by_factor_schema() -> SchemaRef {
    let f = |n: &str, nullable| Field::new(n, DataType::Float64, nullable);
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("layer", DataType::Int64, false),
        Field::new("method", DataType::Utf8, false),
        f("factor", false),
        Field::new("half", DataType::Utf8, false),
        f("score", false),
        f("concept_rating", false),
        f("instruction_rating", false),
        f("fluency_rating", false),
        f("perplexity", true),
        Field::new("n_concepts", DataType::Int64, false),
        Field::new("n_samples", DataType::Int64, false),
    ]))
}

pub fn by_factor_batch(rows: &[FactorMeans]) -> Result<RecordBatch, StageError> {
    let f = |g: fn(&FactorMeans) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter(rows.iter().map(g))) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.model.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.layer))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        f(|r| Some(r.factor)),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.half.as_str()))),
        f(|r| Some(r.score)),
        f(|r| Some(r.concept_rating)),
        f(|r| Some(r.instruction_rating)),
        f(|r| Some(r.fluency_rating)),
        f(|r| r.perplexity),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_concepts as i64))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_samples as i64))),
    ];
    RecordBatch::try_new(by_factor_schema(), columns).map_err(|e| fail("steering_by_factor", e))
}

/// The optional `perplexity` column of a judged table (float, nulls allowed), one value per row.
fn read_perplexity(path: &Path) -> Result<Option<Vec<Option<f64>>>, StageError> {
    let batch = tables::read_parquet(path).map_err(|e| fail("judged", e))?;
    let Ok(i) = batch.schema().index_of("perplexity") else {
        return Ok(None);
    };
    let col = arrow::compute::cast(batch.column(i), &DataType::Float64)
        .map_err(|e| fail(path.display(), format!("column `perplexity`: {e}")))?;
    let col = col.as_any().downcast_ref::<Float64Array>().expect("cast to Float64");
    Ok(Some(
        (0..col.len())
            .map(|k| (col.is_valid(k) && col.value(k).is_finite()).then(|| col.value(k)))
            .collect(),
    ))
}

/// Where a judge node's generations were steered: model name and layer.
struct Origins {
    /// (concept_id, method class) → (model, layer), from the optional `steer` input.
    steer: BTreeMap<(i64, String), (String, i64)>,
    /// The detection input's single (model, layer), if it has exactly one.
    detection: Option<(String, i64)>,
}

impl Origins {
    fn resolve(
        &self,
        art: &InputArtifact,
        meta: &serde_json::Value,
        concept_id: i64,
        method: &str,
    ) -> Result<(String, i64), StageError> {
        if let (Some(m), Some(l)) = (
            meta.get("model").and_then(|v| v.as_str()),
            meta.get("layer").and_then(|v| v.as_i64()),
        ) {
            return Ok((m.to_string(), l));
        }
        if let Some(o) = self.steer.get(&(concept_id, method.to_string())) {
            return Ok(o.clone());
        }
        if let Some(o) = &self.detection {
            return Ok(o.clone());
        }
        Err(StageError::Input {
            name: "judged".into(),
            message: format!(
                "{}: judge.json names no model/layer; bind `steer = \"steer\"` (or a single-setting `detection = \"evaluate\"`) so the aggregate can tell",
                art.node
            ),
        })
    }
}

fn optional_inputs<'a>(ctx: &'a StageContext, name: &str) -> &'a [InputArtifact] {
    if ctx.input_names().contains(&name) {
        ctx.inputs(name).unwrap_or(&[])
    } else {
        &[]
    }
}

impl Stage for Aggregate {
    fn kind(&self) -> &str {
        "axbench.aggregate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "baseline",
                ParamType::Str,
                "",
                "method the win rates compare to (class or short name); empty: a prompting method if present, else the first method",
            ),
            ParamSpec::optional(
                "model_label",
                ParamType::Str,
                "",
                "column header for the model/layer in the tables; empty: `<model> L<layer>`",
            ),
            ParamSpec::optional(
                "split_ratio",
                ParamType::Float,
                0.5,
                "share of each concept's instructions held out for the reported score (AxBench's winrate_split_ratio)",
            ),
        ]
    }
    fn doc(&self) -> &str {
        "factor selection on the first half, held-out scores, win rates, the paper's tables and plots (steering.parquet, report.md, report.html)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let mut detection: Vec<ResultRow> = Vec::new();
        for art in optional_inputs(ctx, "detection") {
            let r: Results = read_json(art.file("results.json")?)?;
            detection.extend(r.detection);
        }
        let det_settings: BTreeSet<(String, i64)> = detection.iter().map(|r| (r.model.clone(), r.layer)).collect();
        let mut origins = Origins {
            steer: BTreeMap::new(),
            detection: (det_settings.len() == 1)
                .then(|| det_settings.iter().next().cloned())
                .flatten(),
        };
        for art in optional_inputs(ctx, "steer") {
            let meta: serde_json::Value = read_json(art.file("steer.json")?)?;
            let get = |k: &str| {
                meta.get(k)
                    .ok_or_else(|| fail(art.node.as_str(), format!("steer.json has no `{k}`")))
            };
            let (Some(cid), Some(class), Some(model), Some(layer)) = (
                get("concept_id")?.as_i64(),
                get("method_class")?.as_str(),
                get("model")?.as_str(),
                get("layer")?.as_i64(),
            ) else {
                return Err(fail(
                    art.node.as_str(),
                    "steer.json: concept_id, method_class, model or layer has the wrong type",
                ));
            };
            origins
                .steer
                .insert((cid, class.to_string()), (model.to_string(), layer));
        }

        let mut samples = Vec::new();
        let mut descriptions = BTreeMap::new();
        for art in ctx.inputs("judged")? {
            let meta: serde_json::Value = read_json(art.file("judge.json")?)?;
            let cid = meta
                .get("concept_id")
                .and_then(|v| v.as_i64())
                .ok_or_else(|| fail(art.node.as_str(), "judge.json: no integer `concept_id`"))?;
            let method = meta
                .get("method")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            if let Some(d) = meta.get("concept").and_then(|v| v.as_str()) {
                descriptions.insert(cid, d.to_string());
            }
            let path = art.file("judged.parquet")?;
            let rows = read_judged(path)?;
            if rows.is_empty() {
                continue;
            }
            let (model, layer) = origins.resolve(art, &meta, cid, &method)?;
            let ppl = read_perplexity(path)?;
            for (k, r) in rows.into_iter().enumerate() {
                let input_id = u32::try_from(r.input_id).map_err(|_| {
                    fail(
                        path.display(),
                        format!("row {k}: column `input_id` is {}, expected 0 or more", r.input_id),
                    )
                })?;
                samples.push(Sample {
                    model: model.clone(),
                    layer,
                    concept_id: r.concept_id,
                    method: r.method,
                    factor: r.factor,
                    input_id,
                    score: r.score,
                    concept_rating: r.concept_rating,
                    instruction_rating: r.instruction_rating,
                    fluency_rating: r.fluency_rating,
                    perplexity: ppl.as_ref().and_then(|p| p[k]),
                    unreadable: r.unparsable.clamp(0, 3) as u32,
                });
            }
        }

        let opts = Options {
            baseline: Some(ctx.param_str("baseline")?.to_string()).filter(|s| !s.is_empty()),
            split_ratio: ctx.param_f64("split_ratio")?,
            model_label: Some(ctx.param_str("model_label")?.to_string()).filter(|s| !s.is_empty()),
        };
        let summary = aggregate(&samples, &descriptions, detection, &opts).map_err(|e| match e {
            AggregateError::UnknownBaseline { .. } => StageError::Param {
                name: "baseline".into(),
                message: e.to_string(),
            },
            AggregateError::SplitRatio(_) => StageError::Param {
                name: "split_ratio".into(),
                message: e.to_string(),
            },
        })?;
        ctx.log(format!(
            "{} judged generations, {} concept × method results, {} settings, baseline {}",
            samples.len(),
            summary.steering.len(),
            summary.settings.len(),
            summary.baseline.as_deref().unwrap_or("none")
        ));
        write_outputs(ctx, &summary)
    }
}

/// Writes every output of the node from `summary`.
pub fn write_outputs(ctx: &StageContext, summary: &Summary) -> Result<(), StageError> {
    tables::write_parquet_atomic(
        &ctx.output_path("steering.parquet")?,
        &steering_batch(&summary.steering)?,
    )
    .map_err(|e| fail("steering", e))?;
    tables::write_parquet_atomic(
        &ctx.output_path("steering_by_factor.parquet")?,
        &by_factor_batch(&summary.by_factor)?,
    )
    .map_err(|e| fail("steering_by_factor", e))?;
    let plots = report::plots::factor_plots(summary).map_err(|e| fail("plots", e))?;
    for p in &plots {
        ctx.write_output(&p.file, p.svg.as_bytes())?;
    }
    let md = report::markdown::render(summary, &plots);
    ctx.write_output("report.md", md.as_bytes())?;
    ctx.write_output(
        "report.html",
        report::html::render("AxBench report", &md, &plots).as_bytes(),
    )?;
    write_json(ctx, "summary.json", summary)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axbench_engine::{Coord, Value};

    use super::*;

    /// A judged table as the judge stage writes it (its columns plus `perplexity`, NaN where unknown), built from
    /// samples directly.
    fn judged_table(rows: &[&Sample]) -> RecordBatch {
        let f =
            |g: fn(&Sample) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(rows.iter().map(|s| g(s)))) };
        let i =
            |g: fn(&Sample) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(rows.iter().map(|s| g(s)))) };
        RecordBatch::try_from_iter(vec![
            ("concept_id", i(|s| s.concept_id)),
            (
                "method",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|s| s.method.as_str()))) as ArrayRef,
            ),
            ("factor", f(|s| s.factor)),
            ("input_id", i(|s| s.input_id as i64)),
            ("concept_rating", f(|s| s.concept_rating)),
            ("instruction_rating", f(|s| s.instruction_rating)),
            ("fluency_rating", f(|s| s.fluency_rating)),
            ("score", f(|s| s.score)),
            ("unparsable", i(|s| s.unreadable as i64)),
            ("perplexity", f(|s| s.perplexity.unwrap_or(f64::NAN))),
        ])
        .unwrap()
    }

    fn sample(concept_id: i64, method: &str, factor: f64, input_id: u32, ratings: [f64; 3]) -> Sample {
        Sample {
            model: "gemma-3-270m".into(),
            layer: 9,
            concept_id,
            method: method.into(),
            factor,
            input_id,
            score: axbench_lm::judge::harmonic_mean(&ratings),
            concept_rating: ratings[0],
            instruction_rating: ratings[1],
            fluency_rating: ratings[2],
            perplexity: None,
            unreadable: 0,
        }
    }

    /// Four instructions: ids 0, 1 select, 2, 3 test. Factor 1.0 wins the selection half, factor 2.0 would win the
    /// test half: the result must be factor 1.0 with the test half's means at 1.0, never the better 2.0.
    fn hand_table() -> Vec<Sample> {
        vec![
            sample(0, "DiffMean", 1.0, 0, [2.0, 2.0, 2.0]),
            sample(0, "DiffMean", 1.0, 1, [1.0, 1.0, 1.0]),
            sample(0, "DiffMean", 2.0, 0, [0.0, 2.0, 2.0]),
            sample(0, "DiffMean", 2.0, 1, [1.0, 2.0, 2.0]),
            sample(0, "DiffMean", 1.0, 2, [1.0, 2.0, 2.0]),
            sample(0, "DiffMean", 1.0, 3, [1.0, 1.0, 2.0]),
            sample(0, "DiffMean", 2.0, 2, [2.0, 2.0, 2.0]),
            sample(0, "DiffMean", 2.0, 3, [2.0, 2.0, 2.0]),
            sample(0, "PromptSteering", 0.0, 0, [2.0, 2.0, 2.0]),
            sample(0, "PromptSteering", 0.0, 1, [2.0, 2.0, 2.0]),
            sample(0, "PromptSteering", 0.0, 2, [1.0, 2.0, 2.0]),
            sample(0, "PromptSteering", 0.0, 3, [2.0, 1.0, 1.0]),
        ]
    }

    #[test]
    fn selection_half_picks_the_factor_and_the_test_half_is_reported() {
        let s = aggregate(
            &hand_table(),
            &BTreeMap::from([(0, "cats".to_string())]),
            Vec::new(),
            &Options::default(),
        )
        .unwrap();
        let dm = s.steering.iter().find(|r| r.method == "DiffMean").unwrap();
        // Selection means: 1.0 → (2 + 1) / 2 = 1.5; 2.0 → (0 + 1.5) / 2 = 0.75.
        assert_eq!(dm.factor, 1.0);
        assert!((dm.selection_score - 1.5).abs() < 1e-12);
        // Test half at 1.0: harmonic means 1.5 and 1.2; at 2.0 it would have been 2.0.
        assert!((dm.score.unwrap() - 1.35).abs() < 1e-12, "{dm:?}");
        assert_eq!(
            (dm.concept_rating, dm.instruction_rating, dm.fluency_rating),
            (Some(1.0), Some(1.5), Some(2.0))
        );
        assert_eq!((dm.n_test, dm.description.as_str(), dm.perplexity), (2, "cats", None));
        // The one-factor baseline uses its factor.
        let p = s.steering.iter().find(|r| r.method == "PromptSteering").unwrap();
        assert_eq!((p.factor, p.n_test), (0.0, 2));
        assert!((p.score.unwrap() - (1.5 + 1.2) / 2.0).abs() < 1e-12);
        // Win rate on the held-out ids 2 (1.5 vs 1.5: tie) and 3 (1.2 vs 1.2: tie).
        assert_eq!(s.baseline.as_deref(), Some("PromptSteering"));
        let w = &s.win_rates[0];
        assert_eq!(
            (w.method.as_str(), w.wins, w.losses, w.ties, w.win_rate),
            ("DiffMean", 0, 0, 2, 0.5)
        );
    }

    #[test]
    fn win_rate_counts_wins_losses_and_ties_half() {
        let mut t = hand_table();
        // Prompting now scores 0 on held-out id 2 (DiffMean 1.5 wins) and 2 on id 3 (DiffMean 1.2 loses).
        t.retain(|s| s.method == "DiffMean" || s.input_id < 2);
        t.push(sample(0, "PromptSteering", 0.0, 2, [0.0, 2.0, 2.0]));
        t.push(sample(0, "PromptSteering", 0.0, 3, [2.0, 2.0, 2.0]));
        let s = aggregate(
            &t,
            &BTreeMap::new(),
            Vec::new(),
            &Options {
                baseline: Some("prompt".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let w = &s.win_rates[0];
        assert_eq!((w.wins, w.losses, w.ties), (1, 1, 0));
        assert_eq!(w.win_rate, 0.5);
        // Against DiffMean instead, the prompting method is the one compared.
        let s = aggregate(
            &t,
            &BTreeMap::new(),
            Vec::new(),
            &Options {
                baseline: Some("diffmean".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (s.win_rates[0].method.as_str(), s.win_rates[0].baseline.as_str()),
            ("PromptSteering", "DiffMean")
        );
    }

    #[test]
    fn baseline_resolution() {
        let m = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            resolve_baseline(None, &m(&["DiffMean", "PromptSteering"]))
                .unwrap()
                .as_deref(),
            Some("PromptSteering")
        );
        assert_eq!(
            resolve_baseline(None, &m(&["PCA", "DiffMean"])).unwrap().as_deref(),
            Some("DiffMean")
        );
        assert_eq!(
            resolve_baseline(Some("probe"), &m(&["LinearProbe", "DiffMean"]))
                .unwrap()
                .as_deref(),
            Some("LinearProbe")
        );
        assert_eq!(
            resolve_baseline(Some("pca"), &m(&["PCA"])).unwrap().as_deref(),
            Some("PCA")
        );
        assert_eq!(resolve_baseline(None, &m(&[])).unwrap(), None);
        let e = resolve_baseline(Some("sae"), &m(&["DiffMean", "PCA"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("baseline") && e.contains("\"sae\"") && e.contains("DiffMean, PCA"),
            "{e}"
        );
    }

    #[test]
    fn bad_split_ratio_is_an_error() {
        let e = aggregate(
            &hand_table(),
            &BTreeMap::new(),
            Vec::new(),
            &Options {
                split_ratio: 1.0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("split_ratio"), "{e}");
    }

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/aggregate")
    }

    /// Against tests/golden/aggregate/make_aggregate_golden.py: AxBench's evaluate.py procedure in pandas/numpy on a
    /// seeded random judged table (3 concepts, one with an odd instruction count; two steering methods, one
    /// prompting baseline).
    #[test]
    fn matches_axbench_procedure_in_pandas() {
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(golden_dir().join("judged.json")).unwrap()).unwrap();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden_dir().join("expected.json")).unwrap()).unwrap();
        let samples: Vec<Sample> = rows
            .iter()
            .map(|r| Sample {
                model: r["model"].as_str().unwrap().into(),
                layer: r["layer"].as_i64().unwrap(),
                concept_id: r["concept_id"].as_i64().unwrap(),
                method: r["method"].as_str().unwrap().into(),
                factor: r["factor"].as_f64().unwrap(),
                input_id: r["input_id"].as_u64().unwrap() as u32,
                score: r["score"].as_f64().unwrap(),
                concept_rating: r["concept_rating"].as_f64().unwrap(),
                instruction_rating: r["instruction_rating"].as_f64().unwrap(),
                fluency_rating: r["fluency_rating"].as_f64().unwrap(),
                perplexity: r["perplexity"].as_f64(),
                unreadable: 0,
            })
            .collect();
        let s = aggregate(&samples, &BTreeMap::new(), Vec::new(), &Options::default()).unwrap();
        let close = |a: f64, b: &serde_json::Value, what: &str| {
            assert!((a - b.as_f64().unwrap()).abs() < 1e-12, "{what}: {a} vs {b}")
        };
        let exp = expected["steering"].as_array().unwrap();
        assert_eq!(s.steering.len(), exp.len());
        let mut selection_differs = 0;
        for e in exp {
            let r = s
                .steering
                .iter()
                .find(|r| {
                    r.concept_id == e["concept_id"].as_i64().unwrap() && r.method == e["method"].as_str().unwrap()
                })
                .unwrap();
            let what = format!("concept {} {}", r.concept_id, r.method);
            close(r.factor, &e["factor"], &what);
            close(r.selection_score, &e["selection_score"], &what);
            close(r.score.unwrap(), &e["score"], &what);
            close(r.concept_rating.unwrap(), &e["concept_rating"], &what);
            close(r.instruction_rating.unwrap(), &e["instruction_rating"], &what);
            close(r.fluency_rating.unwrap(), &e["fluency_rating"], &what);
            close(r.perplexity.unwrap(), &e["perplexity"], &what);
            assert_eq!(r.n_test as u64, e["n_test"].as_u64().unwrap(), "{what}");
            selection_differs += (e["factor"] != e["best_test_factor"]) as usize;
        }
        assert!(
            selection_differs > 0,
            "the golden must hold a case where the held-out half would pick another factor"
        );
        let exp = expected["by_factor"].as_array().unwrap();
        assert_eq!(s.by_factor.len(), exp.len());
        for e in exp {
            let r = s
                .by_factor
                .iter()
                .find(|r| {
                    r.method == e["method"].as_str().unwrap()
                        && r.factor == e["factor"].as_f64().unwrap()
                        && r.half.as_str() == e["half"].as_str().unwrap()
                })
                .unwrap();
            let what = format!("{} {} {}", r.method, r.factor, r.half.as_str());
            close(r.score, &e["score"], &what);
            close(r.concept_rating, &e["concept_rating"], &what);
            close(r.instruction_rating, &e["instruction_rating"], &what);
            close(r.fluency_rating, &e["fluency_rating"], &what);
            close(r.perplexity.unwrap(), &e["perplexity"], &what);
            assert_eq!(
                (r.n_concepts as u64, r.n_samples as u64),
                (e["n_concepts"].as_u64().unwrap(), e["n_samples"].as_u64().unwrap()),
                "{what}"
            );
        }
        assert_eq!(s.baseline.as_deref(), expected["baseline"].as_str());
        let exp = expected["win_rates"].as_array().unwrap();
        assert_eq!(s.win_rates.len(), exp.len());
        for e in exp {
            let w = s
                .win_rates
                .iter()
                .find(|w| w.method == e["method"].as_str().unwrap())
                .unwrap();
            assert_eq!(
                (w.wins, w.losses, w.ties),
                (
                    e["wins"].as_u64().unwrap(),
                    e["losses"].as_u64().unwrap(),
                    e["ties"].as_u64().unwrap()
                ),
                "{}",
                w.method
            );
            close(w.win_rate, &e["win_rate"], &w.method);
        }
    }

    /// An evaluate node's row, as its results.json has it (metrics not given are null).
    fn detection_row(method: &str, concept_id: i64, auroc: f64) -> ResultRow {
        serde_json::from_value(serde_json::json!({"model": "gemma-3-270m", "layer": 9, "method": method, "concept_id": concept_id, "auroc": auroc, "n_positive": 36, "n_negative": 36, "n_hard_negative": 0})).unwrap()
    }

    /// Runs the stage on `judged` (one judge node per (concept, method)) and a detection results file.
    fn run_stage(dir: &Path, judged: &[Sample], with_steer: bool) -> Result<PathBuf, StageError> {
        let mut groups: BTreeMap<(i64, String), Vec<&Sample>> = BTreeMap::new();
        for s in judged {
            groups.entry((s.concept_id, s.method.clone())).or_default().push(s);
        }
        let mut judged_arts = Vec::new();
        let mut steer_arts = Vec::new();
        for ((cid, method), rows) in groups {
            let node = format!("judge[concept={cid},method={method}]");
            let d = dir.join(&node);
            std::fs::create_dir_all(&d).unwrap();
            tables::write_parquet_atomic(&d.join("judged.parquet"), &judged_table(&rows)).unwrap();
            std::fs::write(
                d.join("judge.json"),
                serde_json::json!({"concept_id": cid, "concept": format!("concept number {cid}"), "method": method})
                    .to_string(),
            )
            .unwrap();
            judged_arts.push(InputArtifact {
                node: node.clone(),
                coord: Coord::new(),
                files: ["judged.parquet", "judge.json"]
                    .iter()
                    .map(|f| (f.to_string(), d.join(f)))
                    .collect(),
            });
            std::fs::write(
                d.join("steer.json"),
                serde_json::json!({"concept_id": cid, "method_class": method, "model": "gemma-3-270m", "layer": 9})
                    .to_string(),
            )
            .unwrap();
            steer_arts.push(InputArtifact {
                node: node.replace("judge", "steer"),
                coord: Coord::new(),
                files: [("steer.json".to_string(), d.join("steer.json"))].into_iter().collect(),
            });
        }
        let det = dir.join("results.json");
        let results = Results {
            detection: vec![
                detection_row("DiffMean", 0, 0.9),
                detection_row("DiffMean", 1, 0.8),
                detection_row("PCA", 0, 0.6),
                detection_row("PCA", 1, 0.7),
            ],
        };
        std::fs::write(&det, serde_json::to_vec(&results).unwrap()).unwrap();
        let mut inputs = BTreeMap::from([("judged".to_string(), judged_arts)]);
        if with_steer {
            inputs.insert("steer".into(), steer_arts);
        } else {
            inputs.insert(
                "detection".into(),
                vec![InputArtifact {
                    node: "evaluate".into(),
                    coord: Coord::new(),
                    files: [("results.json".to_string(), det)].into_iter().collect(),
                }],
            );
        }
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let params = BTreeMap::from([
            ("baseline".to_string(), Value::Str(String::new())),
            ("model_label".to_string(), Value::Str(String::new())),
            ("split_ratio".to_string(), Value::Float(0.5)),
        ]);
        let mut ctx = StageContext::new(
            "aggregate",
            Coord::new(),
            params,
            inputs,
            out.clone(),
            dir.to_path_buf(),
        );
        Aggregate.run(&mut ctx)?;
        Ok(out)
    }

    /// Two concepts, DiffMean over two factors and a one-factor prompting baseline.
    fn small_table() -> Vec<Sample> {
        let mut t = hand_table();
        for s in hand_table() {
            let mut s = s;
            s.concept_id = 1;
            // Concept 1: the higher factor wins selection; the prompting baseline is weaker.
            if s.method == "DiffMean" {
                s.factor = if s.factor == 1.0 { 2.0 } else { 1.0 };
            } else if s.input_id >= 2 {
                s.concept_rating = 1.0;
                s.instruction_rating = 1.0;
                s.fluency_rating = 1.0;
                s.score = 1.0;
            }
            t.push(s);
        }
        t[0].unreadable = 1;
        t
    }

    #[test]
    fn stage_writes_tables_report_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_stage(dir.path(), &small_table(), false).unwrap();
        // To look at the report: AXBENCH_REPORT_DUMP=/some/dir cargo test -p axbench-stages aggregate.
        if let Some(keep) = std::env::var_os("AXBENCH_REPORT_DUMP") {
            std::fs::create_dir_all(&keep).unwrap();
            for e in std::fs::read_dir(&out).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), Path::new(&keep).join(e.file_name())).unwrap();
            }
        }
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        insta::assert_snapshot!("aggregate_report_md", md);
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        // Self-contained: every plot inline, no external references.
        for f in ["score_vs_factor.svg", "ratings_vs_factor.svg"] {
            let svg = std::fs::read_to_string(out.join(f)).unwrap();
            assert!(
                svg.contains("<svg") && svg.contains("DiffMean") && svg.contains("PromptSteering"),
                "{f}"
            );
            assert!(
                html.contains(&svg[svg.find("<svg").unwrap()..]),
                "{f} is not inlined in report.html"
            );
        }
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(!html.contains("<img") && !html.contains("src=") && !html.contains("href=\"http"));
        // Each plot is a figure of its own, not wrapped in the paragraph its Markdown image sat in.
        assert_eq!(html.matches("<figure").count(), 2);
        assert!(!html.contains("<p><figure"));
        assert!(html.contains("<table>") && html.contains("Table 2: steering"));
        // No perplexity in the judged tables: no perplexity plot.
        assert!(!out.join("perplexity_vs_factor.svg").exists());

        let steering = tables::read_parquet(&out.join("steering.parquet")).unwrap();
        assert_eq!(steering.num_rows(), 4);
        assert_eq!(steering.schema(), steering_schema());
        let by_factor = tables::read_parquet(&out.join("steering_by_factor.parquet")).unwrap();
        // DiffMean: 2 factors × 2 halves; prompting: 1 × 2.
        assert_eq!(by_factor.num_rows(), 6);
        let summary: Summary = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(
            summary.judge,
            JudgeCounts {
                generations: 24,
                unreadable_ratings: 1
            }
        );
        assert_eq!(summary.detection.len(), 4);
        assert_eq!(
            summary.settings,
            vec![Setting {
                model: "gemma-3-270m".into(),
                layer: 9,
                label: "gemma-3-270m L9".into()
            }]
        );
    }

    /// steering.parquet and steering_by_factor.parquet open in pandas and polars with their nulls intact (skipped
    /// without the reference venv, scripts/ref-env.sh).
    #[test]
    fn steering_tables_open_in_pandas_and_polars() {
        let python = std::env::var_os("AXBENCH_REF_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/axbench-deps/ref-venv/bin/python")
            });
        if !python.exists() {
            eprintln!("skipping: no reference python (scripts/ref-env.sh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut t = small_table();
        // Concept 1's prompting rows only on the selection half: its held-out means are null.
        t.retain(|s| !(s.concept_id == 1 && s.method == "PromptSteering" && s.input_id >= 2));
        let out = run_stage(dir.path(), &t, false).unwrap();
        let script = r#"
import sys, pandas as pd, polars as pl
s = pd.read_parquet(sys.argv[1] + "/steering.parquet")
assert list(s.columns) == ["model", "layer", "method", "concept_id", "description", "factor", "selection_score", "score", "concept_rating", "instruction_rating", "fluency_rating", "perplexity", "n_test"], s.columns
row = s[(s.concept_id == 1) & (s.method == "PromptSteering")].iloc[0]
assert pd.isna(row.score) and row.n_test == 0 and pd.isna(row.perplexity)
dm = s[(s.concept_id == 0) & (s.method == "DiffMean")].iloc[0]
assert dm.factor == 1.0 and abs(dm.score - 1.35) < 1e-12 and dm.description == "concept number 0"
b = pl.read_parquet(sys.argv[1] + "/steering_by_factor.parquet")
assert b.shape == (6, 12) and sorted(set(b["half"].to_list())) == ["selection", "test"]
print("ok")
"#;
        let res = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&out)
            .output()
            .unwrap();
        assert!(res.status.success(), "python: {}", String::from_utf8_lossy(&res.stderr));
        assert_eq!(String::from_utf8_lossy(&res.stdout).trim(), "ok");
    }

    #[test]
    fn model_and_layer_come_from_the_steer_input_without_detection() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_stage(dir.path(), &small_table(), true).unwrap();
        let summary: Summary = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert!(
            summary
                .steering
                .iter()
                .all(|r| r.model == "gemma-3-270m" && r.layer == 9)
        );
        assert!(summary.detection.is_empty());
        assert!(
            !std::fs::read_to_string(out.join("report.md"))
                .unwrap()
                .contains("Table 1")
        );
    }

    #[test]
    fn perplexity_column_is_read_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("judged.parquet");
        let mut a = sample(0, "DiffMean", 1.0, 0, [2.0, 2.0, 2.0]);
        let b = a.clone();
        a.perplexity = Some(3.5);
        tables::write_parquet_atomic(&path, &judged_table(&[&a, &b])).unwrap();
        assert_eq!(read_perplexity(&path).unwrap(), Some(vec![Some(3.5), None]));
        // A table without the column (an older judge) reads as no perplexity.
        let batch = judged_table(&[&a]);
        let batch = batch
            .project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())
            .unwrap();
        tables::write_parquet_atomic(&path, &batch).unwrap();
        assert_eq!(read_perplexity(&path).unwrap(), None);
    }

    #[test]
    fn missing_origin_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let judged: Vec<Sample> = small_table();
        // Neither judge.json nor a steer/detection input says where the generations come from.
        let mut groups_dir = dir.path().join("j");
        std::fs::create_dir_all(&groups_dir).unwrap();
        let rows: Vec<&Sample> = judged
            .iter()
            .filter(|s| s.concept_id == 0 && s.method == "DiffMean")
            .collect();
        tables::write_parquet_atomic(&groups_dir.join("judged.parquet"), &judged_table(&rows)).unwrap();
        std::fs::write(
            groups_dir.join("judge.json"),
            r#"{"concept_id": 0, "concept": "c", "method": "DiffMean"}"#,
        )
        .unwrap();
        let art = InputArtifact {
            node: "judge[concept=0,method=diffmean]".into(),
            coord: Coord::new(),
            files: ["judged.parquet", "judge.json"]
                .iter()
                .map(|f| (f.to_string(), groups_dir.join(f)))
                .collect(),
        };
        groups_dir.push("out");
        std::fs::create_dir_all(&groups_dir).unwrap();
        let params = BTreeMap::from([
            ("baseline".to_string(), Value::Str(String::new())),
            ("model_label".to_string(), Value::Str(String::new())),
            ("split_ratio".to_string(), Value::Float(0.5)),
        ]);
        let mut ctx = StageContext::new(
            "aggregate",
            Coord::new(),
            params,
            BTreeMap::from([("judged".to_string(), vec![art])]),
            groups_dir,
            dir.path().to_path_buf(),
        );
        let e = Aggregate.run(&mut ctx).unwrap_err().to_string();
        assert!(
            e.contains("judge[concept=0,method=diffmean]") && e.contains("steer = \"steer\""),
            "{e}"
        );
    }
}
