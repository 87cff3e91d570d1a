//! Reliability cases through the built `axbench` binary (issue #8): hostile inputs, kill -9 at
//! random points, and secrets. RELIABILITY.md maps every case to the test proving it.
//!
//! What tests/engine.rs already proves is not repeated here: the exact error text of each bad
//! pipeline (`bad_input_exits_2_naming_file_line_column_and_key`), one kill -9 and resume,
//! corruption, concurrency. This file adds: that hostile input never costs a cached node, that
//! lying model files are refused with exit 2 (not a panic), which exit code a bad *dataset* gets,
//! a randomized kill -9 loop, and that an API key in the environment reaches no file or log.
//!
//! Exit codes, by design: 2 = the input is wrong before anything runs (pipeline, `--set`, model
//! file given to `axbench model`); 1 = a node failed while running (its error and log are in the
//! report; independent branches still finish).
//!
//! `AXBENCH_RELIABILITY_FULL=1` runs the kill loop 50 times (default 4);
//! `AXBENCH_RELIABILITY_SEED=N` replays a particular sequence of kill points.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Project, ids, text};

const STATIC: &str = "tests/fixtures/engine/static.toml";
const TOY: &str = "tests/fixtures/engine/toy.toml";
const SLOW: &str = "tests/fixtures/engine/slow.toml";
const FAIL: &str = "tests/fixtures/engine/fail.toml";

fn repo(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Every node of a pipeline with its plan state.
fn states(plan: &serde_json::Value) -> BTreeMap<String, String> {
    plan["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap().to_string(), n["state"].as_str().unwrap().to_string())).collect()
}

/// Asserts an error exit: the expected code, an `error:` line, and no Rust panic.
fn assert_clean_error(out: &std::process::Output, code: i32, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stdout {} stderr {err}", text(&out.stdout));
    assert!(err.contains("error"), "{what}: no error message: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    err
}

/// Every file under `dir` (recursively).
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() { all_files(&p, out) } else { out.push(p) }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile pipelines and params

/// Every bad pipeline in tests/fixtures/engine/errors/ (malformed TOML, unknown keys, wrong
/// types, a cycle, `../` in a stage name, a fan-out over its limit, ...), a 10^7-node static
/// fan-out, a 10^7-element dynamic fan-out and bad `--set`s, each through `plan` and `run`: exit
/// 2 every time, and the warm cache of another pipeline stays fresh and verifies.
#[test]
fn hostile_pipelines_exit_2_and_cost_no_cached_node() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let manifests_before = {
        let mut v = Vec::new();
        all_files(&p.cache().join("manifests"), &mut v);
        v.len()
    };

    let mut cases: Vec<Vec<String>> = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(repo("tests/fixtures/engine/errors")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for n in names {
        cases.push(vec![format!("tests/fixtures/engine/errors/{n}")]);
    }
    cases.push(vec!["tests/fixtures/reliability/fanout_1e7.toml".into()]);
    for set in ["xs=5", "nonsense", "xs=[{name=\"../../etc\",v=1,off=0}"] {
        cases.push(vec![STATIC.into(), "--set".into(), set.into()]);
    }
    cases.push(vec!["tests/fixtures/reliability/does-not-exist.toml".into()]);

    for case in &cases {
        for cmd in ["plan", "run"] {
            let mut args = vec![cmd];
            args.extend(case.iter().map(String::as_str));
            let t = Instant::now();
            let out = p.run(&args);
            assert_clean_error(&out, 2, &format!("{args:?}"));
            assert!(t.elapsed() < Duration::from_secs(60), "{args:?} took {:?}", t.elapsed());
        }
    }

    // A dynamic fan-out: the list stage really produces 10^7 elements; the expansion must be
    // refused (exit 2) rather than scheduled.
    let t = Instant::now();
    let out = p.run(&["run", TOY, "--set", "concepts.limit=10000000"]);
    let err = assert_clean_error(&out, 2, "toy with 10^7 concepts");
    assert!(err.contains("fan-out would create 10000002 nodes"), "{err}");
    eprintln!("10^7 dynamic fan-out refused in {:?}", t.elapsed());

    // Nothing was lost: the earlier pipeline is entirely fresh and every blob verifies.
    let plan = p.plan_json(&[STATIC]);
    assert_eq!(plan["to_run"], 0, "a hostile input cost a cached node: {plan}");
    let mut after = Vec::new();
    all_files(&p.cache().join("manifests"), &mut after);
    assert!(after.len() >= manifests_before, "manifests went from {manifests_before} to {}", after.len());
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v.stdout));
    assert_eq!(std::fs::read_to_string(p.blob_of("sum", "value.json")).unwrap().trim(), "12");
}

// ---------------------------------------------------------------------------------------------
// Lying model files

/// A minimal GGUF v3 writer: a header, string metadata, tensor infos with caller-chosen
/// (possibly lying) dims and offsets, then `data` after 32-byte alignment.
struct Gguf {
    kv: Vec<(String, String)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    data: Vec<u8>,
}

impl Gguf {
    fn new() -> Gguf {
        Gguf { kv: vec![("general.architecture".into(), "llama".into())], tensors: vec![], n_tensors: None, n_kv: None, data: vec![] }
    }

    fn bytes(&self) -> Vec<u8> {
        fn s(b: &mut Vec<u8>, x: &str) {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            s(&mut b, k);
            b.extend(8u32.to_le_bytes()); // string
            s(&mut b, v);
        }
        for (name, dims, ty, off) in &self.tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

/// `axbench model info` (and `logits`) on GGUF files whose headers lie: exit 2 naming the file,
/// never a panic or an attempt to allocate what the header claims. The reader's own unit-level
/// cases (every truncation, byte flips, ...) are in models/tests/gguf_errors.rs.
/// A 10^7-node static fan-out is refused from the spec alone (the product of its list
/// lengths), before one coordinate is built: fast and small, not after materializing a
/// million nodes. Peak memory is read with `/usr/bin/time -f %M` (skipped where it is absent).
#[test]
fn an_enormous_static_fan_out_is_refused_before_expanding_in_little_time_and_memory() {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        eprintln!("skipped: no /usr/bin/time to measure peak memory");
        return;
    }
    let p = Project::new();
    for cmd in ["plan", "run"] {
        let t = Instant::now();
        let out = std::process::Command::new(time)
            .args(["-f", "peak_kb=%M", env!("CARGO_BIN_EXE_axbench"), "-C"])
            .arg(p.path())
            .args([cmd, "tests/fixtures/reliability/fanout_1e7.toml"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let wall = t.elapsed();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("stages.a.foreach.g: fan-out would create 10000000 nodes in all, over the limit of 1000000"), "{err}");
        let peak_kb: u64 = err.lines().find_map(|l| l.strip_prefix("peak_kb=")).and_then(|v| v.trim().parse().ok()).expect("peak");
        eprintln!("{cmd}: refused in {wall:?}, peak RSS {} MB", peak_kb / 1024);
        // The binary alone (libtorch loaded) is ~120 MB; a million materialized nodes were ~1 GB.
        assert!(peak_kb < 300 * 1024, "{cmd}: peak RSS {peak_kb} KB");
        assert!(wall < Duration::from_secs(10), "{cmd}: {wall:?}");
    }
}

#[test]
fn lying_gguf_headers_exit_2_naming_the_file() {
    let p = Project::new();
    let f32_type = 0u32;
    let mut cases: Vec<(&str, Gguf)> = Vec::new();
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![4, 8], f32_type, 1 << 40));
    g.data = vec![0; 128];
    cases.push(("offset_past_end", g));
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![4, 8], f32_type, 0));
    g.data = vec![0; 64]; // 128 bytes claimed
    cases.push(("data_shorter_than_dims", g));
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![1 << 40, 1 << 40], f32_type, 0));
    g.data = vec![0; 128];
    cases.push(("huge_dims_overflow", g));
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![u32::MAX as u64, 16], f32_type, 0));
    g.data = vec![0; 128];
    cases.push(("huge_dims", g));
    let mut g = Gguf::new();
    g.n_tensors = Some(u64::MAX);
    cases.push(("tensor_count_lies", g));
    let mut g = Gguf::new();
    g.n_kv = Some(1 << 60);
    cases.push(("kv_count_lies", g));
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![4, 8], 9999, 0));
    g.data = vec![0; 128];
    cases.push(("unknown_type", g));

    for (name, g) in cases {
        let path = p.path().join(format!("{name}.gguf"));
        std::fs::write(&path, g.bytes()).unwrap();
        let path_s = path.to_str().unwrap();
        for cmd in [vec!["model", "info", path_s], vec!["model", "logits", path_s, "hi"]] {
            let t = Instant::now();
            let out = p.run(&cmd);
            let err = assert_clean_error(&out, 2, &format!("{name}: {cmd:?}"));
            assert!(err.contains(path_s), "{name}: the error does not name the file: {err}");
            assert!(t.elapsed() < Duration::from_secs(30), "{name}: took {:?}", t.elapsed());
        }
    }
}

/// A one-layer llama HF directory (config.json, tokenizer.json) with `model.safetensors` given
/// as raw bytes.
fn hf_dir(root: &Path, name: &str, safetensors: &[u8]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":2,"vocab_size":4,"rms_norm_eps":1e-5,"max_position_embeddings":64,"rope_theta":10000.0,"tie_word_embeddings":true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0,"hi":1,"a":2,"b":3},"unk_token":"<unk>"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors).unwrap();
    dir
}

/// safetensors bytes: an 8-byte little-endian header length (`len_override` to lie), the JSON
/// header padded to 8 bytes, then `data`.
fn safetensors_bytes(header: &str, len_override: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut b = len_override.unwrap_or(h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(data);
    b
}

/// `axbench model logits` on HF directories whose safetensors header lies (offsets past the end,
/// a header length past the end or near u64::MAX, a shape that disagrees with its offsets, not
/// JSON): exit 2 naming the file, no panic.
#[test]
fn lying_safetensors_headers_exit_2_naming_the_file() {
    let p = Project::new();
    let emb = |shape: &str, offsets: &str| format!(r#"{{"model.embed_tokens.weight":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}}}"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("offsets_past_end", safetensors_bytes(&emb("[4,8]", "[0,128]"), None, &[0; 16])),
        ("offsets_far_past_end", safetensors_bytes(&emb("[4,8]", "[1099511627776,1099511627904]"), None, &[0; 128])),
        ("shape_disagrees_with_offsets", safetensors_bytes(&emb("[400,8]", "[0,128]"), None, &[0; 128])),
        ("huge_shape", safetensors_bytes(&emb("[4611686018427387904,4]", "[0,128]"), None, &[0; 128])),
        ("header_len_past_end", safetensors_bytes(&emb("[4,8]", "[0,128]"), Some(1 << 20), &[0; 128])),
        ("header_len_u64_max", safetensors_bytes(&emb("[4,8]", "[0,128]"), Some(u64::MAX), &[0; 128])),
        ("header_not_json", safetensors_bytes("{\"model.embed_tokens.weight\": [", None, &[0; 128])),
        ("empty_file", vec![]),
    ];
    for (name, bytes) in cases {
        let dir = hf_dir(p.path(), name, &bytes);
        let dir_s = dir.to_str().unwrap();
        let out = p.run(&["model", "logits", dir_s, "hi"]);
        let err = assert_clean_error(&out, 2, name);
        assert!(err.contains(dir_s), "{name}: the error does not name the model: {err}");
    }
    // Control: the same directory with an honest file gets past the header (it then lacks
    // the remaining tensors, still a clean exit 2 naming the missing one).
    let dir = hf_dir(p.path(), "honest", &safetensors_bytes(&emb("[4,8]", "[0,128]"), None, &[0; 128]));
    let out = p.run(&["model", "logits", dir.to_str().unwrap(), "hi"]);
    let err = assert_clean_error(&out, 2, "honest");
    eprintln!("honest control: {err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile datasets: a failing node, exit 1

/// A dataset whose train_data.parquet lacks `output_concept` (tests/fixtures/reliability/
/// make_missing_column.py writes it). `plan` does not read parquet and succeeds; `run` lists
/// the concepts, then both activations nodes fail naming the file, the column and the columns
/// present: a failed node is exit 1, and everything downstream is skipped, not attempted. A
/// dataset dir that does not exist is exit 2 (caught while planning).
#[test]
fn a_dataset_missing_a_column_fails_its_nodes_with_exit_1_naming_file_and_column() {
    let p = Project::new();
    let data = repo("tests/fixtures/reliability/missing_column");
    let sets = [
        format!("dataset.dir={data}"),
        // Any existing file: the dataset is read (and fails) before the model is loaded.
        format!("model.path={data}/metadata.jsonl"),
        format!("methods.config={}", repo("configs/methods.toml")),
        "concepts.limit=1".to_string(),
    ];
    let mut args = vec!["pipelines/detection.toml"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let plan = p.plan_json(&args);
    assert!(plan["to_run"].as_u64().unwrap() > 0, "{plan}");

    let r = p.run_json(&args, 1);
    assert_eq!(ids(&r, "computed"), ["concepts"]);
    // Each failed node is listed once (a later wave of the same run does not retry it).
    let mut failed: Vec<&str> = r["failed"].as_array().unwrap().iter().map(|f| f["node"].as_str().unwrap()).collect();
    failed.sort();
    assert_eq!(failed, ["activations[concept=0]", "negatives"], "{r}");
    for f in r["failed"].as_array().unwrap() {
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("missing_column/train_data.parquet") && e.contains("missing column `output_concept`") && e.contains("columns present: input, output"), "{e}");
    }
    assert!(ids(&r, "skipped").contains(&"evaluate".to_string()), "{r}");

    // A dataset dir that does not exist is bad input, not a failed node: path params are hashed
    // by content while planning, so this is exit 2 before anything runs, naming node and param.
    let missing = p.path().join("no-such-dataset");
    let set = format!("dataset.dir={}", missing.display());
    let out = p.run(&["run", "pipelines/detection.toml", "--set", &set, "--set", &sets[1], "--set", &sets[2]]);
    let err = assert_clean_error(&out, 2, "missing dataset dir");
    assert!(err.contains("no-such-dataset") && err.contains("param `dataset`") && err.contains("node `concepts`"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// kill -9 at random points

/// A small deterministic generator (xorshift64*), so a failing sequence of kill points can be
/// replayed with AXBENCH_RELIABILITY_SEED.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The cache's manifests (named by node key) and blobs (named by content digest), sorted: two
/// caches holding the same keys and the same bytes list the same names. (Not via `axbench show`:
/// `show <id>` lost nodes a killed run computed until engine commit 0ee15e7; see RELIABILITY.md.)
fn cache_listing(p: &Project) -> (Vec<String>, Vec<String>) {
    let names = |sub: &str| {
        let mut v = Vec::new();
        all_files(&p.cache().join(sub), &mut v);
        let mut n: Vec<String> = v.iter().map(|f| f.file_name().unwrap().to_string_lossy().to_string()).collect();
        // A write killed between its temp file and its rename leaves a `.tmpXXXX` beside the
        // manifests. The store never reads it (manifests are `<key>.json`), so it is litter, not a
        // visible partial artifact; removing stale ones is `gc`'s job (a gap, RELIABILITY.md).
        n.retain(|name| !name.starts_with(".tmp"));
        n.sort();
        n
    };
    (names("manifests"), names("blobs"))
}

/// Runs the 13-node sleeping pipeline and SIGKILLs it at a random point (0–1.2 s, spanning
/// start-up, the naps and the final gather), N times, each on a fresh cache. After every kill
/// the cache verifies (no partial artifact is visible: a blob is either complete and matches
/// its digest or absent); after every rerun the outputs are byte-identical to an uninterrupted
/// run's and staging (`tmp/`) is empty.
#[test]
fn kill_9_at_random_points_then_rerun_is_byte_identical() {
    let n: usize = if std::env::var("AXBENCH_RELIABILITY_FULL").is_ok_and(|v| v == "1") { 50 } else { 4 };
    let seed: u64 = std::env::var("AXBENCH_RELIABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("kill -9 loop: {n} kills, AXBENCH_RELIABILITY_SEED={seed}");
    let mut rng = Rng(seed);
    let args = [SLOW, "--set", "ms=80", "-j", "2"];

    let reference = Project::new();
    reference.run_json(&args, 0);
    let want = cache_listing(&reference);
    assert_eq!(want.0.len(), 13);

    let mut fresh_counts = Vec::new();
    for i in 0..n {
        let p = Project::new();
        let delay = Duration::from_millis(rng.next() % 1200);
        let mut child = p.spawn(&["run", args[0], args[1], args[2], args[3], args[4]]);
        std::thread::sleep(delay);
        child.kill().expect("kill -9"); // SIGKILL on Unix
        child.wait().unwrap();

        if p.cache().exists() {
            let v = p.run(&["verify"]);
            assert!(v.status.success(), "kill #{i} at {delay:?} (seed {seed}): verify failed: {}{}", text(&v.stdout), text(&v.stderr));
            let partial = p.plan_json(&args[..3]);
            fresh_counts.push(states(&partial).values().filter(|s| *s == "fresh").count());
        } else {
            fresh_counts.push(0);
        }

        p.run_json(&args, 0);
        assert_eq!(p.plan_json(&args[..3])["to_run"], 0);
        assert_eq!(cache_listing(&p), want, "kill #{i} at {delay:?} (seed {seed})");
        let v = p.run(&["verify"]);
        assert!(v.status.success(), "kill #{i}: {}", text(&v.stdout));
        let staged = std::fs::read_dir(p.cache().join("tmp")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(staged, 0, "kill #{i}: staging not empty after the rerun");
    }
    eprintln!("fresh nodes found after each kill: {fresh_counts:?}");
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// With OPENAI_API_KEY (and a look-alike AXBENCH_ variable) set to a unique marker, runs,
/// failures, plans, show, status and verify with JSON debug logs: the marker appears in no
/// file of the cache (manifests, blobs, logs, index), no report and no log line.
///
/// The LM client's own guarantees (the key is sent, yet never cached, never in a record, and
/// scrubbed when a server echoes it) are in stages/tests/lm_client.rs
/// (`api_key_never_reaches_the_cache`, `echoed_keys_are_scrubbed_from_failure_messages`). The
/// `axbench.judge` stage, which calls the LM client, is not driven here yet (a gap in RELIABILITY.md).
#[test]
fn an_api_key_in_the_environment_reaches_no_cache_file_report_or_log() {
    let marker = format!("sk-reliability-marker-{}", std::process::id());
    let p = Project::new();
    let mut outputs = Vec::new();
    let runs: [(&[&str], Option<i32>); 8] = [
        (&["run", "--json", TOY], Some(0)),
        (&["run", "--json", FAIL], Some(1)),
        (&["run", FAIL], Some(1)),
        (&["plan", "--json", TOY], Some(0)),
        (&["plan", TOY, "--params"], Some(0)),
        (&["show", "total"], Some(0)),
        (&["status"], Some(0)),
        (&["verify"], Some(0)),
    ];
    for (args, code) in runs {
        let mut full = vec!["--log-format", "json"];
        full.extend_from_slice(args);
        let out = p.command(&full).env("OPENAI_API_KEY", &marker).env("AXBENCH_API_KEY", &marker).env("RUST_LOG", "debug").output().unwrap();
        if let Some(c) = code {
            assert_eq!(out.status.code(), Some(c), "{full:?}: {}", text(&out.stderr));
        }
        outputs.push((format!("{full:?}"), out));
    }
    let mut logged_lines = 0;
    for (what, out) in &outputs {
        for s in [text(&out.stdout), text(&out.stderr)] {
            assert!(!s.contains(&marker), "{what} printed the key: {s}");
            logged_lines += s.lines().count();
        }
    }
    assert!(logged_lines > 10, "expected some output to search, got {logged_lines} lines");
    let mut files = Vec::new();
    all_files(&p.cache(), &mut files);
    assert!(files.iter().any(|f| f.to_string_lossy().contains("/logs/")), "no node logs to search: {files:?}");
    assert!(files.iter().any(|f| f.to_string_lossy().contains("/manifests/")), "no manifests to search");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let needle = marker.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} contains the key", f.display());
    }
}
