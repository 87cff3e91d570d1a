//! The LM client over real HTTP against the fault-injecting test server: every fault gets bounded
//! retries and then a recorded failure; cache hits make no requests; the concurrency bound holds;
//! the API key never reaches the cache; tokens and cost are counted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axbench_lm::{
    CallOutcome, ChatRequest, ClientOptions, FailureKind, FinishReason, LmBackend, LmCache, LmClient, LmSettings,
    OpenAiBackend, PriceTable, RetryPolicy, SamplingParams, Source,
};
use axbench_testkit::lm_server::{Fault, Reply, Rules, TestServer};

const KEY: &str = "sk-test-4f2c9e7a1b3d5f6e8a0c2b4d6f8e0a1c";

fn prices() -> PriceTable {
    PriceTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/lm_prices.toml")).unwrap()
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay_ms: 2,
        max_delay_ms: 10,
        max_retry_after_ms: 5_000,
    }
}

fn backend(server: &TestServer, timeout_s: f64) -> Arc<dyn LmBackend> {
    let settings = LmSettings {
        base_url: server.base_url(),
        timeout_s,
        ..Default::default()
    };
    Arc::new(OpenAiBackend::with_api_key(&settings, KEY.to_string()).unwrap())
}

fn client(server: &TestServer, cache: Option<&Path>, concurrency: usize, retry: RetryPolicy) -> LmClient {
    let options = ClientOptions {
        concurrency,
        retry,
        prices: prices(),
        cache: cache.map(|p| LmCache::open(p).unwrap()),
    };
    LmClient::new(backend(server, 2.0), options)
}

fn req(prompt: &str) -> ChatRequest {
    ChatRequest::user(
        "gpt-4o-mini",
        prompt,
        SamplingParams {
            temperature: Some(1.0),
            ..Default::default()
        },
    )
}

fn failure_kind(outcome: &CallOutcome) -> Option<(FailureKind, u32)> {
    match outcome {
        CallOutcome::Failed(f) => Some((f.kind, f.attempts)),
        _ => None,
    }
}

#[tokio::test]
async fn plain_completion_counts_tokens_and_cost() {
    let server = TestServer::with_fn(|_| Reply::text("four words of reply"))
        .await
        .unwrap();
    let c = client(&server, None, 4, fast_retry(3));
    let rec = c.call(&req("one two three")).await;
    assert_eq!(rec.text(), Some("four words of reply"));
    assert_eq!((rec.source, rec.attempts), (Source::Backend, 1));
    let stats = c.stats();
    // The server counts whitespace words: 3 prompt tokens, 4 completion tokens.
    assert_eq!((stats.usage.prompt_tokens, stats.usage.completion_tokens), (3, 4));
    let expected = (3.0 * 0.15 + 4.0 * 0.60) / 1e6;
    assert!(
        (stats.cost_usd - expected).abs() < 1e-15,
        "{} vs {expected}",
        stats.cost_usd
    );
    assert!((rec.cost_usd - expected).abs() < 1e-15);
    assert_eq!(server.requests(), 1);
}

/// Each fault, served forever: the client makes exactly `max_attempts` requests and records a
/// failure of the right class; the run goes on.
#[tokio::test]
async fn every_fault_gets_bounded_retries_then_a_recorded_failure() {
    let cases = [
        (
            Fault::RateLimit {
                retry_after_s: None,
                retry_after_ms: Some(1),
            },
            FailureKind::RateLimited,
        ),
        (Fault::ServerError(500), FailureKind::Server),
        (Fault::ServerError(503), FailureKind::Server),
        (Fault::TruncatedJson, FailureKind::InvalidResponse),
        (Fault::EmptyChoices, FailureKind::EmptyChoices),
    ];
    for (fault, kind) in cases {
        let f = fault.clone();
        let server = TestServer::with_fn(move |_| Reply::Fault(f.clone())).await.unwrap();
        let c = client(&server, None, 4, fast_retry(3));
        let rec = c.call(&req("hello")).await;
        assert_eq!(failure_kind(&rec.outcome), Some((kind, 3)), "{fault:?}: {rec:?}");
        assert_eq!(server.requests(), 3, "{fault:?}");
        let stats = c.stats();
        assert_eq!(stats.failed, 1);
        assert_eq!(stats.failures_by_kind.get(kind.as_str()), Some(&1));
        assert_eq!(stats.retries, 2);
        assert_eq!(stats.cost_usd, 0.0);
    }
}

#[tokio::test]
async fn timeouts_are_retried_then_recorded() {
    let server = TestServer::with_fn(|_| Reply::Fault(Fault::Hang(Duration::from_secs(5))))
        .await
        .unwrap();
    let options = ClientOptions {
        concurrency: 2,
        retry: fast_retry(2),
        prices: prices(),
        cache: None,
    };
    let c = LmClient::new(backend(&server, 0.3), options);
    let start = Instant::now();
    let rec = c.call(&req("slow")).await;
    assert_eq!(failure_kind(&rec.outcome), Some((FailureKind::Timeout, 2)));
    assert_eq!(server.requests(), 2);
    // Two attempts of 0.3 s each, not two 5 s hangs.
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

#[tokio::test]
async fn connection_errors_are_retried_then_recorded() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = LmSettings {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        timeout_s: 2.0,
        ..Default::default()
    };
    let backend: Arc<dyn LmBackend> = Arc::new(OpenAiBackend::with_api_key(&settings, KEY.into()).unwrap());
    let c = LmClient::new(
        backend,
        ClientOptions {
            concurrency: 1,
            retry: fast_retry(3),
            prices: prices(),
            cache: None,
        },
    );
    let rec = c.call(&req("anyone?")).await;
    assert_eq!(
        failure_kind(&rec.outcome),
        Some((FailureKind::Connection, 3)),
        "{rec:?}"
    );
}

#[tokio::test]
async fn transient_faults_then_success() {
    // Fail the first two tries of each request differently, then answer.
    let server = TestServer::with_fn(|r| match r.repeat {
        0 => Reply::Fault(Fault::ServerError(502)),
        1 => Reply::Fault(Fault::TruncatedJson),
        _ => Reply::text("finally"),
    })
    .await
    .unwrap();
    let c = client(&server, None, 4, fast_retry(4));
    let rec = c.call(&req("persist")).await;
    assert_eq!(rec.text(), Some("finally"));
    assert_eq!(rec.attempts, 3);
    let stats = c.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.retries, stats.backend_attempts),
        (1, 0, 2, 3)
    );
    assert_eq!(stats.attempt_errors_by_kind.get("server"), Some(&1));
    assert_eq!(stats.attempt_errors_by_kind.get("invalid_response"), Some(&1));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = TestServer::with_fn(|_| Reply::Fault(Fault::Reject(401))).await.unwrap();
    let c = client(&server, None, 4, fast_retry(5));
    let rec = c.call(&req("who am i")).await;
    assert_eq!(failure_kind(&rec.outcome), Some((FailureKind::Rejected, 1)));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    // Whole seconds (the standard header) ...
    let server = TestServer::with_fn(|r| {
        if r.repeat == 0 {
            Reply::Fault(Fault::RateLimit {
                retry_after_s: Some(1),
                retry_after_ms: None,
            })
        } else {
            Reply::text("ok")
        }
    })
    .await
    .unwrap();
    let c = client(&server, None, 1, fast_retry(3));
    let start = Instant::now();
    let rec = c.call(&req("wait for it")).await;
    assert_eq!(rec.text(), Some("ok"));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        start.elapsed()
    );
    // ... and OpenAI's finer retry-after-ms, which takes precedence.
    let server = TestServer::with_fn(|r| {
        if r.repeat == 0 {
            Reply::Fault(Fault::RateLimit {
                retry_after_s: Some(30),
                retry_after_ms: Some(400),
            })
        } else {
            Reply::text("ok")
        }
    })
    .await
    .unwrap();
    let c = client(&server, None, 1, fast_retry(3));
    let start = Instant::now();
    assert_eq!(c.call(&req("wait less")).await.text(), Some("ok"));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn refusals_are_recorded_as_refusals_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_rules(
        Rules::new()
            .when("refuse", Reply::Fault(Fault::Refusal("I can't help with that.".into())))
            .when("filter", Reply::Fault(Fault::ContentFilter)),
    )
    .await
    .unwrap();
    let c = client(&server, Some(dir.path()), 4, fast_retry(3));
    let a = c.call(&req("please refuse")).await;
    let b = c.call(&req("trip the filter")).await;
    match (&a.outcome, &b.outcome) {
        (CallOutcome::Refused(x), CallOutcome::Refused(y)) => {
            assert_eq!(x.refusal.as_deref(), Some("I can't help with that."));
            assert_eq!(y.finish_reason, FinishReason::ContentFilter);
        }
        other => panic!("expected refusals, got {other:?}"),
    }
    assert_eq!((a.attempts, b.attempts), (1, 1));
    assert_eq!(c.stats().refused, 2);
    // A refusal is an answer: asking again is a cache hit.
    let again = c.call(&req("please refuse")).await;
    assert!(matches!(again.outcome, CallOutcome::Refused(_)));
    assert_eq!(again.source, Source::Cache);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn cache_hits_make_zero_requests_across_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_fn(|r| Reply::text(format!("echo: {}", r.prompt())))
        .await
        .unwrap();
    let prompts: Vec<ChatRequest> = (0..10).map(|i| req(&format!("prompt {i}"))).collect();
    let first = client(&server, Some(dir.path()), 4, fast_retry(3));
    let a = first.call_many(&prompts).await;
    assert_eq!(server.requests(), 10);
    assert!(a.iter().all(|r| r.source == Source::Backend));
    let paid = first.stats().cost_usd;
    assert!(paid > 0.0);

    // A fresh client (a rerun) on the same directory pays nothing.
    let second = client(&server, Some(dir.path()), 4, fast_retry(3));
    let b = second.call_many(&prompts).await;
    assert_eq!(server.requests(), 10, "cache hits must not reach the server");
    assert!(b.iter().all(|r| r.source == Source::Cache && r.attempts == 0));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.text(), y.text());
        assert_eq!(x.key, y.key);
    }
    let s = second.stats();
    assert_eq!((s.cache_hits, s.backend_attempts, s.cost_usd), (10, 0, 0.0));

    // Different decoding parameters are a different call.
    let mut hotter = req("prompt 0");
    hotter.params.temperature = Some(0.7);
    second.call(&hotter).await;
    assert_eq!(server.requests(), 11);
}

#[tokio::test]
async fn failures_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_fn(|r| {
        if r.repeat < 2 {
            Reply::Fault(Fault::ServerError(500))
        } else {
            Reply::text("recovered")
        }
    })
    .await
    .unwrap();
    let c = client(&server, Some(dir.path()), 1, fast_retry(2));
    assert!(c.call(&req("flaky")).await.is_failed());
    assert!(LmCache::open(dir.path()).unwrap().is_empty());
    // The rerun pays again and succeeds.
    assert_eq!(c.call(&req("flaky")).await.text(), Some("recovered"));
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn concurrency_bound_is_respected() {
    let server = TestServer::with_fn(|r| Reply::Delayed(Duration::from_millis(60), format!("done {}", r.prompt())))
        .await
        .unwrap();
    let c = client(&server, None, 3, fast_retry(2));
    let prompts: Vec<ChatRequest> = (0..15).map(|i| req(&format!("job {i}"))).collect();
    let records = c.call_many(&prompts).await;
    assert!(records.iter().all(|r| r.text().is_some()));
    assert_eq!(server.requests(), 15);
    assert_eq!(
        server.max_in_flight(),
        3,
        "the server must see exactly the bound in flight"
    );
    // Order of records follows the order of requests.
    assert_eq!(records[7].text(), Some("done job 7"));
}

#[tokio::test]
async fn identical_concurrent_calls_pay_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_fn(|_| Reply::Delayed(Duration::from_millis(50), "shared".into()))
        .await
        .unwrap();
    let c = client(&server, Some(dir.path()), 8, fast_retry(2));
    let same: Vec<ChatRequest> = (0..6).map(|_| req("the same question")).collect();
    let records = c.call_many(&same).await;
    assert!(records.iter().all(|r| r.text() == Some("shared")));
    assert_eq!(server.requests(), 1);
    assert_eq!(c.stats().cache_hits, 5);
}

fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { all_files(&p, out) } else { out.push(p) }
    }
}

#[tokio::test]
async fn api_key_never_reaches_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_rules(
        Rules::new()
            .when("refuse", Reply::Fault(Fault::Refusal("no".into())))
            .otherwise(Reply::text("an answer")),
    )
    .await
    .unwrap();
    let c = client(&server, Some(dir.path()), 4, fast_retry(2));
    let mut reqs: Vec<ChatRequest> = (0..5).map(|i| req(&format!("question {i}"))).collect();
    reqs.push(req("refuse this"));
    let records = c.call_many(&reqs).await;
    // The key was really used ...
    assert!(server.authorizations().iter().all(|a| a == &format!("Bearer {KEY}")));
    assert_eq!(server.authorizations().len(), 6);
    // ... and appears in no cache file, no record, no stats.
    let mut files = Vec::new();
    all_files(dir.path(), &mut files);
    assert_eq!(files.len(), 6);
    let secret = &KEY[8..]; // even a fragment of it
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(secret), "{} contains the API key", f.display());
        assert!(!text.contains("Bearer"), "{}", f.display());
    }
    let dump = serde_json::to_string(&(records, c.stats())).unwrap();
    assert!(!dump.contains(secret));
}

#[tokio::test]
async fn echoed_keys_are_scrubbed_from_failure_messages() {
    let server = TestServer::with_fn(|_| Reply::Fault(Fault::EchoAuthorization))
        .await
        .unwrap();
    let c = client(&server, None, 1, fast_retry(1));
    let rec = c.call(&req("hello")).await;
    match rec.outcome {
        CallOutcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::Rejected);
            assert!(
                f.message.contains("invalid credentials: Bearer [redacted]"),
                "{}",
                f.message
            );
            assert!(!f.message.contains(&KEY[8..]), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
}
