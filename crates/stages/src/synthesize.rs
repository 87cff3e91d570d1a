//! `axbench.synthesize`: AxBench's data generation (generate.py `--mode training` and `--mode latent`) as one stage,
//! around the [`axbench_lm::synth`] library: concepts from a Neuronpedia export (`.json`), a `concept,url` `.csv` or a
//! `.txt`; per concept its genre, training positives, contrast concepts and the latent eval set (36 positives, 36
//! negatives spread 26/5/5 over text/math/code, one hard negative per contrast concept); the shared negatives
//! answered by the model we plan to steer.
//!
//! Two models take part, as in AxBench:
//! * the **data-generation LM** (AxBench: gpt-4o-mini) writes positives, negatives and hard negatives: the shared LM
//!   params ([`super::lm_stage`]: `backend`, `model`, `base_url`, `temperature`, ...), through the cached client, so
//!   a rerun never pays twice;
//! * the **target model** (`target`, a `.gguf` or HF directory: the model the pipeline will read and steer) answers
//!   the shared negatives greedily with up to `1.5 × output_length` new tokens, and its tokenizer cuts every LM
//!   response to `output_length` tokens (AxBench: `tokenize(text)[:output_length]`).
//!
//! Outputs AxBench's released layout, so the detection stages read it like the released data:
//! `train_data.parquet` (shared negatives first, then each concept's positives; columns `input, output,
//! output_concept, concept_genre, category, dataset_category, concept_id`), `latent_eval_data.parquet` (the same plus
//! `sae_link, sae_id`), `metadata.jsonl` (`concept_id, concept, ref, concept_genres_map`) and `synth.json`
//! ([`SynthMeta`]: failed/refused calls, LM stats).
//!
//! How to wire it: bind the node as input `dataset` of `axbench.concepts` and `axbench.activations` (they then ignore
//! their `dataset` param), e.g.
//!
//! ```toml
//! [stages.synthesize]
//! kind = "axbench.synthesize"
//! params = { concepts = "configs/concepts/demo.csv", target = "${model.path}", backend = "local" }
//! [stages.concepts]
//! kind = "axbench.concepts"
//! inputs = { dataset = "synthesize" }
//! [stages.activations]
//! kind = "axbench.activations"
//! foreach = { concept = { from = "concepts" } }
//! inputs = { dataset = "synthesize" }
//! params = { concept = "${concept}", model = "${model.path}", layer = "${model.layer}" }
//! ```
//!
//! (`pipelines/synthesize.toml` is the whole graph: synthesis, then detection on the synthesized data.)

use std::path::PathBuf;
use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::Hooks;
use serde::{Deserialize, Serialize};

use super::generation::chat_prompt;
use super::lm_stage::{LmDefaults, build_lm, check_failed_calls, lm_params, runtime};
use super::model_cache::with_model;
use super::{fail, write_json};
use axbench_data::dataset::{Category, Example};
use axbench_data::prompts::PromptSet;
use axbench_data::tables;
use axbench_lm::synth::{
    self, ConceptMetadata, ResponseGenerator, Row, SeedInstructions, SynthConfig, SynthReport, Synthesizer, Truncate,
};
use axbench_lm::{BoxFuture, LmStats};

pub struct Synthesize;

/// `synth.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthMeta {
    pub n_concepts: usize,
    pub n_train: usize,
    pub n_latent_eval: usize,
    /// Dropped rows: failed or refused LM calls, seed pools too small.
    pub report: SynthReport,
    /// Data-generation LM calls: count, cache hits, retries, tokens, cost.
    pub calls: LmStats,
    /// The data-generation LM, in words.
    pub lm: String,
    /// The target model's file or directory name.
    pub target: String,
    pub seconds: f64,
}

/// The target model answering the shared negatives (AxBench `get_model_continues`: chat template, greedy).
struct TargetModel {
    path: PathBuf,
    device: DeviceSpec,
    dtype: DType,
    max_new_tokens: usize,
}

impl ResponseGenerator for TargetModel {
    fn generate<'a>(&'a self, instructions: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            // The model runs on this worker thread; the negatives come before any LM call, so nothing waits on it.
            tokio::task::block_in_place(|| {
                with_model(&self.path, self.device, self.dtype, |m| {
                    let stops = m.stop_tokens.clone();
                    let cfg = GenerateConfig {
                        max_new_tokens: self.max_new_tokens,
                        sampling: Sampling::Greedy,
                        seed: 0,
                        stop_tokens: stops.clone(),
                        pad_token_id: 0,
                    };
                    let mut texts = Vec::with_capacity(instructions.len());
                    // AxBench answers in batches of 8 (left padding); greedy decoding makes the batching invisible.
                    for chunk in instructions.chunks(8) {
                        let prompts = chunk
                            .iter()
                            .map(|i| chat_prompt(m, i).map(Prompt::from))
                            .collect::<Result<Vec<_>, _>>()?;
                        for g in generate(&m.model, &prompts, &cfg, &Hooks::none()).map_err(|e| fail("generate", e))? {
                            let ids: Vec<u32> = g
                                .tokens
                                .iter()
                                .filter(|t| !stops.contains(t))
                                .map(|&t| t as u32)
                                .collect();
                            texts.push(m.tokenizer.decode(&ids, true).map_err(|e| fail("decode", e))?);
                        }
                    }
                    Ok(texts)
                })
                .map_err(|e| e.to_string())
            })
        })
    }
}

/// AxBench's truncation to `n` tokens of the target model's tokenizer (special tokens neither added nor kept);
/// `n = 0` keeps the text whole.
fn truncation(tokenizer: axbench_models::tokenizer::Tokenizer, n: usize) -> Truncate {
    if n == 0 {
        return synth::no_truncation();
    }
    std::sync::Arc::new(move |s: &str| match tokenizer.encode(s, false) {
        Ok(ids) if ids.len() > n => tokenizer.decode(&ids[..n], false).unwrap_or_else(|_| s.to_owned()),
        _ => s.to_owned(),
    })
}

/// A synthesized row as a [`axbench_data::dataset::Example`]; eval rows carry the concept's Neuronpedia link and feature.
pub fn to_example(r: &Row, metadata: &[ConceptMetadata], eval: bool) -> Result<Example, StageError> {
    let category = Category::parse(&r.category)
        .ok_or_else(|| StageError::msg(format!("synthesized row with category {:?}", r.category)))?;
    let reference = metadata
        .iter()
        .find(|m| m.concept_id == r.concept_id)
        .map(|m| m.reference.clone())
        .filter(|r| r.starts_with("http"));
    let sae_id = reference
        .as_deref()
        .and_then(|r| r.trim_end_matches('/').rsplit('/').next()?.parse().ok());
    Ok(Example {
        input: r.input.clone(),
        output: r.output.clone(),
        output_concept: r.output_concept.clone(),
        concept_genre: r.concept_genre.clone(),
        category,
        dataset_category: r.dataset_category.clone(),
        concept_id: r.concept_id,
        sae_link: if eval { reference } else { None },
        sae_id: if eval { sae_id } else { None },
    })
}

/// `metadata.jsonl`: one JSON object a line.
pub fn metadata_jsonl(metadata: &[ConceptMetadata]) -> Result<String, StageError> {
    let mut out = String::new();
    for m in metadata {
        out.push_str(&serde_json::to_string(m).map_err(|e| fail("metadata", e))?);
        out.push('\n');
    }
    Ok(out)
}

fn non_negative(ctx: &StageContext, name: &str) -> Result<usize, StageError> {
    let v = ctx.param_i64(name)?;
    usize::try_from(v).map_err(|_| StageError::Param {
        name: name.into(),
        message: format!("must be >= 0, got {v}"),
    })
}

impl Stage for Synthesize {
    fn kind(&self) -> &str {
        "axbench.synthesize"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![
            ParamSpec::required(
                "concepts",
                ParamType::Path,
                "concept list: a Neuronpedia explanations export (.json), a concept,url .csv, or a .txt with one concept a line",
            ),
            ParamSpec::optional(
                "max_concepts",
                ParamType::Int,
                0,
                "shuffle the concepts with data_seed and keep the first N (0: all, in file order)",
            ),
            ParamSpec::optional(
                "num_of_examples",
                ParamType::Int,
                144,
                "training examples per concept: half are positives; the shared negatives are half of it per genre",
            ),
            ParamSpec::optional(
                "latent_num_of_examples",
                ParamType::Int,
                36,
                "latent eval positives (and negatives) per concept",
            ),
            ParamSpec::optional(
                "output_length",
                ParamType::Int,
                128,
                "LM responses are cut to this many target-model tokens (0: not cut); negatives get 1.5x new tokens",
            ),
            ParamSpec::optional(
                "data_seed",
                ParamType::Int,
                42,
                "seeds concept selection and instruction sampling",
            ),
            ParamSpec::optional(
                "seeds",
                ParamType::Path,
                "configs/seed_instructions.jsonl",
                "seed instructions by genre and split",
            ),
            ParamSpec::optional(
                "prompts",
                ParamType::Path,
                "configs/prompts",
                "prompt template directory",
            ),
            ParamSpec::required(
                "target",
                ParamType::Path,
                "the model to steer (a .gguf file or an HF directory): answers the shared negatives; its tokenizer cuts responses",
            ),
            ParamSpec::optional("target_device", ParamType::Str, "cpu", "cpu, cuda, cuda:N or auto"),
            ParamSpec::optional("target_dtype", ParamType::Str, "f32", "f32 or bf16"),
        ];
        p.extend(lm_params(LmDefaults {
            model: "default-instruct",
            temperature: 1.0,
            max_tokens: 0,
            role: "data-generation temperature (AxBench: gpt-4o-mini at 1.0)",
        }));
        p
    }
    fn resources(&self) -> Vec<(&'static str, u32)> {
        vec![("model", 1)]
    }
    fn doc(&self) -> &str {
        "AxBench data synthesis: genres, positives, shared negatives, contrast concepts, latent eval set (train_data.parquet, latent_eval_data.parquet, metadata.jsonl)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let t0 = Instant::now();
        let concepts_path = ctx.param_path("concepts")?;
        let all = synth::load_concepts(&concepts_path).map_err(|e| StageError::Param {
            name: "concepts".into(),
            message: e.to_string(),
        })?;
        let max = non_negative(ctx, "max_concepts")?;
        let seed = ctx.param_i64("data_seed")? as u64;
        let concepts = synth::select_concepts(all, (max > 0).then_some(max), seed);
        let config = SynthConfig {
            num_of_examples: non_negative(ctx, "num_of_examples")?,
            latent_num_of_examples: non_negative(ctx, "latent_num_of_examples")?,
            seed,
        };
        let output_length = non_negative(ctx, "output_length")?;
        let seeds = SeedInstructions::load(&ctx.param_path("seeds")?).map_err(|e| StageError::Param {
            name: "seeds".into(),
            message: e.to_string(),
        })?;
        let prompts = PromptSet::load(&ctx.param_path("prompts")?).map_err(|e| StageError::Param {
            name: "prompts".into(),
            message: e.to_string(),
        })?;

        let target = TargetModel {
            path: ctx.param_path("target")?,
            device: ctx.param_str("target_device")?.parse().map_err(|e| StageError::Param {
                name: "target_device".into(),
                message: format!("{e}"),
            })?,
            dtype: ctx.param_str("target_dtype")?.parse().map_err(|e| StageError::Param {
                name: "target_dtype".into(),
                message: format!("{e}"),
            })?,
            max_new_tokens: (output_length.max(1) as f64 * 1.5) as usize,
        };
        if !target.path.exists() {
            return Err(StageError::Param {
                name: "target".into(),
                message: format!(
                    "{} does not exist (a .gguf file or an HF model directory)",
                    target.path.display()
                ),
            });
        }
        let tokenizer = with_model(&target.path, target.device, target.dtype, |m| Ok(m.tokenizer.clone()))?;
        let lm = build_lm(ctx)?;
        let synthesizer = Synthesizer {
            client: &lm.client,
            prompts: &prompts,
            seeds: &seeds,
            model: lm.model_id.clone(),
            params: lm.params.clone(),
            truncate: truncation(tokenizer, output_length),
        };
        ctx.progress()
            .set_message(format!("{} concepts through {}", concepts.len(), lm.describe));
        let out = runtime()?
            .block_on(synth::synthesize(&synthesizer, &target, &concepts, &config))
            .map_err(|e| fail("synthesis", e))?;
        check_failed_calls(ctx, &lm.client.stats(), &[])?;

        let train = out
            .train
            .iter()
            .map(|r| to_example(r, &out.metadata, false))
            .collect::<Result<Vec<_>, _>>()?;
        let eval = out
            .latent_eval
            .iter()
            .map(|r| to_example(r, &out.metadata, true))
            .collect::<Result<Vec<_>, _>>()?;
        let write = |name: &str, rows: &[Example], with_sae: bool| -> Result<(), StageError> {
            let batch = axbench_data::dataset::examples_to_batch(rows, with_sae).map_err(|e| fail(name, e))?;
            tables::write_parquet_atomic(&ctx.output_path(name)?, &batch).map_err(|e| fail(name, e))
        };
        write(axbench_data::dataset::AxBenchData::TRAIN, &train, false)?;
        write(axbench_data::dataset::AxBenchData::EVAL, &eval, true)?;
        ctx.write_output(
            axbench_data::dataset::AxBenchData::METADATA,
            metadata_jsonl(&out.metadata)?.as_bytes(),
        )?;
        let meta = SynthMeta {
            n_concepts: out.metadata.len(),
            n_train: train.len(),
            n_latent_eval: eval.len(),
            report: out.report.clone(),
            calls: lm.client.stats(),
            lm: lm.describe.clone(),
            target: super::model_cache::model_name(&target.path),
            seconds: t0.elapsed().as_secs_f64(),
        };
        ctx.log(format!(
            "{} concepts: {} train rows, {} latent eval rows; {} failed and {} refused LM calls, {} missing seed instructions",
            meta.n_concepts, meta.n_train, meta.n_latent_eval, meta.report.failed_calls, meta.report.refused_calls, meta.report.missing_seed_instructions
        ));
        write_json(ctx, "synth.json", &meta)
    }
}
