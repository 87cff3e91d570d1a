//! Engine errors. [`EngineError::is_bad_input`] tells the CLI which ones are the user's input
//! (exit code 2) rather than a failure while running.

use std::path::PathBuf;

use crate::compile::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Malformed TOML, unknown keys, wrong types, cycles, bad names, enormous fan-outs.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A `Path` param names a file or directory that cannot be read.
    #[error("node `{node}`: param `{param}` names {path}, which cannot be read: {error}")]
    PathParam {
        node: String,
        param: String,
        path: PathBuf,
        error: String,
    },
    #[error(transparent)]
    Store(#[from] axbench_cache::StoreError),
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Whether this is bad input (the pipeline, a sweep, `--set`, a param path).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, EngineError::Spec(_) | EngineError::PathParam { .. })
    }
}
