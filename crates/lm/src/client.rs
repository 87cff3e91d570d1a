//! The LM client a stage calls: cache first, then a bounded number of attempts on the backend,
//! with at most `concurrency` attempts in flight, and every outcome counted.
//!
//! A call never returns `Err`: a call that keeps failing ends as [`CallOutcome::Failed`] on its
//! record, the run goes on, and [`LmStats`] reports how many failed and why. This is what a
//! 10 000-call judge stage needs: one bad reply must not throw away the other 9 999.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::backend::{BackendError, FailureKind, LmBackend};
use super::cache::{CacheKey, LmCache, cache_key};
use super::cost::PriceTable;
use super::settings::{LmSettings, RetryPolicy};
use super::types::{ChatRequest, Completion, Usage};

/// A call that gave up: the class of its last failure, how many attempts it made, and the last
/// error message (credentials scrubbed by the backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFailure {
    pub kind: FailureKind,
    pub attempts: u32,
    pub message: String,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CallOutcome {
    Completed(Completion),
    /// The model declined (`refusal` or a content filter); kept apart from answers.
    Refused(Completion),
    Failed(CallFailure),
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Cache,
    Backend,
    /// Failed before any answer.
    None,
}

/// The record of one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub key: CacheKey,
    pub outcome: CallOutcome,
    pub source: Source,
    /// Backend attempts this call made (0 on a cache hit).
    pub attempts: u32,
    /// Dollars this call cost this run (0 on a cache hit or for an unpriced model).
    pub cost_usd: f64,
}

impl CallRecord {
    /// The answer text, if the model answered.
    pub fn text(&self) -> Option<&str> {
        match &self.outcome {
            CallOutcome::Completed(c) => Some(&c.text),
            _ => None,
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.outcome, CallOutcome::Failed(_))
    }
}

/// Counts over every call this client made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LmStats {
    /// Calls asked of the client.
    pub calls: u64,
    pub cache_hits: u64,
    /// Attempts sent to the backend (HTTP requests for a remote backend).
    pub backend_attempts: u64,
    pub retries: u64,
    pub completed: u64,
    pub refused: u64,
    pub failed: u64,
    /// Failed calls by the class of their last error.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Failed attempts by class, retried ones included.
    pub attempt_errors_by_kind: BTreeMap<String, u64>,
    /// Tokens paid for this run (cache hits excluded).
    pub usage: Usage,
    /// Dollars paid this run.
    pub cost_usd: f64,
    /// Answers from models missing in the price table (their tokens are in `usage`, not in cost).
    pub unpriced_calls: u64,
}

/// Options of an [`LmClient`] beyond the backend.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub prices: PriceTable,
    /// `None` disables caching (every call pays).
    pub cache: Option<LmCache>,
}

impl ClientOptions {
    pub fn from_settings(settings: &LmSettings, prices: PriceTable, cache: Option<LmCache>) -> Self {
        Self {
            concurrency: settings.concurrency,
            retry: settings.retry.clone(),
            prices,
            cache,
        }
    }
}

/// Cache + retries + concurrency bound + accounting around any [`LmBackend`].
pub struct LmClient {
    backend: Arc<dyn LmBackend>,
    options: ClientOptions,
    permits: Arc<Semaphore>,
    stats: Mutex<LmStats>,
    /// One lock per key in flight, so identical concurrent calls pay once: the second waits and
    /// then finds the first's answer in the cache.
    in_flight: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl LmClient {
    pub fn new(backend: Arc<dyn LmBackend>, options: ClientOptions) -> Self {
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        Self {
            backend,
            options,
            permits,
            stats: Mutex::new(LmStats::default()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend(&self) -> &Arc<dyn LmBackend> {
        &self.backend
    }

    /// A snapshot of the counts so far.
    pub fn stats(&self) -> LmStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Answer one request.
    pub async fn call(&self, request: &ChatRequest) -> CallRecord {
        let key = cache_key(request);
        self.bump(|s| s.calls += 1);
        let gate = {
            let mut map = self.in_flight.lock().expect("in-flight lock");
            map.entry(key.clone()).or_default().clone()
        };
        let record = {
            let _held = gate.lock().await;
            self.call_locked(request, key.clone()).await
        };
        // Forget the per-key lock once nobody else holds it.
        let mut map = self.in_flight.lock().expect("in-flight lock");
        if map.get(&key).is_some_and(|g| Arc::strong_count(g) <= 2) {
            map.remove(&key);
        }
        drop(gate);
        record
    }

    /// Answer many requests concurrently (bounded by `concurrency`); records come back in order.
    pub async fn call_many(&self, requests: &[ChatRequest]) -> Vec<CallRecord> {
        futures::future::join_all(requests.iter().map(|r| self.call(r))).await
    }

    async fn call_locked(&self, request: &ChatRequest, key: CacheKey) -> CallRecord {
        if let Some(cache) = &self.options.cache
            && let Some(completion) = cache.get(&key)
        {
            self.bump(|s| {
                s.cache_hits += 1;
                if completion.is_refusal() {
                    s.refused += 1
                } else {
                    s.completed += 1
                }
            });
            let outcome = if completion.is_refusal() {
                CallOutcome::Refused(completion)
            } else {
                CallOutcome::Completed(completion)
            };
            return CallRecord {
                key,
                outcome,
                source: Source::Cache,
                attempts: 0,
                cost_usd: 0.0,
            };
        }

        let policy = &self.options.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let result = {
                let _permit = self.permits.acquire().await.expect("semaphore never closes");
                self.bump(|s| s.backend_attempts += 1);
                self.backend.chat(request).await
            };
            match result {
                Ok(completion) => return self.finish(request, key, completion, attempts).await,
                Err(error) => {
                    let kind = error.kind();
                    self.bump(|s| *s.attempt_errors_by_kind.entry(kind.to_string()).or_default() += 1);
                    if !error.is_retryable() || attempts >= max_attempts {
                        tracing::warn!(key = %key, attempts, error = %error, "LM call failed");
                        return self.fail(key, error, attempts);
                    }
                    let retry_after = match &error {
                        BackendError::RateLimited { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = policy.delay(attempts, retry_after, &mut rand::rng());
                    tracing::debug!(key = %key, attempts, error = %error, ?delay, "retrying LM call");
                    self.bump(|s| s.retries += 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn finish(&self, request: &ChatRequest, key: CacheKey, completion: Completion, attempts: u32) -> CallRecord {
        let price = self
            .options
            .prices
            .price(&request.model)
            .or_else(|| self.options.prices.price(&completion.model));
        let cost_usd = price.map(|p| p.cost(completion.usage)).unwrap_or(0.0);
        if let Some(cache) = &self.options.cache {
            // The write fsyncs twice: off the async workers, so other calls keep flowing.
            let (cache, k, r, c) = (cache.clone(), key.clone(), request.clone(), completion.clone());
            let stored = tokio::task::spawn_blocking(move || cache.put(&k, &r, &c)).await;
            match stored {
                Ok(Ok(())) => {}
                // A cache that cannot be written costs money on the next run, not correctness now.
                Ok(Err(e)) => tracing::warn!(error = %e, "could not store LM cache entry"),
                Err(e) => tracing::warn!(error = %e, "LM cache writer panicked"),
            }
        }
        let refused = completion.is_refusal();
        self.bump(|s| {
            s.usage.add(completion.usage);
            s.cost_usd += cost_usd;
            if price.is_none() {
                s.unpriced_calls += 1;
            }
            if refused { s.refused += 1 } else { s.completed += 1 }
        });
        let outcome = if refused {
            CallOutcome::Refused(completion)
        } else {
            CallOutcome::Completed(completion)
        };
        CallRecord {
            key,
            outcome,
            source: Source::Backend,
            attempts,
            cost_usd,
        }
    }

    fn fail(&self, key: CacheKey, error: BackendError, attempts: u32) -> CallRecord {
        let kind = error.kind();
        self.bump(|s| {
            s.failed += 1;
            *s.failures_by_kind.entry(kind.to_string()).or_default() += 1;
        });
        let failure = CallFailure {
            kind,
            attempts,
            message: error.to_string(),
        };
        CallRecord {
            key,
            outcome: CallOutcome::Failed(failure),
            source: Source::None,
            attempts,
            cost_usd: 0.0,
        }
    }

    fn bump(&self, f: impl FnOnce(&mut LmStats)) {
        f(&mut self.stats.lock().expect("stats lock"));
    }
}
