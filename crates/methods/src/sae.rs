//! GemmaScope JumpReLU SAEs (axbench/models/sae.py; interventions.py `JumpReLUSAECollectIntervention`):
//! `acts = (pre > threshold) · ReLU(pre)`, `pre = h W_enc + b_enc`.
//!
//! * `GemmaScopeSAE` (paper: SAE): the concept's own feature, the last path component of its Neuronpedia `ref`.
//!   Detect = that feature's activation per token, max-pooled; steer = `W_dec[f]`.
//! * `GemmaScopeSAEMaxAUC` (paper: SAE-A): the feature whose max-pooled activation has the best AUROC on the
//!   concept's training set (first maximum on ties), among `candidates` or all features.
//!
//! Params load from GemmaScope's `params.npz` or a safetensors file with the same names
//! (`W_enc [d, F], b_enc [F], threshold [F], W_dec [F, d], b_dec [d]`). A fitted detector saves the chosen feature's
//! parameters ([`PrunedFeature`], AxBench's `save_pruned_sae`), so scoring and steering need only the fit's output.

use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::{
    DetectionMethod, Detector, ExampleScore, FitInput, FittedArtifact, MethodError, Needs, SaeConfig, ScoreInput,
    TokenActivations, pool_max,
};
use axbench_data::metrics;

pub const NAME: &str = "GemmaScopeSAE";
pub const MAX_AUC_NAME: &str = "GemmaScopeSAEMaxAUC";

/// JumpReLU SAE parameters (f32, CPU).
#[derive(Debug)]
pub struct Sae {
    pub w_enc: Tensor,
    pub b_enc: Tensor,
    pub threshold: Tensor,
    pub w_dec: Tensor,
    pub b_dec: Tensor,
}

// SAFETY: the tensors are written once, in `from_named`, and only read afterwards (every method takes `&self` and
// builds new tensors); concurrent read-only use of ATen tensors is safe. This lets one SAE be shared through an `Arc`
// by the detectors of many concepts.
unsafe impl Sync for Sae {}

impl Sae {
    /// Loads `.npz` (GemmaScope's `params.npz`) or `.safetensors`, by extension.
    pub fn load(path: &Path) -> Result<Self, MethodError> {
        let torch = |source| MethodError::Torch { method: NAME, source };
        let named = match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => Tensor::read_npz(path).map_err(torch)?,
            Some("safetensors") => Tensor::read_safetensors(path).map_err(torch)?,
            _ => {
                return Err(MethodError::invalid(
                    NAME,
                    format!("{}: expected a .npz or .safetensors SAE file", path.display()),
                ));
            }
        };
        Self::from_named(named, &path.display().to_string())
    }

    /// From `(name, tensor)` pairs; `origin` names the source in errors.
    pub fn from_named(named: Vec<(String, Tensor)>, origin: &str) -> Result<Self, MethodError> {
        let get = |key: &str| -> Result<Tensor, MethodError> {
            let i = named
                .iter()
                .position(|(n, _)| n == key)
                .ok_or_else(|| MethodError::invalid(NAME, format!("{origin}: missing SAE tensor `{key}`")))?;
            Ok(named[i].1.to_kind(Kind::Float).to_device(Device::Cpu))
        };
        let sae = Sae {
            w_enc: get("W_enc")?,
            b_enc: get("b_enc")?,
            threshold: get("threshold")?,
            w_dec: get("W_dec")?,
            b_dec: get("b_dec")?,
        };
        let (d, f) = (sae.w_enc.size()[0], sae.w_enc.size()[1]);
        let ok = sae.w_enc.dim() == 2
            && sae.b_enc.size() == [f]
            && sae.threshold.size() == [f]
            && sae.w_dec.size() == [f, d]
            && sae.b_dec.size() == [d];
        if !ok {
            return Err(MethodError::invalid(
                NAME,
                format!("{origin}: SAE tensor shapes disagree (W_enc [d={d}, F={f}])"),
            ));
        }
        Ok(sae)
    }

    pub fn width(&self) -> usize {
        self.w_enc.size()[1] as usize
    }

    pub fn dim(&self) -> i64 {
        self.w_enc.size()[0]
    }

    /// JumpReLU activations of `features` for every row of `h` (`[n, d]` -> `[n, k]`).
    pub fn encode(&self, h: &Tensor, features: &[usize]) -> Tensor {
        let idx = Tensor::from_slice(&features.iter().map(|f| *f as i64).collect::<Vec<_>>());
        let pre = h.to_kind(Kind::Float).matmul(&self.w_enc.index_select(1, &idx)) + self.b_enc.index_select(0, &idx);
        let mask = pre.gt_tensor(&self.threshold.index_select(0, &idx));
        pre.relu() * mask.to_kind(Kind::Float)
    }

    fn check(&self, acts: &TokenActivations, feature: usize, method: &'static str) -> Result<(), MethodError> {
        if acts.dim() != self.dim() {
            return Err(MethodError::invalid(
                method,
                format!("activations d = {}, SAE d = {}", acts.dim(), self.dim()),
            ));
        }
        if feature >= self.width() {
            return Err(MethodError::invalid(
                method,
                format!("feature {feature} beyond SAE width {}", self.width()),
            ));
        }
        Ok(())
    }
}

/// One feature's parameters cut out of a JumpReLU SAE (AxBench's `save_pruned_sae`, which keeps only the concepts'
/// features): everything detection (`w_enc`, `b_enc`, `threshold`) and additive steering (`w_dec`) read, so a saved
/// detector scores and steers without the full SAE file (16k features × d × 2 matrices for GemmaScope).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrunedFeature {
    /// `W_enc[:, f]`, length d.
    pub w_enc: Vec<f32>,
    pub b_enc: f32,
    pub threshold: f32,
    /// `W_dec[f]`, length d.
    pub w_dec: Vec<f32>,
    /// `b_dec`, length d (kept so the pruned SAE is a complete one-feature SAE).
    pub b_dec: Vec<f32>,
}

impl PrunedFeature {
    /// A one-feature SAE from these params; errors when the lengths disagree.
    pub fn to_sae(&self, method: &'static str) -> Result<Sae, MethodError> {
        let d = self.w_enc.len();
        if self.w_dec.len() != d || self.b_dec.len() != d {
            return Err(MethodError::invalid(
                method,
                format!(
                    "pruned SAE feature: w_enc has {d} values, w_dec {}, b_dec {}",
                    self.w_dec.len(),
                    self.b_dec.len()
                ),
            ));
        }
        let d = d as i64;
        Ok(Sae {
            w_enc: Tensor::from_slice(&self.w_enc).reshape([d, 1]),
            b_enc: Tensor::from_slice(&[self.b_enc]),
            threshold: Tensor::from_slice(&[self.threshold]),
            w_dec: Tensor::from_slice(&self.w_dec).reshape([1, d]),
            b_dec: Tensor::from_slice(&self.b_dec),
        })
    }
}

impl Sae {
    /// Feature `f`'s parameters (see [`PrunedFeature`]).
    pub fn prune(&self, f: usize) -> PrunedFeature {
        let v = |t: Tensor| Vec::<f32>::try_from(&t.contiguous()).expect("1-d float");
        PrunedFeature {
            w_enc: v(self.w_enc.select(1, f as i64)),
            b_enc: self.b_enc.double_value(&[f as i64]) as f32,
            threshold: self.threshold.double_value(&[f as i64]) as f32,
            w_dec: v(self.w_dec.get(f as i64)),
            b_dec: v(self.b_dec.shallow_clone()),
        }
    }
}

/// One SAE feature as a detector.
pub struct SaeFeatureDetector {
    method: &'static str,
    sae: Arc<Sae>,
    /// Column of `sae` that holds the feature.
    column: usize,
    /// The feature's index in the full SAE (what artifacts and reports name).
    feature: usize,
}

impl SaeFeatureDetector {
    pub fn new(method: &'static str, sae: Arc<Sae>, feature: usize) -> Result<Self, MethodError> {
        if feature >= sae.width() {
            return Err(MethodError::invalid(
                method,
                format!("feature {feature} beyond SAE width {}", sae.width()),
            ));
        }
        Ok(Self {
            method,
            sae,
            column: feature,
            feature,
        })
    }

    /// Feature `feature` of a full SAE, from its saved parameters alone.
    pub fn from_pruned(method: &'static str, feature: usize, params: &PrunedFeature) -> Result<Self, MethodError> {
        Ok(Self {
            method,
            sae: Arc::new(params.to_sae(method)?),
            column: 0,
            feature,
        })
    }

    pub fn feature(&self) -> usize {
        self.feature
    }
}

impl Detector for SaeFeatureDetector {
    fn method(&self) -> &'static str {
        self.method
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Vec<ExampleScore>, MethodError> {
        let acts = input.activations.ok_or(MethodError::MissingInput {
            method: self.method,
            what: "per-token activations",
        })?;
        self.sae.check(acts, self.column, self.method)?;
        let s = self.sae.encode(&acts.acts, &[self.column]).reshape([-1]);
        let s = Vec::<f32>::try_from(&s).map_err(|source| MethodError::Torch {
            method: self.method,
            source,
        })?;
        pool_max(&s, &acts.offsets, self.method)
    }

    fn detection_direction(&self) -> Option<Tensor> {
        Some(self.sae.w_enc.select(1, self.column as i64))
    }

    fn steering_direction(&self) -> Option<Tensor> {
        Some(self.sae.w_dec.get(self.column as i64))
    }

    fn artifact(&self) -> FittedArtifact {
        FittedArtifact::SaeFeature {
            method: self.method.to_owned(),
            feature: self.feature,
            params: Some(self.sae.prune(self.column)),
        }
    }
}

/// The concept's own feature (paper: SAE).
pub struct GemmaScopeSae {
    sae: Arc<Sae>,
}

impl GemmaScopeSae {
    pub fn new(sae: Arc<Sae>, _config: SaeConfig) -> Self {
        Self { sae }
    }
}

impl DetectionMethod for GemmaScopeSae {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        Needs {
            activations: true,
            ..Needs::default()
        }
    }

    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError> {
        let concept = input.concept.ok_or(MethodError::MissingInput {
            method: NAME,
            what: "the concept (its ref)",
        })?;
        let feature = concept.sae_feature().ok_or_else(|| {
            MethodError::invalid(
                NAME,
                format!(
                    "concept {}: ref {:?} does not end in a feature index",
                    concept.id, concept.reference
                ),
            )
        })?;
        Ok(Box::new(SaeFeatureDetector::new(NAME, self.sae.clone(), feature)?))
    }
}

/// Per-feature training AUROC of max-pooled activations (`GemmaScopeSAEMaxAUC.train`), for `features`.
pub fn feature_aucs(sae: &Sae, acts: &TokenActivations, labels: &[bool], features: &[usize]) -> Vec<f64> {
    // Max-pool per example, one example at a time: [tokens, F] of a whole training set would not fit for F = 16k.
    let pooled: Vec<Vec<f32>> = (0..acts.n_examples())
        .map(|i| {
            let a = sae.encode(&acts.example(i), features).max_dim(0, false).0;
            Vec::<f32>::try_from(&a).expect("1-d float")
        })
        .collect();
    (0..features.len())
        .map(|k| {
            let s: Vec<f64> = pooled.iter().map(|p| p[k] as f64).collect();
            metrics::roc_auc(labels, &s)
        })
        .collect()
}

/// The feature with the best training AUROC (paper: SAE-A).
pub struct GemmaScopeSaeMaxAuc {
    sae: Arc<Sae>,
    config: SaeConfig,
}

impl GemmaScopeSaeMaxAuc {
    pub fn new(sae: Arc<Sae>, config: SaeConfig) -> Self {
        Self { sae, config }
    }
}

impl DetectionMethod for GemmaScopeSaeMaxAuc {
    fn name(&self) -> &'static str {
        MAX_AUC_NAME
    }

    fn needs(&self) -> Needs {
        Needs {
            activations: true,
            ..Needs::default()
        }
    }

    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError> {
        let acts = input.require_activations(MAX_AUC_NAME)?;
        let features: Vec<usize> = if self.config.candidates.is_empty() {
            (0..self.sae.width()).collect()
        } else {
            self.config.candidates.clone()
        };
        if let Some(f) = features.iter().find(|f| **f >= self.sae.width()) {
            return Err(MethodError::invalid(
                MAX_AUC_NAME,
                format!("candidate {f} beyond SAE width {}", self.sae.width()),
            ));
        }
        self.sae.check(acts, 0, MAX_AUC_NAME)?;
        let aucs = feature_aucs(&self.sae, acts, input.labels, &features);
        // First maximum; NaN (cannot happen with both classes present) never wins.
        let mut best = 0;
        for (k, a) in aucs.iter().enumerate() {
            if *a > aucs[best] || aucs[best].is_nan() {
                best = k;
            }
        }
        Ok(Box::new(SaeFeatureDetector::new(
            MAX_AUC_NAME,
            self.sae.clone(),
            features[best],
        )?))
    }
}
