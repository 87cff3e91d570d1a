//! Reliability cases through the built `axbench` binary (issue #8): hostile inputs, kill -9 at
//! random points, `show` after a kill, LM faults inside a pipeline run, and secrets.
//! RELIABILITY.md maps every case to the test proving it.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Project, SLOW, STATIC, TOY, ids, states, text};

const FAIL: &str = "tests/fixtures/engine/fail.toml";
const LM_PIPELINE: &str = "tests/fixtures/reliability/lm_prompt_detect.toml";

fn repo(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Asserts an error exit: the expected code, an `error:` line, and no Rust panic.
fn assert_clean_error(out: &std::process::Output, code: i32, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {} stderr {err}",
        text(&out.stdout)
    );
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
    let mut names: Vec<_> = std::fs::read_dir(repo("tests/fixtures/engine/errors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
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
    // refused (exit 2) rather than scheduled. Peak memory (with /usr/bin/time where it exists):
    // the list is built by the stage and read back whole before the count is checked, so this is
    // not small (1.5 GB measured, debug build); the bound only catches a blow-up beyond that.
    let t = Instant::now();
    let time = Path::new("/usr/bin/time");
    let out = if time.exists() {
        let mut c = std::process::Command::new(time);
        c.args(["-f", "peak_kb=%M", env!("CARGO_BIN_EXE_axbench"), "-C"])
            .arg(p.path())
            .args(["run", TOY, "--set", "concepts.limit=10000000"]);
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("AXBENCH_CACHE_DIR")
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    } else {
        p.run(&["run", TOY, "--set", "concepts.limit=10000000"])
    };
    let err = assert_clean_error(&out, 2, "toy with 10^7 concepts");
    assert!(err.contains("fan-out would create 10000002 nodes"), "{err}");
    let peak_kb: Option<u64> = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_kb="))
        .and_then(|v| v.trim().parse().ok());
    eprintln!(
        "10^7 dynamic fan-out refused in {:?}, peak RSS {:?} MB",
        t.elapsed(),
        peak_kb.map(|k| k / 1024)
    );
    if let Some(kb) = peak_kb {
        assert!(
            kb < 3 * 1024 * 1024,
            "refusing the 10^7 dynamic fan-out peaked at {kb} KB"
        );
    }

    // Nothing was lost: the earlier pipeline is entirely fresh and every blob verifies.
    let plan = p.plan_json(&[STATIC]);
    assert_eq!(plan["to_run"], 0, "a hostile input cost a cached node: {plan}");
    let mut after = Vec::new();
    all_files(&p.cache().join("manifests"), &mut after);
    assert!(
        after.len() >= manifests_before,
        "manifests went from {manifests_before} to {}",
        after.len()
    );
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v.stdout));
    assert_eq!(
        std::fs::read_to_string(p.blob_of("sum", "value.json")).unwrap().trim(),
        "12"
    );
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
        Gguf {
            kv: vec![("general.architecture".into(), "llama".into())],
            tensors: vec![],
            n_tensors: None,
            n_kv: None,
            data: vec![],
        }
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
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

/// `axbench model info` (and `logits`) on GGUF files whose headers lie: exit 2 naming the file,
/// never a panic or an attempt to allocate what the header claims. The reader's own unit-level
/// cases (every truncation, byte flips, ...) are in crates/models/tests/gguf_errors.rs.
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
        assert!(
            err.contains("stages.a.foreach.g: fan-out would create 10000000 nodes in all, over the limit of 1000000"),
            "{err}"
        );
        let peak_kb: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("peak_kb="))
            .and_then(|v| v.trim().parse().ok())
            .expect("peak");
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
    g.tensors
        .push(("token_embd.weight".into(), vec![4, 8], f32_type, 1 << 40));
    g.data = vec![0; 128];
    cases.push(("offset_past_end", g));
    let mut g = Gguf::new();
    g.tensors.push(("token_embd.weight".into(), vec![4, 8], f32_type, 0));
    g.data = vec![0; 64]; // 128 bytes claimed
    cases.push(("data_shorter_than_dims", g));
    let mut g = Gguf::new();
    g.tensors
        .push(("token_embd.weight".into(), vec![1 << 40, 1 << 40], f32_type, 0));
    g.data = vec![0; 128];
    cases.push(("huge_dims_overflow", g));
    let mut g = Gguf::new();
    g.tensors
        .push(("token_embd.weight".into(), vec![u32::MAX as u64, 16], f32_type, 0));
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
    while !h.len().is_multiple_of(8) {
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
    let emb = |shape: &str, offsets: &str| {
        format!(r#"{{"model.embed_tokens.weight":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}}}"#)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "offsets_past_end",
            safetensors_bytes(&emb("[4,8]", "[0,128]"), None, &[0; 16]),
        ),
        (
            "offsets_far_past_end",
            safetensors_bytes(&emb("[4,8]", "[1099511627776,1099511627904]"), None, &[0; 128]),
        ),
        (
            "shape_disagrees_with_offsets",
            safetensors_bytes(&emb("[400,8]", "[0,128]"), None, &[0; 128]),
        ),
        (
            "huge_shape",
            safetensors_bytes(&emb("[4611686018427387904,4]", "[0,128]"), None, &[0; 128]),
        ),
        (
            "header_len_past_end",
            safetensors_bytes(&emb("[4,8]", "[0,128]"), Some(1 << 20), &[0; 128]),
        ),
        (
            "header_len_u64_max",
            safetensors_bytes(&emb("[4,8]", "[0,128]"), Some(u64::MAX), &[0; 128]),
        ),
        (
            "header_not_json",
            safetensors_bytes("{\"model.embed_tokens.weight\": [", None, &[0; 128]),
        ),
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
    let dir = hf_dir(
        p.path(),
        "honest",
        &safetensors_bytes(&emb("[4,8]", "[0,128]"), None, &[0; 128]),
    );
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
    let mut failed: Vec<&str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, ["activations[concept=0]", "negatives"], "{r}");
    for f in r["failed"].as_array().unwrap() {
        let e = f["error"].as_str().unwrap();
        assert!(
            e.contains("missing_column/train_data.parquet")
                && e.contains("missing column `output_concept`")
                && e.contains("columns present: input, output"),
            "{e}"
        );
    }
    assert!(ids(&r, "skipped").contains(&"evaluate".to_string()), "{r}");

    // A dataset dir that does not exist is bad input, not a failed node: path params are hashed
    // by content while planning, so this is exit 2 before anything runs, naming node and param.
    let missing = p.path().join("no-such-dataset");
    let set = format!("dataset.dir={}", missing.display());
    let out = p.run(&[
        "run",
        "pipelines/detection.toml",
        "--set",
        &set,
        "--set",
        &sets[1],
        "--set",
        &sets[2],
    ]);
    let err = assert_clean_error(&out, 2, "missing dataset dir");
    assert!(
        err.contains("no-such-dataset") && err.contains("param `dataset`") && err.contains("node `concepts`"),
        "{err}"
    );
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
/// `show <id>` lost nodes a killed run computed until engine commit 0ee15e7; that is now
/// `show_by_node_id_finds_every_node_after_a_kill_9_and_a_rerun`.)
fn cache_listing(p: &Project) -> (Vec<String>, Vec<String>) {
    let names = |sub: &str| {
        let mut v = Vec::new();
        all_files(&p.cache().join(sub), &mut v);
        let mut n: Vec<String> = v
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        // A write killed between its temp file and its rename leaves a `.tmpXXXX` beside the
        // manifests. The store never reads it (manifests are `<key>.json`), so it is litter, not a
        // visible partial artifact; removing stale ones is `gc`'s job (tests/engine.rs::gc_removes_temp_files_a_killed_write_left_once_they_are_a_minute_old).
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
    let n: usize = if std::env::var("AXBENCH_RELIABILITY_FULL").is_ok_and(|v| v == "1") {
        50
    } else {
        4
    };
    let seed: u64 = std::env::var("AXBENCH_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
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
            assert!(
                v.status.success(),
                "kill #{i} at {delay:?} (seed {seed}): verify failed: {}{}",
                text(&v.stdout),
                text(&v.stderr)
            );
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
/// scrubbed when a server echoes it) are in crates/lm/tests/lm_client.rs
/// (`api_key_never_reaches_the_cache`, `echoed_keys_are_scrubbed_from_failure_messages`). The
/// key through a pipeline whose nodes call the LM (faults, retries, LM cache included) is
/// `lm_faults_in_a_pipeline_fail_the_node_and_a_rerun_asks_only_the_failed_calls_never_leaking_the_key`.
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
        let out = p
            .command(&full)
            .env("OPENAI_API_KEY", &marker)
            .env("AXBENCH_API_KEY", &marker)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
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
    assert!(
        logged_lines > 10,
        "expected some output to search, got {logged_lines} lines"
    );
    let mut files = Vec::new();
    all_files(&p.cache(), &mut files);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("/logs/")),
        "no node logs to search: {files:?}"
    );
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("/manifests/")),
        "no manifests to search"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let needle = marker.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} contains the key",
            f.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `show <node id>` after kill -9

/// A kill -9 loses the run's queued id→key index updates, and the rerun finds the nodes the killed
/// run finished fresh at plan time: before engine commit 0ee15e7 it did not record their ids again,
/// so `show <id>` said "no cached node" for them. Kills once at least two nodes are committed (by
/// watching the manifests appear, not at a wall-clock guess), reruns, then `show`s every node by
/// id: each answers with its own manifest, and the keys it names are exactly the cache's manifests.
#[test]
fn show_by_node_id_finds_every_node_after_a_kill_9_and_a_rerun() {
    let args = [SLOW, "--set", "ms=200", "-j", "2"];
    let p = Project::new();
    let manifests = |p: &Project| {
        let mut v = Vec::new();
        all_files(&p.cache().join("manifests"), &mut v);
        let mut keys: Vec<String> = v
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
            .filter(|n| !n.starts_with(".tmp"))
            .map(|n| n.trim_end_matches(".json").to_string())
            .collect();
        keys.sort();
        keys
    };
    let mut child = p.spawn(&["run", args[0], args[1], args[2], args[3], args[4]]);
    let t0 = Instant::now();
    while manifests(&p).len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before two nodes were committed"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no node committed in 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let after_kill = manifests(&p);
    assert!(
        after_kill.len() < 13,
        "the run finished before the kill: {after_kill:?}"
    );

    // The rerun's plan finds the killed run's nodes fresh: the branch the fix is about.
    let plan = p.plan_json(&args[..3]);
    let st = states(&plan);
    let fresh: Vec<&String> = st.iter().filter(|(_, s)| *s == "fresh").map(|(id, _)| id).collect();
    assert!(fresh.len() >= 2, "expected nodes fresh after the kill: {st:?}");
    // Not asserted (it is how the index behaves today, not a promise): how many of them `show`
    // cannot find by id before the rerun, i.e. whether this kill lost the index update.
    let lost = fresh.iter().filter(|id| !p.run(&["show", id]).status.success()).count();
    eprintln!(
        "after the kill: {} of 13 nodes fresh, {lost} of them unknown to `show <id>` before the rerun",
        fresh.len()
    );
    let r = p.run_json(&args, 0);
    assert_eq!(ids(&r, "computed").len() + fresh.len(), 13, "{r}");

    let mut shown = Vec::new();
    for id in st.keys() {
        let out = p.run(&["show", id]);
        assert!(
            out.status.success(),
            "show {id} after kill -9 + rerun (fresh at plan time: {}): {}",
            fresh.contains(&id),
            text(&out.stderr)
        );
        let m = p.show(id);
        assert_eq!(m["node"], id.as_str(), "show {id} answered another node: {m}");
        shown.push(m["key"].as_str().unwrap().to_string());
    }
    shown.sort();
    assert_eq!(
        shown,
        manifests(&p),
        "the keys `show <id>` names are not the cache's manifests"
    );
}

// ---------------------------------------------------------------------------------------------
// LM faults and secrets inside a pipeline run

/// A two-concept dataset in AxBench's layout. Each latent eval row's response carries a tag
/// (`ROW-…`) that the rating prompt quotes, so the scripted server knows which row it rates.
fn lm_dataset(dir: &Path) {
    use axbench_data::dataset::{Category, Example, examples_to_batch};
    use axbench_data::tables::write_parquet_atomic;
    std::fs::create_dir_all(dir).unwrap();
    let ex = |o: &str, concept: &str, category: Category, id: i64| Example {
        input: "Say something.".into(),
        output: o.into(),
        output_concept: concept.into(),
        concept_genre: "text".into(),
        category,
        dataset_category: "genre".into(),
        concept_id: id,
        sae_link: None,
        sae_id: None,
    };
    let (cats, rent) = ("references to cats", "rental services");
    let train = vec![
        ex("The sky is blue.", "EEEEE", Category::Negative, -1),
        ex("My cat purrs.", cats, Category::Positive, 0),
        ex("We rented a van.", rent, Category::Positive, 1),
    ];
    write_parquet_atomic(
        &dir.join("train_data.parquet"),
        &examples_to_batch(&train, false).unwrap(),
    )
    .unwrap();
    let mut eval: Vec<Example> = LM_ROWS
        .iter()
        .map(|(tag, _)| ex(&format!("{tag} the cat sat on the mat."), cats, Category::Positive, 0))
        .collect();
    eval.push(ex("ROW-FINE-1 we rented a van.", rent, Category::Positive, 1));
    eval.push(ex("ROW-FINE-2 the sea is calm.", rent, Category::Negative, 1));
    for e in &mut eval {
        (e.sae_link, e.sae_id) = (Some(String::new()), Some(0));
    }
    write_parquet_atomic(
        &dir.join("latent_eval_data.parquet"),
        &examples_to_batch(&eval, true).unwrap(),
    )
    .unwrap();
    let meta: String = [(0, cats), (1, rent)]
        .iter()
        .map(|(id, c)| {
            format!(
                "{}\n",
                serde_json::json!({"concept_id": id, "concept": c, "ref": "", "concept_genres_map": {*c: ["text"]}})
            )
        })
        .collect();
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
}

/// Concept 0's rows and what the faulty server does to each one's rating request: the first
/// attempt only (then answers), or every attempt.
const LM_ROWS: [(&str, &str); 7] = [
    ("ROW-OK", "answer"),
    ("ROW-429", "429 with retry-after-ms 50 once"),
    ("ROW-EMPTY", "empty choices once"),
    ("ROW-REFUSE", "refusal"),
    ("ROW-500", "HTTP 500 always"),
    ("ROW-TRUNC", "truncated JSON always"),
    ("ROW-HANG", "hang past the timeout always"),
];

/// Prompt detection (`axbench.prompt_detect`, one node per concept) against the fault-injecting
/// OpenAI-compatible test server, with the retry knobs small (2 s per attempt, 3 attempts, 10 ms
/// backoff) and OPENAI_API_KEY (and a look-alike) set to a unique marker, debug JSON logs on.
///
/// Faulty server: concept 0's seven ratings get a 429 (Retry-After), an empty `choices`, a refusal
/// (each once, then answered), and a 500, truncated JSON and a hang past the timeout (always);
/// concept 1's two are answered. The run exits 1: `prompt_detect[concept=0]` fails naming 3 of 7
/// calls failed by class, its log records each failed call with its 3 attempts; concept 1 and the
/// concept list are computed. Every request count is exact (bounded retries).
///
/// Healthy server, rerun: only `prompt_detect[concept=0]` is computed, and the server sees exactly
/// the three requests that failed (answered and refused calls come from the LM cache); its
/// prompt_detect.json counts 7 calls, 4 cache hits. A third run computes and requests nothing.
///
/// Secrets: the server received the key on every request; the marker appears in no stdout/stderr
/// of any command (runs, `show` of each node, debug JSON logs) and in no file of the project dir
/// (engine cache, LM cache, node logs).
#[test]
fn lm_faults_in_a_pipeline_fail_the_node_and_a_rerun_asks_only_the_failed_calls_never_leaking_the_key() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use axbench_testkit::lm_server::{Fault, Reply, ServedRequest, TestServer};

    let marker = format!("sk-reliability-lm-marker-{}", std::process::id());
    let healthy = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let script = {
        let (healthy, seen) = (healthy.clone(), seen.clone());
        move |req: &ServedRequest| {
            let prompt = req.prompt();
            let tag = prompt
                .find("ROW-")
                .map(|i| prompt[i..].split_whitespace().next().unwrap().to_string())
                .unwrap_or_default();
            *seen.lock().unwrap().entry(tag.clone()).or_default() += 1;
            let ok = Reply::text("The cat is plainly there. Rating: [[2]]");
            if healthy.load(Ordering::SeqCst) {
                return ok;
            }
            match (tag.as_str(), req.repeat) {
                ("ROW-429", 0) => Reply::Fault(Fault::RateLimit {
                    retry_after_s: None,
                    retry_after_ms: Some(50),
                }),
                ("ROW-EMPTY", 0) => Reply::Fault(Fault::EmptyChoices),
                ("ROW-REFUSE", _) => Reply::Fault(Fault::Refusal("I can't rate that.".into())),
                ("ROW-500", _) => Reply::Fault(Fault::ServerError(500)),
                ("ROW-TRUNC", _) => Reply::Fault(Fault::TruncatedJson),
                ("ROW-HANG", _) => Reply::Fault(Fault::Hang(Duration::from_secs(5))),
                _ => ok,
            }
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::with_fn(script)).unwrap();

    let p = Project::new();
    let data = p.path().join("data");
    lm_dataset(&data);
    let sets = [
        format!("dataset.dir={}", data.display()),
        format!("prompts.dir={}", repo("configs/prompts")),
        format!("lm.base_url={}", server.base_url()),
    ];
    let mut args: Vec<&str> = vec![LM_PIPELINE];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let mut outputs: Vec<(String, std::process::Output)> = Vec::new();
    let mut axbench = |cmd: &[&str]| {
        let mut full = vec!["--log-format", "json"];
        full.extend_from_slice(cmd);
        let out = p
            .command(&full)
            .env("OPENAI_API_KEY", &marker)
            .env("AXBENCH_API_KEY", &marker)
            .env("RUST_LOG", "debug")
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env("AXBENCH_LM_TIMEOUT_S", "2")
            .env("AXBENCH_LM_MAX_ATTEMPTS", "3")
            .env("AXBENCH_LM_RETRY_BASE_MS", "10")
            .output()
            .unwrap();
        outputs.push((format!("{full:?}"), out.clone()));
        out
    };
    // The report is the JSON line on stdout with a `computed` field (logs go elsewhere or are other lines).
    let report = |out: &std::process::Output, code: i32| -> serde_json::Value {
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "stdout {stdout}\nstderr {}",
            text(&out.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("computed").is_some())
            .unwrap_or_else(|| panic!("no report in {stdout}"))
    };
    let counts = |seen: &Mutex<HashMap<String, u32>>| -> BTreeMap<String, u32> {
        seen.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    let want =
        |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> { pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect() };

    // 1. Faulty server.
    let t = Instant::now();
    let mut run = vec!["run", "--json"];
    run.extend_from_slice(&args);
    let r1 = report(&axbench(&run), 1);
    eprintln!("faulty run: {:?}", t.elapsed());
    assert_eq!(ids(&r1, "computed"), ["concepts", "prompt_detect[concept=1]"], "{r1}");
    let failed = r1["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r1}");
    assert_eq!(failed[0]["node"], "prompt_detect[concept=0]", "{r1}");
    let err = failed[0]["error"].as_str().unwrap();
    assert!(
        err.contains("3 of 7 LM calls failed after retries (invalid_response: 1, server: 1, timeout: 1); 4 answered calls are cached"),
        "{err}"
    );
    assert_eq!(
        counts(&seen),
        want(&[
            ("ROW-OK", 1),
            ("ROW-429", 2),
            ("ROW-EMPTY", 2),
            ("ROW-REFUSE", 1),
            ("ROW-500", 3),
            ("ROW-TRUNC", 3),
            ("ROW-HANG", 3),
            ("ROW-FINE-1", 1),
            ("ROW-FINE-2", 1)
        ]),
        "requests per row: the retries are not bounded as configured"
    );
    let faults: BTreeMap<&str, u64> = server.faults_served().into_iter().collect();
    assert_eq!(
        faults,
        [
            ("empty_choices", 1),
            ("hang", 3),
            ("rate_limit", 1),
            ("refusal", 1),
            ("server_error", 3),
            ("truncated_json", 3)
        ]
        .into_iter()
        .collect(),
        "faults served"
    );
    // The failed node's log records every failed call: class and attempts.
    let log_path = failed[0]["log"]
        .as_str()
        .map(PathBuf::from)
        .or_else(|| {
            err.split_once("(log: ")
                .and_then(|(_, s)| s.strip_suffix(')'))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| panic!("no log path in {r1}"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    for kind in ["server", "invalid_response", "timeout"] {
        assert_eq!(
            log.matches(&format!("failed after 3 attempts: {kind}:")).count(),
            1,
            "{kind} not recorded once in the node log:\n{log}"
        );
    }
    // The healthy concept's metadata counts its calls.
    let meta1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.blob_of("prompt_detect[concept=1]", "prompt_detect.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            meta1["calls"]["calls"].as_u64(),
            meta1["calls"]["completed"].as_u64(),
            meta1["calls"]["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "{meta1}"
    );

    // 2. Healthy server: only the failed node runs, and only the failed calls are asked again.
    healthy.store(true, Ordering::SeqCst);
    seen.lock().unwrap().clear();
    let r2 = report(&axbench(&run), 0);
    assert_eq!(ids(&r2, "computed"), ["prompt_detect[concept=0]"], "{r2}");
    assert_eq!(ids(&r2, "cached"), ["concepts", "prompt_detect[concept=1]"], "{r2}");
    assert_eq!(
        counts(&seen),
        want(&[("ROW-500", 1), ("ROW-TRUNC", 1), ("ROW-HANG", 1)]),
        "the rerun asked the LM for more than the failed calls"
    );
    let meta0: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.blob_of("prompt_detect[concept=0]", "prompt_detect.json")).unwrap())
            .unwrap();
    let c = &meta0["calls"];
    assert_eq!(
        [
            &c["calls"],
            &c["cache_hits"],
            &c["backend_attempts"],
            &c["completed"],
            &c["refused"],
            &c["failed"]
        ]
        .map(|v| v.as_u64().unwrap()),
        [7, 4, 3, 6, 1, 0],
        "{meta0}"
    );

    // 3. Nothing left to do: nothing computed, nothing asked.
    seen.lock().unwrap().clear();
    let r3 = report(&axbench(&run), 0);
    assert!(ids(&r3, "computed").is_empty(), "{r3}");
    assert!(
        counts(&seen).is_empty(),
        "a no-op run asked the LM: {:?}",
        counts(&seen)
    );
    for node in ["concepts", "prompt_detect[concept=0]", "prompt_detect[concept=1]"] {
        let out = axbench(&["show", node]);
        assert!(out.status.success(), "show {node}: {}", text(&out.stderr));
    }
    eprintln!("whole LM fault test: {:?}", t.elapsed());

    // Secrets: sent on every request, found nowhere else.
    let auths = server.authorizations();
    assert_eq!(auths.len() as u64, server.requests(), "a request without the key");
    assert!(
        auths.iter().all(|a| *a == format!("Bearer {marker}")),
        "the server got another key: {auths:?}"
    );
    for (what, out) in &outputs {
        for s in [text(&out.stdout), text(&out.stderr)] {
            assert!(!s.contains(&marker), "{what} printed the key: {s}");
        }
    }
    let mut files = Vec::new();
    all_files(p.path(), &mut files);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("lm_cache")),
        "no LM cache files to search: {files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} contains the key",
            f.display()
        );
    }
}
