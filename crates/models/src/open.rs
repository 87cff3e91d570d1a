//! Opening a model path the way every front end needs it: the weights, the tokenizer, the chat
//! format and the context length, from either a `.gguf` file or an HF model directory.
//!
//! `axbench model`, `axbench serve`, the local LM backend and the pipeline stages all accept the
//! same model paths (and the embedded models' short names, [`resolve_model`]); this module is the
//! one place that decides where each part comes from, so they cannot drift apart.
//!
//! | part | GGUF file | HF directory |
//! |---|---|---|
//! | tokenizer | embedded vocabulary ([`Tokenizer::from_gguf_with`]) | `tokenizer.json` (+ `tokenizer_config.json`, `generation_config.json`) |
//! | chat format | `tokenizer.chat_template`, else Gemma's turns for Gemma architectures | `chat_template` in `tokenizer_config.json`, else Gemma's turns when `config.json`'s `model_type` is a Gemma |
//! | context length | `{arch}.context_length` | `max_position_embeddings` in `config.json` |

use std::path::{Path, PathBuf};

use crate::chat::ChatTemplate;
use crate::gguf::{GgufError, GgufFile};
use crate::model::{LoadOptions, Model, ModelError};
use crate::tokenizer::{GgufTokenizerOptions, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: the model directory has no tokenizer.json", dir.display())]
    NoTokenizer { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error(
        "{}: no known chat format (a Gemma or ChatML chat_template in the file or tokenizer_config.json, or a Gemma architecture)",
        path.display()
    )]
    NoChatTemplate { path: PathBuf },
}

/// `--model default`: Gemma 3 270M base, GGUF Q4_K_M (no chat template in the file; Gemma's turn
/// format is used for chat).
pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// `--model default-instruct`: SmolLM2-135M-Instruct, GGUF Q4_1.
pub const DEFAULT_INSTRUCT_MODEL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

/// Directories searched for the embedded models, first match wins: `$AXBENCH_DEPS/models`,
/// `./.deps/models` (the link `scripts/setup.sh` makes in a checkout), `.deps/models` beside any
/// directory above the running executable (a checkout's `target/…/axbench-full`, its test
/// executables), then `~/.cache/axbench-deps/models` (setup.sh's default `AXBENCH_DEPS`).
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("AXBENCH_DEPS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d).join("models"));
    }
    dirs.push(PathBuf::from(".deps/models"));
    if let Ok(exe) = std::env::current_exe() {
        // Found at run time, not baked in at build time: a binary copied elsewhere does not point
        // back into the checkout it was built in.
        if let Some(dir) = exe
            .ancestors()
            .skip(1)
            .map(|a| a.join(".deps/models"))
            .find(|d| d.is_dir())
        {
            dirs.push(dir);
        }
    }
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

/// Whether `path` names a GGUF file (by extension; anything else is treated as an HF directory).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Everything about a model but its weights: cheap to read (no tensors are loaded).
#[derive(Debug, Clone)]
pub struct ModelVocab {
    pub tokenizer: Tokenizer,
    /// The chat format, when one is known (from the file, or implied by a Gemma architecture).
    pub template: Option<ChatTemplate>,
    /// Whether the file itself carries a chat template (Gemma base GGUFs do not).
    pub template_in_file: bool,
    /// The context length the model declares, if it does.
    pub context_length: Option<usize>,
}

impl ModelVocab {
    /// Reads the tokenizer, chat format and context length of a GGUF file or HF directory, with
    /// the default tokenizer options (llama.cpp parity for GGUF vocabularies).
    pub fn open(path: &Path) -> Result<ModelVocab, OpenError> {
        Self::open_with(path, GgufTokenizerOptions::default())
    }

    /// [`ModelVocab::open`] with a choice of GGUF tokenizer flavor (ignored for HF directories).
    pub fn open_with(path: &Path, options: GgufTokenizerOptions) -> Result<ModelVocab, OpenError> {
        if is_gguf(path) {
            let file = GgufFile::open(path)?;
            Self::from_gguf(&file, options)
        } else {
            Self::from_hf_dir(path)
        }
    }

    /// From an already opened GGUF file (callers that also read its tensors open it once).
    pub fn from_gguf(file: &GgufFile, options: GgufTokenizerOptions) -> Result<ModelVocab, OpenError> {
        let tokenizer = Tokenizer::from_gguf_with(file, options)?;
        let template_in_file = file.opt_str("tokenizer.chat_template")?.is_some();
        // An unrecognized template is not an error here: plain completion still works, and the
        // chat paths report the missing format when they need it.
        let template = ChatTemplate::from_gguf(file).ok();
        let context_length = file.opt_u32(&file.arch_key("context_length")?)?.map(|c| c as usize);
        Ok(ModelVocab {
            tokenizer,
            template,
            template_in_file,
            context_length,
        })
    }

    fn from_hf_dir(dir: &Path) -> Result<ModelVocab, OpenError> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(OpenError::NoTokenizer { dir: dir.to_path_buf() });
        }
        let tokenizer = Tokenizer::from_hf_file(&tj)?;
        let read = |name: &str| -> Result<Option<serde_json::Value>, OpenError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| OpenError::Json {
                    path,
                    reason: e.to_string(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(OpenError::Json {
                    path,
                    reason: e.to_string(),
                }),
            }
        };
        let jinja = read("tokenizer_config.json")?
            .and_then(|c| c.get("chat_template").and_then(|t| t.as_str()).map(str::to_string));
        let config = read("config.json")?;
        let is_gemma = config
            .as_ref()
            .and_then(|c| c.get("model_type")?.as_str())
            .is_some_and(|t| t.starts_with("gemma"));
        let template = match jinja.as_deref() {
            Some(j) => ChatTemplate::detect(j),
            None if is_gemma => Some(ChatTemplate::Gemma),
            None => None,
        };
        let context_length = config
            .as_ref()
            .and_then(|c| c.get("max_position_embeddings")?.as_u64())
            .map(|c| c as usize);
        Ok(ModelVocab {
            tokenizer,
            template,
            template_in_file: jinja.is_some(),
            context_length,
        })
    }
}

impl ModelVocab {
    /// The chat format, which instruction-following front ends (steering, the local LM) require.
    pub fn require_template(&self, path: &Path) -> Result<ChatTemplate, OpenError> {
        self.template.clone().ok_or_else(|| OpenError::NoChatTemplate {
            path: path.to_path_buf(),
        })
    }

    /// The tokens that end a generation: the tokenizer's EOS ids and the chat formats' end-of-turn
    /// tokens (`<end_of_turn>`, `<|im_end|>`) where the vocabulary has them; sorted, no repeats.
    pub fn stop_tokens(&self) -> Vec<i64> {
        let t = &self.tokenizer;
        let mut stops: Vec<i64> = t.eos_ids().iter().map(|&i| i64::from(i)).collect();
        stops.extend(
            ["<end_of_turn>", "<|im_end|>"]
                .iter()
                .filter_map(|s| t.token_to_id(s))
                .map(i64::from),
        );
        stops.sort_unstable();
        stops.dedup();
        stops
    }
}

/// A loaded model with its tokenizer and chat format.
pub struct OpenedModel {
    pub model: Model,
    pub vocab: ModelVocab,
}

/// Loads the weights of `path` (GGUF file or HF directory) and reads its tokenizer, chat format
/// and context length: what a front end needs to turn text into tokens and back.
pub fn open_model(path: &Path, options: &LoadOptions) -> Result<OpenedModel, OpenError> {
    let vocab = ModelVocab::open(path)?;
    let model = Model::load(path, options)?;
    Ok(OpenedModel { model, vocab })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_paths_are_errors_that_name_the_flag() {
        let err = resolve_model("/no/such/model.gguf").unwrap_err();
        assert!(err.contains("--model /no/such/model.gguf"), "{err}");
    }

    #[test]
    fn hf_dir_without_tokenizer_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModelVocab::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("tokenizer.json"),
            "{e}"
        );
    }

    #[test]
    fn hf_dir_with_bad_config_names_the_file() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap();
        let tiny = repo.join("tests/golden/models/tiny-llama");
        let dir = tempfile::tempdir().unwrap();
        // Any tokenizer.json will do; write a minimal word-level one.
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"a":0,"<unk>":1},"unk_token":"<unk>"}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let e = ModelVocab::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        // A Gemma config without a chat template gets Gemma's turns; a Llama one gets none.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type": "gemma3_text", "max_position_embeddings": 32768}"#,
        )
        .unwrap();
        let v = ModelVocab::open(dir.path()).unwrap();
        assert_eq!(v.template, Some(ChatTemplate::Gemma));
        assert!(!v.template_in_file);
        assert_eq!(v.context_length, Some(32768));
        std::fs::copy(tiny.join("config.json"), dir.path().join("config.json")).unwrap();
        let v = ModelVocab::open(dir.path()).unwrap();
        assert_eq!(v.template, None);
    }
}
