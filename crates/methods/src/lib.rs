//! Concept-detection methods behind one trait and a name-keyed registry, as AxBench's `axbench/models/*.py` do them.
//! Imports `axbench-data` and `axbench-models` only: a method sees activations, texts and a model, never the engine.
//!
//! A method is fitted on one concept's binarized training set (72 positives + 72 genre-matched negatives) and gives a
//! [`Detector`] that scores examples. Most methods read **per-token activations** of the residual stream at the
//! concept's layer, already cut to the tokens AxBench scores (after the chat-template prefix, see
//! [`TokenActivations`]); BoW reads **texts**; ReFT-r1 and prompt detection will need the **model** itself
//! ([`ModelHandle`]), which is why [`FitInput`] carries all three as options and [`Needs`] says which a method reads.
//!
//! Scoring follows `Model.predict_latent`: a score per token, rounded to 3 decimals, max-pooled per example with the
//! first maximum's index ([`pool_max`]). A method's per-example scores then go to [`axbench_data::metrics`].
//!
//! | name (AxBench class)       | file          | fit                                              | detect            |
//! |----------------------------|---------------|--------------------------------------------------|-------------------|
//! | `DiffMean`                 | diffmean.rs   | mean(pos tokens) - mean(neg tokens), unit norm   | h·w               |
//! | `PCA`                      | pca.rs        | first PC of positive tokens (sklearn sign)        | h·w               |
//! | `LAT`                      | lat.rs        | first PC of normalised random-pair differences    | h·w               |
//! | `LinearProbe`              | probe.rs      | token BCE(sigmoid(h·w)), AdamW, W kept unit norm  | h·w               |
//! | `LinearProbeStable`        | probe.rs      | same with BCE-with-logits (no saturation)         | h·w               |
//! | `BoW`                      | bow.rs        | CountVectorizer + L2 logistic regression (L-BFGS) | P(positive)       |
//! | `GemmaScopeSAE`            | sae.rs        | the concept's own SAE feature                     | JumpReLU act      |
//! | `GemmaScopeSAEMaxAUC`      | sae.rs        | feature with best train AUROC of max-pooled acts  | JumpReLU act      |
//!
//! Trained through the model by `axbench.train` (not fitted on activations; [`TRAINED_METHODS`]):
//!
//! | name (AxBench class)       | file          | trains                                           | detect / steer    |
//! |----------------------------|---------------|--------------------------------------------------|-------------------|
//! | `LsReFT` (ReFT-r1)         | reft_r1.rs    | `w`: LM loss + ramped L1 of non-top-k latents     | ReLU(h·w) / add w |
//! | `SteeringVector` (SSV)     | ssv.rs        | `h + w` at layer L, LM loss on positives          | ReLU(h·w) / add w |
//! | `LoReFT`                   | loreft.rs     | `h + Rᵀ(Wh + b − Rh)`, rank 4, f5+l5, 4 layers    | — / checkpoint    |
//! | `LoRA`, `SFT`              | finetune.rs   | rsLoRA on o_proj; every weight                    | — / checkpoint    |
//!
//! Hyperparameters live in `configs/methods.toml` ([`MethodsConfig`]).

/// `train_config()` for a trained method's hyperparameter table: every such table (SSV, ReFT-r1, LoReFT, LoRA, SFT)
/// names its optimizer fields as AxBench's configs do (`n_epochs`, `batch_size`, `gradient_accumulation_steps`, `lr`,
/// `weight_decay`, `max_grad_norm`, `seed`), so one mapping onto the model runtime's [`TrainConfig`] serves them all.
macro_rules! impl_train_config {
    ($config:ty) => {
        impl $config {
            pub fn train_config(&self) -> axbench_models::train::TrainConfig {
                axbench_models::train::TrainConfig {
                    epochs: self.n_epochs,
                    batch_size: self.batch_size,
                    grad_accum: self.gradient_accumulation_steps,
                    lr: self.lr,
                    weight_decay: self.weight_decay,
                    max_grad_norm: Some(self.max_grad_norm),
                    seed: self.seed,
                    ..Default::default()
                }
            }
        }
    };
}
pub(crate) use impl_train_config;

pub mod bow;
mod config;
pub mod diffmean;
pub mod finetune;
pub mod lat;
pub mod loreft;
pub mod pca;
pub mod probe;
pub mod reft_r1;
pub mod sae;
pub mod ssv;

use std::collections::BTreeMap;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

pub use config::{BowConfig, ConfigError, LatConfig, MethodsConfig, ProbeConfig, SaeConfig};

use axbench_data::dataset::Concept;

/// Errors fitting or applying a method.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("{method}: needs {what}, which the caller did not provide")]
    MissingInput { method: &'static str, what: &'static str },
    #[error("{method}: {message}")]
    Invalid { method: &'static str, message: String },
    #[error("unknown detection method {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("{method}: torch: {source}")]
    Torch {
        method: &'static str,
        source: tch::TchError,
    },
}

impl MethodError {
    pub(crate) fn invalid(method: &'static str, message: impl Into<String>) -> Self {
        MethodError::Invalid {
            method,
            message: message.into(),
        }
    }
}

/// Per-token activations of a list of examples: all scored tokens concatenated in example order.
///
/// Example `i` owns rows `offsets[i]..offsets[i + 1]` of `acts`. The rows are the tokens AxBench reads: for
/// inference and DiffMean/PCA/LAT, those after `prefix_length` (the chat-template prefix, e.g. 4 tokens for Gemma);
/// for the probe, those after BOS (its data module keeps the default prefix of 1). The caller cuts; methods use every
/// row they get.
#[derive(Debug)]
pub struct TokenActivations {
    /// `[n_tokens, d]`, float, on the CPU.
    pub acts: Tensor,
    pub offsets: Vec<usize>,
}

impl TokenActivations {
    /// Checks the shape and offsets (non-decreasing, from 0 to `n_tokens`).
    pub fn new(acts: Tensor, offsets: Vec<usize>) -> Result<Self, MethodError> {
        let bad = |m: String| MethodError::invalid("activations", m);
        if acts.dim() != 2 {
            return Err(bad(format!(
                "expected [n_tokens, d] activations, got shape {:?}",
                acts.size()
            )));
        }
        let n = acts.size()[0] as usize;
        if offsets.first() != Some(&0) || offsets.last() != Some(&n) || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad(format!("offsets must rise from 0 to n_tokens = {n}")));
        }
        Ok(Self { acts, offsets })
    }

    /// Concatenates one `[n_tokens_i, d]` tensor per example.
    pub fn from_examples(examples: &[Tensor]) -> Result<Self, MethodError> {
        let mut offsets = vec![0];
        for e in examples {
            offsets.push(offsets.last().unwrap() + e.size()[0] as usize);
        }
        Self::new(Tensor::cat(examples, 0), offsets)
    }

    pub fn n_examples(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn n_tokens(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    pub fn dim(&self) -> i64 {
        self.acts.size()[1]
    }

    /// Tokens of example `i`.
    pub fn example(&self, i: usize) -> Tensor {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        self.acts.narrow(0, a as i64, (b - a) as i64)
    }

    /// Every example's label repeated over its tokens.
    pub fn token_labels(&self, labels: &[bool]) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.n_tokens());
        for (i, l) in labels.iter().enumerate() {
            out.extend(std::iter::repeat_n(*l, self.offsets[i + 1] - self.offsets[i]));
        }
        out
    }

    /// Rows of the tokens whose example label is `label`, in order.
    pub fn tokens_with_label(&self, labels: &[bool], label: bool) -> Tensor {
        let idx: Vec<i64> = self
            .token_labels(labels)
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == label)
            .map(|(i, _)| i as i64)
            .collect();
        self.acts.index_select(0, &Tensor::from_slice(&idx))
    }
}

/// Access to the language model for methods that train through it (ReFT-r1: an intervention trained with the LM
/// loss) or prompt it (prompt detection). The model runtime implements this; a method downcasts through
/// [`ModelHandle::as_any`] to the runtime type it knows, so this module does not depend on the runtime.
pub trait ModelHandle: Send + Sync {
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a method reads when fitting and scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub activations: bool,
    pub texts: bool,
    pub model: bool,
}

/// One concept's training data in the forms methods read. `labels[i]` is example i's label (1 = positive).
#[derive(Clone, Copy)]
pub struct FitInput<'a> {
    pub labels: &'a [bool],
    pub activations: Option<&'a TokenActivations>,
    /// The chat-templated texts (BoW), one per example.
    pub texts: Option<&'a [String]>,
    pub model: Option<&'a dyn ModelHandle>,
    /// The concept being fitted (the SAE method reads its feature from `ref`).
    pub concept: Option<&'a Concept>,
}

impl<'a> FitInput<'a> {
    /// Input for activation-based methods.
    pub fn activations(labels: &'a [bool], acts: &'a TokenActivations) -> Self {
        Self {
            labels,
            activations: Some(acts),
            texts: None,
            model: None,
            concept: None,
        }
    }

    pub(crate) fn require_activations(&self, method: &'static str) -> Result<&'a TokenActivations, MethodError> {
        let acts = self.activations.ok_or(MethodError::MissingInput {
            method,
            what: "per-token activations",
        })?;
        if acts.n_examples() != self.labels.len() {
            return Err(MethodError::invalid(
                method,
                format!(
                    "{} labels for {} examples of activations",
                    self.labels.len(),
                    acts.n_examples()
                ),
            ));
        }
        if !self.labels.iter().any(|l| *l) || self.labels.iter().all(|l| *l) {
            return Err(MethodError::invalid(
                method,
                "training set needs both positive and negative examples",
            ));
        }
        Ok(acts)
    }
}

/// What a detector scores: the eval examples' activations and/or texts.
#[derive(Clone, Copy, Default)]
pub struct ScoreInput<'a> {
    pub activations: Option<&'a TokenActivations>,
    pub texts: Option<&'a [String]>,
}

/// One example's detection score.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleScore {
    /// Max-pooled token score (AxBench `{Model}_max_act`), or the example score for methods without token scores.
    pub max_act: f64,
    /// Index of the first token reaching `max_act`; `None` without token scores.
    pub max_act_idx: Option<usize>,
    /// Per-token scores rounded to 3 decimals (AxBench `{Model}_acts`); empty without token scores.
    pub acts: Vec<f32>,
}

/// `round(x, 3)` as Python does it on the float32 score: `x * 1000` is exact in f64 for any f32 `x` (24 + 10
/// significant bits), so rounding half to even there and dividing back gives the float nearest to Python's result.
pub fn round3(x: f32) -> f64 {
    (x as f64 * 1000.0).round_ties_even() / 1000.0
}

/// Rounds per-token scores to 3 decimals and max-pools each example (first maximum wins), like `predict_latent`.
/// An example without tokens is an error (AxBench's `max([])` would raise).
pub fn pool_max(
    token_scores: &[f32],
    offsets: &[usize],
    method: &'static str,
) -> Result<Vec<ExampleScore>, MethodError> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for (i, w) in offsets.windows(2).enumerate() {
        let acts: Vec<f32> = token_scores[w[0]..w[1]].iter().map(|x| round3(*x) as f32).collect();
        let rounded: Vec<f64> = token_scores[w[0]..w[1]].iter().map(|x| round3(*x)).collect();
        let Some(first) = rounded.first() else {
            return Err(MethodError::invalid(
                method,
                format!("example {i} has no tokens to score"),
            ));
        };
        let (mut idx, mut max) = (0, *first);
        for (j, v) in rounded.iter().enumerate() {
            if *v > max {
                (idx, max) = (j, *v);
            }
        }
        out.push(ExampleScore {
            max_act: max,
            max_act_idx: Some(idx),
            acts,
        });
    }
    Ok(out)
}

/// A fitted detector, in a form that can be saved and reloaded with [`FittedArtifact::into_detector`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FittedArtifact {
    /// `score = h·w + bias` (DiffMean, PCA, LAT, probes); `w` is also the steering direction.
    Linear { method: String, w: Vec<f32>, bias: f32 },
    /// A JumpReLU SAE feature: its index in the SAE and, when saved by a fit, its own parameters (without them the
    /// SAE must be in [`MethodResources`]).
    SaeFeature {
        method: String,
        feature: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<sae::PrunedFeature>,
    },
    /// Bag-of-words logistic regression.
    Bow(bow::BowModel),
    /// `score = ReLU(h·w + bias)` (ReFT-r1, SSV: trained by `axbench.train`); `w` is also the steering direction.
    ReluLinear { method: String, w: Vec<f32>, bias: f32 },
}

impl FittedArtifact {
    /// Rebuilds the detector; SAE features saved without their parameters need `resources.sae`.
    pub fn into_detector(self, resources: &MethodResources) -> Result<Box<dyn Detector>, MethodError> {
        Ok(match self {
            FittedArtifact::Linear { method, w, bias } => {
                Box::new(LinearDetector::new(leak_name(&method), Tensor::from_slice(&w), bias))
            }
            FittedArtifact::SaeFeature {
                method,
                feature,
                params: Some(p),
            } => Box::new(sae::SaeFeatureDetector::from_pruned(leak_name(&method), feature, &p)?),
            FittedArtifact::SaeFeature {
                method,
                feature,
                params: None,
            } => {
                let name = leak_name(&method);
                let sae = resources.sae.clone().ok_or(MethodError::MissingInput {
                    method: name,
                    what: "SAE params",
                })?;
                Box::new(sae::SaeFeatureDetector::new(name, sae, feature)?)
            }
            FittedArtifact::Bow(m) => Box::new(m),
            FittedArtifact::ReluLinear { method, w, bias } => {
                Box::new(LinearDetector::new(leak_name(&method), Tensor::from_slice(&w), bias).with_relu())
            }
        })
    }
}

/// Method names are `&'static str` in errors; map a loaded name back to the registry's static one.
fn leak_name(name: &str) -> &'static str {
    Registry::builtin()
        .canonical(name)
        .or_else(|| TRAINED_METHODS.iter().find(|m| **m == name).copied())
        .unwrap_or("loaded")
}

/// Methods trained through the model by the `axbench.train` stage (AxBench class names), not fitted on activations.
pub const TRAINED_METHODS: [&str; 5] = [
    reft_r1::NAME,
    ssv::NAME,
    loreft::NAME,
    finetune::LORA_NAME,
    finetune::SFT_NAME,
];

/// A fitted detector for one concept. `Send` but not `Sync`: it may hold tensors, which tch makes `Send` only.
pub trait Detector: Send {
    fn method(&self) -> &'static str;

    /// Scores examples: per-token scores max-pooled, or one score per text.
    fn score(&self, input: &ScoreInput<'_>) -> Result<Vec<ExampleScore>, MethodError>;

    /// The direction read for detection (`w` of `h·w`; the SAE encoder column), if the method has one.
    fn detection_direction(&self) -> Option<Tensor>;

    /// The direction AxBench adds for steering (`w` itself for DiffMean/PCA/LAT/probe; `W_dec[f]` for the SAE).
    fn steering_direction(&self) -> Option<Tensor> {
        self.detection_direction()
    }

    fn artifact(&self) -> FittedArtifact;
}

/// A detection method: fitted per concept.
pub trait DetectionMethod: Send + Sync {
    /// AxBench's class name (`DiffMean`, `LinearProbe`, ...).
    fn name(&self) -> &'static str;
    fn needs(&self) -> Needs;
    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError>;
}

/// `score = h·w + bias` per token: DiffMean, PCA, LAT and the probes (AxBench's `LogisticRegressionModel.proj` /
/// `ProbeIntervention` with one row; the bias is 0 for all of them).
pub struct LinearDetector {
    method: &'static str,
    w: Tensor,
    bias: f32,
    /// ReFT-r1 / SSV latents: `ReLU(h·w + bias)`.
    relu: bool,
}

impl LinearDetector {
    pub fn new(method: &'static str, w: Tensor, bias: f32) -> Self {
        Self {
            method,
            w: w.to_kind(Kind::Float).to_device(Device::Cpu).reshape([-1]),
            bias,
            relu: false,
        }
    }

    /// Scores `ReLU(h·w + bias)` instead (ReFT-r1 and SSV detect with the ReLU'd latent).
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    pub fn w(&self) -> &Tensor {
        &self.w
    }

    /// Raw per-token scores `[n_tokens]` as f32.
    pub fn token_scores(&self, acts: &TokenActivations) -> Result<Vec<f32>, MethodError> {
        if acts.dim() != self.w.size()[0] {
            return Err(MethodError::invalid(
                self.method,
                format!(
                    "activations have d = {}, direction has d = {}",
                    acts.dim(),
                    self.w.size()[0]
                ),
            ));
        }
        let mut s = acts.acts.to_kind(Kind::Float).matmul(&self.w) + self.bias as f64;
        if self.relu {
            s = s.relu();
        }
        Vec::<f32>::try_from(&s).map_err(|source| MethodError::Torch {
            method: self.method,
            source,
        })
    }
}

impl Detector for LinearDetector {
    fn method(&self) -> &'static str {
        self.method
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Vec<ExampleScore>, MethodError> {
        let acts = input.activations.ok_or(MethodError::MissingInput {
            method: self.method,
            what: "per-token activations",
        })?;
        pool_max(&self.token_scores(acts)?, &acts.offsets, self.method)
    }

    fn detection_direction(&self) -> Option<Tensor> {
        Some(self.w.shallow_clone())
    }

    fn artifact(&self) -> FittedArtifact {
        let (method, w, bias) = (
            self.method.to_owned(),
            Vec::<f32>::try_from(&self.w).expect("1-d float"),
            self.bias,
        );
        if self.relu {
            FittedArtifact::ReluLinear { method, w, bias }
        } else {
            FittedArtifact::Linear { method, w, bias }
        }
    }
}

/// AxBench's `set_decoder_norm_to_unit_norm`: `w / (||w|| + eps)` with float32's epsilon, so a zero vector stays 0.
pub fn unit_norm(w: &Tensor) -> Tensor {
    let w = w.to_kind(Kind::Float);
    let norm = w.norm().double_value(&[]);
    w / (norm + f32::EPSILON as f64)
}

/// Shared things some methods need besides hyperparameters.
#[derive(Clone, Default)]
pub struct MethodResources {
    /// The GemmaScope SAE of the model and layer (SAE, SAE-A).
    pub sae: Option<Arc<sae::Sae>>,
}

type Factory = fn(&MethodsConfig, &MethodResources) -> Result<Box<dyn DetectionMethod>, MethodError>;

/// Name-keyed registry of detection methods. Names are AxBench's class names; the paper's names are aliases.
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
    aliases: BTreeMap<&'static str, &'static str>,
}

impl Registry {
    /// Every method implemented here.
    pub fn builtin() -> Self {
        let mut factories: BTreeMap<&'static str, Factory> = BTreeMap::new();
        factories.insert(diffmean::NAME, |_, _| Ok(Box::new(diffmean::DiffMean)));
        factories.insert(pca::NAME, |_, _| Ok(Box::new(pca::Pca)));
        factories.insert(lat::NAME, |c, _| Ok(Box::new(lat::Lat::new(c.lat.clone()))));
        factories.insert(probe::NAME, |c, _| {
            Ok(Box::new(probe::LinearProbe::faithful(c.linear_probe.clone())))
        });
        factories.insert(probe::STABLE_NAME, |c, _| {
            Ok(Box::new(probe::LinearProbe::stable(c.linear_probe.clone())))
        });
        factories.insert(bow::NAME, |c, _| Ok(Box::new(bow::Bow::new(c.bow.clone()))));
        factories.insert(sae::NAME, |c, r| {
            Ok(Box::new(sae::GemmaScopeSae::new(sae_of(r, sae::NAME)?, c.sae.clone())))
        });
        factories.insert(sae::MAX_AUC_NAME, |c, r| {
            Ok(Box::new(sae::GemmaScopeSaeMaxAuc::new(
                sae_of(r, sae::MAX_AUC_NAME)?,
                c.sae.clone(),
            )))
        });
        let aliases = BTreeMap::from([("Probe", probe::NAME), ("SAE", sae::NAME), ("SAE-A", sae::MAX_AUC_NAME)]);
        Self { factories, aliases }
    }

    /// The canonical names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }

    /// The canonical name for a name or alias.
    pub fn canonical(&self, name: &str) -> Option<&'static str> {
        self.factories
            .get_key_value(name)
            .map(|(k, _)| *k)
            .or_else(|| self.aliases.get(name).copied())
    }

    /// Builds a method by name or alias.
    pub fn build(
        &self,
        name: &str,
        config: &MethodsConfig,
        resources: &MethodResources,
    ) -> Result<Box<dyn DetectionMethod>, MethodError> {
        let canonical = self.canonical(name).ok_or_else(|| MethodError::Unknown {
            name: name.to_owned(),
            known: self.names().join(", "),
        })?;
        (self.factories[canonical])(config, resources)
    }
}

fn sae_of(r: &MethodResources, method: &'static str) -> Result<Arc<sae::Sae>, MethodError> {
    r.sae.clone().ok_or(MethodError::MissingInput {
        method,
        what: "SAE params (MethodResources::sae)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round3_matches_python() {
        // Python: round(0.0005, 3) == 0.001 (0.0005 is slightly above half in binary); round(2.5e-3, 3) == 0.002
        // (float32 2.5e-3 lies below the tie); ties on exact binary halves go to even.
        assert_eq!(round3(0.0005f32), 0.001);
        assert_eq!(round3(0.0025f32), 0.002);
        assert_eq!(round3(0.0625f32), 0.062); // exact tie in binary: half to even
        assert_eq!(round3(-1.23456f32), -1.235);
    }

    #[test]
    fn pool_max_takes_first_maximum_after_rounding() {
        let s = [0.1f32, 0.30004, 0.3, 0.2, 5.0];
        let out = pool_max(&s, &[0, 4, 5], "t").unwrap();
        assert_eq!(out[0].max_act, 0.3);
        assert_eq!(out[0].max_act_idx, Some(1));
        assert_eq!(out[1].max_act, 5.0);
        assert!(pool_max(&s, &[0, 0, 5], "t").is_err());
    }

    #[test]
    fn registry_knows_names_and_aliases() {
        let r = Registry::builtin();
        assert_eq!(r.canonical("Probe"), Some("LinearProbe"));
        assert_eq!(r.canonical("SAE-A"), Some("GemmaScopeSAEMaxAUC"));
        let cfg = MethodsConfig::default();
        let res = MethodResources::default();
        for name in ["DiffMean", "PCA", "LAT", "LinearProbe", "LinearProbeStable", "BoW"] {
            assert_eq!(r.build(name, &cfg, &res).unwrap().name(), name);
        }
        let err = r.build("GemmaScopeSAE", &cfg, &res).err().unwrap().to_string();
        assert!(err.contains("SAE params"), "{err}");
        let err = r.build("ReFT", &cfg, &res).err().unwrap().to_string();
        assert!(err.contains("unknown") && err.contains("DiffMean"), "{err}");
    }

    #[test]
    fn offsets_are_checked() {
        let acts = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        assert!(TokenActivations::new(acts.shallow_clone(), vec![0, 2, 5]).is_ok());
        assert!(TokenActivations::new(acts.shallow_clone(), vec![0, 2, 4]).is_err());
        assert!(TokenActivations::new(acts, vec![0, 3, 2, 5]).is_err());
    }
}
