//! What every generating stage shares (`axbench.steer`, `axbench.prompt_steer`, checkpoint steering in
//! [`super::checkpoint`], the synthesis stage's target model): the `generations.parquet` table, the instruction
//! set and its per-concept draw, the generation params and their reader, chat prompts, batched steered generation
//! and AxBench's perplexity.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use axbench_engine::{ParamSpec, ParamType, StageContext, StageError};
use axbench_models::chat::Message;
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::{AddVectors, Hooks};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::fail;
use super::model_cache::LoadedModel;
use axbench_data::tables;

/// `generations.parquet` columns.
pub mod col {
    pub const CONCEPT_ID: &str = "concept_id";
    pub const METHOD: &str = "method";
    pub const FACTOR: &str = "factor";
    pub const INPUT_ID: &str = "input_id";
    pub const INSTRUCTION: &str = "instruction";
    pub const GENERATION: &str = "generation";
    pub const STRENGTH: &str = "strength";
    pub const PERPLEXITY: &str = "perplexity";
}

/// Schema of `generations.parquet`: one row per (factor, instruction).
pub fn generations_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CONCEPT_ID, DataType::Int64, false),
        Field::new(col::METHOD, DataType::Utf8, false),
        Field::new(col::FACTOR, DataType::Float64, false),
        Field::new(col::INPUT_ID, DataType::Int64, false),
        Field::new(col::INSTRUCTION, DataType::Utf8, false),
        Field::new(col::GENERATION, DataType::Utf8, false),
        Field::new(col::STRENGTH, DataType::Float64, false),
        Field::new(col::PERPLEXITY, DataType::Float64, false),
    ]))
}

/// One steered generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRow {
    pub concept_id: i64,
    /// AxBench class name (`DiffMean`).
    pub method: String,
    pub factor: f64,
    pub input_id: i64,
    pub instruction: String,
    pub generation: String,
    /// `factor * max_act`: the norm of the added vector.
    pub strength: f64,
    /// Perplexity under the unsteered model ([`perplexities`]); NaN when the text has fewer than two tokens.
    pub perplexity: f64,
}

pub fn generations_batch(rows: &[GenerationRow]) -> Result<RecordBatch, StageError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.concept_id))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.method.as_str()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.factor))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.input_id))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.instruction.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.generation.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.strength))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.perplexity))),
    ];
    RecordBatch::try_new(generations_schema(), columns).map_err(|e| fail("generations", e))
}

/// Reads `generations.parquet`; errors name the file and column.
pub fn read_generations(path: &Path) -> Result<Vec<GenerationRow>, StageError> {
    let batch = tables::read_parquet(path).map_err(|e| fail("generations", e))?;
    let f64col = |name: &str| -> Result<Float64Array, StageError> {
        let schema = batch.schema();
        let i = schema
            .index_of(name)
            .map_err(|_| fail(path.display(), format!("no column `{name}`")))?;
        batch
            .column(i)
            .as_any()
            .downcast_ref::<Float64Array>()
            .cloned()
            .ok_or_else(|| fail(path.display(), format!("column `{name}` is not float64")))
    };
    let s = |name| tables::string_column(&batch, path, name).map_err(|e| fail("generations", e));
    let i = |name| tables::int64_column(&batch, path, name).map_err(|e| fail("generations", e));
    let (concept, method, factor, input, instr, gen_, strength, ppl) = (
        i(col::CONCEPT_ID)?,
        s(col::METHOD)?,
        f64col(col::FACTOR)?,
        i(col::INPUT_ID)?,
        s(col::INSTRUCTION)?,
        s(col::GENERATION)?,
        f64col(col::STRENGTH)?,
        f64col(col::PERPLEXITY)?,
    );
    Ok((0..batch.num_rows())
        .map(|k| GenerationRow {
            concept_id: concept.value(k),
            method: method.value(k).to_owned(),
            factor: factor.value(k),
            input_id: input.value(k),
            instruction: instr.value(k).to_owned(),
            generation: gen_.value(k).to_owned(),
            strength: strength.value(k),
            perplexity: ppl.value(k),
        })
        .collect())
}

/// `steer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SteerMeta {
    pub model: String,
    pub layer: i64,
    pub concept_id: i64,
    pub method: String,
    pub method_class: String,
    /// Max activation the factors multiply (after the ≤ 0 → 50 rule).
    pub max_act: f64,
    pub factors: Vec<f64>,
    pub n_instructions: usize,
    pub n_generations: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    /// Set when the method has no steering direction (the table is empty).
    pub skipped: Option<String>,
}

/// Reads an instruction file: a JSON array of objects with a string `instruction` (AlpacaEval's
/// `alpaca_eval.json`), or JSON lines of such objects. Errors name the file and the entry.
pub fn load_instructions(path: &Path) -> Result<Vec<String>, StageError> {
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let entries: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| fail(path.display(), e))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| serde_json::from_str(l).map_err(|e| fail(format!("{}:{}", path.display(), n + 1), e)))
            .collect::<Result<_, _>>()?
    };
    let out: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.get("instruction")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
                .ok_or_else(|| fail(path.display(), format!("entry {i}: no string field `instruction`")))
        })
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err(fail(path.display(), "no instructions"));
    }
    Ok(out)
}

/// The concept's instructions: `n` of `all` (all of them if fewer), drawn without replacement by an RNG
/// seeded with the concept id, in draw order (`input_id` = position).
pub fn pick_instructions(all: &[String], concept_id: i64, n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(concept_id as u64);
    rand::seq::index::sample(&mut rng, all.len(), n.min(all.len()))
        .into_iter()
        .map(|i| all[i].clone())
        .collect()
}

/// Generation settings shared by every row of a steer node.
#[derive(Debug, Clone)]
pub struct SteerSettings {
    pub layer: usize,
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
    pub batch_size: usize,
}

/// The params `axbench.steer` and `axbench.prompt_steer` share: the model to generate with and how.
/// One list, so the two stages cannot drift apart in names, defaults or meaning (a pipeline sets
/// them once for both).
pub(crate) fn generation_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::required(
            "model",
            ParamType::Path,
            "model to steer: a .gguf file or an HF directory (hashed by content)",
        ),
        ParamSpec::optional("device", ParamType::Str, "cpu", "cpu, cuda, cuda:N or auto"),
        ParamSpec::optional("dtype", ParamType::Str, "f32", "f32 or bf16"),
        ParamSpec::optional(
            "instructions",
            ParamType::Path,
            "configs/instructions/demo.json",
            "instruction file: JSON list of {\"instruction\": ...} (AlpacaEval) or JSON lines",
        ),
        ParamSpec::optional(
            "per_concept",
            ParamType::Int,
            10,
            "instructions per concept (first half selects the factor, second half tests)",
        ),
        ParamSpec::optional(
            "temperature",
            ParamType::Float,
            1.0,
            "sampling temperature of the steered model (AxBench: 1.0); 0 = greedy",
        ),
        ParamSpec::optional(
            "max_new_tokens",
            ParamType::Int,
            32,
            "tokens per generation (AxBench: 128)",
        ),
        ParamSpec::optional("seed", ParamType::Int, 42, "sampling seed"),
        ParamSpec::optional("batch_size", ParamType::Int, 10, "prompts per generation batch"),
    ]
}

/// What [`generation_params`] say, read and checked.
pub(crate) struct Generation {
    pub model_path: std::path::PathBuf,
    pub load: axbench_models::LoadOptions,
    /// Every instruction of the file; [`pick_instructions`] chooses a concept's.
    pub instructions: Vec<String>,
    pub per_concept: usize,
    /// `layer` is 0: the stage that steers at a layer sets it.
    pub settings: SteerSettings,
}

pub(crate) fn read_generation(ctx: &StageContext) -> Result<Generation, StageError> {
    let param_err = |name: &str, message: String| StageError::Param {
        name: name.into(),
        message,
    };
    let model_path = ctx.param_path("model")?;
    if !model_path.exists() {
        return Err(param_err(
            "model",
            format!(
                "{} does not exist (a .gguf file or an HF model directory)",
                model_path.display()
            ),
        ));
    }
    let device: DeviceSpec = ctx
        .param_str("device")?
        .parse()
        .map_err(|e| param_err("device", format!("{e}")))?;
    let dtype: DType = ctx
        .param_str("dtype")?
        .parse()
        .map_err(|e| param_err("dtype", format!("{e}")))?;
    let instructions = load_instructions(&ctx.param_path("instructions")?)?;
    let per_concept = ctx.param_i64("per_concept")?;
    if per_concept < 1 {
        return Err(param_err(
            "per_concept",
            format!("must be at least 1, got {per_concept}"),
        ));
    }
    let max_new_tokens = ctx.param_i64("max_new_tokens")?;
    if max_new_tokens < 1 {
        return Err(param_err(
            "max_new_tokens",
            format!("must be at least 1, got {max_new_tokens}"),
        ));
    }
    let settings = SteerSettings {
        layer: 0,
        max_new_tokens: max_new_tokens as usize,
        temperature: ctx.param_f64("temperature")?,
        seed: ctx.param_i64("seed")? as u64,
        batch_size: ctx.param_i64("batch_size")?.max(1) as usize,
    };
    Ok(Generation {
        model_path,
        load: axbench_models::LoadOptions { device, dtype },
        instructions,
        per_concept: per_concept as usize,
        settings,
    })
}

/// Token ids of `instruction` as a one-turn chat prompt with the generation prompt.
pub fn chat_prompt(m: &LoadedModel, instruction: &str) -> Result<Vec<i64>, StageError> {
    let ids = m
        .template
        .encode(&m.tokenizer, &[Message::user(instruction)], true)
        .map_err(|e| fail("chat template", e))?;
    Ok(ids.into_iter().map(i64::from).collect())
}

/// One generation with what its perplexity is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The new tokens decoded, special tokens dropped.
    pub text: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<i64>,
    /// The new tokens, stop tokens removed.
    pub tokens: Vec<i64>,
}

impl Generated {
    /// AxBench's perplexity text for steered generations: prompt and generation decoded together without special
    /// tokens (`decode(generation, skip_special_tokens=True)` over the whole output sequence).
    pub fn full_text(&self, m: &LoadedModel) -> Result<String, StageError> {
        let ids: Vec<u32> = self.prompt_ids.iter().chain(&self.tokens).map(|&t| t as u32).collect();
        m.tokenizer.decode(&ids, true).map_err(|e| fail("decode", e))
    }
}

/// Generates from token-id `prompts` with `direction * strength` added at `settings.layer` (every position, prompt
/// and generated tokens), in chunks of `batch_size`. `direction: None` runs the unsteered model. Returns the
/// generations and the number of generated tokens (stop tokens included).
pub fn generate_steered(
    m: &LoadedModel,
    prompts: &[Vec<i64>],
    direction: Option<&[f32]>,
    strength: f64,
    s: &SteerSettings,
) -> Result<(Vec<Generated>, usize), StageError> {
    let stops = m.stop_tokens.clone();
    let sampling = if s.temperature > 0.0 {
        Sampling::full(s.temperature)
    } else {
        Sampling::Greedy
    };
    let mut out = Vec::with_capacity(prompts.len());
    let mut n_tokens = 0;
    for (chunk_index, chunk) in prompts.chunks(s.batch_size.max(1)).enumerate() {
        let batch: Vec<Prompt> = chunk.iter().cloned().map(Prompt::from).collect();
        let cfg = GenerateConfig {
            max_new_tokens: s.max_new_tokens,
            sampling,
            // Depends on the chunk, not the factor: the same instruction draws the same stream at every factor.
            seed: s.seed.wrapping_add(chunk_index as u64),
            stop_tokens: stops.clone(),
            pad_token_id: 0,
        };
        let iv = direction.map(|d| {
            let on_model = |t: Tensor| t.to_device(m.model.device()).to_kind(m.model.kind());
            AddVectors::new(
                on_model(Tensor::from_slice(d)),
                on_model(Tensor::from_slice(&[strength as f32])),
            )
        });
        let hooks = match &iv {
            Some(iv) => Hooks::none().intervene(s.layer, iv),
            None => Hooks::none(),
        };
        let gens = generate(&m.model, &batch, &cfg, &hooks).map_err(|e| fail("generate", e))?;
        for (g, prompt_ids) in gens.into_iter().zip(chunk) {
            n_tokens += g.tokens.len();
            let tokens: Vec<i64> = g.tokens.into_iter().filter(|t| !stops.contains(t)).collect();
            let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
            let text = m.tokenizer.decode(&ids, true).map_err(|e| fail("decode", e))?;
            out.push(Generated {
                text,
                prompt_ids: prompt_ids.clone(),
                tokens,
            });
        }
    }
    Ok((out, n_tokens))
}

/// [`generate_steered`] on `instructions`, each as a one-turn chat prompt; returns the texts.
pub fn steered_generations(
    m: &LoadedModel,
    instructions: &[String],
    direction: Option<&[f32]>,
    strength: f64,
    s: &SteerSettings,
) -> Result<(Vec<String>, usize), StageError> {
    let prompts: Vec<Vec<i64>> = instructions
        .iter()
        .map(|i| chat_prompt(m, i))
        .collect::<Result<_, _>>()?;
    let (gens, n) = generate_steered(m, &prompts, direction, strength, s)?;
    Ok((gens.into_iter().map(|g| g.text).collect(), n))
}

/// Perplexity of each text under the unsteered model, as AxBench computes it after steering (`Model.predict_steer`,
/// `PromptSteering.predict_steer`): the text is tokenized with the tokenizer's special tokens (Gemma: BOS first), and
/// the perplexity is `exp(mean cross-entropy of tokens 1.. given the tokens before them)`. AxBench runs a left-padded
/// batch through a plain forward pass, which shifts the positions of every row but the longest; we score each text
/// as if alone (right-padded batches, [`axbench_models::score`]), which is what AxBench computes for the longest row. NaN for a text of fewer than two tokens (AxBench: 0/0).
pub fn perplexities(m: &LoadedModel, texts: &[String]) -> Result<Vec<f64>, StageError> {
    let rows: Vec<Vec<i64>> = texts
        .iter()
        .map(|text| {
            let ids = m
                .tokenizer
                .encode(text, true)
                .map_err(|e| fail("perplexity: tokenize", e))?;
            Ok(ids.into_iter().map(i64::from).collect())
        })
        .collect::<Result<_, StageError>>()?;
    perplexities_of_ids(m, &rows)
}

/// Rows × longest row per perplexity forward pass: about 1 GB of f32 logits at Gemma's vocabulary.
const PERPLEXITY_BATCH_POSITIONS: usize = 1024;

/// `exp(mean cross-entropy of ids[1..] given the ids before them)` per row under the unsteered model, batched
/// (`axbench_models::score`); NaN for fewer than two ids (see [`perplexities`]).
pub fn perplexities_of_ids(m: &LoadedModel, rows: &[Vec<i64>]) -> Result<Vec<f64>, StageError> {
    let nll = axbench_models::score::mean_nll(&m.model, rows, PERPLEXITY_BATCH_POSITIONS)
        .map_err(|e| fail("perplexity: forward", e))?;
    Ok(nll.into_iter().map(f64::exp).collect())
}

/// [`perplexities_of_ids`] of one row.
pub fn perplexity_of_ids(m: &LoadedModel, ids: &[i64]) -> Result<f64, StageError> {
    Ok(perplexities_of_ids(m, &[ids.to_vec()])?[0])
}
