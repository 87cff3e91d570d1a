//! Loading everything a server needs and the HTTP routes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axbench_models::chat::{ChatTemplate, Message, Role};
use axbench_models::generate::Sampling;
use axbench_models::model::LoadOptions;
use axbench_models::open::ModelVocab;
use axbench_models::tokenizer::Tokenizer;
use axbench_models::vectors::load_steers;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{self, *};
use crate::engine::{Engine, EngineOptions, Event, GenRequest, ModelFacts, PositionLogprobs, Stats, UnitSteer};
use crate::text::TextAssembler;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Vectors(#[from] axbench_models::vectors::VectorError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Everything `axbench serve` configures.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HF model directory or `.gguf` file (see [`axbench_models::open::resolve_model`] for `default`).
    pub model: PathBuf,
    /// Name reported by `/v1/models` and in responses; the file name by default.
    pub model_id: Option<String>,
    /// Steering-vector files (`.safetensors` or GGUF control vectors).
    pub vectors: Vec<PathBuf>,
    pub load: LoadOptions,
    /// Required bearer token; `None` = no authentication.
    pub api_key: Option<String>,
    pub engine: EngineOptions,
    /// Caps the model's context length (prompt + max_tokens).
    pub context_length: Option<usize>,
}

impl ServerConfig {
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            model_id: None,
            vectors: vec![],
            load: LoadOptions::default(),
            api_key: None,
            engine: EngineOptions::default(),
            context_length: None,
        }
    }
}

struct AppState {
    engine: Engine,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    model_id: String,
    context_length: usize,
    steer_names: Vec<String>,
    api_key: Option<String>,
    facts: ModelFacts,
    next_id: AtomicU64,
    created: u64,
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Serves until the process ends or [`RunningServer::shutdown`] is called elsewhere.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        let _ = task.await;
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Loads the tokenizer, chat template, context length and vectors, starts the model worker and
/// binds `addr` (port 0 picks a free port; see [`RunningServer::addr`]).
pub async fn start(cfg: ServerConfig, addr: SocketAddr) -> Result<RunningServer, ServeError> {
    let cfg2 = cfg.clone();
    let state = tokio::task::spawn_blocking(move || build_state(cfg2))
        .await
        .map_err(|e| ServeError::Load(format!("loading panicked: {e}")))??;
    let stats = state.engine.stats.clone();
    let app = router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!("serving {} on http://{addr}", cfg.model.display());
    Ok(RunningServer {
        addr,
        stats,
        shutdown: Some(tx),
        task,
    })
}

fn build_state(cfg: ServerConfig) -> Result<AppState, ServeError> {
    let path = &cfg.model;
    let load_err = |e: String| ServeError::Load(e);
    // The same reading of tokenizer, chat format and context length as `axbench model` and the
    // pipeline stages need (llama.cpp tokenizer parity for GGUF vocabularies).
    let ModelVocab {
        tokenizer,
        template,
        context_length: ctx,
        ..
    } = ModelVocab::open(path).map_err(|e| load_err(e.to_string()))?;
    let context_length = match (cfg.context_length, ctx) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 2048,
    };
    let mut steers = HashMap::new();
    for file in &cfg.vectors {
        for s in load_steers(file)? {
            let name = s.name.clone();
            let unit = UnitSteer::from_named(s).map_err(load_err)?;
            if let Some(prev) = steers.insert(name.clone(), unit) {
                return Err(load_err(format!(
                    "vector `{name}` is defined in both {} and {}",
                    prev.source.display(),
                    file.display()
                )));
            }
        }
    }
    let mut steer_names: Vec<String> = steers.keys().cloned().collect();
    steer_names.sort();
    let extra_stop: Vec<i64> = tokenizer.eos_ids().iter().map(|&t| t as i64).collect();
    let (engine, facts) =
        Engine::start(path.clone(), cfg.load, steers, extra_stop, cfg.engine.clone()).map_err(load_err)?;
    let model_id = cfg.model_id.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    Ok(AppState {
        engine,
        tokenizer,
        template,
        model_id,
        context_length,
        steer_names,
        api_key: cfg.api_key,
        facts,
        next_id: AtomicU64::new(1),
        created: now(),
    })
}

fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .with_state(state)
}

/// An OpenAI-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }
    fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Parses a JSON body ourselves so that syntax and type errors get an OpenAI-style 400.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn auth(State(state): State<Arc<AppState>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare without an early exit so timing does not reveal a matching prefix.
        let ok = given.is_some_and(|g| {
            g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        });
        if !ok {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or invalid API key (send `Authorization: Bearer <key>`)".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(req).await
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "model": state.model_id,
        "context_length": state.context_length,
        "num_layers": state.facts.num_layers,
        "hidden_size": state.facts.hidden_size,
        "vectors": state.steer_names,
        "stats": state.engine.stats.snapshot(),
    }))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_id.clone(),
            object: "model",
            created: state.created,
            owned_by: "axbench",
        }],
    })
}

async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<TokenizeResponse>, ApiError> {
    let req: TokenizeRequest = parse(&body)?;
    let ids = state
        .tokenizer
        .encode(&req.content, req.add_special)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let tokens = if req.with_pieces {
        Tokens::Pieces(
            ids.iter()
                .map(|&id| {
                    let text = state.tokenizer.decode(&[id], false).unwrap_or_default();
                    let piece = if text.contains('\u{FFFD}') {
                        serde_json::json!(text.as_bytes())
                    } else {
                        serde_json::Value::String(text)
                    };
                    TokenPiece { id, piece }
                })
                .collect(),
        )
    } else {
        Tokens::Ids(ids)
    };
    Ok(Json(TokenizeResponse { tokens }))
}

async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<DetokenizeResponse>, ApiError> {
    let req: DetokenizeRequest = parse(&body)?;
    let n = state.tokenizer.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= n) {
        return Err(
            ApiError::bad_request(format!("token id {bad} is out of range (vocabulary size {n})")).param("tokens"),
        );
    }
    let content = state
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(DetokenizeResponse { content }))
}

/// Generation settings shared by the two endpoints, validated.
struct RowSpec {
    max_tokens: usize,
    sampling: Sampling,
    seed: u64,
    steering: Option<(String, f64)>,
    stops: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
}

impl AppState {
    fn row_spec(&self, s: api::Sampling, default_max: usize) -> Result<RowSpec, ApiError> {
        let temperature = s.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(
                ApiError::bad_request(format!("temperature must be in [0, 2], got {temperature}")).param("temperature"),
            );
        }
        let top_p = s.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request(format!("top_p must be in (0, 1], got {top_p}")).param("top_p"));
        }
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature,
                top_k: 0,
                top_p,
            }
        };
        let n = s.n.unwrap_or(1) as usize;
        if !(1..=16).contains(&n) {
            return Err(ApiError::bad_request(format!("n must be in 1..=16, got {n}")).param("n"));
        }
        if s.stream == Some(true) && n > 1 {
            return Err(ApiError::bad_request("streaming supports n = 1 only").param("n"));
        }
        let steering = match s.steering {
            None => None,
            Some(st) => {
                if !self.steer_names.contains(&st.vector) {
                    let known = if self.steer_names.is_empty() {
                        "none are loaded (start the server with --vectors FILE)".to_string()
                    } else {
                        format!("known vectors: {}", self.steer_names.join(", "))
                    };
                    return Err(
                        ApiError::bad_request(format!("unknown steering vector `{}`; {known}", st.vector))
                            .param("steering.vector"),
                    );
                }
                if !st.factor.is_finite() {
                    return Err(
                        ApiError::bad_request("steering.factor must be a finite number").param("steering.factor")
                    );
                }
                Some((st.vector, st.factor))
            }
        };
        let stops = s.stop.map(Stop::into_vec).unwrap_or_default();
        if stops.len() > 4 {
            return Err(ApiError::bad_request("at most 4 stop sequences").param("stop"));
        }
        let seed = match s.seed {
            Some(x) => x as u64,
            // No seed: a different one per request, as OpenAI's API behaves.
            None => {
                now()
                    ^ self
                        .next_id
                        .fetch_add(1, Ordering::Relaxed)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            }
        };
        Ok(RowSpec {
            max_tokens: s
                .max_completion_tokens
                .or(s.max_tokens)
                .map_or(default_max, |m| m as usize),
            sampling,
            seed,
            steering,
            stops,
            n,
            stream: s.stream == Some(true),
            include_usage: s.stream_options.and_then(|o| o.include_usage) == Some(true),
        })
    }

    fn check_context(&self, prompt_len: usize, max_tokens: usize) -> Result<(), ApiError> {
        if prompt_len == 0 {
            return Err(ApiError::bad_request("the prompt is empty").param("prompt"));
        }
        if prompt_len + max_tokens > self.context_length {
            return Err(ApiError::bad_request(format!(
                "this model's maximum context length is {} tokens; the prompt has {prompt_len} tokens and max_tokens is {max_tokens} ({} in total)",
                self.context_length,
                prompt_len + max_tokens
            ))
            .param("max_tokens"));
        }
        Ok(())
    }

    fn submit(
        &self,
        prompt: &[u32],
        spec: &RowSpec,
        logprobs: Option<usize>,
        row: usize,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (tx, rx) = unbounded_channel();
        self.engine
            .submit(GenRequest {
                prompt: prompt.iter().map(|&t| t as i64).collect(),
                max_tokens: spec.max_tokens,
                sampling: spec.sampling,
                seed: spec.seed.wrapping_add(row as u64),
                steering: spec.steering.clone(),
                logprobs,
                events: tx,
            })
            .map_err(ApiError::internal)?;
        Ok(rx)
    }

    fn token_text(&self, id: i64) -> String {
        self.tokenizer.decode(&[id as u32], false).unwrap_or_default()
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            self.created,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn chat_logprob(&self, id: i64, lp: &PositionLogprobs) -> TokenLogprob {
        let token = self.token_text(id);
        TokenLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob: lp.chosen,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(t, l)| {
                    let token = self.token_text(t);
                    TopLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob: l,
                    }
                })
                .collect(),
        }
    }
}

/// One finished row.
struct RowResult {
    text: String,
    tokens: Vec<(i64, Option<PositionLogprobs>)>,
    finish: &'static str,
}

async fn collect(
    state: &AppState,
    mut rx: UnboundedReceiver<Event>,
    stops: Vec<String>,
) -> Result<RowResult, ApiError> {
    let mut text = TextAssembler::new(&state.tokenizer, stops);
    let mut tokens = vec![];
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { id, logprobs } => {
                if !text.stopped {
                    text.push(id as u32);
                    tokens.push((id, logprobs));
                }
            }
            Event::Done { finish } => {
                text.finish();
                let finish = if text.stopped { "stop" } else { finish };
                return Ok(RowResult {
                    text: text.text().to_string(),
                    tokens,
                    finish,
                });
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    Err(ApiError::internal("the model worker stopped"))
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt as u32,
        completion_tokens: completion as u32,
        total_tokens: (prompt + completion) as u32,
    }
}

fn sse_json<T: Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).unwrap_or_default())
}

fn message_text(m: &ChatMessage, i: usize) -> Result<String, ApiError> {
    match &m.content {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(|t| t.as_str()),
                    p.get("text").and_then(|t| t.as_str()),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}].content: only text parts are supported"
                        ))
                        .param(&format!("messages[{i}].content")));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "messages[{i}].content must be a string or a list of text parts"
        ))),
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse(&body)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request("tools are not supported").param("tools"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let template = state.template.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!(
            "model `{}` has no chat template; use /v1/completions",
            state.model_id
        ))
    })?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role `{other}` is not supported (system, developer, user, assistant)"
                ))
                .param(&format!("messages[{i}].role")));
            }
        };
        messages.push(Message {
            role,
            content: message_text(m, i)?,
        });
    }
    let prompt = template
        .encode(&state.tokenizer, &messages, true)
        .map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
    let top = req.top_logprobs.unwrap_or(0) as usize;
    if top > 20 {
        return Err(ApiError::bad_request(format!("top_logprobs must be in 0..=20, got {top}")).param("top_logprobs"));
    }
    let want_logprobs = req.logprobs == Some(true);
    if req.top_logprobs.is_some_and(|k| k > 0) && !want_logprobs {
        return Err(ApiError::bad_request("top_logprobs requires logprobs: true").param("top_logprobs"));
    }
    let logprobs = want_logprobs.then_some(top);
    let spec = state.row_spec(req.sampling, 256)?;
    state.check_context(prompt.len(), spec.max_tokens)?;
    let id = state.id("chatcmpl");
    let created = now();
    let model = state.model_id.clone();
    if spec.stream {
        let rx = state.submit(&prompt, &spec, logprobs, 0)?;
        let st = state.clone();
        let stream = sse_stream(st, rx, &spec, prompt.len(), ChatStream { id, created, model });
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let rxs = (0..spec.n)
        .map(|r| state.submit(&prompt, &spec, logprobs, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut choices = vec![];
    let mut completion_tokens = 0;
    for (i, rx) in rxs.into_iter().enumerate() {
        let r = collect(&state, rx, spec.stops.clone()).await?;
        completion_tokens += r.tokens.len();
        let lp = logprobs.map(|_| ChatLogprobs {
            content: r
                .tokens
                .iter()
                .filter_map(|(t, lp)| lp.as_ref().map(|lp| state.chat_logprob(*t, lp)))
                .collect(),
            refusal: None,
        });
        choices.push(ChatChoice {
            index: i as u32,
            message: AssistantMessage {
                role: "assistant",
                content: r.text,
            },
            logprobs: lp,
            finish_reason: r.finish,
        });
    }
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: usage(prompt.len(), completion_tokens),
    })
    .into_response())
}

/// The chat flavor of a token stream: a first chunk with the role, then content deltas.
struct ChatStream {
    id: String,
    created: u64,
    model: String,
}

impl ChatStream {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

impl StreamFormat for ChatStream {
    type Chunk = ChatChunk;
    fn opening(&mut self) -> Vec<ChatChunk> {
        let first = ChatChunkChoice {
            index: 0,
            delta: Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            logprobs: None,
            finish_reason: None,
        };
        vec![self.chunk(vec![first], None)]
    }
    fn token(
        &mut self,
        state: &AppState,
        tok: i64,
        delta: String,
        logprobs: Option<PositionLogprobs>,
    ) -> Option<ChatChunk> {
        let lp = logprobs.map(|lp| ChatLogprobs {
            content: vec![state.chat_logprob(tok, &lp)],
            refusal: None,
        });
        if delta.is_empty() && lp.is_none() {
            return None;
        }
        let c = ChatChunkChoice {
            index: 0,
            delta: Delta {
                role: None,
                content: Some(delta),
            },
            logprobs: lp,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }
    fn finish(&mut self, rest: String, finish: &'static str) -> ChatChunk {
        let c = ChatChunkChoice {
            index: 0,
            delta: Delta {
                role: None,
                content: (!rest.is_empty()).then_some(rest),
            },
            logprobs: None,
            finish_reason: Some(finish),
        };
        self.chunk(vec![c], None)
    }
    fn usage(&mut self, usage: Usage) -> ChatChunk {
        self.chunk(vec![], Some(usage))
    }
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    let vocab = state.tokenizer.vocab_size();
    let encode = |t: &str| {
        state
            .tokenizer
            .encode(t, true)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("prompt"))
    };
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptInput::Text(t) => vec![encode(t)?],
        PromptInput::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        PromptInput::Ids(ids) => vec![ids.clone()],
        PromptInput::IdLists(l) => l.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty").param("prompt"));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(format!(
            "prompt token id {bad} is out of range (vocabulary size {vocab})"
        ))
        .param("prompt"));
    }
    let logprobs = match req.logprobs {
        Some(k) if k > 20 => {
            return Err(ApiError::bad_request(format!("logprobs must be in 0..=20, got {k}")).param("logprobs"));
        }
        k => k.map(|k| k as usize),
    };
    let spec = state.row_spec(req.sampling, 16)?;
    if spec.stream && prompts.len() > 1 {
        return Err(ApiError::bad_request("streaming supports a single prompt").param("prompt"));
    }
    for p in &prompts {
        state.check_context(p.len(), spec.max_tokens)?;
    }
    let id = state.id("cmpl");
    let created = now();
    let model = state.model_id.clone();
    if spec.stream {
        let rx = state.submit(&prompts[0], &spec, logprobs, 0)?;
        let echo = (req.echo == Some(true)).then(|| state.tokenizer.decode(&prompts[0], false).unwrap_or_default());
        let stream = sse_stream(
            state.clone(),
            rx,
            &spec,
            prompts[0].len(),
            CompletionStream {
                id,
                created,
                model,
                echo,
                offset: 0,
            },
        );
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let mut rxs = vec![];
    for p in &prompts {
        for r in 0..spec.n {
            rxs.push((p, state.submit(p, &spec, logprobs, r)?));
        }
    }
    let mut choices = vec![];
    let mut completion_tokens = 0;
    for (i, (p, rx)) in rxs.into_iter().enumerate() {
        let r = collect(&state, rx, spec.stops.clone()).await?;
        completion_tokens += r.tokens.len();
        let prefix = if req.echo == Some(true) {
            state.tokenizer.decode(p, false).unwrap_or_default()
        } else {
            String::new()
        };
        let lp = logprobs.map(|_| completion_logprobs(&state, &r.tokens, prefix.len()));
        choices.push(CompletionChoice {
            text: prefix + &r.text,
            index: i as u32,
            logprobs: lp,
            finish_reason: Some(r.finish),
        });
    }
    let prompt_tokens = prompts.iter().map(Vec::len).sum::<usize>() * spec.n;
    Ok(Json(Completion {
        id,
        object: "text_completion",
        created,
        model,
        choices,
        usage: Some(usage(prompt_tokens, completion_tokens)),
    })
    .into_response())
}

/// The legacy `logprobs` object for generated tokens; offsets count from `offset` (the echoed
/// prompt's length, else 0).
fn completion_logprobs(
    state: &AppState,
    tokens: &[(i64, Option<PositionLogprobs>)],
    offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut pos = offset;
    for (t, lp) in tokens {
        let Some(lp) = lp else { continue };
        let text = state.token_text(*t);
        out.text_offset.push(pos);
        pos += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(lp.chosen);
        out.top_logprobs.push(
            lp.top
                .iter()
                .map(|&(id, l)| (state.token_text(id), serde_json::json!(l)))
                .collect(),
        );
    }
    out
}

/// The legacy completions flavor of a token stream: the echoed prompt first (with `echo`), then
/// text deltas; logprob offsets count from the start of the echoed text.
struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    echo: Option<String>,
    offset: usize,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

impl StreamFormat for CompletionStream {
    type Chunk = Completion;
    fn opening(&mut self) -> Vec<Completion> {
        let Some(e) = self.echo.take() else { return vec![] };
        self.offset = e.len();
        vec![self.chunk(
            vec![CompletionChoice {
                text: e,
                index: 0,
                logprobs: None,
                finish_reason: None,
            }],
            None,
        )]
    }
    fn token(
        &mut self,
        state: &AppState,
        tok: i64,
        delta: String,
        logprobs: Option<PositionLogprobs>,
    ) -> Option<Completion> {
        let lp = logprobs.map(|lp| {
            let l = completion_logprobs(state, &[(tok, Some(lp))], self.offset);
            self.offset += l.tokens[0].len();
            l
        });
        if delta.is_empty() && lp.is_none() {
            return None;
        }
        Some(self.chunk(
            vec![CompletionChoice {
                text: delta,
                index: 0,
                logprobs: lp,
                finish_reason: None,
            }],
            None,
        ))
    }
    fn finish(&mut self, rest: String, finish: &'static str) -> Completion {
        self.chunk(
            vec![CompletionChoice {
                text: rest,
                index: 0,
                logprobs: None,
                finish_reason: Some(finish),
            }],
            None,
        )
    }
    fn usage(&mut self, usage: Usage) -> Completion {
        self.chunk(vec![], Some(usage))
    }
}

/// What differs between the chat and the completion SSE streams: the JSON chunk around each
/// piece. [`sse_stream`] does the rest (stop strings, token counting, usage, errors, `[DONE]`).
trait StreamFormat: Send + 'static {
    type Chunk: Serialize;
    /// Chunks sent before any token.
    fn opening(&mut self) -> Vec<Self::Chunk>;
    /// The chunk for one generated token's text `delta` (empty while a UTF-8 character or a
    /// possible stop string is incomplete), or `None` to send nothing for it.
    fn token(
        &mut self,
        state: &AppState,
        tok: i64,
        delta: String,
        logprobs: Option<PositionLogprobs>,
    ) -> Option<Self::Chunk>;
    /// The last chunk: the held-back text and the finish reason.
    fn finish(&mut self, rest: String, finish: &'static str) -> Self::Chunk;
    /// The extra chunk `stream_options.include_usage` asks for.
    fn usage(&mut self, usage: Usage) -> Self::Chunk;
}

/// Turns one row's engine events into server-sent events: `format`'s chunks, then `[DONE]`.
/// Stop strings end the text (later tokens are dropped and the finish reason is `stop`); an
/// engine error becomes an OpenAI error object in the stream. A client that goes away stops
/// the forwarding.
fn sse_stream<F: StreamFormat>(
    state: Arc<AppState>,
    mut rx: UnboundedReceiver<Event>,
    spec: &RowSpec,
    prompt_len: usize,
    mut format: F,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<F> {
    let (tx, out) = unbounded_channel::<SseEvent>();
    let (stops, include_usage) = (spec.stops.clone(), spec.include_usage);
    tokio::spawn(async move {
        for c in format.opening() {
            let _ = tx.send(sse_json(&c));
        }
        let mut text = TextAssembler::new(&state.tokenizer, stops);
        let mut n_tokens = 0;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token { id: tok, logprobs } => {
                    if text.stopped {
                        continue;
                    }
                    n_tokens += 1;
                    let delta = text.push(tok as u32);
                    if let Some(c) = format.token(&state, tok, delta, logprobs)
                        && tx.send(sse_json(&c)).is_err()
                    {
                        return;
                    }
                }
                Event::Done { finish } => {
                    let rest = text.finish();
                    let finish = if text.stopped { "stop" } else { finish };
                    let _ = tx.send(sse_json(&format.finish(rest, finish)));
                    if include_usage {
                        let _ = tx.send(sse_json(&format.usage(usage(prompt_len, n_tokens))));
                    }
                    break;
                }
                Event::Error(e) => {
                    let body = ErrorBody {
                        error: ErrorDetail {
                            message: e,
                            kind: "server_error",
                            param: None,
                            code: None,
                        },
                    };
                    let _ = tx.send(sse_json(&body));
                    break;
                }
            }
        }
        let _ = tx.send(SseEvent::default().data("[DONE]"));
    });
    futures::stream::unfold(out, |mut out| async move { out.recv().await.map(|e| (Ok(e), out)) })
}
