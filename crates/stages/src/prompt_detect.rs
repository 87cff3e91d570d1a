//! `axbench.prompt_detect`: AxBench's prompt-based concept detection (`PromptDetection`, paper: "Prompt"): an LM reads
//! each latent eval row's response (`input_field = "output"`) with the concept-presence template
//! (`configs/prompts/judge_concept.txt`, the judge's) and rates it 0–2; the rating, read from `Rating: [[n]]` as the
//! judge reads it ([`axbench_lm::judge::parse_rating`]: missing, unreadable or out-of-range ratings count 0), is the row's
//! score. There are no token scores, so nothing is fitted and there is no steering direction.
//!
//! The LM is any backend of [`super::lm_stage`] (AxBench prompts the local steering model with sampling and up to 512
//! new tokens: `backend = "local"`, `max_tokens = 512`, `temperature = 1.0` are the defaults). Calls go through the
//! cached client, so a rerun or a second pipeline asking the same question pays nothing.
//!
//! Outputs `scores.parquet` in the infer schema ([`axbench_data::tables::latent_scores_schema`]: `max_act` = the rating) and
//! `infer.json` ([`InferMeta`], method `prompt_detect`, class `PromptDetection`), so `axbench.evaluate` takes it like
//! an infer node, and `prompt_detect.json` ([`PromptDetectMeta`]: rating statuses, LM stats).
//!
//! How to wire it (one node per concept, gathered by evaluate beside the infer nodes):
//!
//! ```toml
//! [stages.prompt_detect]
//! kind = "axbench.prompt_detect"
//! foreach = { concept = { from = "concepts" } }
//! params = { dataset = "${dataset.dir}", concept = "${concept}", target = "${model.path}", layer = "${model.layer}",
//!            backend = "${lm.backend}", model = "${lm.model}", base_url = "${lm.base_url}" }
//! [stages.evaluate]
//! kind = "axbench.evaluate"
//! inputs = { scores = "infer", prompt_scores = "prompt_detect" }
//! ```
//!
//! `target` and `layer` only label the rows (the results table groups methods by model and layer); with synthesized
//! data bind `inputs = { dataset = "synthesize" }` instead of the `dataset` param.

use std::collections::BTreeMap;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

use super::concepts::open_dataset;
use super::infer::InferMeta;
use super::judge::{rating_mode, rating_param};
use super::lm_stage::{LmDefaults, build_lm, check_failed_calls, lm_params, runtime};
use super::{fail, write_json};
use axbench_data::dataset::eval_set;
use axbench_data::prompts::{PromptSet, Template};
use axbench_data::tables::{self, LatentScoreRow};
use axbench_lm::judge::{RatingMode, RatingStatus, parse_rating};
use axbench_lm::{ChatRequest, LmStats};

pub struct PromptDetect;

/// The method name in the pipeline and in `infer.json`.
pub const METHOD: &str = "prompt_detect";
/// AxBench's class name.
pub const CLASS: &str = "PromptDetection";

/// `prompt_detect.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptDetectMeta {
    pub concept_id: i64,
    pub concept: String,
    /// The rating LM, in words.
    pub lm: String,
    /// How ratings were produced (see [`RatingMode`]); absent in older files: generate.
    #[serde(default)]
    pub rating: RatingMode,
    /// How many ratings were read, missing, unparsable, out of range, or had no reply.
    pub ratings: BTreeMap<RatingStatus, usize>,
    pub calls: LmStats,
}

/// The rating prompt for one response (the judge's concept template: concept and text fragment).
pub fn rating_prompt(prompts: &PromptSet, concept: &str, response: &str) -> Result<String, StageError> {
    prompts
        .render(Template::JudgeConcept, &[("concept", concept), ("sentence", response)])
        .map_err(|e| fail("prompts", e))
}

impl Stage for PromptDetect {
    fn kind(&self) -> &str {
        "axbench.prompt_detect"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![
            ParamSpec::optional(
                "dataset",
                ParamType::Path,
                "",
                "AxBench data directory (unset when the `dataset` input is bound)",
            ),
            ParamSpec::required("concept", ParamType::Int, "concept id whose latent eval rows are rated"),
            ParamSpec::optional(
                "target",
                ParamType::Str,
                "",
                "the model the other methods read (a path; only its name labels the rows)",
            ),
            ParamSpec::optional(
                "layer",
                ParamType::Int,
                -1,
                "the layer the other methods read (labels the rows)",
            ),
            ParamSpec::optional(
                "prompts",
                ParamType::Path,
                "configs/prompts",
                "prompt template directory",
            ),
        ];
        p.extend(lm_params(LmDefaults {
            model: "default-instruct",
            temperature: 1.0,
            max_tokens: 512,
            role: "rating LM temperature (AxBench: the steering model, sampled at 1.0)",
        }));
        p.push(rating_param());
        p
    }
    fn doc(&self) -> &str {
        "Prompt detection: an LM rates the concept's presence 0-2 in each latent eval response (scores.parquet like infer)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let data = open_dataset(ctx)?;
        let concept_id = ctx.param_i64("concept")?;
        let concept = data
            .concepts
            .iter()
            .find(|c| c.id == concept_id)
            .ok_or_else(|| StageError::Param {
                name: "concept".into(),
                message: format!("no concept {concept_id} in {}", data.dir.display()),
            })?
            .concept
            .clone();
        let rows = eval_set(data.eval.as_deref().unwrap_or_default(), concept_id);
        if rows.is_empty() {
            return Err(StageError::msg(format!(
                "concept {concept_id}: no latent eval rows in {}",
                data.dir.display()
            )));
        }
        let prompts = PromptSet::load(&ctx.param_path("prompts")?).map_err(|e| StageError::Param {
            name: "prompts".into(),
            message: e.to_string(),
        })?;
        let mode = rating_mode(ctx)?;
        let lm = build_lm(ctx)?;
        let requests = rows
            .iter()
            .map(|r| {
                Ok(mode.apply(ChatRequest::user(
                    lm.model_id.clone(),
                    rating_prompt(&prompts, &concept, &r.output)?,
                    lm.params.clone(),
                )))
            })
            .collect::<Result<Vec<_>, StageError>>()?;
        ctx.progress()
            .set_message(format!("{} ratings through {}", requests.len(), lm.describe));
        let records = runtime()?.block_on(lm.client.call_many(&requests));
        check_failed_calls(ctx, &lm.client.stats(), &records)?;

        let mut statuses: BTreeMap<RatingStatus, usize> = BTreeMap::new();
        let mut scores = Vec::with_capacity(rows.len());
        for (k, (row, rec)) in rows.iter().zip(&records).enumerate() {
            let rating = match rec.text() {
                Some(t) => parse_rating(t),
                None => axbench_lm::judge::Rating {
                    value: 0.0,
                    status: RatingStatus::NoReply,
                },
            };
            *statuses.entry(rating.status).or_default() += 1;
            scores.push(LatentScoreRow {
                concept_id,
                example_index: k as u32,
                method: CLASS.into(),
                category: row.category.as_str().into(),
                max_act: rating.value,
                max_act_idx: None,
                acts: Vec::new(),
            });
        }
        let target = ctx.param_str("target")?;
        let model = if target.is_empty() {
            lm.model_id.clone()
        } else {
            super::model_cache::model_name(std::path::Path::new(target))
        };
        let batch = tables::latent_scores_batch(&scores).map_err(|e| fail("scores", e))?;
        tables::write_parquet_atomic(&ctx.output_path("scores.parquet")?, &batch).map_err(|e| fail("scores", e))?;
        write_json(
            ctx,
            "infer.json",
            &InferMeta {
                model,
                layer: ctx.param_i64("layer")?,
                concept_id,
                method: METHOD.into(),
                method_class: CLASS.into(),
                n_examples: scores.len(),
            },
        )?;
        let parsed = statuses.get(&RatingStatus::Parsed).copied().unwrap_or(0);
        ctx.log(format!(
            "concept {concept_id}: {} rows rated by {}; {parsed} ratings read",
            scores.len(),
            lm.describe
        ));
        write_json(
            ctx,
            "prompt_detect.json",
            &PromptDetectMeta {
                concept_id,
                concept,
                lm: lm.describe.clone(),
                rating: mode,
                ratings: statuses,
                calls: lm.client.stats(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompt the rating LM sees for one eval response (AxBench PromptDetection: the concept-relevance template
    /// on the row's `output`).
    #[test]
    fn rendered_rating_prompt() {
        let prompts = PromptSet::load(&PromptSet::default_dir()).unwrap();
        let p = rating_prompt(
            &prompts,
            "terms related to employment and employees",
            "The workers asked their employer for a raise.",
        )
        .unwrap();
        insta::assert_snapshot!("prompt_detect_rating", p);
    }
}
