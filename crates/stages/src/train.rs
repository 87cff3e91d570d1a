//! `axbench.train`: trains one method on one concept through the model (train.py for AxBench's non-binarized methods:
//! `LsReFT` = ReFT-r1, `SteeringVector` = SSV, `LoReFT`, `LoRA`, `SFT`) and stores the result as a cached artifact.
//!
//! Data (train.py `prepare_df` without `binarize_dataset`): the concept's training positives, plus the shared
//! negatives of its genre when the method trains on negatives (ReFT-r1 only), each as the chat prompt with the
//! generation prompt followed by the response; the LM loss covers the response tokens. Interventions apply to every
//! position after the chat-template prefix (ReFT-r1, SSV) or to the first and last 5 prompt positions (LoReFT);
//! LoRA and SFT change weights. Hyperparameters: `configs/methods.toml` plus `overrides`, like `axbench.fit`.
//!
//! Outputs:
//! * `train.json` ([`TrainMeta`]): losses per step, tokens/s, the layers and positions used;
//! * `fit.json` ([`FitMeta`]), so the node can stand where a fit node does (`inputs = { fit = "train" }`);
//! * ReFT-r1 and SSV: `detector.json` (a ReLU linear detector, scored by `axbench.infer`) and
//!   `direction.safetensors` (`w`, steered by `axbench.steer` like every direction);
//! * LoReFT, LoRA, SFT: `checkpoint.safetensors` (LoReFT `layers.{l}.{R,W,b}`, LoRA in peft's names, SFT every
//!   weight), applied by `axbench.steer` through [`super::checkpoint::trained_generations`].
//!
//! How to wire it (pipelines): a `train` stage with `foreach = { concept = { from = "concepts" }, method = [...] }`,
//! `params = { dataset, concept, model, layer, device, dtype, method, config }` as the activations and fit stages;
//! ReFT-r1/SSV then feed `infer` (`inputs = { fit = "train", acts = "activations" }`) and `steer`
//! (`inputs = { fit = "train", scores = "infer" }`); LoReFT/LoRA/SFT feed `steer` with `inputs = { fit = "train" }`
//! only (no detection, no factor: steer generates once at factor 1).

use std::path::Path;
use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError, Value};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::lora::Lora;
use axbench_models::train::{TrainExample, TrainReport, train};
use axbench_models::{LoadOptions, Model};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::activations::{encode_row, template_lengths};
use super::concepts::check_dataset_dir;
use super::fit::{FitMeta, methods_config};
use super::model_cache::{LoadedModel, with_model};

use super::{fail, write_json};
use axbench_data::dataset::{AxBenchData, training_set};
use axbench_methods::finetune::{LORA_NAME, LoraTrainable, SFT_NAME, Sft};
use axbench_methods::loreft::{self, Loreft};
use axbench_methods::reft_r1::{self, ReftR1};
use axbench_methods::ssv::{self, Ssv};
use axbench_methods::{FittedArtifact, MethodsConfig, TRAINED_METHODS};

pub struct Train;

/// User-facing names → AxBench class names of the trained methods.
pub fn trained_method_class(name: &str) -> Option<&'static str> {
    if let Some(c) = TRAINED_METHODS.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Some(c);
    }
    Some(match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "reft_r1" | "reft" | "lsreft" => reft_r1::NAME,
        "ssv" | "steering_vector" => ssv::NAME,
        "loreft" => loreft::NAME,
        "lora" => LORA_NAME,
        "sft" => SFT_NAME,
        _ => return None,
    })
}

/// The names [`trained_method_class`] knows, for errors.
pub const TRAINED_METHOD_NAMES: &str = "reft_r1, ssv, loreft, lora, sft (or LsReFT, SteeringVector, LoReFT, LoRA, SFT)";

/// `train.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainMeta {
    pub method: String,
    pub method_class: String,
    pub concept_id: i64,
    pub model: String,
    /// The pipeline's layer L (detection / steering layer).
    pub layer: i64,
    /// Layers the trained parameters act at.
    pub layers: Vec<usize>,
    /// `all` (after the chat prefix), `f{n}+l{n}` (prompt), or `weights`.
    pub positions: String,
    pub n_positive: usize,
    pub n_negative: usize,
    pub steps: usize,
    pub losses: Vec<f64>,
    pub tokens: usize,
    pub target_tokens: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// The method's hyperparameters as used.
    pub config: serde_json::Value,
    /// `direction` (ReFT-r1, SSV) or `checkpoint` (LoReFT, LoRA, SFT).
    pub artifact: String,
    /// LoReFT: the largest `|RᵀR − I|` entry of the stored `R`.
    pub orthonormality_error: Option<f64>,
}

fn param_err(name: &str, message: String) -> StageError {
    StageError::Param {
        name: name.into(),
        message,
    }
}

/// The concept's training examples as token ids, built from the dataset as train.py does without binarization.
pub struct ConceptExamples {
    pub examples: Vec<TrainExample>,
    pub n_positive: usize,
    pub n_negative: usize,
    pub genre: String,
}

/// Positive (and, with `negatives`, genre-negative) examples of `concept_id` (AxBench's `max_num_of_examples`: at
/// most half of it from each side); `positions(prompt_len, len)` is the
/// intervention mask of a row (or `None` for every position).
pub fn concept_examples(
    m: &LoadedModel,
    data: &AxBenchData,
    concept_id: i64,
    negatives: bool,
    max_examples: Option<usize>,
    positions: &dyn Fn(usize, usize) -> Option<Vec<bool>>,
) -> Result<ConceptExamples, StageError> {
    let c = data.concepts.iter().find(|c| c.id == concept_id).ok_or_else(|| {
        param_err(
            "concept",
            format!("no concept {concept_id} in the dataset's metadata.jsonl"),
        )
    })?;
    let ts = training_set(&data.train, c, max_examples).map_err(|e| fail("dataset", e))?;
    let (_, suffix) = template_lengths(m)?;
    let mut rows: Vec<&axbench_data::dataset::Example> = ts.positives.clone();
    if negatives {
        rows.extend(ts.negatives.iter().copied());
    }
    let mut examples = Vec::with_capacity(rows.len());
    for e in rows {
        let (ids, eval_len, prompt_len) = encode_row(m, suffix, &e.input, &e.output)?;
        if prompt_len >= eval_len {
            continue; // an empty response has nothing to predict
        }
        let ids: Vec<i64> = ids[..eval_len].iter().map(|&t| i64::from(t)).collect();
        let intervene = positions(prompt_len, ids.len());
        examples.push(TrainExample {
            ids,
            response_start: prompt_len,
            intervene,
        });
    }
    Ok(ConceptExamples {
        examples,
        n_positive: ts.positives.len(),
        n_negative: if negatives { ts.negatives.len() } else { 0 },
        genre: c.genre().to_owned(),
    })
}

/// Every position from `start` on (ReFT-r1, SSV: AxBench intervenes after the chat-template prefix).
fn after_prefix(start: usize) -> impl Fn(usize, usize) -> Option<Vec<bool>> {
    move |_, len| Some((0..len).map(|i| i >= start).collect())
}

/// What one training run produced, before it is written.
enum Trained {
    Direction {
        w: Tensor,
        relu_bias: f32,
    },
    Checkpoint {
        tensors: Vec<(String, Tensor)>,
        orthonormality_error: Option<f64>,
    },
}

struct Run {
    report: TrainReport,
    trained: Trained,
    layers: Vec<usize>,
    positions: String,
    config: serde_json::Value,
    n_positive: usize,
    n_negative: usize,
}

/// Trains `class` on concept `concept_id`. The model in `m` stays unchanged (SFT trains a private copy loaded from
/// `model_path`).
#[allow(clippy::too_many_arguments)]
fn run_training(
    ctx: &StageContext,
    m: &LoadedModel,
    model_path: &Path,
    opts: LoadOptions,
    data: &AxBenchData,
    concept_id: i64,
    class: &str,
    cfg: &MethodsConfig,
    layer: usize,
    max_examples: Option<usize>,
) -> Result<Run, StageError> {
    let d = m.model.info().hidden_size as i64;
    let device = m.model.device();
    let pad = m.model.info().pad_token_id.unwrap_or(0);
    let (prefix, _) = template_lengths(m)?;
    let on_step = &mut |s: &axbench_models::train::StepInfo| {
        if s.step == 1 {
            ctx.progress().set_length(s.total_steps as u64);
        }
        ctx.progress().inc(1);
        ctx.progress().set_message(format!("loss {:.4}", s.loss));
        !ctx.is_cancelled()
    };
    let terr = |e: axbench_models::train::TrainError| fail(class, e);
    match class {
        c if c == reft_r1::NAME => {
            let rc = &cfg.reft_r1;
            tch::manual_seed(rc.seed as i64);
            let ex = concept_examples(
                m,
                data,
                concept_id,
                rc.train_on_negative,
                max_examples,
                &after_prefix(prefix),
            )?;
            let iv = ReftR1::new(layer, d, rc, device);
            let report = train(&m.model, &iv, &ex.examples, &rc.train_config(), pad, on_step).map_err(terr)?;
            Ok(Run {
                report,
                trained: Trained::Direction {
                    w: iv.unit_w(),
                    relu_bias: 0.0,
                },
                layers: vec![layer],
                positions: "all".into(),
                config: json(rc),
                n_positive: ex.n_positive,
                n_negative: ex.n_negative,
            })
        }
        c if c == ssv::NAME => {
            let sc = &cfg.ssv;
            tch::manual_seed(sc.seed as i64);
            let ex = concept_examples(
                m,
                data,
                concept_id,
                sc.train_on_negative,
                max_examples,
                &after_prefix(prefix),
            )?;
            let iv = Ssv::new(layer, d, device);
            let report = train(&m.model, &iv, &ex.examples, &sc.train_config(), pad, on_step).map_err(terr)?;
            Ok(Run {
                report,
                trained: Trained::Direction {
                    w: iv.w.detach().to_device(Device::Cpu),
                    relu_bias: 0.0,
                },
                layers: vec![layer],
                positions: "all".into(),
                config: json(sc),
                n_positive: ex.n_positive,
                n_negative: ex.n_negative,
            })
        }
        c if c == loreft::NAME => {
            let lc = &cfg.loreft;
            let layers = checked_layers(&loreft::default_layers(&lc.reft_layers, layer), m)?;
            tch::manual_seed(lc.seed as i64);
            let (f, l) = (lc.first_n, lc.last_n);
            let ex = concept_examples(m, data, concept_id, false, max_examples, &move |p, len| {
                Some(loreft::prompt_positions(p, len, f, l))
            })?;
            let lo = Loreft::new(&layers, d, lc.low_rank_dimension, device);
            let report = train(&m.model, &lo, &ex.examples, &lc.train_config(), pad, on_step).map_err(terr)?;
            let err = lo.orthonormality_error();
            Ok(Run {
                report,
                trained: Trained::Checkpoint {
                    tensors: lo.named_tensors(),
                    orthonormality_error: Some(err),
                },
                layers,
                positions: format!("f{f}+l{l}"),
                config: json(lc),
                n_positive: ex.n_positive,
                n_negative: 0,
            })
        }
        c if c == LORA_NAME => {
            let lc = &cfg.lora;
            let layers = checked_layers(&loreft::default_layers(&lc.lora_layers, layer), m)?;
            tch::manual_seed(lc.seed as i64);
            let ex = concept_examples(m, data, concept_id, false, max_examples, &|_, _| None)?;
            let lora = LoraTrainable(Lora::new(&m.model, lc.lora_config(layers.clone())).map_err(|e| fail(class, e))?);
            let report = train(&m.model, &lora, &ex.examples, &lc.train_config(), pad, on_step).map_err(terr)?;
            Ok(Run {
                report,
                trained: Trained::Checkpoint {
                    tensors: lora.0.named_tensors(),
                    orthonormality_error: None,
                },
                layers,
                positions: "weights".into(),
                config: json(lc),
                n_positive: ex.n_positive,
                n_negative: 0,
            })
        }
        c if c == SFT_NAME => {
            let sc = &cfg.sft;
            tch::manual_seed(sc.seed as i64);
            let ex = concept_examples(m, data, concept_id, false, max_examples, &|_, _| None)?;
            // A private copy: the shared model must not change.
            let own = Model::load(model_path, &opts).map_err(|e| fail("model", e))?;
            let sft = Sft::new(&own);
            let report = train(&own, &sft, &ex.examples, &sc.train_config(), pad, on_step).map_err(terr)?;
            let tensors = sft
                .params
                .iter()
                .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
                .collect();
            let layers = (0..m.model.info().num_layers).collect();
            Ok(Run {
                report,
                trained: Trained::Checkpoint {
                    tensors,
                    orthonormality_error: None,
                },
                layers,
                positions: "weights".into(),
                config: json(sc),
                n_positive: ex.n_positive,
                n_negative: 0,
            })
        }
        other => Err(param_err(
            "method",
            format!("{other} is not a trained method; valid: {TRAINED_METHOD_NAMES}"),
        )),
    }
}

/// A method config as it goes into `train.json`.
fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn checked_layers(layers: &[usize], m: &LoadedModel) -> Result<Vec<usize>, StageError> {
    let n = m.model.info().num_layers;
    if let Some(l) = layers.iter().find(|&&l| l >= n) {
        return Err(param_err(
            "config",
            format!(
                "layer {l} is out of range: {} has layers 0..={} (set reft_layers / lora_layers)",
                m.name,
                n - 1
            ),
        ));
    }
    Ok(layers.to_vec())
}

impl Stage for Train {
    fn kind(&self) -> &str {
        "axbench.train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("dataset", ParamType::Path, "AxBench data directory"),
            ParamSpec::required("concept", ParamType::Int, "concept id"),
            ParamSpec::required(
                "model",
                ParamType::Path,
                "model: a .gguf file or an HF directory (hashed by content)",
            ),
            ParamSpec::required(
                "layer",
                ParamType::Int,
                "layer L: where ReFT-r1/SSV act, and the last default LoReFT/LoRA layer",
            ),
            ParamSpec::optional("device", ParamType::Str, "cpu", "cpu, cuda, cuda:N or auto"),
            ParamSpec::optional(
                "dtype",
                ParamType::Str,
                "f32",
                "f32 or bf16 (optimizer state stays f32; SFT keeps f32 master weights)",
            ),
            ParamSpec::required(
                "method",
                ParamType::Str,
                "trained method: reft_r1, ssv, loreft, lora, sft",
            ),
            ParamSpec::optional(
                "config",
                ParamType::Path,
                "configs/methods.toml",
                "method hyperparameters (TOML)",
            ),
            ParamSpec::optional(
                "overrides",
                ParamType::Any,
                Value::Table(Default::default()),
                "tables merged over the config, e.g. { LoReFT = { n_epochs = 2 } }",
            ),
            ParamSpec::optional(
                "max_examples",
                ParamType::Int,
                0,
                "AxBench's max_num_of_examples: at most N/2 positives and N/2 negatives (0: all)",
            ),
        ]
    }
    fn resources(&self) -> Vec<(&'static str, u32)> {
        vec![("model", 1)]
    }
    fn doc(&self) -> &str {
        "Trains ReFT-r1, SSV, LoReFT, LoRA or SFT on one concept through the model (direction or checkpoint)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let method = ctx.param_str("method")?.to_owned();
        let class = trained_method_class(&method).ok_or_else(|| {
            param_err(
                "method",
                format!("unknown trained method {method:?}; valid: {TRAINED_METHOD_NAMES}"),
            )
        })?;
        let config = methods_config(&ctx.param_path("config")?, ctx.param("overrides")?)?;
        let dir = ctx.param_path("dataset")?;
        check_dataset_dir(&dir)?;
        let concept_id = ctx.param_i64("concept")?;
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
        let layer = ctx.param_i64("layer")?;
        let device: DeviceSpec = ctx
            .param_str("device")?
            .parse()
            .map_err(|e| param_err("device", format!("{e}")))?;
        let dtype: DType = ctx
            .param_str("dtype")?
            .parse()
            .map_err(|e| param_err("dtype", format!("{e}")))?;
        let data = AxBenchData::open(&dir).map_err(|e| fail("dataset", e))?;
        let max_examples = match ctx.param_i64("max_examples")? {
            0 => None,
            n if n >= 2 => Some(n as usize),
            n => {
                return Err(param_err(
                    "max_examples",
                    format!("must be 0 (all) or at least 2, got {n}"),
                ));
            }
        };

        let t0 = Instant::now();
        let (run, model_name) = with_model(&model_path, device, dtype, |m| {
            let n = m.model.info().num_layers as i64;
            if layer < 0 || layer >= n {
                return Err(param_err(
                    "layer",
                    format!("{layer} is out of range: {} has layers 0..={}", m.name, n - 1),
                ));
            }
            let run = run_training(
                ctx,
                m,
                &model_path,
                LoadOptions { device, dtype },
                &data,
                concept_id,
                class,
                &config,
                layer as usize,
                max_examples,
            )?;
            Ok((run, m.name.clone()))
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let (first, last) = run.report.first_last_mean(3);
        ctx.log(format!(
            "{class} on concept {concept_id}: {} steps, loss {first:.4} -> {last:.4}, {} tokens in {:.1}s ({:.0} tokens/s)",
            run.report.steps,
            run.report.tokens,
            run.report.seconds,
            run.report.tokens_per_second()
        ));
        let mut meta = TrainMeta {
            method: method.clone(),
            method_class: class.to_owned(),
            concept_id,
            model: model_name.clone(),
            layer,
            layers: run.layers.clone(),
            positions: run.positions.clone(),
            n_positive: run.n_positive,
            n_negative: run.n_negative,
            steps: run.report.steps,
            losses: run.report.losses.clone(),
            tokens: run.report.tokens,
            target_tokens: run.report.target_tokens,
            tokens_per_s: run.report.tokens_per_second(),
            seconds,
            config: run.config.clone(),
            artifact: String::new(),
            orthonormality_error: None,
        };
        match run.trained {
            Trained::Direction { w, relu_bias } => {
                let p = ctx.output_path("direction.safetensors")?;
                Tensor::write_safetensors(
                    &[("w", w.shallow_clone()), ("bias", Tensor::from_slice(&[relu_bias]))],
                    &p,
                )
                .map_err(|e| fail(p.display(), e))?;
                let w: Vec<f32> = Vec::try_from(&w.to_kind(Kind::Float)).map_err(|e| fail(class, e))?;
                write_json(
                    ctx,
                    "detector.json",
                    &FittedArtifact::ReluLinear {
                        method: class.to_owned(),
                        w,
                        bias: relu_bias,
                    },
                )?;
                meta.artifact = "direction".into();
            }
            Trained::Checkpoint {
                tensors,
                orthonormality_error,
            } => {
                let p = ctx.output_path("checkpoint.safetensors")?;
                let tensors: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.contiguous())).collect();
                Tensor::write_safetensors(&tensors, &p).map_err(|e| fail(p.display(), e))?;
                meta.artifact = "checkpoint".into();
                meta.orthonormality_error = orthonormality_error;
            }
        }
        write_json(ctx, "train.json", &meta)?;
        write_json(
            ctx,
            "fit.json",
            &FitMeta {
                method,
                method_class: class.to_owned(),
                concept_id,
                model: model_name,
                layer,
                n_positive: run.n_positive,
                n_negative: run.n_negative,
                seconds,
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Steering with a trained checkpoint (called by axbench.steer).

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_map_to_axbench_classes() {
        for (short, class) in [
            ("reft_r1", "LsReFT"),
            ("ReFT-r1", "LsReFT"),
            ("ssv", "SteeringVector"),
            ("loreft", "LoReFT"),
            ("lora", "LoRA"),
            ("sft", "SFT"),
            ("LsReFT", "LsReFT"),
        ] {
            assert_eq!(trained_method_class(short), Some(class), "{short}");
        }
        assert_eq!(trained_method_class("diffmean"), None);
    }

    #[test]
    fn repo_config_has_the_trained_sections_with_axbench_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/methods.toml");
        let cfg = MethodsConfig::from_file(&path).unwrap();
        assert_eq!((cfg.reft_r1.topk, cfg.reft_r1.lr, cfg.reft_r1.n_epochs), (8, 0.01, 3));
        assert_eq!(
            (
                cfg.loreft.low_rank_dimension,
                cfg.loreft.batch_size,
                cfg.loreft.gradient_accumulation_steps
            ),
            (4, 18, 2)
        );
        assert_eq!((cfg.lora.lora_alpha, cfg.lora.rslora), (32.0, true));
        assert_eq!((cfg.sft.lr, cfg.sft.n_epochs), (4e-5, 8));
    }
}
