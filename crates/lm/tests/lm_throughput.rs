//! Throughput of the LM client against the local test server: backend calls at a concurrency
//! bound, cache hits, and calls under a 20% fault rate. Numbers, not assertions (beyond sanity):
//! `cargo test -p axbench-lm --test tests lm_throughput:: -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axbench_lm::{
    ChatRequest, ClientOptions, LmBackend, LmCache, LmClient, LmSettings, OpenAiBackend, PriceTable, RetryPolicy,
    SamplingParams,
};
use axbench_testkit::lm_server::{Fault, Reply, TestServer};

fn client(server: &TestServer, cache: Option<LmCache>, concurrency: usize) -> LmClient {
    let settings = LmSettings {
        base_url: server.base_url(),
        timeout_s: 10.0,
        ..Default::default()
    };
    let backend: Arc<dyn LmBackend> = Arc::new(OpenAiBackend::with_api_key(&settings, "sk-bench".into()).unwrap());
    let retry = RetryPolicy {
        max_attempts: 4,
        base_delay_ms: 1,
        max_delay_ms: 4,
        max_retry_after_ms: 10,
    };
    LmClient::new(
        backend,
        ClientOptions {
            concurrency,
            retry,
            prices: PriceTable::default(),
            cache,
        },
    )
}

fn requests(n: usize, tag: &str) -> Vec<ChatRequest> {
    (0..n)
        .map(|i| {
            ChatRequest::user(
                "gpt-4o-mini",
                format!("{tag} prompt number {i}: write two sentences about rivers."),
                SamplingParams {
                    temperature: Some(1.0),
                    ..Default::default()
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn measure_client_throughput() {
    let n = 2000;
    // Instant replies: client + HTTP + (de)serialization overhead.
    let server = TestServer::with_fn(|_| Reply::text("Rivers carve valleys. They also carry silt."))
        .await
        .unwrap();
    for concurrency in [1, 8, 32] {
        let c = client(&server, None, concurrency);
        let reqs = requests(n, &format!("c{concurrency}"));
        let t = Instant::now();
        let recs = c.call_many(&reqs).await;
        let dt = t.elapsed();
        assert!(recs.iter().all(|r| r.text().is_some()));
        println!(
            "backend calls, concurrency {concurrency:>2}: {n} in {dt:.2?} = {:.0} calls/s",
            n as f64 / dt.as_secs_f64()
        );
    }

    // 50 ms simulated model latency: the concurrency bound sets throughput.
    let slow = TestServer::with_fn(|_| Reply::Delayed(Duration::from_millis(50), "ok".into()))
        .await
        .unwrap();
    for concurrency in [8, 32] {
        let c = client(&slow, None, concurrency);
        let reqs = requests(400, &format!("slow{concurrency}"));
        let t = Instant::now();
        c.call_many(&reqs).await;
        let dt = t.elapsed();
        println!(
            "50 ms latency, concurrency {concurrency:>2}: 400 in {dt:.2?} = {:.0} calls/s (ideal {:.0}); server max in flight {}",
            400.0 / dt.as_secs_f64(),
            concurrency as f64 / 0.05,
            slow.max_in_flight()
        );
    }

    // Cache: first pass writes entries, second pass is served from disk.
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, Some(LmCache::open(dir.path()).unwrap()), 32);
    let reqs = requests(n, "cached");
    let t = Instant::now();
    c.call_many(&reqs).await;
    let write = t.elapsed();
    let before = server.requests();
    let t = Instant::now();
    c.call_many(&reqs).await;
    let read = t.elapsed();
    assert_eq!(server.requests(), before);
    println!(
        "cache: {n} misses (call + fsynced write) in {write:.2?} = {:.0}/s; {n} hits in {read:.2?} = {:.0}/s",
        n as f64 / write.as_secs_f64(),
        n as f64 / read.as_secs_f64()
    );

    // 20% of first attempts fail with a mix of faults; all calls still complete.
    let flaky = TestServer::with_fn(|r| {
        let h = r
            .prompt()
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
        match (r.repeat, h % 10) {
            (0, 0) => Reply::Fault(Fault::ServerError(503)),
            (0, 1) => Reply::Fault(Fault::RateLimit {
                retry_after_s: None,
                retry_after_ms: Some(2),
            }),
            _ => Reply::text("fine"),
        }
    })
    .await
    .unwrap();
    let c = client(&flaky, None, 32);
    let reqs = requests(n, "flaky");
    let t = Instant::now();
    let recs = c.call_many(&reqs).await;
    let dt = t.elapsed();
    let s = c.stats();
    assert!(recs.iter().all(|r| r.text().is_some()));
    println!(
        "20% transient faults: {n} calls in {dt:.2?} = {:.0} calls/s, {} retries, {} requests, 0 failures",
        n as f64 / dt.as_secs_f64(),
        s.retries,
        flaky.requests()
    );
}
