//! Hyperparameters of the detection methods: AxBench's defaults (2B production configs), overridable from
//! `configs/methods.toml`. Each table is named after the method; absent keys keep the defaults, unknown keys are an
//! error so a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};

/// Errors reading a methods config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml { path: String, source: toml::de::Error },
}

/// All methods' hyperparameters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodsConfig {
    #[serde(rename = "LAT")]
    pub lat: LatConfig,
    /// Shared by `LinearProbe` and `LinearProbeStable`.
    #[serde(rename = "LinearProbe")]
    pub linear_probe: ProbeConfig,
    #[serde(rename = "BoW")]
    pub bow: BowConfig,
    /// Shared by `GemmaScopeSAE` and `GemmaScopeSAEMaxAUC`.
    #[serde(rename = "GemmaScopeSAE")]
    pub sae: SaeConfig,
    // --- trained methods (axbench.train) ---
    /// ReFT-r1.
    #[serde(rename = "LsReFT")]
    pub reft_r1: super::reft_r1::ReftR1Config,
    /// SSV.
    #[serde(rename = "SteeringVector")]
    pub ssv: super::ssv::SsvConfig,
    #[serde(rename = "LoReFT")]
    pub loreft: super::loreft::LoreftConfig,
    #[serde(rename = "LoRA")]
    pub lora: super::finetune::LoraMethodConfig,
    #[serde(rename = "SFT")]
    pub sft: super::finetune::SftConfig,
    // --- end trained methods ---
}

impl MethodsConfig {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: origin.to_owned(),
            source,
        })
    }

    /// Reads a TOML file such as `configs/methods.toml`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }
}

/// LAT: AxBench shuffles with numpy's global RNG (seeded once by `set_seed(seed)` at the start of train.py, so the
/// permutation also depends on earlier concepts); we replay numpy's generator from `seed` for every fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatConfig {
    pub seed: u64,
}

impl Default for LatConfig {
    fn default() -> Self {
        Self { seed: 42 }
    }
}

/// LinearProbe (axbench/sweep/wuzhengx/2b/*: LinearProbe section; 9B uses lr 1e-3, weight_decay 1e-4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Examples per step (the config's gradient_accumulation_steps 4 is ignored by probe.train).
    pub batch_size: usize,
    pub n_epochs: usize,
    /// AdamW learning rate, decayed linearly to 0 without warmup.
    pub lr: f64,
    pub weight_decay: f64,
    /// `coeff_l1_loss`: weight of `sum |w|` in the loss.
    pub coeff_l1_loss: f64,
    /// Seeds the initial weights (U(-1/sqrt(d), 1/sqrt(d)) like `torch.nn.Linear`) and the per-epoch shuffles.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            batch_size: 12,
            n_epochs: 24,
            lr: 5e-3,
            weight_decay: 1e-3,
            coeff_l1_loss: 0.0,
            seed: 42,
        }
    }
}

/// BoW: `LogisticRegression(penalty=bow_penalty, C=bow_C, solver="lbfgs", max_iter=1000)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BowConfig {
    /// `bow_C`: inverse L2 strength.
    #[serde(rename = "C")]
    pub c: f64,
    pub max_iter: u64,
    /// Gradient-norm tolerance of our L-BFGS; far tighter than sklearn's `tol=1e-4`, so we land on the optimum
    /// sklearn approaches (the objective is strictly convex, the optimum unique).
    pub tol: f64,
}

impl Default for BowConfig {
    fn default() -> Self {
        Self {
            c: 100.0,
            max_iter: 1000,
            tol: 1e-9,
        }
    }
}

/// GemmaScope SAE methods.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaeConfig {
    /// SAE-A candidates: feature indices to choose from; empty = every feature (AxBench scans the full width).
    pub candidates: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_config_matches_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/methods.toml");
        let cfg = MethodsConfig::from_file(&path).unwrap();
        assert_eq!(cfg, MethodsConfig::default());
    }

    #[test]
    fn overrides_and_typos() {
        let cfg = MethodsConfig::from_toml_str("[LinearProbe]\nlr = 1e-3\nweight_decay = 1e-4\n", "t").unwrap();
        assert_eq!((cfg.linear_probe.lr, cfg.linear_probe.batch_size), (1e-3, 12));
        let err = MethodsConfig::from_toml_str("[LinearProbe]\nlearning_rate = 1\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
    }
}
