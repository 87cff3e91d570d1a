//! The LM client: how AxBench's stages talk to a language model (gpt-4o-mini for data synthesis
//! and judging, or a local model later).
//!
//! ```text
//!   stage ──► LmClient::call(ChatRequest) ──► LmCache (blake3 of canonical request) ── hit ──► record
//!                   │ miss
//!                   ▼
//!            semaphore (≤ concurrency in flight) ──► LmBackend::chat (one attempt)
//!                   ▲                                      │ error, classified
//!                   └──── backoff + jitter / Retry-After ◄─┘ (bounded attempts, then Failed)
//! ```
//!
//! - [`types`]: the request/reply shapes every backend speaks.
//! - [`backend`]: the [`LmBackend`] trait and the classified [`BackendError`].
//! - [`openai`]: the remote backend on `async-openai`.
//! - [`cache`]: the content-addressed directory store.
//! - [`cost`]: the price table and what a run spent.
//! - [`settings`]: [`LmSettings`] and the [`RetryPolicy`].
//! - [`client`]: [`LmClient`], tying them together.
//! - [`test_server`]: a fault-injecting OpenAI-compatible server for tests and benchmarks.

pub mod backend;
pub mod cache;
pub mod client;
pub mod cost;
pub mod openai;
pub mod settings;
pub mod test_server;
pub mod types;

pub use backend::{BackendError, BoxFuture, FailureKind, LmBackend};
pub use cache::{CacheKey, LmCache, cache_key, canonical_json};
pub use client::{CallFailure, CallOutcome, CallRecord, ClientOptions, LmClient, LmStats, Source};
pub use cost::{Price, PriceTable};
pub use openai::{OpenAiBackend, OpenAiSetupError};
pub use settings::{LmSettings, RetryPolicy};
pub use types::{ChatRequest, Completion, FinishReason, Message, Role, SamplingParams, Usage};
