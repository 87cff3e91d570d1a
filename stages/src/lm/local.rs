//! [`LocalBackend`]: an [`LmBackend`] that answers chat requests with our own model runtime instead of an HTTP API,
//! so judging and synthesis run offline (by default on the embedded SmolLM2-135M-Instruct GGUF).
//!
//! It speaks the same [`ChatRequest`] → [`Completion`] shapes as the remote backend, so [`LmClient`](super::LmClient)
//! gives it the same cache, retries and accounting. The model's identity in requests — and therefore in cache keys
//! — is `local:<file stem>@<blake3 of the file>` ([`LocalBackend::model_id`]): replacing the file with different
//! bytes under the same name never reuses a stale answer, and a copy elsewhere reuses every answer.
//!
//! Decoding: `temperature` 0 is greedy, anything else samples with `temperature` and `top_p` (defaults 1.0, as
//! OpenAI's); `seed` (default 0) seeds the sampler, so a request is answered identically every time; `max_tokens`
//! defaults to [`DEFAULT_MAX_TOKENS`]. One request runs at a time (a blocking thread holds the model); concurrency
//! comes from the cache, not from parallel decoding.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axbench_models::chat::{ChatTemplate, Message as ChatMessage};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{FinishReason as GenFinish, GenerateConfig, Prompt, Sampling, generate};
use axbench_models::gguf::GgufFile;
use axbench_models::hooks::Hooks;
use axbench_models::tokenizer::Tokenizer;
use axbench_models::{LoadOptions, Model};

use super::backend::{BackendError, BoxFuture, LmBackend};
use super::types::{ChatRequest, Completion, FinishReason, Role, Usage};

/// `max_tokens` when a request does not set one.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Why a local model could not be set up. Errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum LocalSetupError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{0}")]
    Resolve(String),
}

struct Loaded {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stops: Vec<i64>,
}

/// A GGUF chat model answering [`ChatRequest`]s in process.
pub struct LocalBackend {
    id: String,
    path: PathBuf,
    inner: Arc<Mutex<Loaded>>,
}

impl LocalBackend {
    /// Loads a GGUF chat model (its chat template comes from the file, or Gemma's turn format for Gemma files).
    pub fn load(path: &Path, device: DeviceSpec) -> Result<Self, LocalSetupError> {
        let err = |m: String| LocalSetupError::Load { path: path.to_path_buf(), message: m };
        if path.is_dir() {
            return Err(err("the local LM backend reads .gguf files (HF directories are not supported here yet)".into()));
        }
        let digest = axbench_cache::hash_file(path).map_err(|e| err(e.to_string()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let model = Model::load(path, &LoadOptions { device, dtype: DType::F32 }).map_err(|e| err(e.to_string()))?;
        let tokenizer = Tokenizer::from_gguf_path(path).map_err(|e| err(e.to_string()))?;
        let file = GgufFile::open(path).map_err(|e| err(e.to_string()))?;
        let template = ChatTemplate::from_gguf(&file).map_err(|e| err(e.to_string()))?;
        let mut stops: Vec<i64> = tokenizer.eos_ids().iter().map(|&i| i64::from(i)).collect();
        for t in ["<end_of_turn>", "<|im_end|>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                stops.push(i64::from(id));
            }
        }
        stops.sort_unstable();
        stops.dedup();
        Ok(LocalBackend { id: format!("local:{stem}@{}", digest.to_hex()), path: path.to_path_buf(), inner: Arc::new(Mutex::new(Loaded { model, tokenizer, template, stops })) })
    }

    /// `spec`: `default-instruct` (SmolLM2-135M-Instruct), `default` (gemma-3-270m base) or a path, resolved like
    /// `--model` (see [`axbench_serve::resolve::resolve_model`]).
    pub fn from_spec(spec: &str, device: DeviceSpec) -> Result<Self, LocalSetupError> {
        let path = axbench_serve::resolve::resolve_model(spec).map_err(LocalSetupError::Resolve)?;
        Self::load(&path, device)
    }

    /// The model name requests must carry, and the cache keys hold: `local:<stem>@<blake3 hex>`.
    pub fn model_id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Answers one request on the loaded model (blocking).
fn answer(m: &Loaded, id: &str, request: &ChatRequest) -> Result<Completion, BackendError> {
    let reject = |message: String| BackendError::Rejected { status: 400, message };
    let messages: Vec<ChatMessage> = request
        .messages
        .iter()
        .map(|msg| match msg.role {
            Role::System => ChatMessage::system(msg.content.clone()),
            Role::User => ChatMessage::user(msg.content.clone()),
            Role::Assistant => ChatMessage::assistant(msg.content.clone()),
        })
        .collect();
    let ids = m.template.encode(&m.tokenizer, &messages, true).map_err(|e| reject(e.to_string()))?;
    let p = &request.params;
    let temperature = p.temperature.unwrap_or(1.0) as f64;
    let top_p = p.top_p.unwrap_or(1.0) as f64;
    let sampling = if temperature <= 0.0 { Sampling::Greedy } else { Sampling::Sample { temperature, top_p } };
    let max_new_tokens = p.max_tokens.map(|t| t as usize).unwrap_or(DEFAULT_MAX_TOKENS);
    let cfg = GenerateConfig { max_new_tokens, sampling, seed: p.seed.unwrap_or(0) as u64, stop_tokens: m.stops.clone(), pad_token_id: 0 };
    let prompt_tokens = ids.len() as u64;
    let prompt = Prompt::from(ids.into_iter().map(i64::from).collect::<Vec<_>>());
    let g = generate(&m.model, &[prompt], &cfg, &Hooks::none()).map_err(|e| BackendError::Other { message: e.to_string(), retryable: false })?;
    let g = g.into_iter().next().ok_or(BackendError::EmptyChoices)?;
    let (finish_reason, body): (FinishReason, &[i64]) = match g.finish {
        GenFinish::Stop(_) => (FinishReason::Stop, &g.tokens[..g.tokens.len().saturating_sub(1)]),
        GenFinish::Length => (FinishReason::Length, &g.tokens[..]),
    };
    let body: Vec<u32> = body.iter().map(|&t| t as u32).collect();
    let text = m.tokenizer.decode(&body, true).map_err(|e| BackendError::Other { message: e.to_string(), retryable: false })?;
    Ok(Completion { text, finish_reason, refusal: None, usage: Usage { prompt_tokens, completion_tokens: g.tokens.len() as u64 }, model: id.to_owned() })
}

impl LmBackend for LocalBackend {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            if request.model != self.id {
                return Err(BackendError::Rejected { status: 404, message: format!("model {:?} is not served here (this backend serves {:?})", request.model, self.id) });
            }
            let inner = self.inner.clone();
            let id = self.id.clone();
            let request = request.clone();
            tokio::task::spawn_blocking(move || {
                let m = inner.lock().unwrap_or_else(|e| e.into_inner());
                answer(&m, &id, &request)
            })
            .await
            .map_err(|e| BackendError::Other { message: format!("generation task failed: {e}"), retryable: false })?
        })
    }

    fn describe(&self) -> String {
        format!("local model {} ({})", self.path.display(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{CallOutcome, ClientOptions, LmCache, LmClient, LmSettings, PriceTable, SamplingParams, Source};

    fn smollm() -> Option<LocalBackend> {
        match LocalBackend::from_spec("default-instruct", DeviceSpec::Cpu) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smollm2_answers_deterministically_through_the_cached_client() {
        let Some(backend) = smollm() else { return };
        let digest = axbench_cache::hash_file(backend.path()).unwrap().to_hex();
        assert!(backend.model_id().starts_with("local:smollm2-135m-instruct-q4_1@") && backend.model_id().ends_with(&digest), "{}", backend.model_id());
        let params = SamplingParams { temperature: Some(0.7), max_tokens: Some(6), seed: Some(3), ..Default::default() };
        let req = ChatRequest::user(backend.model_id(), "Name a color.", params.clone());
        let a = backend.chat(&req).await.unwrap();
        let b = backend.chat(&req).await.unwrap();
        assert_eq!(a, b, "same seed, same answer");
        assert!(a.usage.completion_tokens >= 1 && a.usage.completion_tokens <= 6, "{a:?}");
        assert!(!a.text.is_empty());
        assert_eq!(a.model, backend.model_id());

        // Another model name is rejected without retrying.
        let other = ChatRequest::user("gpt-4o-mini", "Name a color.", params);
        let e = backend.chat(&other).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");

        // Through the client: the second call is a cache hit with the same text.
        let dir = tempfile::tempdir().unwrap();
        let cache = LmCache::open(dir.path()).unwrap();
        let options = ClientOptions::from_settings(&LmSettings::default(), PriceTable::default(), Some(cache));
        let client = LmClient::new(Arc::new(backend), options);
        let first = client.call(&req).await;
        let second = client.call(&req).await;
        assert_eq!((first.source, second.source), (Source::Backend, Source::Cache));
        assert_eq!(first.text(), Some(a.text.as_str()));
        assert!(matches!(second.outcome, CallOutcome::Completed(ref c) if c.text == a.text));
    }
}
