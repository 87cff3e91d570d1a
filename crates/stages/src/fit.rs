//! `axbench.fit`: fits one detection method on one concept's binarized training set (train.py `prepare_df` with
//! `binarize_dataset`): the concept's positives (label 1), then the shared negatives of its genre (label 0), in file
//! order — read from the concept's and the shared negatives' activation files.
//!
//! Token rows per method follow AxBench: DiffMean, PCA and LAT read every token after the chat-template prefix of
//! the train-form sequence; the probe reads every token after BOS (its data module keeps the default prefix of 1);
//! BoW reads the train-form texts.
//!
//! SAE and SAE-A (`sae`, `sae_a`) read the JumpReLU SAE named by param `sae` (GemmaScope `params.npz` or a
//! safetensors file with the same tensor names; loaded once per process). SAE takes the concept's own feature from
//! its Neuronpedia `ref`; SAE-A the feature with the best training AUROC. Their `detector.json` carries the chosen
//! feature's parameters (AxBench's pruned SAE), so `axbench.infer` scores without the SAE file, and
//! `direction.safetensors` holds `W_dec[f]` for steering. Wiring: `params = { method = "${method}", sae = "${sae.path}" }`.
//!
//! Method names are checked at plan time ([`Stage::validate_param`]): a typo in `methods` fails `axbench plan` with
//! exit 2, naming the valid methods.
//!
//! Hyperparameters: `configs/methods.toml` (param `config`, hashed by content), with `overrides` (a table like
//! `{ LinearProbe = { lr = 1e-3 } }`) merged over it. Outputs `detector.json` (the fitted
//! [`FittedArtifact`](axbench_methods::FittedArtifact)), `direction.safetensors` (`w` and `bias` for linear methods:
//! the detection and steering direction) and `fit.json`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError, Value};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::activations::{ActivationSet, End, Split};
use super::{METHOD_NAMES, fail, method_class, write_json};
use axbench_data::dataset::Category;
use axbench_methods::{FitInput, FittedArtifact, MethodResources, MethodsConfig, Registry, sae};

pub struct Fit;

/// `fit.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitMeta {
    /// As written in the pipeline (`diffmean`).
    pub method: String,
    /// AxBench's class name (`DiffMean`).
    pub method_class: String,
    pub concept_id: i64,
    pub model: String,
    pub layer: i64,
    pub n_positive: usize,
    pub n_negative: usize,
    pub seconds: f64,
}

/// Deep-merges TOML table `over` into `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The methods config: the file, with `overrides` merged over it; errors name the file or the param.
pub fn methods_config(path: &std::path::Path, overrides: &Value) -> Result<MethodsConfig, StageError> {
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| fail(path.display(), e))?;
    let over = overrides.to_json();
    if !over.as_object().is_some_and(|o| o.is_empty()) {
        let over: toml::Table = toml::Table::try_from(over).map_err(|e| StageError::Param {
            name: "overrides".into(),
            message: format!("expected a table of method tables: {e}"),
        })?;
        merge(&mut table, over);
    }
    MethodsConfig::from_toml_str(&table.to_string(), &format!("{} (with overrides)", path.display())).map_err(|e| {
        StageError::Param {
            name: "config".into(),
            message: e.to_string(),
        }
    })
}

/// The SAE last loaded in this process, reused by the next fit that names the same file (a GemmaScope SAE is
/// hundreds of MB; every concept's SAE/SAE-A fit reads it).
static SAE: Mutex<Option<(PathBuf, Arc<sae::Sae>)>> = Mutex::new(None);

/// Loads the JumpReLU SAE at `path` (`.npz` or `.safetensors`), or returns the one already loaded.
pub fn load_sae(path: &Path) -> Result<Arc<sae::Sae>, StageError> {
    let mut guard = SAE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, s)) = guard.as_ref()
        && p == path
    {
        return Ok(s.clone());
    }
    *guard = None;
    let s = Arc::new(sae::Sae::load(path).map_err(|e| StageError::Param {
        name: "sae".into(),
        message: e.to_string(),
    })?);
    *guard = Some((path.to_path_buf(), s.clone()));
    Ok(s)
}

/// Whether AxBench class `class` reads an SAE.
fn uses_sae(class: &str) -> bool {
    class == sae::NAME || class == sae::MAX_AUC_NAME
}

impl Stage for Fit {
    fn kind(&self) -> &str {
        "axbench.fit"
    }
    fn version(&self) -> u32 {
        2
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "method",
                ParamType::Str,
                "detection method: diffmean, pca, lat, probe, probe_stable, bow, sae, sae_a",
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
                "tables merged over the config, e.g. { LinearProbe = { lr = 1e-3 } }",
            ),
            ParamSpec::optional(
                "sae",
                ParamType::Path,
                "",
                "JumpReLU SAE of the model and layer (GemmaScope params.npz or .safetensors: W_enc, b_enc, threshold, W_dec, b_dec); read by sae and sae_a only",
            ),
        ]
    }
    fn validate_param(&self, name: &str, value: &Value) -> Result<(), String> {
        match (name, value.as_str()) {
            ("method", Some(m)) if method_class(m).is_none() => Err(format!(
                "unknown method {m:?} (from the `methods` list); valid: {METHOD_NAMES}"
            )),
            _ => Ok(()),
        }
    }
    fn doc(&self) -> &str {
        "Fits a detection method on one concept (detector.json, direction.safetensors)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let method = ctx.param_str("method")?.to_owned();
        let class = method_class(&method).ok_or_else(|| StageError::Param {
            name: "method".into(),
            message: format!("unknown method {method:?}; valid: {METHOD_NAMES}"),
        })?;
        let config = methods_config(&ctx.param_path("config")?, ctx.param("overrides")?)?;
        let concept = ActivationSet::load(ctx.input("acts")?)?;
        let negatives = ActivationSet::load(ctx.input("negatives")?)?;
        if concept.meta.layer != negatives.meta.layer || concept.meta.model != negatives.meta.model {
            return Err(StageError::msg(format!(
                "concept activations ({} layer {}) and shared negatives ({} layer {}) come from different models or layers",
                concept.meta.model, concept.meta.layer, negatives.meta.model, negatives.meta.layer
            )));
        }
        let genre = concept.meta.genre.clone().ok_or_else(|| StageError::Input {
            name: "acts".into(),
            message: "holds the shared negatives, not a concept".into(),
        })?;
        let pos: Vec<usize> = (0..concept.rows.len())
            .filter(|&i| concept.rows[i].split == Split::Train && concept.rows[i].category == Category::Positive)
            .collect();
        let neg: Vec<usize> = (0..negatives.rows.len())
            .filter(|&i| negatives.rows[i].concept_genre == genre)
            .collect();
        if pos.is_empty() || neg.is_empty() {
            return Err(StageError::msg(format!(
                "concept {}: {} positives and {} shared negatives of genre {genre:?}: need both",
                concept.meta.concept_id,
                pos.len(),
                neg.len()
            )));
        }
        let labels: Vec<bool> = std::iter::repeat_n(true, pos.len())
            .chain(std::iter::repeat_n(false, neg.len()))
            .collect();

        let mut resources = MethodResources::default();
        if uses_sae(class) {
            if ctx.param_str("sae")?.is_empty() {
                return Err(StageError::Param {
                    name: "sae".into(),
                    message: format!(
                        "method {method} needs a JumpReLU SAE file (GemmaScope params.npz or .safetensors)"
                    ),
                });
            }
            resources.sae = Some(load_sae(&ctx.param_path("sae")?)?);
        }
        // The concept as metadata.jsonl has it (the SAE method reads its feature from `ref`).
        let concept_meta = axbench_data::dataset::Concept {
            id: concept.meta.concept_id,
            concept: concept.meta.concept.clone().unwrap_or_default(),
            reference: concept.meta.reference.clone().unwrap_or_default(),
            genres: vec![genre.clone()],
        };
        if class == sae::NAME && concept.meta.reference.is_none() {
            return Err(StageError::Input { name: "acts".into(), message: "was computed before activations recorded the concept's ref (needed for its SAE feature): recompute it".into() });
        }
        let registry = Registry::builtin();
        let m = registry
            .build(class, &config, &resources)
            .map_err(|e| fail(&method, e))?;
        let needs = m.needs();
        let start = if class.starts_with("LinearProbe") {
            1
        } else {
            concept.meta.prefix_length
        };
        let acts = if needs.activations {
            let a = concept.slice(&pos, start, End::Train).map_err(|e| fail(&method, e))?;
            let b = negatives.slice(&neg, start, End::Train).map_err(|e| fail(&method, e))?;
            let offsets: Vec<usize> = a
                .offsets
                .iter()
                .copied()
                .chain(b.offsets[1..].iter().map(|o| o + a.n_tokens()))
                .collect();
            Some(
                axbench_methods::TokenActivations::new(Tensor::cat(&[&a.acts, &b.acts], 0), offsets)
                    .map_err(|e| fail(&method, e))?,
            )
        } else {
            None
        };
        let texts: Option<Vec<String>> = needs.texts.then(|| {
            pos.iter()
                .map(|&i| concept.rows[i].train_text.clone())
                .chain(neg.iter().map(|&i| negatives.rows[i].train_text.clone()))
                .collect()
        });
        let input = FitInput {
            labels: &labels,
            activations: acts.as_ref(),
            texts: texts.as_deref(),
            model: None,
            concept: Some(&concept_meta),
        };
        let t0 = Instant::now();
        let detector = m.fit(&input).map_err(|e| fail(&method, e))?;
        let seconds = t0.elapsed().as_secs_f64();
        let artifact = detector.artifact();
        // The steering direction (`w` for linear methods, `W_dec[f]` for SAE features), for the steer stage.
        if let Some(w) = detector.steering_direction() {
            let bias = if let FittedArtifact::Linear { bias, .. } = &artifact {
                *bias
            } else {
                0.0
            };
            let p = ctx.output_path("direction.safetensors")?;
            let w = w.to_kind(tch::Kind::Float).contiguous();
            Tensor::write_safetensors(&[("w", w), ("bias", Tensor::from_slice(&[bias]))], &p)
                .map_err(|e| fail(p.display(), e))?;
        }
        if let FittedArtifact::SaeFeature { feature, .. } = &artifact {
            ctx.log(format!("{class}: SAE feature {feature}"));
        }
        write_json(ctx, "detector.json", &artifact)?;
        ctx.log(format!(
            "{class} on concept {}: {} pos / {} neg in {seconds:.2}s",
            concept.meta.concept_id,
            pos.len(),
            neg.len()
        ));
        write_json(
            ctx,
            "fit.json",
            &FitMeta {
                method,
                method_class: class.to_owned(),
                concept_id: concept.meta.concept_id,
                model: concept.meta.model.clone(),
                layer: concept.meta.layer,
                n_positive: pos.len(),
                n_negative: neg.len(),
                seconds,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_over_the_file_and_typos_name_the_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/methods.toml");
        let none = methods_config(&path, &Value::Table(Default::default())).unwrap();
        assert_eq!(none, MethodsConfig::default());
        let over = Value::from_json(&serde_json::json!({"LinearProbe": {"lr": 0.001}}));
        let cfg = methods_config(&path, &over).unwrap();
        assert_eq!((cfg.linear_probe.lr, cfg.linear_probe.n_epochs), (0.001, 24));
        let bad = Value::from_json(&serde_json::json!({"LinearProbe": {"learning_rate": 0.001}}));
        let err = methods_config(&path, &bad).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }

    #[test]
    fn method_names_map_to_axbench_classes() {
        for (short, class) in [
            ("diffmean", "DiffMean"),
            ("pca", "PCA"),
            ("lat", "LAT"),
            ("probe", "LinearProbe"),
            ("probe_stable", "LinearProbeStable"),
            ("bow", "BoW"),
            ("Probe", "LinearProbe"),
        ] {
            assert_eq!(method_class(short), Some(class), "{short}");
        }
        assert_eq!(method_class("reft"), None);
    }
}
