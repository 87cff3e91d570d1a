//! The seam between the client (cache, retries, accounting) and whatever answers a chat request.
//!
//! A backend makes exactly ONE attempt per `chat` call and classifies what went wrong; retrying,
//! caching and counting are the client's business, so a local model runtime plugged in later gets
//! them for free.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::types::{ChatRequest, Completion};

/// A boxed, sendable future: what [`LmBackend::chat`] returns, so backends can live behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that answers chat requests: a remote OpenAI-compatible API, the test server, or a
/// local model.
pub trait LmBackend: Send + Sync {
    /// One attempt at answering `request`.
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, BackendError>>;

    /// A short name for logs and manifests (never contains credentials).
    fn describe(&self) -> String;
}

/// What went wrong in one attempt, classified by whether trying again can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// HTTP 429. `retry_after` is the server's `Retry-After`/`retry-after-ms` hint, if any.
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// HTTP 5xx.
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// No complete reply within the attempt's time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect, or the connection broke mid-reply.
    #[error("connection error: {0}")]
    Connection(String),
    /// HTTP 200 but the body is not a chat completion (truncated or malformed JSON).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// HTTP 200, well-formed, but `choices` is empty.
    #[error("response has no choices")]
    EmptyChoices,
    /// Any other 4xx (bad request, authentication, unknown model): retrying cannot help.
    #[error("request rejected (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// A local backend's own failure; `retryable` says whether another attempt may help.
    #[error("backend failure: {message}")]
    Other { message: String, retryable: bool },
}

impl BackendError {
    /// Whether another attempt might succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Rejected { .. } => false,
            BackendError::Other { retryable, .. } => *retryable,
            _ => true,
        }
    }

    /// The stable name of the failure class, used in counts and records.
    pub fn kind(&self) -> FailureKind {
        match self {
            BackendError::RateLimited { .. } => FailureKind::RateLimited,
            BackendError::Server { .. } => FailureKind::Server,
            BackendError::Timeout(_) => FailureKind::Timeout,
            BackendError::Connection(_) => FailureKind::Connection,
            BackendError::InvalidResponse(_) => FailureKind::InvalidResponse,
            BackendError::EmptyChoices => FailureKind::EmptyChoices,
            BackendError::Rejected { .. } => FailureKind::Rejected,
            BackendError::Other { .. } => FailureKind::Other,
        }
    }
}

/// Failure classes, for per-kind counts in run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    RateLimited,
    Server,
    Timeout,
    Connection,
    InvalidResponse,
    EmptyChoices,
    Rejected,
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Server => "server",
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::EmptyChoices => "empty_choices",
            FailureKind::Rejected => "rejected",
            FailureKind::Other => "other",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
