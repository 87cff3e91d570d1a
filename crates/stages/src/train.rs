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
//!   weight), applied by `axbench.steer` through [`trained_generations`].
//!
//! How to wire it (pipelines): a `train` stage with `foreach = { concept = { from = "concepts" }, method = [...] }`,
//! `params = { dataset, concept, model, layer, device, dtype, method, config }` as the activations and fit stages;
//! ReFT-r1/SSV then feed `infer` (`inputs = { fit = "train", acts = "activations" }`) and `steer`
//! (`inputs = { fit = "train", scores = "infer" }`); LoReFT/LoRA/SFT feed `steer` with `inputs = { fit = "train" }`
//! only (no detection, no factor: steer generates once at factor 1).

use std::path::Path;
use std::time::Instant;

use axbench_engine::{InputArtifact, ParamSpec, ParamType, Stage, StageContext, StageError, Value};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::Hooks;
use axbench_models::lora::Lora;
use axbench_models::train::{TrainExample, TrainReport, Trainable, train};
use axbench_models::{LoadOptions, Model};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::activations::{LoadedModel, encode_row, template_lengths, with_model};
use super::concepts::check_dataset_dir;
use super::fit::{FitMeta, methods_config};
use super::steer::{
    Generated, GenerationRow, SteerMeta, SteerSettings, chat_prompt, generations_batch, perplexities, stop_tokens,
};
use super::{fail, read_json, write_json};
use axbench_data::dataset::{AxBenchData, training_set};
use axbench_data::tables;
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
    let stops = stop_tokens(m);
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
