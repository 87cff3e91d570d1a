//! `axbench.steer`: steered generation for one concept with one method (inference.py `--mode steering`,
//! `predict_steer` with the "addition" intervention).
//!
//! * **Direction**: the concept's fitted direction (`w` of the fit node's `direction.safetensors`), scaled to unit
//!   norm, as AxBench's DiffMean/PCA/LAT/probe steering does (`h + alpha * w / |w|`).
//! * **Magnitude**: `strength = factor * max_act`, where `max_act` is the largest `max_act` over the concept's
//!   latent eval rows in the infer node's `scores.parquet` (`pre_compute_mean_activations`); a value ≤ 0 (or NaN)
//!   becomes 50, as AxBench does.
//! * **Where**: added to layer L's output at every position, during the prefill and every generated token.
//! * **Instructions**: an AlpacaEval-format file (a JSON list of `{"instruction": ...}`, or one such object per
//!   line); per concept `per_concept` of them are drawn with an RNG seeded by the concept id (AxBench:
//!   `sample(10, random_state=concept_id)`), numbered `input_id` 0.. in draw order. `input_id < n/2` is the factor
//!   selection half, the rest the test half (see `axbench.aggregate`).
//! * **Generation**: the raw instruction in the model's chat template with the generation prompt, sampled with
//!   `temperature` (0 = greedy) and `seed`, up to `max_new_tokens`. Rows are batched per factor, so an instruction
//!   gets the same random stream at every factor: factor 0 reproduces the unsteered model exactly, and differences
//!   between factors come from steering, not from sampling noise.
//!
//! * **Perplexity**: each generation's perplexity under the *unsteered* model, as AxBench's `predict_steer` computes
//!   it ([`perplexities`]): prompt and generation decoded without special tokens, re-tokenized (with BOS), mean
//!   next-token cross-entropy over every token after the first, exponentiated. The prompting baseline
//!   ([`super::prompt_steer`]) scores the generation alone, as AxBench's `PromptSteering` does.
//!
//! Methods without a linear direction (BoW) write an empty table and say so in `steer.json`.
//!
//! Outputs `generations.parquet` ([`generations_schema`]) and `steer.json` ([`SteerMeta`]).

use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError, Value};
use tch::Tensor;

use super::fit::FitMeta;
use super::generation::{
    Generation, GenerationRow, SteerMeta, chat_prompt, generate_steered, generation_params, generations_batch,
    perplexities, pick_instructions, read_generation,
};
use super::infer::read_scores;
use super::model_cache::with_model;
use super::{fail, read_json, write_json};
use axbench_data::tables;

pub struct Steer;

/// AxBench's fallback magnitude when a concept's max activation is not positive.
pub const DEFAULT_MAX_ACT: f64 = 50.0;

/// The paper's factor grid (Gemma-2 2B/9B runs): 0.2..2.0 step 0.2, then 2.5, 3, 4, 5.
pub const PAPER_FACTORS: [f64; 14] = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0];

/// AxBench's magnitude base: the largest finite `max_act`; ≤ 0 or none → [`DEFAULT_MAX_ACT`].
pub fn steering_max_act(max_acts: impl IntoIterator<Item = f64>) -> f64 {
    let m = max_acts
        .into_iter()
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if m > 0.0 { m } else { DEFAULT_MAX_ACT }
}

/// `w / |w|` from a fit node's `direction.safetensors`; `None` when the method wrote no direction.
pub fn unit_direction(fit: &axbench_engine::InputArtifact) -> Result<Option<Vec<f32>>, StageError> {
    let Some(p) = fit.files.get("direction.safetensors") else {
        return Ok(None);
    };
    let tensors = Tensor::read_safetensors(p).map_err(|e| fail(p.display(), e))?;
    let w = tensors
        .iter()
        .find(|(n, _)| n == "w")
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| fail(p.display(), "no tensor `w`"))?;
    let w: Vec<f32> = Vec::try_from(&w.to_kind(tch::Kind::Float).flatten(0, -1)).map_err(|e| fail(p.display(), e))?;
    let norm = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(fail(
            p.display(),
            format!("direction `w` has norm {norm}: cannot steer along it"),
        ));
    }
    Ok(Some(w.iter().map(|x| (*x as f64 / norm) as f32).collect()))
}

/// The `factors` param as numbers.
fn factors_param(v: &Value) -> Result<Vec<f64>, StageError> {
    let bad = |m: String| StageError::Param {
        name: "factors".into(),
        message: m,
    };
    let Value::List(items) = v else {
        return Err(bad(format!("expected a list of numbers, got {v}")));
    };
    let fs: Vec<f64> = items
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| bad(format!("{x} is not a number"))))
        .collect::<Result<_, _>>()?;
    if fs.is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(fs)
}

impl Stage for Steer {
    fn kind(&self) -> &str {
        "axbench.steer"
    }
    fn version(&self) -> u32 {
        3
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut params = generation_params();
        params.extend([
            ParamSpec::required("layer", ParamType::Int, "layer whose output the vector is added to"),
            ParamSpec::optional(
                "factors",
                ParamType::List,
                Value::List(vec![
                    Value::Float(0.0),
                    Value::Float(0.5),
                    Value::Float(1.0),
                    Value::Float(2.0),
                ]),
                "steering factors (strength = factor x max activation); the paper: 0.2..2.0 step 0.2, 2.5, 3, 4, 5",
            ),
        ]);
        params
    }
    fn resources(&self) -> Vec<(&'static str, u32)> {
        vec![("model", 1)]
    }
    fn doc(&self) -> &str {
        "Steered generations for one concept and method: unit direction x factor x max activation added at layer L"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let Generation {
            model_path,
            load,
            instructions: all,
            per_concept,
            mut settings,
        } = read_generation(ctx)?;
        let layer = ctx.param_i64("layer")?;
        settings.layer = usize::try_from(layer).map_err(|_| StageError::Param {
            name: "layer".into(),
            message: format!("must be ≥ 0, got {layer}"),
        })?;
        let factors = factors_param(ctx.param("factors")?)?;

        let fit_art = ctx.input("fit")?.clone();
        let fit: FitMeta = read_json(fit_art.file("fit.json")?)?;
        // --- trained checkpoints (axbench.train: LoReFT, LoRA, SFT steer without a factor or scores) ---
        let picked = pick_instructions(&all, fit.concept_id, per_concept);
        if super::checkpoint::steer_with_checkpoint(ctx, &fit_art, &fit, &model_path, load, &picked, &settings)? {
            return Ok(());
        }
        // --- end trained checkpoints ---
        let scores = read_scores(ctx.input("scores")?.file("scores.parquet")?)?;
        if let Some(s) = scores.iter().find(|s| s.concept_id != fit.concept_id) {
            return Err(StageError::msg(format!(
                "direction of concept {} given scores of concept {}",
                fit.concept_id, s.concept_id
            )));
        }
        let max_act = steering_max_act(scores.iter().map(|s| s.max_act));
        let instructions = pick_instructions(&all, fit.concept_id, per_concept);
        let direction = unit_direction(&fit_art)?;
        let mut meta = SteerMeta {
            model: fit.model.clone(),
            layer,
            concept_id: fit.concept_id,
            method: fit.method.clone(),
            method_class: fit.method_class.clone(),
            max_act,
            factors: factors.clone(),
            n_instructions: instructions.len(),
            n_generations: 0,
            generated_tokens: 0,
            seconds: 0.0,
            skipped: None,
        };
        let mut rows = Vec::new();
        match direction {
            None => {
                meta.skipped = Some(format!(
                    "{} has no steering direction (no direction.safetensors)",
                    fit.method_class
                ));
                ctx.log(meta.skipped.clone().unwrap());
            }
            Some(dir) => {
                let t0 = Instant::now();
                ctx.progress().set_length((factors.len() * instructions.len()) as u64);
                let (gens, tokens, name) = with_model(&model_path, load.device, load.dtype, |m| {
                    let n_layers = m.model.info().num_layers;
                    if settings.layer >= n_layers {
                        return Err(StageError::Param {
                            name: "layer".into(),
                            message: format!("{layer} is out of range: {} has layers 0..={}", m.name, n_layers - 1),
                        });
                    }
                    let prompts: Vec<Vec<i64>> = instructions
                        .iter()
                        .map(|i| chat_prompt(m, i))
                        .collect::<Result<_, _>>()?;
                    let mut all = Vec::new();
                    let mut tokens = 0;
                    for &f in &factors {
                        ctx.check_cancelled()?;
                        let (g, t) = generate_steered(m, &prompts, Some(&dir), f * max_act, &settings)?;
                        let texts: Vec<String> = g.iter().map(|g| g.full_text(m)).collect::<Result<_, _>>()?;
                        let ppl = perplexities(m, &texts)?;
                        ctx.progress().inc(g.len() as u64);
                        tokens += t;
                        all.push(g.into_iter().zip(ppl).collect::<Vec<_>>());
                    }
                    Ok((all, tokens, m.name.clone()))
                })?;
                meta.model = name;
                for (&f, g) in factors.iter().zip(gens) {
                    for (k, (instr, (g, perplexity))) in instructions.iter().zip(g).enumerate() {
                        rows.push(GenerationRow {
                            concept_id: fit.concept_id,
                            method: fit.method_class.clone(),
                            factor: f,
                            input_id: k as i64,
                            instruction: instr.clone(),
                            generation: g.text,
                            strength: f * max_act,
                            perplexity,
                        });
                    }
                }
                meta.generated_tokens = tokens;
                meta.seconds = t0.elapsed().as_secs_f64();
                ctx.log(format!(
                    "{} generations, {tokens} tokens in {:.1}s ({:.1} tokens/s)",
                    rows.len(),
                    meta.seconds,
                    tokens as f64 / meta.seconds.max(1e-9)
                ));
            }
        }
        meta.n_generations = rows.len();
        let batch = generations_batch(&rows)?;
        tables::write_parquet_atomic(&ctx.output_path("generations.parquet")?, &batch)
            .map_err(|e| fail("generations", e))?;
        write_json(ctx, "steer.json", &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{load_instructions, pick_instructions, read_generations};
    use std::path::Path;

    #[test]
    fn max_act_falls_back_to_50_when_not_positive() {
        assert_eq!(steering_max_act([1.5, 3.0, f64::NAN, 2.0]), 3.0);
        assert_eq!(steering_max_act([-1.0, 0.0]), DEFAULT_MAX_ACT);
        assert_eq!(steering_max_act([]), DEFAULT_MAX_ACT);
    }

    #[test]
    fn instructions_pick_is_seeded_by_concept_and_distinct() {
        let all: Vec<String> = (0..30).map(|i| format!("instruction {i}")).collect();
        let a = pick_instructions(&all, 3, 10);
        assert_eq!(a, pick_instructions(&all, 3, 10));
        assert_ne!(a, pick_instructions(&all, 4, 10));
        let set: std::collections::BTreeSet<_> = a.iter().collect();
        assert_eq!(set.len(), 10);
        assert_eq!(pick_instructions(&all, 3, 100).len(), 30);
    }

    #[test]
    fn instruction_files_json_and_jsonl_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.json");
        std::fs::write(&j, r#"[{"instruction": "a", "dataset": "x"}, {"instruction": "b"}]"#).unwrap();
        assert_eq!(load_instructions(&j).unwrap(), vec!["a", "b"]);
        let l = dir.path().join("a.jsonl");
        std::fs::write(&l, "{\"instruction\": \"a\"}\n\n{\"instruction\": \"c\"}\n").unwrap();
        assert_eq!(load_instructions(&l).unwrap(), vec!["a", "c"]);
        std::fs::write(&l, "{\"instruction\": \"a\"}\n{\"prompt\": \"c\"}\n").unwrap();
        let e = load_instructions(&l).unwrap_err().to_string();
        assert!(
            e.contains("entry 1") && e.contains("instruction") && e.contains("a.jsonl"),
            "{e}"
        );
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/instructions/demo.json");
        assert!(load_instructions(&demo).unwrap().len() >= 20);
    }

    #[test]
    fn generations_table_round_trips() {
        let rows = vec![GenerationRow {
            concept_id: 2,
            method: "DiffMean".into(),
            factor: 0.5,
            input_id: 3,
            instruction: "hi".into(),
            generation: "hello".into(),
            strength: 7.5,
            perplexity: 12.25,
        }];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.parquet");
        tables::write_parquet_atomic(&p, &generations_batch(&rows).unwrap()).unwrap();
        assert_eq!(read_generations(&p).unwrap(), rows);
    }
}
