//! The prompting baseline for steering (AxBench's `PromptSteering`, the paper's "Prompt" row of Table 2), as two
//! stages per concept:
//!
//! 1. **`axbench.steering_prompt`**: an LM writes a prompt that makes a model bring the concept into its answers
//!    (`configs/prompts/steering_prompt.txt`, our own words with the intent of AxBench's
//!    `T_GENERATE_STEERING_PROMPT`). The call goes through the cached LM client (the LM params every LM-backed stage
//!    declares, [`super::lm_stage`]), so a rerun or another pipeline pays nothing. A failed, refused or empty reply
//!    falls back to [`fallback_steering_prompt`], as AxBench falls back to `T_PROMPT_STEERING`. The rendered request,
//!    the reply and the prompt used are the node's output `steering_prompt.json` ([`SteeringPromptRecord`]). A node of
//!    its own, so changing generation settings never asks the LM again.
//! 2. **`axbench.prompt_steer`**: each instruction becomes `" {steering prompt}\n\nQuestion: {instruction}"`
//!    (AxBench's `steered_input`) in the steered model's chat template, generated **without intervention** with the
//!    same sampling settings, instruction draw and seeds as `axbench.steer`. There is no factor: one row per
//!    instruction with `factor = 1` and `strength = 0` (AxBench replicates the one generation over its factor rows;
//!    factor selection then has a single choice). The **perplexity** is that of the generation alone under the model
//!    ([`perplexities`]), as `PromptSteering` computes it. Outputs `generations.parquet` (the steer stage's schema) and
//!    `steer.json` ([`SteerMeta`], method `prompt`), so the judge reads it like any steer node.

use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

use super::generation::{
    Generation, GenerationRow, SteerMeta, chat_prompt, generate_steered, generation_params, generations_batch,
    perplexities, pick_instructions, read_generation,
};
use super::lm_stage::{LmDefaults, build_lm, lm_params, runtime};
use super::model_cache::with_model;
use super::{fail, read_json, write_json};
use axbench_data::prompts::{PromptSet, Template};
use axbench_data::tables;
use axbench_lm::ChatRequest;
use axbench_lm::synth::fallback_steering_prompt;

pub struct SteeringPrompt;
pub struct PromptSteer;

/// AxBench's class name for the method, as written in the tables.
pub const METHOD_CLASS: &str = "PromptSteering";

/// `steering_prompt.json`: how the steering prompt came about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringPromptRecord {
    pub concept_id: i64,
    pub concept: String,
    /// The backend that wrote it, in words.
    pub writer: String,
    /// The rendered request sent to the writer.
    pub request: String,
    /// The writer's reply (`None` when the call failed or was refused).
    pub reply: Option<String>,
    /// The prompt prepended to every instruction.
    pub steering_prompt: String,
    /// Whether [`fallback_steering_prompt`] was used.
    pub fallback: bool,
}

/// AxBench's `steered_input` before the chat template: the steering prompt, then the instruction as a question.
pub fn steered_instruction(steering_prompt: &str, instruction: &str) -> String {
    format!(" {steering_prompt}\n\nQuestion: {instruction}")
}

/// The steering prompt from the writer's reply: trimmed; `None` (use the fallback) when there is no usable text.
pub fn steering_prompt_from_reply(reply: Option<&str>) -> Option<String> {
    reply.map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)
}

impl Stage for SteeringPrompt {
    fn kind(&self) -> &str {
        "axbench.steering_prompt"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![
            ParamSpec::required(
                "dataset",
                ParamType::Path,
                "AxBench data directory (metadata.jsonl names the concept)",
            ),
            ParamSpec::required("concept", ParamType::Int, "concept id"),
            ParamSpec::optional(
                "prompts",
                ParamType::Path,
                "configs/prompts",
                "prompt template directory (steering_prompt.txt)",
            ),
        ];
        p.extend(lm_params(LmDefaults {
            model: "default-instruct",
            temperature: 1.0,
            max_tokens: 256,
            role: "temperature of the prompt writer",
        }));
        p
    }
    fn doc(&self) -> &str {
        "Prompting baseline, step 1: an LM writes a steering prompt for the concept (cached LM client)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let concept_id = ctx.param_i64("concept")?;
        let metadata = ctx.param_path("dataset")?.join("metadata.jsonl");
        let concepts = axbench_data::dataset::read_metadata(&metadata).map_err(|e| fail("dataset", e))?;
        let concept = concepts
            .iter()
            .find(|c| c.id == concept_id)
            .ok_or_else(|| fail(metadata.display(), format!("no concept {concept_id}")))?
            .concept
            .clone();
        let prompts = PromptSet::load(&ctx.param_path("prompts")?).map_err(|e| fail("prompts", e))?;
        let request = prompts
            .render(Template::SteeringPrompt, &[("concept", &concept)])
            .map_err(|e| fail("prompts", e))?;
        let lm = build_lm(ctx)?;
        let record = runtime()?.block_on(lm.client.call(&ChatRequest::user(
            lm.model_id.clone(),
            request.clone(),
            lm.params.clone(),
        )));
        let reply = record.text().map(str::to_owned);
        let written = steering_prompt_from_reply(reply.as_deref());
        let fallback = written.is_none();
        let steering_prompt = written.unwrap_or_else(|| fallback_steering_prompt(&concept));
        ctx.log(format!(
            "steering prompt for concept {concept_id} ({}): {steering_prompt:?}",
            if fallback { "fallback" } else { lm.describe.as_str() }
        ));
        write_json(
            ctx,
            "steering_prompt.json",
            &SteeringPromptRecord {
                concept_id,
                concept,
                writer: lm.describe,
                request,
                reply,
                steering_prompt,
                fallback,
            },
        )
    }
}

impl Stage for PromptSteer {
    fn kind(&self) -> &str {
        "axbench.prompt_steer"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        generation_params()
    }
    fn resources(&self) -> Vec<(&'static str, u32)> {
        vec![("model", 1)]
    }
    fn doc(&self) -> &str {
        "Prompting baseline, step 2: the steering prompt prepended to each instruction, generated without intervention"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let Generation {
            model_path,
            load,
            instructions: all,
            per_concept,
            settings,
        } = read_generation(ctx)?;
        let sp: SteeringPromptRecord = read_json(ctx.input("prompt")?.file("steering_prompt.json")?)?;
        let concept_id = sp.concept_id;
        let instructions = pick_instructions(&all, concept_id, per_concept);

        let t0 = Instant::now();
        ctx.progress().set_length(instructions.len() as u64);
        let (gens, tokens, name) = with_model(&model_path, load.device, load.dtype, |m| {
            let ids: Vec<Vec<i64>> = instructions
                .iter()
                .map(|i| chat_prompt(m, &steered_instruction(&sp.steering_prompt, i)))
                .collect::<Result<_, _>>()?;
            let (g, tokens) = generate_steered(m, &ids, None, 0.0, &settings)?;
            let texts: Vec<String> = g.into_iter().map(|g| g.text).collect();
            let ppl = perplexities(m, &texts)?;
            ctx.progress().inc(texts.len() as u64);
            Ok((texts.into_iter().zip(ppl).collect::<Vec<_>>(), tokens, m.name.clone()))
        })?;
        let rows: Vec<GenerationRow> = instructions
            .iter()
            .zip(gens)
            .enumerate()
            .map(|(k, (instr, (generation, perplexity)))| GenerationRow {
                concept_id,
                method: METHOD_CLASS.into(),
                factor: 1.0,
                input_id: k as i64,
                instruction: instr.clone(),
                generation,
                strength: 0.0,
                perplexity,
            })
            .collect();
        let seconds = t0.elapsed().as_secs_f64();
        ctx.log(format!("{} generations, {tokens} tokens in {seconds:.1}s", rows.len()));
        tables::write_parquet_atomic(&ctx.output_path("generations.parquet")?, &generations_batch(&rows)?)
            .map_err(|e| fail("generations", e))?;
        let meta = SteerMeta {
            model: name,
            layer: -1,
            concept_id,
            method: "prompt".into(),
            method_class: METHOD_CLASS.into(),
            max_act: 0.0,
            factors: vec![1.0],
            n_instructions: instructions.len(),
            n_generations: rows.len(),
            generated_tokens: tokens,
            seconds,
            skipped: None,
        };
        write_json(ctx, "steer.json", &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steered_input_is_axbench_shape() {
        assert_eq!(
            steered_instruction("Talk about cats.", "What is 2+2?"),
            " Talk about cats.\n\nQuestion: What is 2+2?"
        );
    }

    #[test]
    fn empty_or_missing_reply_falls_back() {
        assert_eq!(
            steering_prompt_from_reply(Some("  Mention cats.\n")),
            Some("Mention cats.".into())
        );
        assert_eq!(steering_prompt_from_reply(Some(" \n ")), None);
        assert_eq!(steering_prompt_from_reply(None), None);
    }
}
