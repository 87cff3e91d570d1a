//! Helpers shared by the test modules: the repository root and the embedded model files.

use std::path::{Path, PathBuf};

/// The repository root (goldens under tests/golden, models under .deps/models).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// An embedded model file from scripts/setup.sh (`.deps/models`, or `AXBENCH_MODELS_DIR`), or
/// `None` with a note on stderr when it is absent, so the tests needing it pass without it.
pub fn model_path(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("AXBENCH_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".deps/models"));
    let p = dir.join(file);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (run scripts/setup.sh or set AXBENCH_MODELS_DIR)",
            p.display()
        );
        None
    }
}
