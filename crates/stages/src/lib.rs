//! AxBench's stages on the engine, one file per stage kind. May import the engine, report, methods,
//! lm, data and models crates; nothing imports it but the binary.
//!
//!
//! | kind                  | file            | per node                | reads → writes                                   |
//! |-----------------------|-----------------|-------------------------|--------------------------------------------------|
//! | `axbench.synthesize`  | synthesize.rs   | once                    | concept list + LM + target model → AxBench data  |
//! | `axbench.concepts`    | concepts.rs     | once                    | `metadata.jsonl` → `list.json` (concept ids)     |
//! | `axbench.activations` | activations.rs  | shared negatives; each concept | data + model → layer-L token activations  |
//! | `axbench.fit`         | fit.rs          | concept × method        | activations → `detector.json`, `direction.safetensors` |
//! | `axbench.infer`       | infer.rs        | concept × method        | detector + activations → `scores.parquet`        |
//! | `axbench.prompt_detect` | prompt_detect.rs | concept              | LM ratings 0–2 of eval rows → `scores.parquet`   |
//! | `axbench.train`       | train.rs        | concept × method        | data + model → trained direction or checkpoint   |
//! | `axbench.evaluate`    | evaluate.rs     | once (gathers)          | scores → `results.{parquet,json,md}`             |
//! | `axbench.steer`       | steer.rs        | concept × method        | direction + max act → steered `generations.parquet` |
//! | `axbench.steering_prompt` | prompt_steer.rs | concept             | LM writes a steering prompt → `steering_prompt.json` |
//! | `axbench.prompt_steer`| prompt_steer.rs | concept                 | steering prompt + instructions → `generations.parquet` |
//! | `axbench.judge`       | judge.rs        | concept (gathers methods) | generations → `judged.parquet` (LM ratings)    |
//! | `axbench.aggregate`   | aggregate.rs    | once (gathers)          | judged + detection → `steering.parquet`, `report.{md,html}`, plots |
//!
//! The shape follows AxBench's scripts (train.py `prepare_df`, inference.py latent, evaluate.py latent) with one
//! change that the engine makes natural: the model runs **once** per example. `axbench.activations` stores every
//! token's residual stream at layer L, and every method (fit and score) slices what it needs from that file, instead of
//! AxBench's re-running the model per method. The shared negatives (`concept_id == -1`) are their own node, computed
//! once and read by every concept's fit.
//!
//! Per-concept nodes read the dataset directly (their key holds the dataset's content digest and their concept id), so
//! raising `concepts.limit` from 2 to 3 computes only the third concept: the concept list feeds the fan-out, never a
//! node's inputs.

pub mod activations;
pub mod aggregate;
pub mod checkpoint;
pub mod concepts;
pub mod evaluate;
pub mod fit;
pub mod generation;
pub mod infer;
pub mod judge;
pub mod lm_stage;
pub mod model_cache;
pub mod prompt_detect;
pub mod prompt_steer;
#[cfg(test)]
mod stage_versions;
pub mod steer;
pub mod synthesize;
pub mod train;

use axbench_engine::{Registry, StageError};

/// Adds every AxBench detection stage to `reg`.
pub fn register(reg: Registry) -> Registry {
    reg.register(Box::new(concepts::Concepts))
        .register(Box::new(activations::Activations))
        .register(Box::new(fit::Fit))
        .register(Box::new(infer::Infer))
        .register(Box::new(evaluate::Evaluate))
        .register(Box::new(steer::Steer))
        .register(Box::new(judge::Judge))
        .register(Box::new(synthesize::Synthesize))
        .register(Box::new(prompt_detect::PromptDetect))
        .register(Box::new(prompt_steer::SteeringPrompt))
        .register(Box::new(prompt_steer::PromptSteer))
        .register(Box::new(aggregate::Aggregate))
        .register(Box::new(train::Train))
}

/// Wraps any displayable error as a stage failure.
pub(crate) fn fail(context: impl std::fmt::Display, e: impl std::fmt::Display) -> StageError {
    StageError::msg(format!("{context}: {e}"))
}

/// Reads a JSON file written by an upstream stage.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, StageError> {
    let bytes = std::fs::read(path).map_err(|source| StageError::Io {
        context: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| fail(path.display(), e))
}

/// Writes `value` as pretty JSON to output `name`.
pub(crate) fn write_json<T: serde::Serialize>(
    ctx: &axbench_engine::StageContext,
    name: &str,
    value: &T,
) -> Result<(), StageError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| fail(name, e))?;
    ctx.write_output(name, &bytes)
}

/// User-facing method names (the `methods` pipeline param) → AxBench class names in [`axbench_methods::Registry`].
/// Class names and the paper's aliases are accepted as well.
pub fn method_class(name: &str) -> Option<&'static str> {
    let reg = axbench_methods::Registry::builtin();
    if let Some(c) = reg.canonical(name) {
        return Some(c);
    }
    let short = match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "diffmean" => "DiffMean",
        "pca" => "PCA",
        "lat" => "LAT",
        "probe" | "linearprobe" => "LinearProbe",
        "probe_stable" | "linearprobestable" => "LinearProbeStable",
        "bow" => "BoW",
        "sae" => "GemmaScopeSAE",
        "sae_a" => "GemmaScopeSAEMaxAUC",
        _ => return None,
    };
    reg.canonical(short)
}

/// The short names [`method_class`] knows, for error messages.
pub const METHOD_NAMES: &str = "diffmean, pca, lat, probe, probe_stable, bow, sae, sae_a (or AxBench class names: DiffMean, PCA, LAT, LinearProbe, LinearProbeStable, BoW, GemmaScopeSAE, GemmaScopeSAEMaxAUC)";
