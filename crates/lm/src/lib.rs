//! The LM client: how AxBench's stages talk to a language model (gpt-4o-mini for data synthesis
//! and judging, or a local model), and the two AxBench procedures that are conversations with one:
//! [`judge`] (the judge's prompts, rating parser, harmonic mean, factor selection and win rates) and
//! [`synth`] (data synthesis).
//!
//! May import `axbench-data` (prompt templates) and `axbench-models` (the local backend); never the
//! engine or the stages. The fault-injecting test server lives in `axbench-testkit`.
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
//!
//! A stage builds one client and sends it every call:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axbench_lm::{ChatRequest, ClientOptions, LmCache, LmClient, LmSettings, OpenAiBackend, PriceTable};
//!
//! let settings: LmSettings = toml::from_str("model = \"gpt-4o-mini\"\ntemperature = 1.0")?;
//! let backend = Arc::new(OpenAiBackend::from_env(&settings)?); // key from $OPENAI_API_KEY
//! let prices = PriceTable::load("configs/lm_prices.toml".as_ref())?;
//! let cache = LmCache::open("lm-cache")?;
//! let client = LmClient::new(backend, ClientOptions::from_settings(&settings, prices, Some(cache)));
//! let records = client.call_many(&[ChatRequest::user(&settings.model, "Say hi", settings.params())]).await;
//! for r in &records {
//!     println!("{:?}", r.text()); // None for a refusal or a call that failed after retries
//! }
//! println!("{:?}", client.stats()); // calls, cache hits, retries, failures by kind, tokens, dollars
//! # Ok(()) }
//! ```

pub mod backend;
pub mod cache;
pub mod client;
pub mod cost;
pub mod local;
pub mod openai;
pub mod settings;
pub mod types;

pub mod judge;
pub mod synth;

pub use backend::{BackendError, BoxFuture, FailureKind, LmBackend};
pub use cache::{CacheKey, LmCache, cache_key, canonical_json};
pub use client::{CallFailure, CallOutcome, CallRecord, ClientOptions, LmClient, LmStats, Source};
pub use cost::{Price, PriceTable};
pub use local::{LocalBackend, LocalSetupError};
pub use openai::{OpenAiBackend, OpenAiSetupError};
pub use settings::{LmSettings, RetryPolicy};
pub use types::{ChatRequest, ChoiceConstraint, Completion, FinishReason, Message, Role, SamplingParams, Usage};
