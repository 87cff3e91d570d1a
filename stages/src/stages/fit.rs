//! `axbench.fit`: fits one detection method on one concept's binarized training set (train.py `prepare_df` with
//! `binarize_dataset`): the concept's positives (label 1), then the shared negatives of its genre (label 0), in file
//! order — read from the concept's and the shared negatives' activation files.
//!
//! Token rows per method follow AxBench: DiffMean, PCA and LAT read every token after the chat-template prefix of
//! the train-form sequence; the probe reads every token after BOS (its data module keeps the default prefix of 1);
//! BoW reads the train-form texts.
//!
//! Hyperparameters: `configs/methods.toml` (param `config`, hashed by content), with `overrides` (a table like
//! `{ LinearProbe = { lr = 1e-3 } }`) merged over it. Outputs `detector.json` (the fitted
//! [`FittedArtifact`](crate::methods::FittedArtifact)), `direction.safetensors` (`w` and `bias` for linear methods:
//! the detection and steering direction) and `fit.json`.

use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError, Value};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::activations::{ActivationSet, End, Split};
use super::{METHOD_NAMES, fail, method_class, write_json};
use crate::data::Category;
use crate::methods::{FitInput, FittedArtifact, MethodResources, MethodsConfig, Registry};

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
    let text = std::fs::read_to_string(path).map_err(|source| StageError::Io { context: path.display().to_string(), source })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| fail(path.display(), e))?;
    let over = overrides.to_json();
    if !over.as_object().is_some_and(|o| o.is_empty()) {
        let over: toml::Table = toml::Table::try_from(over).map_err(|e| StageError::Param { name: "overrides".into(), message: format!("expected a table of method tables: {e}") })?;
        merge(&mut table, over);
    }
    MethodsConfig::from_toml_str(&table.to_string(), &format!("{} (with overrides)", path.display())).map_err(|e| StageError::Param { name: "config".into(), message: e.to_string() })
}

impl Stage for Fit {
    fn kind(&self) -> &str {
        "axbench.fit"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("method", ParamType::Str, "detection method: diffmean, pca, lat, probe, probe_stable, bow"),
            ParamSpec::optional("config", ParamType::Path, "configs/methods.toml", "method hyperparameters (TOML)"),
            ParamSpec::optional("overrides", ParamType::Any, Value::Table(Default::default()), "tables merged over the config, e.g. { LinearProbe = { lr = 1e-3 } }"),
        ]
    }
    fn doc(&self) -> &str {
        "Fits a detection method on one concept (detector.json, direction.safetensors)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let method = ctx.param_str("method")?.to_owned();
        let class = method_class(&method).ok_or_else(|| StageError::Param { name: "method".into(), message: format!("unknown method {method:?}; valid: {METHOD_NAMES}") })?;
        let config = methods_config(&ctx.param_path("config")?, ctx.param("overrides")?)?;
        let concept = ActivationSet::load(ctx.input("acts")?)?;
        let negatives = ActivationSet::load(ctx.input("negatives")?)?;
        if concept.meta.layer != negatives.meta.layer || concept.meta.model != negatives.meta.model {
            return Err(StageError::msg(format!(
                "concept activations ({} layer {}) and shared negatives ({} layer {}) come from different models or layers",
                concept.meta.model, concept.meta.layer, negatives.meta.model, negatives.meta.layer
            )));
        }
        let genre = concept.meta.genre.clone().ok_or_else(|| StageError::Input { name: "acts".into(), message: "holds the shared negatives, not a concept".into() })?;
        let pos: Vec<usize> = (0..concept.rows.len()).filter(|&i| concept.rows[i].split == Split::Train && concept.rows[i].category == Category::Positive).collect();
        let neg: Vec<usize> = (0..negatives.rows.len()).filter(|&i| negatives.rows[i].concept_genre == genre).collect();
        if pos.is_empty() || neg.is_empty() {
            return Err(StageError::msg(format!("concept {}: {} positives and {} shared negatives of genre {genre:?}: need both", concept.meta.concept_id, pos.len(), neg.len())));
        }
        let labels: Vec<bool> = std::iter::repeat_n(true, pos.len()).chain(std::iter::repeat_n(false, neg.len())).collect();

        let registry = Registry::builtin();
        let m = registry.build(class, &config, &MethodResources::default()).map_err(|e| fail(&method, e))?;
        let needs = m.needs();
        let start = if class.starts_with("LinearProbe") { 1 } else { concept.meta.prefix_length };
        let acts = if needs.activations {
            let a = concept.slice(&pos, start, End::Train).map_err(|e| fail(&method, e))?;
            let b = negatives.slice(&neg, start, End::Train).map_err(|e| fail(&method, e))?;
            let offsets: Vec<usize> = a.offsets.iter().copied().chain(b.offsets[1..].iter().map(|o| o + a.n_tokens())).collect();
            Some(crate::methods::TokenActivations::new(Tensor::cat(&[&a.acts, &b.acts], 0), offsets).map_err(|e| fail(&method, e))?)
        } else {
            None
        };
        let texts: Option<Vec<String>> = needs.texts.then(|| {
            pos.iter().map(|&i| concept.rows[i].train_text.clone()).chain(neg.iter().map(|&i| negatives.rows[i].train_text.clone())).collect()
        });
        let input = FitInput { labels: &labels, activations: acts.as_ref(), texts: texts.as_deref(), model: None, concept: None };
        let t0 = Instant::now();
        let detector = m.fit(&input).map_err(|e| fail(&method, e))?;
        let seconds = t0.elapsed().as_secs_f64();
        let artifact = detector.artifact();
        if let FittedArtifact::Linear { w, bias, .. } = &artifact {
            let p = ctx.output_path("direction.safetensors")?;
            Tensor::write_safetensors(&[("w", Tensor::from_slice(w)), ("bias", Tensor::from_slice(&[*bias]))], &p).map_err(|e| fail(p.display(), e))?;
        }
        write_json(ctx, "detector.json", &artifact)?;
        ctx.log(format!("{class} on concept {}: {} pos / {} neg in {seconds:.2}s", concept.meta.concept_id, pos.len(), neg.len()));
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
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/methods.toml");
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
        for (short, class) in [("diffmean", "DiffMean"), ("pca", "PCA"), ("lat", "LAT"), ("probe", "LinearProbe"), ("probe_stable", "LinearProbeStable"), ("bow", "BoW"), ("Probe", "LinearProbe")] {
            assert_eq!(method_class(short), Some(class), "{short}");
        }
        assert_eq!(method_class("reft"), None);
    }
}
