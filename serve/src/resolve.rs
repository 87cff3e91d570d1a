//! Turning what a user types after `--model` into a path: the two embedded models have short
//! names so the CLI works without knowing where `scripts/setup.sh` put them.

use std::path::{Path, PathBuf};

/// `--model default`: Gemma 3 270M base, GGUF Q4_K_M (no chat template in the file; Gemma's turn
/// format is used for chat).
pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// `--model default-instruct`: SmolLM2-135M-Instruct, GGUF Q4_1.
pub const DEFAULT_INSTRUCT_MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

/// Directories searched for the embedded models, first match wins: `$AXBENCH_DEPS/models`,
/// `./.deps/models` (the link `scripts/setup.sh` makes in a checkout), then
/// `~/.cache/axbench-deps/models` (setup.sh's default `AXBENCH_DEPS`).
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("AXBENCH_DEPS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d).join("models"));
    }
    dirs.push(PathBuf::from(".deps/models"));
    // The checkout this binary was built from, so tests and `cargo run` work from any directory.
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/models"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/axbench-deps/models"));
    }
    dirs
}

/// Resolves `default` / `default-instruct` to the embedded GGUF files; any other value is taken as
/// a path (an HF model directory or a `.gguf` file) and must exist.
pub fn resolve_model(spec: &str) -> Result<PathBuf, String> {
    let file = match spec {
        "default" => DEFAULT_MODEL_FILE,
        "default-instruct" => DEFAULT_INSTRUCT_MODEL_FILE,
        path => {
            let p = PathBuf::from(path);
            return if p.exists() {
                Ok(p)
            } else {
                Err(format!(
                    "--model {path}: no such file or directory (use `default`, `default-instruct`, an HF model directory or a .gguf file)"
                ))
            };
        }
    };
    let dirs = model_dirs();
    dirs.iter().map(|d| d.join(file)).find(|p| p.is_file()).ok_or_else(|| {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "--model {spec}: {file} not found in {} (run scripts/setup.sh or set AXBENCH_DEPS)",
            searched.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_are_errors_that_name_the_flag() {
        let err = resolve_model("/no/such/model.gguf").unwrap_err();
        assert!(err.contains("--model /no/such/model.gguf"), "{err}");
    }
}
