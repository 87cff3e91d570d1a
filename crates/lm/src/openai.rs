//! The remote backend: any OpenAI-compatible `/chat/completions` endpoint, through `async-openai`.
//!
//! async-openai's default transport retries 429/5xx on its own, which would hide attempts from our
//! counts and ignore our backoff policy, so we install our own tower service instead: it sends
//! exactly one HTTP request per attempt and notes the status and `Retry-After` of the response
//! (async-openai drops response headers when it turns a 429 into an error).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason as OaFinishReason,
};

use super::backend::{BackendError, BoxFuture, LmBackend};
use super::settings::LmSettings;
use super::types::{ChatRequest, Completion, FinishReason, Role, Usage};

/// Errors building a backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiSetupError {
    #[error("environment variable {0} (the LM API key) is not set")]
    MissingApiKey(String),
    #[error("lm settings: timeout_s must be a positive number of seconds, got {0}")]
    BadTimeout(f64),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// Status and rate-limit hint of the last HTTP response seen within one attempt.
#[derive(Debug, Clone, Copy)]
struct ResponseMeta {
    status: u16,
    retry_after: Option<Duration>,
}

tokio::task_local! {
    /// Set by [`OpenAiBackend::chat`] around each attempt; written by the transport.
    static RESPONSE_META: Arc<Mutex<Option<ResponseMeta>>>;
}

/// The `Retry-After` hint of a response: OpenAI's `retry-after-ms` first (finer), then the
/// standard `Retry-After` in whole seconds. (HTTP-date values are ignored: our backoff applies.)
pub(crate) fn retry_after_from_headers(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// One HTTP request per call, no retries; records status and Retry-After for the attempt.
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            let meta = ResponseMeta {
                status: response.status().as_u16(),
                retry_after: retry_after_from_headers(response.headers()),
            };
            let _ = RESPONSE_META.try_with(|slot| *slot.lock().expect("meta lock") = Some(meta));
            Ok(response)
        })
    }
}

/// A chat backend talking to an OpenAI-compatible server.
pub struct OpenAiBackend {
    client: async_openai::Client<OpenAIConfig>,
    base_url: String,
    timeout: Duration,
    /// Kept only to scrub the key out of error messages a server might echo back.
    redact: Redactor,
}

/// Replaces the API key in free text (error messages) before it can reach a record or a log.
struct Redactor(String);

impl Redactor {
    fn scrub(&self, text: String) -> String {
        if self.0.len() >= 4 && text.contains(&self.0) {
            text.replace(&self.0, "[redacted]")
        } else {
            text
        }
    }
}

impl std::fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No config dump: it holds the key.
        f.debug_struct("OpenAiBackend")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OpenAiBackend {
    /// Build a backend, reading the API key from `settings.api_key_env`.
    pub fn from_env(settings: &LmSettings) -> Result<Self, OpenAiSetupError> {
        let key = std::env::var(&settings.api_key_env)
            .map_err(|_| OpenAiSetupError::MissingApiKey(settings.api_key_env.clone()))?;
        Self::with_api_key(settings, key)
    }

    /// Build a backend with an explicit key (tests, or keys from a secret store). The key lives
    /// only inside async-openai's `SecretString`, which redacts it from `Debug`.
    pub fn with_api_key(settings: &LmSettings, api_key: String) -> Result<Self, OpenAiSetupError> {
        if !(settings.timeout_s.is_finite() && settings.timeout_s > 0.0) {
            return Err(OpenAiSetupError::BadTimeout(settings.timeout_s));
        }
        let timeout = Duration::from_secs_f64(settings.timeout_s);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| OpenAiSetupError::Http(e.to_string()))?;
        let base_url = settings.base_url.trim_end_matches('/').to_string();
        let config = OpenAIConfig::new()
            .with_api_base(base_url.clone())
            .with_api_key(api_key.clone());
        let client = async_openai::Client::with_config(config).with_http_service(Transport { http });
        Ok(Self {
            client,
            base_url,
            timeout,
            redact: Redactor(api_key),
        })
    }

    fn to_openai(request: &ChatRequest) -> CreateChatCompletionRequest {
        let messages = request
            .messages
            .iter()
            .map(|m| match m.role {
                Role::System => ChatCompletionRequestSystemMessage::from(m.content.as_str()).into(),
                Role::User => ChatCompletionRequestUserMessage::from(m.content.as_str()).into(),
                Role::Assistant => ChatCompletionRequestAssistantMessage::from(m.content.as_str()).into(),
            })
            .collect::<Vec<ChatCompletionRequestMessage>>();
        // `max_tokens` (not `max_completion_tokens`): every OpenAI-compatible server accepts it,
        // including llama.cpp and vLLM, and gpt-4o-mini still honours it.
        #[allow(deprecated)]
        CreateChatCompletionRequest {
            model: request.model.clone(),
            messages,
            temperature: request.params.temperature,
            top_p: request.params.top_p,
            seed: request.params.seed,
            max_tokens: request.params.max_tokens,
            ..Default::default()
        }
    }

    fn scrub(&self, error: BackendError) -> BackendError {
        let r = &self.redact;
        match error {
            BackendError::RateLimited { retry_after, message } => BackendError::RateLimited {
                retry_after,
                message: r.scrub(message),
            },
            BackendError::Server { status, message } => BackendError::Server {
                status,
                message: r.scrub(message),
            },
            BackendError::Rejected { status, message } => BackendError::Rejected {
                status,
                message: r.scrub(message),
            },
            BackendError::Connection(m) => BackendError::Connection(r.scrub(m)),
            BackendError::InvalidResponse(m) => BackendError::InvalidResponse(r.scrub(m)),
            BackendError::Other { message, retryable } => BackendError::Other {
                message: r.scrub(message),
                retryable,
            },
            e @ (BackendError::Timeout(_) | BackendError::EmptyChoices) => e,
        }
    }

    fn classify(error: OpenAIError, meta: Option<ResponseMeta>, timeout: Duration) -> BackendError {
        // The status decides first: a 429 with a non-JSON body is still a rate limit.
        if let Some(meta) = meta {
            let message = error.to_string();
            match meta.status {
                429 => {
                    return BackendError::RateLimited {
                        retry_after: meta.retry_after,
                        message,
                    };
                }
                s if s >= 500 => return BackendError::Server { status: s, message },
                s if s >= 400 => return BackendError::Rejected { status: s, message },
                _ => {}
            }
        }
        match error {
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let message = api.api_error.message;
                match status {
                    429 => BackendError::RateLimited {
                        retry_after: None,
                        message,
                    },
                    s if s >= 500 => BackendError::Server { status: s, message },
                    s => BackendError::Rejected { status: s, message },
                }
            }
            OpenAIError::JSONDeserialize(e, _) => BackendError::InvalidResponse(e.to_string()),
            OpenAIError::Reqwest(e) if e.is_timeout() => BackendError::Timeout(timeout),
            OpenAIError::Reqwest(e) if e.is_decode() => BackendError::InvalidResponse(e.to_string()),
            OpenAIError::Reqwest(e) => BackendError::Connection(e.without_url().to_string()),
            OpenAIError::StreamError(e) => BackendError::Connection(e.to_string()),
            other => BackendError::Other {
                message: other.to_string(),
                retryable: false,
            },
        }
    }
}

/// Turn the first choice of a response into our [`Completion`], or say why it cannot be.
pub(crate) fn completion_from_response(response: CreateChatCompletionResponse) -> Result<Completion, BackendError> {
    let choice = response.choices.into_iter().next().ok_or(BackendError::EmptyChoices)?;
    let finish_reason = match choice.finish_reason {
        Some(OaFinishReason::Stop) => FinishReason::Stop,
        Some(OaFinishReason::Length) => FinishReason::Length,
        Some(OaFinishReason::ContentFilter) => FinishReason::ContentFilter,
        Some(OaFinishReason::ToolCalls) | Some(OaFinishReason::FunctionCall) => FinishReason::ToolCalls,
        None => FinishReason::Unknown,
    };
    let mut refusal = choice.message.refusal.filter(|r| !r.is_empty());
    if refusal.is_none() && finish_reason == FinishReason::ContentFilter {
        refusal = Some("content_filter".to_string());
    }
    let usage = response
        .usage
        .map(|u| Usage {
            prompt_tokens: u.prompt_tokens as u64,
            completion_tokens: u.completion_tokens as u64,
        })
        .unwrap_or_default();
    Ok(Completion {
        text: choice.message.content.unwrap_or_default(),
        finish_reason,
        refusal,
        usage,
        model: response.model,
    })
}

impl LmBackend for OpenAiBackend {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            // Chat completions expose no scoring of given continuations, so a constrained request cannot be
            // answered faithfully; a per-call error (not retried) says so instead of silently generating.
            if request.constraint.is_some() {
                return Err(BackendError::Rejected {
                    status: 400,
                    message: format!(
                        "constrained (choice) requests need the local backend; {} cannot score choices (use rating = \"generate\")",
                        self.describe()
                    ),
                });
            }
            let meta = Arc::new(Mutex::new(None));
            let body = Self::to_openai(request);
            let attempt = RESPONSE_META.scope(meta.clone(), async {
                tokio::time::timeout(self.timeout, self.client.chat().create(body)).await
            });
            let result = attempt.await;
            let seen = *meta.lock().expect("meta lock");
            match result {
                Err(_elapsed) => Err(BackendError::Timeout(self.timeout)),
                Ok(Err(error)) => Err(self.scrub(Self::classify(error, seen, self.timeout))),
                Ok(Ok(response)) => completion_from_response(response),
            }
        })
    }

    fn describe(&self) -> String {
        format!("openai-compatible at {}", self.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after_from_headers(&h), None);
    }

    #[test]
    fn bad_timeout_is_rejected() {
        let s = LmSettings {
            timeout_s: 0.0,
            ..Default::default()
        };
        assert!(matches!(
            OpenAiBackend::with_api_key(&s, "k".into()),
            Err(OpenAiSetupError::BadTimeout(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let b = OpenAiBackend::with_api_key(&LmSettings::default(), "sk-very-secret".into()).unwrap();
        assert!(!format!("{b:?}").contains("sk-very-secret"));
    }
}
