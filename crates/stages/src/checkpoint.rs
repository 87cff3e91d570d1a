//! Steering with a trained checkpoint (LoReFT, LoRA, SFT) instead of a direction: the checkpoint read back from
//! a train node, generation with it applied, and `axbench.steer`'s outputs for such a node.

use std::path::Path;
use std::time::Instant;

use axbench_engine::{InputArtifact, StageContext, StageError};
use axbench_models::generate::{GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::Hooks;
use axbench_models::lora::Lora;
use axbench_models::train::Trainable;
use axbench_models::{LoadOptions, Model};
use tch::{Device, Tensor};

use super::fit::FitMeta;
use super::generation::{
    Generated, GenerationRow, SteerMeta, SteerSettings, chat_prompt, generations_batch, perplexities,
};
use super::model_cache::{LoadedModel, with_model};
use super::train::TrainMeta;
use super::{fail, read_json, write_json};
use axbench_data::tables;
use axbench_methods::finetune::{LORA_NAME, SFT_NAME};
use axbench_methods::loreft::{self, Loreft};

/// A loaded LoReFT / LoRA / SFT checkpoint.
pub enum Checkpoint {
    Loreft {
        loreft: Loreft,
        first_n: usize,
        last_n: usize,
    },
    Lora(Lora),
    /// SFT: the finetuned weights by name.
    Sft(Vec<(String, Tensor)>),
}

impl Checkpoint {
    /// Reads the checkpoint of a train node (`train.json` + `checkpoint.safetensors`); `None` when the artifact is not
    /// one (a fit node, or ReFT-r1/SSV, which steer through `direction.safetensors`).
    pub fn from_input(art: &InputArtifact, device: Device) -> Result<Option<Self>, StageError> {
        let (Some(meta_p), Some(ck)) = (art.files.get("train.json"), art.files.get("checkpoint.safetensors")) else {
            return Ok(None);
        };
        let meta: TrainMeta = read_json(meta_p)?;
        let named = Tensor::read_safetensors(ck).map_err(|e| fail(ck.display(), e))?;
        let bad = |e: String| fail(ck.display(), e);
        Ok(Some(match meta.method_class.as_str() {
            c if c == loreft::NAME => {
                let cfg: loreft::LoreftConfig =
                    serde_json::from_value(meta.config.clone()).map_err(|e| fail(meta_p.display(), e))?;
                Checkpoint::Loreft {
                    loreft: Loreft::from_named(&named, &meta.layers, device).map_err(bad)?,
                    first_n: cfg.first_n,
                    last_n: cfg.last_n,
                }
            }
            c if c == LORA_NAME => {
                let cfg: axbench_methods::finetune::LoraMethodConfig =
                    serde_json::from_value(meta.config.clone()).map_err(|e| fail(meta_p.display(), e))?;
                Checkpoint::Lora(
                    Lora::load(ck, cfg.lora_config(meta.layers.clone()), device).map_err(|e| fail(ck.display(), e))?,
                )
            }
            c if c == SFT_NAME => Checkpoint::Sft(named),
            other => {
                return Err(fail(
                    meta_p.display(),
                    format!("method_class {other:?} has no checkpoint to steer with"),
                ));
            }
        }))
    }
}

/// Generates for `instructions` with a trained checkpoint applied (LoReFT on each prompt's `f5+l5` positions and not
/// on generated tokens, as pyreft generates; LoRA on every position; SFT with the finetuned weights in a private copy
/// of the model), sampled as `axbench.steer` samples. Returns the generations and the number of generated tokens.
pub fn trained_generations(
    m: &LoadedModel,
    model_path: &Path,
    opts: LoadOptions,
    ck: &Checkpoint,
    instructions: &[String],
    s: &SteerSettings,
) -> Result<(Vec<Generated>, usize), StageError> {
    let _g = tch::no_grad_guard();
    let stops = m.stop_tokens.clone();
    let sampling = if s.temperature > 0.0 {
        Sampling::full(s.temperature)
    } else {
        Sampling::Greedy
    };
    let sft_model = match ck {
        Checkpoint::Sft(named) => Some(load_sft(model_path, opts, named)?),
        _ => None,
    };
    let model = sft_model.as_ref().unwrap_or(&m.model);
    let mut out = Vec::with_capacity(instructions.len());
    let mut n_tokens = 0;
    for (chunk_index, chunk) in instructions.chunks(s.batch_size.max(1)).enumerate() {
        let mut prompts: Vec<Prompt> = chunk
            .iter()
            .map(|i| chat_prompt(m, i).map(Prompt::from))
            .collect::<Result<_, _>>()?;
        let hooks = match ck {
            Checkpoint::Loreft {
                loreft,
                first_n,
                last_n,
            } => {
                for p in &mut prompts {
                    p.intervene_on = Some(loreft::prompt_positions(p.ids.len(), p.ids.len(), *first_n, *last_n));
                }
                loreft.attach(Hooks::none()).prompt_only()
            }
            Checkpoint::Lora(l) => l.attach(Hooks::none()),
            Checkpoint::Sft(_) => Hooks::none(),
        };
        // Seeded per chunk exactly as `axbench.steer` does, so trained and direction methods draw the same streams.
        let cfg = GenerateConfig {
            max_new_tokens: s.max_new_tokens,
            sampling,
            seed: s.seed.wrapping_add(chunk_index as u64),
            stop_tokens: stops.clone(),
            pad_token_id: 0,
        };
        let gens = generate(model, &prompts, &cfg, &hooks).map_err(|e| fail("generate", e))?;
        for (g, p) in gens.into_iter().zip(prompts) {
            n_tokens += g.tokens.len();
            let tokens: Vec<i64> = g.tokens.into_iter().filter(|t| !stops.contains(t)).collect();
            let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
            let text = m.tokenizer.decode(&ids, true).map_err(|e| fail("decode", e))?;
            out.push(Generated {
                text,
                prompt_ids: p.ids,
                tokens,
            });
        }
    }
    Ok((out, n_tokens))
}

/// `axbench.steer` for a train node holding a checkpoint (LoReFT, LoRA, SFT): one generation per instruction at
/// factor 1 (AxBench steers these methods without a factor), perplexity under the unsteered model, the same
/// `generations.parquet` and `steer.json` as direction methods. Returns `Ok(false)` when `fit` holds no checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn steer_with_checkpoint(
    ctx: &mut StageContext,
    fit_art: &InputArtifact,
    fit: &FitMeta,
    model_path: &Path,
    opts: LoadOptions,
    instructions: &[String],
    s: &SteerSettings,
) -> Result<bool, StageError> {
    if !fit_art.files.contains_key("checkpoint.safetensors") {
        return Ok(false);
    }
    let t0 = Instant::now();
    ctx.progress().set_length(instructions.len() as u64);
    let (gens, tokens, name) = with_model(model_path, opts.device, opts.dtype, |m| {
        let ck = Checkpoint::from_input(fit_art, m.model.device())?
            .ok_or_else(|| fail(&fit.method, "no train.json beside checkpoint.safetensors"))?;
        let (g, tokens) = trained_generations(m, model_path, opts, &ck, instructions, s)?;
        let texts: Vec<String> = g.iter().map(|g| g.full_text(m)).collect::<Result<_, _>>()?;
        let ppl = perplexities(m, &texts)?;
        ctx.progress().inc(g.len() as u64);
        Ok((g.into_iter().zip(ppl).collect::<Vec<_>>(), tokens, m.name.clone()))
    })?;
    let rows: Vec<GenerationRow> = instructions
        .iter()
        .zip(gens)
        .enumerate()
        .map(|(k, (instr, (g, perplexity)))| GenerationRow {
            concept_id: fit.concept_id,
            method: fit.method_class.clone(),
            factor: 1.0,
            input_id: k as i64,
            instruction: instr.clone(),
            generation: g.text,
            strength: 1.0,
            perplexity,
        })
        .collect();
    let seconds = t0.elapsed().as_secs_f64();
    ctx.log(format!(
        "{} ({}): {} generations, {tokens} tokens in {seconds:.1}s",
        fit.method_class,
        "trained checkpoint",
        rows.len()
    ));
    let meta = SteerMeta {
        model: name,
        layer: s.layer as i64,
        concept_id: fit.concept_id,
        method: fit.method.clone(),
        method_class: fit.method_class.clone(),
        max_act: 1.0,
        factors: vec![1.0],
        n_instructions: instructions.len(),
        n_generations: rows.len(),
        generated_tokens: tokens,
        seconds,
        skipped: None,
    };
    let batch = generations_batch(&rows)?;
    tables::write_parquet_atomic(&ctx.output_path("generations.parquet")?, &batch)
        .map_err(|e| fail("generations", e))?;
    write_json(ctx, "steer.json", &meta)?;
    Ok(true)
}

/// A private copy of the model with SFT's weights copied in; errors name the missing or misshapen tensor.
pub fn load_sft(model_path: &Path, opts: LoadOptions, named: &[(String, Tensor)]) -> Result<Model, StageError> {
    let model = Model::load(model_path, &opts).map_err(|e| fail("model", e))?;
    let _g = tch::no_grad_guard();
    for (name, mut t) in model.parameters() {
        let src = named
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| fail("SFT checkpoint", format!("missing tensor `{name}`")))?;
        if src.size() != t.size() {
            return Err(fail(
                "SFT checkpoint",
                format!(
                    "tensor `{name}` has shape {:?}, the model has {:?}",
                    src.size(),
                    t.size()
                ),
            ));
        }
        t.copy_(&src.to_kind(t.kind()).to_device(t.device()));
    }
    Ok(model)
}
