//! A scriptable, fault-injecting OpenAI-compatible server for tests and benchmarks.
//!
//! It serves `POST /v1/chat/completions` on `127.0.0.1:0` (an ephemeral port) over real HTTP, so
//! tests exercise the same client, serialization and transport as production. Replies come from a
//! script — a closure or a rule table from request content to reply — and a reply can be a fault:
//! a hang longer than the client's timeout, a 429 with `Retry-After`, a 5xx, truncated JSON, an
//! empty `choices`, a refusal or a content-filter stop. The server counts what it served and how
//! many requests were in flight at once.
//!
//! Always compiled (not `cfg(test)`): integration tests, reliability tests and benchmarks in other
//! crates use it too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::types::chat::{
    ChatChoice, ChatCompletionResponseMessage, CompletionUsage, CreateChatCompletionResponse, FinishReason,
    Role as OaRole,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use axbench_lm::{Message, Role};

/// What the script answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A normal completion with this text.
    Text(String),
    /// A normal completion after a delay (to hold requests in flight).
    Delayed(Duration, String),
    Fault(Fault),
}

impl Reply {
    pub fn text(t: impl Into<String>) -> Self {
        Reply::Text(t.into())
    }
}

/// Injected failures.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Sleep this long before answering normally (longer than the client's timeout).
    Hang(Duration),
    /// HTTP 429 with `Retry-After: <secs>` (whole seconds, as the standard says) and, when set,
    /// OpenAI's `retry-after-ms`.
    RateLimit {
        retry_after_s: Option<u64>,
        retry_after_ms: Option<u64>,
    },
    /// HTTP 5xx with a plain-text body.
    ServerError(u16),
    /// HTTP 200 with the first half of a valid completion body.
    TruncatedJson,
    /// HTTP 200 with a valid body whose `choices` is empty.
    EmptyChoices,
    /// HTTP 200, `content: null` and `message.refusal` set.
    Refusal(String),
    /// HTTP 200, `finish_reason: content_filter`, empty content.
    ContentFilter,
    /// A 4xx other than 429 (e.g. 401), with an OpenAI-style error body.
    Reject(u16),
    /// HTTP 400 whose error message echoes the request's `Authorization` header, like a badly
    /// behaved proxy: the client must scrub the key before recording the message.
    EchoAuthorization,
}

/// The request as the script sees it.
#[derive(Debug, Clone)]
pub struct ServedRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<i64>,
    /// How many earlier requests had exactly this body (0 on the first): lets a script fail the
    /// first n attempts and then succeed.
    pub repeat: u32,
}

impl ServedRequest {
    /// The last user message (every AxBench prompt is one user turn).
    pub fn prompt(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or("")
    }
}

/// A script: request in, reply out.
pub type ScriptFn = Arc<dyn Fn(&ServedRequest) -> Reply + Send + Sync>;

/// A rule table: the first rule whose every `needle` occurs in the prompt answers; else the
/// fallback.
#[derive(Clone, Default)]
pub struct Rules {
    rules: Vec<(Vec<String>, ScriptFn)>,
    fallback: Option<Reply>,
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    /// When the prompt contains `needle`, answer `reply`.
    pub fn when(self, needle: impl Into<String>, reply: Reply) -> Self {
        self.when_all(&[needle.into().as_str()], move |_| reply.clone())
    }

    /// When the prompt contains every needle, answer with `f(request)`.
    pub fn when_all(mut self, needles: &[&str], f: impl Fn(&ServedRequest) -> Reply + Send + Sync + 'static) -> Self {
        self.rules
            .push((needles.iter().map(|s| s.to_string()).collect(), Arc::new(f)));
        self
    }

    /// Answer for prompts no rule matches (default: HTTP 400, so a missing rule shows up).
    pub fn otherwise(mut self, reply: Reply) -> Self {
        self.fallback = Some(reply);
        self
    }

    pub fn into_script(self) -> ScriptFn {
        Arc::new(move |req: &ServedRequest| {
            let prompt = req.prompt();
            for (needles, f) in &self.rules {
                if needles.iter().all(|n| prompt.contains(n.as_str())) {
                    return f(req);
                }
            }
            self.fallback.clone().unwrap_or(Reply::Fault(Fault::Reject(400)))
        })
    }
}

/// Counters the server keeps.
#[derive(Default)]
struct Counters {
    served: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    faults: Mutex<HashMap<&'static str, u64>>,
    repeats: Mutex<HashMap<blake3::Hash, u32>>,
    authorizations: Mutex<Vec<String>>,
}

struct ServerState {
    script: ScriptFn,
    counters: Counters,
}

/// A running test server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    seed: Option<i64>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

fn content_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        // Content parts: concatenate the text parts.
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Deterministic token counts: whitespace-separated words (enough for cost tests).
fn words(s: &str) -> u32 {
    s.split_whitespace().count() as u32
}

impl TestServer {
    /// Start a server answering with `script`.
    pub async fn start(script: ScriptFn) -> std::io::Result<Self> {
        let state = Arc::new(ServerState {
            script,
            counters: Counters::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// Start a server from a closure.
    pub async fn with_fn(f: impl Fn(&ServedRequest) -> Reply + Send + Sync + 'static) -> std::io::Result<Self> {
        Self::start(Arc::new(f)).await
    }

    /// Start a server from a rule table.
    pub async fn with_rules(rules: Rules) -> std::io::Result<Self> {
        Self::start(rules.into_script()).await
    }

    /// Base URL to give the client (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received (faults included).
    pub fn requests(&self) -> u64 {
        self.state.counters.served.load(Ordering::SeqCst)
    }

    /// Most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.counters.max_in_flight.load(Ordering::SeqCst)
    }

    /// How many times each fault was served, by name (`rate_limit`, `server_error`, ...).
    pub fn faults_served(&self) -> HashMap<&'static str, u64> {
        self.state.counters.faults.lock().expect("faults lock").clone()
    }

    /// `Authorization` headers received, to prove a client did send its key.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.counters.authorizations.lock().expect("auth lock").clone()
    }
}

struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(c: &'a Counters) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn completion_body(
    req: &ServedRequest,
    text: Option<String>,
    refusal: Option<String>,
    finish: FinishReason,
    n: u64,
) -> CreateChatCompletionResponse {
    let prompt_tokens: u32 = req.messages.iter().map(|m| words(&m.content)).sum();
    let completion_tokens = text.as_deref().map(words).unwrap_or(0);
    #[allow(deprecated)]
    let message = ChatCompletionResponseMessage {
        content: text,
        refusal,
        tool_calls: None,
        annotations: None,
        role: OaRole::Assistant,
        function_call: None,
        audio: None,
    };
    #[allow(deprecated)]
    CreateChatCompletionResponse {
        id: format!("chatcmpl-test-{n}"),
        choices: vec![ChatChoice {
            index: 0,
            message,
            finish_reason: Some(finish),
            logprobs: None,
        }],
        created: 1_700_000_000,
        model: req.model.clone(),
        service_tier: None,
        system_fingerprint: None,
        object: "chat.completion".into(),
        usage: Some(CompletionUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
            completion_tokens_details: None,
        }),
        metadata: None,
        moderation: None,
    }
}

async fn handle(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let counters = &state.counters;
    let n = counters.served.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight::enter(counters);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(auth) = &authorization {
        counters.authorizations.lock().expect("auth lock").push(auth.clone());
    }
    let wire: WireRequest = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            let err = serde_json::json!({"error": {"message": format!("bad request body: {e}"), "type": "invalid_request_error"}});
            return json_response(StatusCode::BAD_REQUEST, serde_json::to_vec(&err).unwrap());
        }
    };
    let repeat = {
        let mut seen = counters.repeats.lock().expect("repeats lock");
        let slot = seen.entry(blake3::hash(&body)).or_insert(0);
        let r = *slot;
        *slot += 1;
        r
    };
    let messages = wire
        .messages
        .iter()
        .map(|m| Message {
            role: match m.role.as_str() {
                "system" | "developer" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            },
            content: content_text(&m.content),
        })
        .collect();
    let req = ServedRequest {
        model: wire.model,
        messages,
        temperature: wire.temperature,
        max_tokens: wire.max_tokens.or(wire.max_completion_tokens),
        seed: wire.seed,
        repeat,
    };
    let reply = (state.script)(&req);
    let note = |name: &'static str| *counters.faults.lock().expect("faults lock").entry(name).or_default() += 1;
    let ok = |text: String| {
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&completion_body(&req, Some(text), None, FinishReason::Stop, n)).unwrap(),
        )
    };
    match reply {
        Reply::Text(t) => ok(t),
        Reply::Delayed(d, t) => {
            tokio::time::sleep(d).await;
            ok(t)
        }
        Reply::Fault(fault) => match fault {
            Fault::Hang(d) => {
                note("hang");
                tokio::time::sleep(d).await;
                ok("late".into())
            }
            Fault::RateLimit {
                retry_after_s,
                retry_after_ms,
            } => {
                note("rate_limit");
                let err = serde_json::json!({"error": {"message": "Rate limit reached (test server)", "type": "requests", "code": "rate_limit_exceeded"}});
                let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, serde_json::to_vec(&err).unwrap());
                if let Some(s) = retry_after_s {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
                }
                if let Some(ms) = retry_after_ms {
                    resp.headers_mut()
                        .insert("retry-after-ms", ms.to_string().parse().unwrap());
                }
                resp
            }
            Fault::ServerError(code) => {
                note("server_error");
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, "upstream exploded (test server)").into_response()
            }
            Fault::TruncatedJson => {
                note("truncated_json");
                let full = serde_json::to_vec(&completion_body(
                    &req,
                    Some("cut short".into()),
                    None,
                    FinishReason::Stop,
                    n,
                ))
                .unwrap();
                json_response(StatusCode::OK, full[..full.len() / 2].to_vec())
            }
            Fault::EmptyChoices => {
                note("empty_choices");
                let mut body = completion_body(&req, Some(String::new()), None, FinishReason::Stop, n);
                body.choices.clear();
                json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap())
            }
            Fault::Refusal(msg) => {
                note("refusal");
                json_response(
                    StatusCode::OK,
                    serde_json::to_vec(&completion_body(&req, None, Some(msg), FinishReason::Stop, n)).unwrap(),
                )
            }
            Fault::ContentFilter => {
                note("content_filter");
                json_response(
                    StatusCode::OK,
                    serde_json::to_vec(&completion_body(
                        &req,
                        Some(String::new()),
                        None,
                        FinishReason::ContentFilter,
                        n,
                    ))
                    .unwrap(),
                )
            }
            Fault::Reject(code) => {
                note("reject");
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                let err = serde_json::json!({"error": {"message": format!("rejected with {code} (test server)"), "type": "invalid_request_error"}});
                json_response(status, serde_json::to_vec(&err).unwrap())
            }
            Fault::EchoAuthorization => {
                note("echo_authorization");
                let seen = authorization.clone().unwrap_or_default();
                let err = serde_json::json!({"error": {"message": format!("invalid credentials: {seen}"), "type": "invalid_request_error"}});
                json_response(StatusCode::BAD_REQUEST, serde_json::to_vec(&err).unwrap())
            }
        },
    }
}
