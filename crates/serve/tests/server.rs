//! End-to-end tests of the HTTP server on SmolLM2-135M-Instruct (the `default-instruct` GGUF):
//! OpenAI clients (async-openai, and the Python `openai` package when installed), batching,
//! errors, auth, tokenization, log-probabilities, and steering checked against llama.cpp
//! (`tests/golden/serve/control_vector_smollm2.json`, made by `make_serve_golden.py`).
//!
//! Two servers are shared by all tests (the model loads once per server): `main` with steering
//! vectors and a 40 ms batching window, `auth` with a bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use axbench_models::gguf::GgufFile;
use axbench_models::model::LoadOptions;
use axbench_models::tokenizer::{GgufTokenizerOptions, SpmFlavor, Tokenizer};
use axbench_models::vectors::{ControlVector, SteeringVector, VectorFile};
use axbench_serve::{EngineOptions, ServerConfig, Stats};
use futures::StreamExt;
use serde_json::{Value, json};

const API_KEY: &str = "test-key-7f3a";
/// Layers the golden file has cases for; vectors at the neighbours catch an off-by-one.
const GOLDEN_LAYERS: [usize; 3] = [5, 15, 28];

struct Fixture {
    main: SocketAddr,
    auth: SocketAddr,
    stats: Arc<Stats>,
    model: PathBuf,
    tokenizer: Tokenizer,
    golden: Value,
    /// The control vector exported for the llama.cpp check.
    cv_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> Value {
    let p = root().join("tests/golden/serve/control_vector_smollm2.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The unit-norm input embedding of `id` (SmolLM2 ties embeddings, so it raises that logit).
fn unit_embedding(model: &Path, id: usize) -> Vec<f32> {
    let f = GgufFile::open(model).unwrap();
    let info = f.tensor_info("token_embd.weight").unwrap();
    let d = info.dims[0] as usize;
    let all = f.tensor_f32("token_embd.weight").unwrap();
    let row = &all[id * d..(id + 1) * d];
    let norm = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    row.iter().map(|x| (*x as f64 / norm) as f32).collect()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let model = axbench_models::open::resolve_model("default-instruct")
            .expect("run scripts/setup.sh to fetch the default models");
        let golden = golden();
        let target = golden["target_id"].as_u64().unwrap() as usize;
        let unit = unit_embedding(&model, target);
        let dir = tempfile::tempdir().unwrap();
        let mut layers: Vec<usize> = GOLDEN_LAYERS.iter().flat_map(|&l| [l - 1, l, l + 1]).collect();
        layers.dedup();
        let vectors = layers
            .iter()
            .map(|&l| SteeringVector {
                name: format!("cheese_l{l}"),
                layer: l,
                direction: unit.clone(),
                method: "embedding".into(),
                concept: "cheese".into(),
                concept_id: Some(l as i64),
            })
            .collect();
        let st_path = dir.path().join("cheese.safetensors");
        VectorFile {
            model: "smollm2-135m-instruct".into(),
            vectors,
        }
        .save_safetensors(&st_path)
        .unwrap();
        // A control vector for layer 15 at factor 100, as llama.cpp would load it.
        let cv_path = dir.path().join("cheese_cv.gguf");
        let v15 = SteeringVector {
            name: "x".into(),
            layer: 15,
            direction: unit.clone(),
            method: String::new(),
            concept: String::new(),
            concept_id: None,
        };
        ControlVector::from_vector("llama", &v15, 100.0)
            .save_gguf(&cv_path)
            .unwrap();
        let load = LoadOptions {
            device: axbench_models::device::DeviceSpec::Cpu,
            ..Default::default()
        };
        let mut main_cfg = ServerConfig::new(model.clone());
        main_cfg.vectors = vec![st_path, cv_path.clone()];
        main_cfg.load = load;
        main_cfg.engine = EngineOptions {
            batch_window: Duration::from_millis(40),
            max_batch: 32,
            threads: Some(2),
        };
        let mut auth_cfg = ServerConfig::new(model.clone());
        auth_cfg.load = load;
        auth_cfg.api_key = Some(API_KEY.into());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let main = axbench_serve::start(main_cfg, "127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                let auth = axbench_serve::start(auth_cfg, "127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                tx.send((main.addr, auth.addr, main.stats.clone())).unwrap();
                futures::future::pending::<()>().await;
            });
        });
        let (main, auth, stats) = rx.recv().unwrap();
        let opts = GgufTokenizerOptions {
            spm: SpmFlavor::LlamaCpp,
        };
        let tokenizer = Tokenizer::from_gguf_with(&GgufFile::open(&model).unwrap(), opts).unwrap();
        Fixture {
            main,
            auth,
            stats,
            model,
            tokenizer,
            golden,
            cv_path,
            _dir: dir,
        }
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = http()
        .post(format!("http://{addr}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn openai(addr: SocketAddr) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("http://{addr}/v1"))
            .with_api_key("unused"),
    )
}

#[tokio::test]
async fn async_openai_chat_completions_and_streaming_agree() {
    use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
    let f = fixture();
    let client = openai(f.main);
    let req = CreateChatCompletionRequestArgs::default()
        .model("smollm2")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Name a color.")
            .build()
            .unwrap()
            .into()])
        .max_completion_tokens(12u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let full = client.chat().create(req.clone()).await.unwrap();
    assert_eq!(full.object, "chat.completion");
    let choice = &full.choices[0];
    let text = choice.message.content.clone().unwrap();
    assert!(!text.is_empty());
    let usage = full.usage.unwrap();
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 12);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut streamed = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        for c in chunk.choices {
            streamed.push_str(c.delta.content.as_deref().unwrap_or(""));
            if c.finish_reason.is_some() {
                finish = c.finish_reason;
            }
        }
    }
    assert_eq!(streamed, text, "streamed greedy text equals the non-streamed one");
    assert_eq!(finish, choice.finish_reason);
}

#[tokio::test]
async fn async_openai_completions_with_logprobs() {
    use async_openai::types::completions::CreateCompletionRequestArgs;
    let f = fixture();
    let client = openai(f.main);
    let req = CreateCompletionRequestArgs::default()
        .model("smollm2")
        .prompt("The capital of France is")
        .max_tokens(6u32)
        .temperature(0.0)
        .logprobs(3u8)
        .build()
        .unwrap();
    let r = client.completions().create(req).await.unwrap();
    assert_eq!(r.object, "text_completion");
    let c = &r.choices[0];
    let lp = c.logprobs.as_ref().unwrap();
    let n = r.usage.as_ref().unwrap().completion_tokens as usize;
    assert_eq!(lp.tokens.len(), n);
    assert_eq!(lp.token_logprobs.len(), n);
    assert_eq!(lp.tokens.concat(), c.text, "token strings concatenate to the text");
    for (i, top) in lp.top_logprobs.iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((best - lp.token_logprobs[i].unwrap() as f64).abs() < 1e-5);
        assert!(top.values().map(|v| v.as_f64().unwrap().exp()).sum::<f64>() <= 1.0 + 1e-5);
    }
    let offsets = &lp.text_offset;
    for i in 1..offsets.len() {
        assert_eq!(offsets[i] as usize, offsets[i - 1] as usize + lp.tokens[i - 1].len());
    }
}

#[tokio::test]
async fn chat_logprobs_have_openai_shape() {
    let f = fixture();
    let body = json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5, "temperature": 0,
                      "logprobs": true, "top_logprobs": 2});
    let (status, r) = post(f.main, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["token"], t["token"]);
        assert!(top[0]["logprob"].as_f64().unwrap() >= top[1]["logprob"].as_f64().unwrap());
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), t["token"].as_str().unwrap());
    }
}

#[tokio::test]
async fn raw_sse_stream_ends_with_done_and_reports_usage() {
    let f = fixture();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let text = http()
        .post(format!("http://{}/v1/completions", f.main))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn concurrent_requests_are_batched() {
    let f = fixture();
    let before = f.stats.snapshot();
    let prompts = ["One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight"];
    let tasks = prompts.iter().map(|p| {
        let body = json!({"prompt": format!("{p} apples and"), "max_tokens": 3, "temperature": 0});
        let addr = f.main;
        tokio::spawn(async move { post(addr, "/v1/completions", &body).await })
    });
    let results = futures::future::join_all(tasks).await;
    for r in results {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["choices"][0]["text"].is_string());
    }
    let after = f.stats.snapshot();
    let batches = after["batches"].as_u64().unwrap() - before["batches"].as_u64().unwrap();
    assert!(batches < 8, "8 concurrent requests took {batches} batches");
    assert!(after["max_batch_rows"].as_u64().unwrap() >= 2);
    let (_, health) = get(f.main, "/health", None).await;
    assert!(health["stats"]["batches"].as_u64().unwrap() >= after["batches"].as_u64().unwrap());
}

async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = http().get(format!("http://{addr}{path}"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_requests_get_openai_style_400s() {
    let f = fixture();
    let r = http()
        .post(format!("http://{}/v1/chat/completions", f.main))
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid request body")
    );

    let (status, body) = post(f.main, "/v1/chat/completions", &json!({"messages": "hi"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(f.main, "/v1/completions", &json!({"prompt": "x", "temperature": 5})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");
}

#[tokio::test]
async fn over_context_is_a_400_naming_the_limit() {
    let f = fixture();
    let (status, body) = post(
        f.main,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 10_000_000}),
    )
    .await;
    assert_eq!(status, 400);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("maximum context length is 8192 tokens"), "{msg}");
}

#[tokio::test]
async fn unknown_steering_vector_lists_the_known_ones() {
    let f = fixture();
    let body = json!({"prompt": "Hello", "max_tokens": 2, "steering": {"vector": "nope", "factor": 1.0}});
    let (status, body) = post(f.main, "/v1/completions", &body).await;
    assert_eq!(status, 400);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("unknown steering vector `nope`") && msg.contains("cheese_l15") && msg.contains("cheese_cv"),
        "{msg}"
    );
}

#[tokio::test]
async fn steering_factor_zero_is_the_unsteered_output() {
    let f = fixture();
    let base = json!({"prompt": "My favourite food is", "max_tokens": 8, "temperature": 0});
    let mut zero = base.clone();
    zero["steering"] = json!({"vector": "cheese_l15", "factor": 0.0});
    let (a, b) = tokio::join!(
        post(f.main, "/v1/completions", &base),
        post(f.main, "/v1/completions", &zero)
    );
    assert_eq!(a.0, 200);
    assert_eq!(a.1["choices"][0]["text"], b.1["choices"][0]["text"]);
}

/// Our steering reproduces llama.cpp's control vectors: same layer numbering, same magnitude.
#[tokio::test]
async fn steering_matches_llama_cpp_control_vectors() {
    let f = fixture();
    let g = &f.golden;
    let ids = g["prompt_ids"].clone();
    let target = g["target_id"].as_i64().unwrap();
    let target_text = f.tokenizer.decode(&[target as u32], false).unwrap();
    // Our next-token distribution: logprobs of the single greedy token and the top 5.
    let next = |vector: Option<String>, factor: f64| {
        let mut body = json!({"prompt": ids.clone(), "max_tokens": 1, "temperature": 0, "logprobs": 5});
        if let Some(v) = vector {
            body["steering"] = json!({"vector": v, "factor": factor});
        }
        async move {
            let (status, r) = post(f.main, "/v1/completions", &body).await;
            assert_eq!(status, 200, "{r}");
            r["choices"][0]["logprobs"]["top_logprobs"][0]
                .as_object()
                .unwrap()
                .clone()
        }
    };
    let cases = g["cases"].as_array().unwrap();
    let at =
        |m: &serde_json::Map<String, Value>| m.get(&target_text).and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY);
    let base = next(None, 0.0).await;
    let cpp_base = &cases[0]["top"];
    let top_text = f
        .tokenizer
        .decode(&[cpp_base[0][0].as_u64().unwrap() as u32], false)
        .unwrap();
    let ours_base = base[&top_text].as_f64().unwrap();
    // llama.cpp multiplies Q4_1 weights with Q8-quantized activations, we dequantize to f32: the
    // unsteered log-probabilities already differ by ~0.2.
    let tol = 0.35;
    assert!(
        (ours_base - cpp_base[0][1].as_f64().unwrap()).abs() < tol,
        "unsteered top token: ours {ours_base}, llama.cpp {cpp_base}"
    );
    let mut report = vec![];
    let mut checks = vec![];
    for c in cases.iter().filter(|c| c["factor"].as_f64().unwrap() == 100.0) {
        let layer = c["layer"].as_u64().unwrap() as usize;
        let cpp = c["target_logprob"].as_f64().unwrap();
        // At factor 100 the target is llama.cpp's top token at every golden layer.
        assert_eq!(c["top"][0][0].as_i64().unwrap(), target);
        let same = at(&next(Some(format!("cheese_l{layer}")), 100.0).await);
        let below = at(&next(Some(format!("cheese_l{}", layer - 1)), 100.0).await);
        let above = at(&next(Some(format!("cheese_l{}", layer + 1)), 100.0).await);
        report.push(format!(
            "layer {layer}: llama.cpp {cpp:.3}; ours at {} {below:.3}, at {layer} {same:.3}, at {} {above:.3}",
            layer - 1,
            layer + 1
        ));
        checks.push((layer, cpp, same, below, above));
    }
    let report = report.join("\n");
    eprintln!("{report}");
    for (layer, cpp, same, below, above) in checks {
        assert!(
            (same - cpp).abs() < tol,
            "layer {layer} differs from llama.cpp\n{report}"
        );
        for off in [below, above] {
            assert!(
                (off - cpp).abs() > (same - cpp).abs(),
                "a neighbour of layer {layer} matches llama.cpp better\n{report}"
            );
        }
    }
    // The exported GGUF control vector (layer 15, factor 100 baked in) loads as a steer at factor 100.
    let cv = at(&next(Some("cheese_cv".into()), 100.0).await);
    let cpp15 = cases.iter().find(|c| c["layer"] == 15 && c["factor"] == 100.0).unwrap()["target_logprob"]
        .as_f64()
        .unwrap();
    assert!(
        (cv - cpp15).abs() < tol,
        "control-vector file: ours {cv:.3}, llama.cpp {cpp15:.3}"
    );
}

/// The control vector we export is read by llama.cpp (through llama-cpp-python) and steers it as
/// the golden file says.
#[test]
fn exported_control_vector_loads_in_llama_cpp() {
    let f = fixture();
    let Some(py) = ref_python(&["llama_cpp", "gguf"]) else {
        eprintln!("SKIPPED: llama-cpp-python / gguf not installed in the reference venv (bash scripts/ref-env.sh)");
        return;
    };
    let out = std::process::Command::new(py)
        .arg(root().join("tests/golden/serve/make_serve_golden.py"))
        .arg(&f.model)
        .arg("--check")
        .arg(&f.cv_path)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["model_hint"], "llama");
    assert_eq!(r["layers"], json!([15]));
    let golden = f.golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["layer"] == 15 && c["factor"] == 100.0)
        .unwrap();
    let steered = r["steered_target_logprob"].as_f64().unwrap();
    assert!(
        (steered - golden["target_logprob"].as_f64().unwrap()).abs() < 1e-3,
        "{r}"
    );
    assert!(steered > r["base_target_logprob"].as_f64().unwrap() + 2.0);
    assert_eq!(r["steered_top"][0], f.golden["target_id"]);
}

/// The reference venv's python if it can import `modules`.
fn ref_python(modules: &[&str]) -> Option<PathBuf> {
    let deps = std::env::var_os("AXBENCH_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/axbench-deps"));
    let py = deps.join("ref-venv/bin/python");
    let ok = std::process::Command::new(&py)
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[tokio::test]
async fn bearer_token_is_enforced() {
    let f = fixture();
    let body = json!({"prompt": "Hi", "max_tokens": 1});
    let url = format!("http://{}/v1/completions", f.auth);
    let none = http().post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let err: Value = none.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_api_key");
    assert!(!err.to_string().contains(API_KEY));
    let wrong = http()
        .post(&url)
        .bearer_auth("test-key-7f3b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = http().post(&url).bearer_auth(API_KEY).json(&body).send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
    assert_eq!(get(f.auth, "/v1/models", None).await.0, 401);
    let (status, models) = get(f.auth, "/v1/models", Some(API_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct-q4_1.gguf");
    assert_eq!(get(f.auth, "/health", None).await.0, 200);
}

#[tokio::test]
async fn tokenize_and_detokenize_agree_with_the_tokenizer() {
    let f = fixture();
    let text = "Héllo, wörld! 12345 <|im_start|>user\nsteering 🚀";
    for add_special in [false, true] {
        let (status, r) = post(
            f.main,
            "/tokenize",
            &json!({"content": text, "add_special": add_special}),
        )
        .await;
        assert_eq!(status, 200);
        let ids: Vec<u32> = r["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, f.tokenizer.encode(text, add_special).unwrap());
        let (_, d) = post(f.main, "/detokenize", &json!({"tokens": ids})).await;
        assert_eq!(d["content"].as_str().unwrap(), f.tokenizer.decode(&ids, false).unwrap());
        assert_eq!(d["content"].as_str().unwrap(), text);
    }
    let (_, r) = post(
        f.main,
        "/tokenize",
        &json!({"content": "Hello world", "with_pieces": true}),
    )
    .await;
    let pieces: Vec<String> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["piece"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pieces.concat(), "Hello world");
    let (status, _) = post(f.main, "/detokenize", &json!({"tokens": [99_999_999]})).await;
    assert_eq!(status, 400);
}

#[test]
fn python_openai_client() {
    let f = fixture();
    let Some(py) = ref_python(&["openai"]) else {
        eprintln!("SKIPPED: the `openai` package is not installed in the reference venv (pip install openai)");
        return;
    };
    let out = std::process::Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .arg(format!("http://{}/v1", f.main))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(r["chat"], r["chat_stream"]);
    assert!(r["completion"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(r["steered_differs"], true);
}

#[tokio::test]
async fn stop_strings_cut_the_text_streamed_or_not() {
    let f = fixture();
    let body = json!({"prompt": "List three fruits:", "max_tokens": 16, "temperature": 0});
    let (_, full) = post(f.main, "/v1/completions", &body).await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.chars().count() >= 6, "{text:?}");
    // A stop string starting at the 4th character of the greedy text.
    let start = text.char_indices().nth(3).unwrap().0;
    let stop: String = text[start..].chars().take(3).collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let mut with_stop = body.clone();
    with_stop["stop"] = json!([stop]);
    let (status, r) = post(f.main, "/v1/completions", &with_stop).await;
    assert_eq!(status, 200);
    assert_eq!(r["choices"][0]["text"], cut);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    with_stop["stream"] = json!(true);
    let sse = http()
        .post(format!("http://{}/v1/completions", f.main))
        .json(&with_stop)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut streamed = String::new();
    let mut finish = Value::Null;
    for data in sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
    {
        let chunk: Value = serde_json::from_str(data).unwrap();
        streamed.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(streamed, cut);
    assert_eq!(finish, "stop");
}

/// `--model default` (Gemma 3 270M base GGUF, no chat template in the file): Gemma's turn format
/// for chat, and llama.cpp's tokenization (ids from llama-cpp-python 0.3.36 on the same file).
#[tokio::test]
async fn gemma_default_model_chats_and_tokenizes_like_llama_cpp() {
    let model =
        axbench_models::open::resolve_model("default").expect("run scripts/setup.sh to fetch the default models");
    let mut cfg = ServerConfig::new(model);
    cfg.load = LoadOptions {
        device: axbench_models::device::DeviceSpec::Cpu,
        ..Default::default()
    };
    let server = axbench_serve::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (status, r) = post(
        server.addr,
        "/tokenize",
        &json!({"content": "The capital of France is", "add_special": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["tokens"], json!([2, 818, 5279, 529, 7001, 563]));
    let body = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
                      "max_tokens": 4, "temperature": 0});
    let (status, r) = post(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    // Gemma's template: <bos><start_of_turn>user\nBe brief.\n\nName a fruit.<end_of_turn>\n<start_of_turn>model\n
    assert_eq!(r["usage"]["prompt_tokens"], 17);
    server.shutdown().await;
}
