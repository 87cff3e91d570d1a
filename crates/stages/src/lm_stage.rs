//! The LM backend params that every stage talking to a language model declares (`axbench.judge`,
//! `axbench.synthesize`, `axbench.prompt_detect`), and the cached [`LmClient`] built from them, so the stages agree on
//! names, meanings and caching:
//!
//! | param         | meaning                                                                                       |
//! |---------------|-----------------------------------------------------------------------------------------------|
//! | `backend`     | `local` (our runtime, in process) or `openai` (an OpenAI-compatible API, key from `$OPENAI_API_KEY`) |
//! | `model`       | local: `default-instruct`, `default` or a `.gguf` path; openai: the model name (`gpt-4o-mini`) |
//! | `base_url`    | openai: API base URL up to `/v1`                                                              |
//! | `temperature`, `max_tokens` (0: none), `seed` | decoding                                                      |
//! | `cache_dir`   | LM answer cache, relative to the project; not hashed (answers are keyed by the full request)  |
//! | `concurrency` | calls in flight                                                                               |
//!
//! The defaults differ per stage (AxBench's judge samples at 0.7, its data generation at 1.0): [`LmDefaults`].
//!
//! **Failed calls.** The client retries each call a bounded number of times and never throws a call's failure at
//! the stage: it ends on the call's record. A stage then fails its node when any call ended in a *transient* failure
//! (rate limit, 5xx, timeout, connection, invalid or empty reply: [`check_failed_calls`]), naming the counts by
//! class. Without this, a node computed during an outage would be cached with the failed calls counted as "no reply"
//! (rated 0, rows dropped) and a rerun would never ask again. Answered calls are in the LM cache, so the rerun pays
//! only for the calls that failed. Calls the API rejects (4xx other than 429) or the backend cannot answer at all
//! would fail the same way every time: they stay recorded in the stage's metadata and the node succeeds.
//!
//! **Retry knobs** (environment, not params: they change how long a call may take, not what a node computes, so
//! they are not in node keys): `AXBENCH_LM_TIMEOUT_S` (per attempt, default 60), `AXBENCH_LM_MAX_ATTEMPTS` (first
//! included, default 4), `AXBENCH_LM_RETRY_BASE_MS` (backoff before the second attempt, doubling; default 500).

use std::sync::Arc;

use axbench_engine::{ParamSpec, ParamType, StageContext, StageError};
use axbench_models::device::DeviceSpec;

use super::fail;
use axbench_lm::{
    CallOutcome, CallRecord, ClientOptions, LmBackend, LmCache, LmClient, LmSettings, LmStats, LocalBackend,
    OpenAiBackend, PriceTable, SamplingParams,
};

/// A stage's defaults for the LM params.
#[derive(Debug, Clone, Copy)]
pub struct LmDefaults {
    pub model: &'static str,
    pub temperature: f64,
    /// 0: no limit.
    pub max_tokens: i64,
    /// What the LM does in this stage, for the params' docs.
    pub role: &'static str,
}

/// The LM params with `d`'s defaults (see the module doc).
pub fn lm_params(d: LmDefaults) -> Vec<ParamSpec> {
    vec![
        ParamSpec::optional(
            "backend",
            ParamType::Str,
            "local",
            "local (our runtime) or openai (an OpenAI-compatible API)",
        ),
        ParamSpec::optional(
            "model",
            ParamType::Str,
            d.model,
            "local: default-instruct, default or a .gguf path; openai: the model name (gpt-4o-mini)",
        ),
        ParamSpec::optional(
            "base_url",
            ParamType::Str,
            "https://api.openai.com/v1",
            "openai backend: API base URL up to /v1",
        ),
        ParamSpec::optional("temperature", ParamType::Float, d.temperature, d.role),
        ParamSpec::optional(
            "max_tokens",
            ParamType::Int,
            d.max_tokens,
            "LM reply length limit (0: none)",
        ),
        ParamSpec::optional("seed", ParamType::Int, 0, "LM sampling seed"),
        ParamSpec::optional(
            "cache_dir",
            ParamType::Str,
            ".axbench/lm_cache",
            "LM answer cache, relative to the project (not hashed)",
        ),
        ParamSpec::optional("concurrency", ParamType::Int, 8, "LM calls in flight"),
    ]
}

/// The cached client a stage sends its calls to, with the model name its requests must carry and their decoding
/// params.
pub struct StageLm {
    pub client: LmClient,
    /// `local:<stem>@<blake3>/r<revision>` for the local backend (so cache keys follow the file's bytes), else `model`.
    pub model_id: String,
    pub params: SamplingParams,
    /// The backend in words, for logs and metadata.
    pub describe: String,
}

/// Builds the client from the LM params of `ctx` ([`lm_params`]). Errors name the param at fault.
pub fn build_lm(ctx: &StageContext) -> Result<StageLm, StageError> {
    let backend_kind = ctx.param_str("backend")?.to_owned();
    let model_spec = ctx.param_str("model")?.to_owned();
    let mut settings = LmSettings {
        model: model_spec.clone(),
        base_url: ctx.param_str("base_url")?.to_owned(),
        concurrency: ctx.param_i64("concurrency")?.max(1) as usize,
        ..Default::default()
    };
    retry_knobs(&mut settings)?;
    let max_tokens = ctx.param_i64("max_tokens")?;
    let params = SamplingParams {
        temperature: Some(ctx.param_f64("temperature")? as f32),
        max_tokens: (max_tokens > 0).then_some(max_tokens as u32),
        seed: Some(ctx.param_i64("seed")?),
        ..Default::default()
    };
    let (backend, model_id): (Arc<dyn LmBackend>, String) = match backend_kind.as_str() {
        "local" => {
            let b = LocalBackend::from_spec(&model_spec, DeviceSpec::Cpu).map_err(|e| StageError::Param {
                name: "model".into(),
                message: e.to_string(),
            })?;
            let id = b.model_id().to_owned();
            (Arc::new(b), id)
        }
        "openai" => {
            settings.temperature = params.temperature;
            let b = OpenAiBackend::from_env(&settings).map_err(|e| StageError::Param {
                name: "backend".into(),
                message: e.to_string(),
            })?;
            (Arc::new(b), model_spec.clone())
        }
        other => {
            return Err(StageError::Param {
                name: "backend".into(),
                message: format!("unknown backend {other:?}: local or openai"),
            });
        }
    };
    let describe = backend.describe();
    let cache_dir = ctx.project_dir().join(ctx.param_str("cache_dir")?);
    let cache = LmCache::open(&cache_dir).map_err(|e| fail(cache_dir.display(), e))?;
    let client = LmClient::new(
        backend,
        ClientOptions::from_settings(&settings, PriceTable::default(), Some(cache)),
    );
    Ok(StageLm {
        client,
        model_id,
        params,
        describe,
    })
}

/// Applies the `AXBENCH_LM_*` retry knobs of the environment (module doc) to `settings`.
fn retry_knobs(settings: &mut LmSettings) -> Result<(), StageError> {
    fn read<T: std::str::FromStr>(name: &str, ok: impl Fn(&T) -> bool) -> Result<Option<T>, StageError> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(v) => v.trim().parse::<T>().ok().filter(|x| ok(x)).map(Some).ok_or_else(|| {
                StageError::msg(format!("environment variable {name}={v:?}: expected a positive number"))
            }),
        }
    }
    if let Some(t) = read::<f64>("AXBENCH_LM_TIMEOUT_S", |t| t.is_finite() && *t > 0.0)? {
        settings.timeout_s = t;
    }
    if let Some(n) = read::<u32>("AXBENCH_LM_MAX_ATTEMPTS", |n| *n > 0)? {
        settings.retry.max_attempts = n;
    }
    if let Some(ms) = read::<u64>("AXBENCH_LM_RETRY_BASE_MS", |_| true)? {
        settings.retry.base_delay_ms = ms;
    }
    Ok(())
}

/// Failure classes another attempt later may cure (the client retried them and gave up).
pub const TRANSIENT_FAILURES: [&str; 6] = [
    "rate_limited",
    "server",
    "timeout",
    "connection",
    "invalid_response",
    "empty_choices",
];

/// Fails the node when any LM call ended in a transient failure (module doc), after logging each failed call of
/// `records` (class, attempts, message; the backend scrubbed credentials from it). The error names how many calls
/// failed, by class, out of how many.
pub fn check_failed_calls(ctx: &mut StageContext, stats: &LmStats, records: &[CallRecord]) -> Result<(), StageError> {
    for r in records {
        if let CallOutcome::Failed(f) = &r.outcome {
            ctx.log(format!(
                "LM call {} failed after {} attempts: {}: {}",
                r.key, f.attempts, f.kind, f.message
            ));
        }
    }
    let transient: u64 = stats
        .failures_by_kind
        .iter()
        .filter(|(k, _)| TRANSIENT_FAILURES.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    if transient == 0 {
        return Ok(());
    }
    let by_kind = stats
        .failures_by_kind
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(StageError::msg(format!(
        "{} of {} LM calls failed after retries ({by_kind}); {} answered calls are cached, so a rerun asks only the failed ones",
        stats.failed,
        stats.calls,
        stats.completed + stats.refused
    )))
}

/// A two-worker tokio runtime for a stage's async LM calls (stages run on blocking threads).
pub fn runtime() -> Result<tokio::runtime::Runtime, StageError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail("tokio runtime", e))
}
