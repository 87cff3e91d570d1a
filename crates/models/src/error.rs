//! The runtime's error type: where a model failed to load or run, naming the file and tensor.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{}: unsupported architecture `{arch}` (supported: gemma2, gemma3, llama)", path.display())]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn json(path: &Path, source: serde_json::Error) -> Self {
        ModelError::Json {
            path: path.to_path_buf(),
            source,
        }
    }
}
