//! `axbench model` end to end: the built binary on the two embedded GGUF models, against
//! tests/golden/cli/*.json (made by tests/golden/make_cli_golden.py): token ids from the
//! reference tokenizer, llama.cpp (through llama-cpp-python), next-token top-5 and
//! greedy 20-token continuations from HF transformers loading the same GGUF in float32, and the
//! layer-L residual stream within 1e-3 relative. The `--json` shapes are insta snapshots
//! (tests/snapshots/), with numbers that depend on floating point replaced by placeholders.
//!
//! Every `axbench model` call loads the model afresh (about a second for these two), so each test
//! keeps to a few prompts. Tests skip with a note when `.deps/models` lacks the models (run
//! scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::{floats, root};

const GEMMA: &str = "gemma-3-270m";
const SMOL: &str = "smollm2-135m";

fn golden(name: &str) -> Value {
    let p = root().join("tests/golden/cli").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The model file of a golden, or `None` (with a note) when it is not installed.
fn model_path(g: &Value) -> Option<PathBuf> {
    let p = root().join(".deps/models").join(g["meta"]["file"].as_str().unwrap());
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not present (run scripts/setup.sh)", p.display());
        None
    }
}

fn axbench(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_axbench"))
        .args(args)
        .current_dir(root())
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .expect("running axbench")
}

/// Runs a command that must succeed and print one JSON object.
fn json(args: &[&str]) -> Value {
    let out = axbench(args);
    assert!(
        out.status.success(),
        "axbench {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "axbench {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Replaces every number under a key in `keys` (at any depth) with a placeholder, for snapshots
/// of values that depend on floating point.
fn redact(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if keys.contains(&k.as_str()) {
                    redact_all(x, &format!("[{k}]"));
                } else {
                    redact(x, keys);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, keys)),
        _ => {}
    }
}

fn redact_all(v: &mut Value, with: &str) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| redact_all(x, with)),
        Value::Object(m) => m.values_mut().for_each(|x| redact_all(x, with)),
        Value::Number(_) | Value::String(_) => *v = Value::String(with.to_string()),
        _ => {}
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------

fn check_tokenize(name: &str) {
    let g = golden(name);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let mut cases: Vec<&Value> = g["texts"].as_array().unwrap().iter().collect();
    cases.push(&g["activations"]);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = json(&["model", "tokenize", model, text, "--json"]);
        assert_eq!(ints(&got["ids"]), ints(&c["ids"]), "{name}: ids of {text:?}");
        assert_eq!(
            strings(&got["tokens"]),
            strings(&c["tokens"]),
            "{name}: tokens of {text:?}"
        );
    }
    // --no-bos drops exactly the BOS the tokenizer adds by default (Gemma adds one, SmolLM2 none).
    let c = &g["texts"][0];
    let got = json(&[
        "model",
        "tokenize",
        model,
        c["text"].as_str().unwrap(),
        "--no-bos",
        "--json",
    ]);
    let want = ints(&c["ids"]);
    let want = if name == GEMMA { want[1..].to_vec() } else { want };
    assert_eq!(ints(&got["ids"]), want, "{name}: --no-bos");
    // --file reads the text as is.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("text.txt");
    std::fs::write(&f, c["text"].as_str().unwrap()).unwrap();
    let got = json(&["model", "tokenize", model, "--file", path_str(&f), "--json"]);
    assert_eq!(ints(&got["ids"]), ints(&c["ids"]), "{name}: --file");
}

#[test]
fn tokenize_matches_llama_cpp_gemma() {
    check_tokenize(GEMMA);
}

#[test]
fn tokenize_matches_llama_cpp_smollm2() {
    check_tokenize(SMOL);
}

fn check_logits(name: &str) {
    let g = golden(name);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    for c in g["texts"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let got = json(&[
            "model", "logits", model, text, "--top-k", "5", "--device", "cpu", "--json",
        ]);
        let top = got["top"].as_array().unwrap();
        let ids: Vec<i64> = top.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        let logits: Vec<f64> = top.iter().map(|e| e["logit"].as_f64().unwrap()).collect();
        let ref_ids = ints(&c["top5_ids"]);
        let ref_logits = floats(&c["top5_logits"]);
        // Ids agree except where two reference logits tie within tolerance.
        for (k, (a, b)) in ids.iter().zip(&ref_ids).enumerate() {
            if a != b {
                let tie = ref_logits.windows(2).any(|w| (w[0] - w[1]).abs() < 2e-3);
                assert!(tie, "{name}/{}: top-5 ids {ids:?} vs {ref_ids:?} (rank {k})", c["id"]);
            }
        }
        let d = logits
            .iter()
            .zip(&ref_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{name}/{}: top-5 {ids:?}, max |Δlogit| {d:.2e}", c["id"]);
        assert!(
            d < 2e-3,
            "{name}/{}: top-5 logits {logits:?} vs {ref_logits:?}",
            c["id"]
        );
        for (e, id) in top.iter().zip(&ids) {
            assert!(
                !e["token"].as_str().unwrap().is_empty() || *id == 0,
                "{name}: token string of {id}"
            );
        }
    }
}

#[test]
fn logits_top5_match_transformers_gemma() {
    check_logits(GEMMA);
}

#[test]
fn logits_top5_match_transformers_smollm2() {
    check_logits(SMOL);
}

fn check_generate(name: &str) {
    let g = golden(name);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let run = |text: &str, extra: &[&str]| {
        let mut args = vec![
            "model",
            "generate",
            model,
            text,
            "--max-new-tokens",
            "20",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&args)
    };
    for c in g["texts"].as_array().unwrap() {
        let got = run(c["text"].as_str().unwrap(), &[]);
        assert_eq!(
            ints(&got["ids"]),
            ints(&c["greedy"]),
            "{name}/{}: greedy continuation",
            c["id"]
        );
        assert_eq!(got["finish_reason"], "length");
    }
    // --chat: one user turn in the model's chat template, generation prompt opened.
    let chat = &g["chat"];
    let got = run(chat["user"].as_str().unwrap(), &["--chat"]);
    assert_eq!(
        ints(&got["ids"]),
        ints(&chat["greedy"]),
        "{name}: greedy continuation of the chat prompt"
    );
    // Written out by hand, the same rendered prompt gives the same continuation.
    let got = run(chat["text"].as_str().unwrap(), &["--no-bos"]);
    assert_eq!(
        ints(&got["ids"]),
        ints(&chat["greedy"]),
        "{name}: the rendered chat text, tokenized"
    );
}

#[test]
fn greedy_generation_matches_transformers_gemma() {
    check_generate(GEMMA);
}

#[test]
fn greedy_generation_matches_transformers_smollm2() {
    check_generate(SMOL);
}

fn check_activations(name: &str) {
    let g = golden(name);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let a = &g["activations"];
    let layer = a["layer"].as_u64().unwrap().to_string();
    let text = a["text"].as_str().unwrap();
    let got = json(&[
        "model",
        "activations",
        model,
        text,
        "--layer",
        &layer,
        "--device",
        "cpu",
        "--json",
    ]);
    assert_eq!(got["shape"], a["shape"], "{name}: shape [T, D]");
    assert_eq!(strings(&got["tokens"]), strings(&a["tokens"]));
    let rows = got["values"].as_array().unwrap();
    let refs = a["values"].as_array().unwrap();
    assert_eq!(rows.len(), refs.len());
    let mut worst = 0.0f64;
    for (t, (row, r)) in rows.iter().zip(refs).enumerate() {
        let (row, r) = (floats(row), floats(r));
        assert_eq!(row.len(), r.len());
        let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff = row.iter().zip(&r).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let rel = diff / norm;
        worst = worst.max(rel);
        assert!(
            rel <= 1e-3,
            "{name}: layer {layer} token {t}: relative difference {rel:.2e}"
        );
    }
    eprintln!("{name}: layer {layer} activations, max relative difference per token {worst:.2e}");

    // --out writes the same values to safetensors, with the documented tensor name and metadata.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let summary = json(&[
        "model",
        "activations",
        model,
        text,
        "--layer",
        &layer,
        "--out",
        path_str(&out),
        "--json",
    ]);
    assert_eq!(summary["shape"], a["shape"]);
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let extra = meta.metadata().as_ref().unwrap();
    assert_eq!(extra["layer"], layer);
    assert_eq!(
        serde_json::from_str::<Vec<i64>>(&extra["ids"]).unwrap(),
        ints(&a["ids"])
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("activations").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let shape: Vec<u64> = a["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(t.shape().iter().map(|&x| x as u64).collect::<Vec<_>>(), shape);
    let vals: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let json_vals: Vec<f32> = rows.iter().flat_map(floats).map(|x| x as f32).collect();
    assert_eq!(vals, json_vals, "{name}: --out and --json hold the same values");
}

#[test]
fn activations_match_transformers_gemma() {
    check_activations(GEMMA);
}

#[test]
fn activations_match_transformers_smollm2() {
    check_activations(SMOL);
}

// ---------------------------------------------------------------------------------------------
// JSON shapes (snapshots) and output for a person

#[test]
fn json_shapes() {
    let g = golden(SMOL);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let mut info = json(&["model", "info", model, "--json"]);
    info["path"] = "[path]".into();
    insta::assert_json_snapshot!("info_smollm2", info);
    let gg = golden(GEMMA);
    if let Some(gemma) = model_path(&gg) {
        let mut info = json(&["model", "info", path_str(&gemma), "--json"]);
        info["path"] = "[path]".into();
        insta::assert_json_snapshot!("info_gemma", info);
    }
    insta::assert_json_snapshot!(
        "tokenize",
        json(&["model", "tokenize", model, "Hi <|im_start|>user 42", "--json"])
    );
    let mut logits = json(&["model", "logits", model, "1, 2, 3,", "--top-k", "3", "--json"]);
    redact(&mut logits, &["logit"]);
    insta::assert_json_snapshot!("logits", logits);
    let generated = json(&[
        "model",
        "generate",
        model,
        "1, 2, 3,",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    insta::assert_json_snapshot!("generate", generated);
    let mut acts = json(&["model", "activations", model, "Hello world", "--layer", "0", "--json"]);
    // [T, D] floats: the snapshot keeps their layout, not their values.
    let rows = acts["values"].as_array().unwrap();
    let layout = format!("[{} rows of {} floats]", rows.len(), rows[0].as_array().unwrap().len());
    acts["values"] = layout.into();
    insta::assert_json_snapshot!("activations", acts);
}

#[test]
fn info_reads_hf_directories_and_digests_the_bytes() {
    // An HF directory (config.json + model.safetensors, no tokenizer): architecture from
    // config.json, digest over its files as `info --help` documents.
    let dir = root().join("tests/golden/models/tiny-llama");
    let got = json(&["model", "info", path_str(&dir), "--json"]);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(got["format"], "hf");
    assert_eq!(got["architecture"], "llama");
    assert_eq!(got["num_layers"], config["num_hidden_layers"]);
    assert_eq!(got["hidden_size"], config["hidden_size"]);
    assert_eq!(got["vocab_size"], config["vocab_size"]);
    assert_eq!(got["chat_template"]["format"], Value::Null);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for n in &names {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        h.update(n.as_bytes());
        h.update(&[0]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    assert_eq!(got["digest"]["algorithm"], "blake3");
    assert_eq!(got["digest"]["hex"], h.finalize().to_hex().as_str());

    // A GGUF file: BLAKE3 of its bytes.
    let g = golden(SMOL);
    let Some(model) = model_path(&g) else { return };
    let got = json(&["model", "info", path_str(&model), "--json"]);
    let want = blake3::hash(&std::fs::read(&model).unwrap());
    assert_eq!(got["digest"]["hex"], want.to_hex().as_str());
    assert_eq!(got["num_layers"], g["meta"]["num_layers"]);
    assert_eq!(got["hidden_size"], g["meta"]["hidden_size"]);
    assert_eq!(got["vocab_size"], g["meta"]["vocab_size"]);
}

#[test]
fn output_for_a_person() {
    let g = golden(GEMMA);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let out = axbench(&["model", "tokenize", model, "Hello  <start_of_turn>user\n"]);
    assert!(out.status.success());
    insta::assert_snapshot!("tokenize_human", String::from_utf8(out.stdout).unwrap());
    let out = axbench(&["model", "info", model]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Aligned: keys padded to one width, every value starting in column 15.
    for l in text.lines() {
        let b = l.as_bytes();
        assert!(b.len() > 15 && b[14] == b' ' && b[15] != b' ', "misaligned: {l:?}");
    }
    assert!(text.contains("layers         18"), "{text}");
    assert!(text.contains("digest         blake3:"), "{text}");
}

#[test]
fn sampling_is_seeded_and_bf16_runs() {
    let g = golden(SMOL);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    let sample = |seed: &str| {
        let got = json(&[
            "model",
            "generate",
            model,
            "Once upon a time",
            "-n",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ]);
        ints(&got["ids"])
    };
    let a = sample("7");
    assert_eq!(a.len(), 12);
    assert_eq!(a, sample("7"), "same seed, same sample");
    assert_ne!(a, sample("8"), "another seed, another sample");
    // bf16 runs and agrees with f32 on the most likely next token of a plain prompt.
    let c = &g["texts"][2];
    let got = json(&[
        "model",
        "logits",
        model,
        c["text"].as_str().unwrap(),
        "--dtype",
        "bf16",
        "-k",
        "1",
        "--json",
    ]);
    assert_eq!(
        got["top"][0]["id"].as_i64().unwrap(),
        ints(&c["top5_ids"])[0],
        "bf16 top-1"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors: clear, exit code 2

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = axbench(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "axbench {args:?}: expected exit 2, got {}: {err}",
        out.status
    );
    for n in needles {
        assert!(err.contains(n), "axbench {args:?}: error should mention {n:?}: {err}");
    }
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    fails_with(
        &["model", "info", "/no/such/model.gguf"],
        &["/no/such/model.gguf", "no such file"],
    );
    fails_with(
        &["model", "tokenize", "Cargo.toml", "hi"],
        &["Cargo.toml", "HF model directory or a .gguf file"],
    );
    fails_with(&["model", "info", "default", "--dtype", "f16"], &["f16", "f32 or bf16"]);
    fails_with(&["model", "info", "default", "--device", "tpu"], &["tpu"]);
    fails_with(&["model", "tokenize", "default"], &["TEXT", "--file"]);
    fails_with(
        &["model", "tokenize", "default", "--file", "/no/such.txt"],
        &["/no/such.txt"],
    );
    // A file with a .gguf name that is not GGUF.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"not a gguf file at all").unwrap();
    fails_with(&["model", "logits", path_str(&fake), "hi"], &["fake.gguf"]);
    let g = golden(SMOL);
    let Some(model) = model_path(&g) else { return };
    let model = path_str(&model);
    fails_with(
        &["model", "activations", model, "hi", "--layer", "30"],
        &["--layer 30", "30 layers", "0..=29"],
    );
    fails_with(
        &["model", "generate", model, "hi", "--temperature", "0"],
        &["--temperature"],
    );
    fails_with(
        &["model", "generate", model, "hi", "--top-p", "0.9"],
        &["--temperature"],
    );
    fails_with(&["model", "logits", model, "", "--json"], &["no tokens"]);
    fails_with(
        &["model", "activations", model, "hi", "--layer", "1", "--out", "acts.npy"],
        &["acts.npy", ".safetensors"],
    );
}

#[test]
fn help_teaches_with_examples() {
    let out = axbench(&["model", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "info",
        "tokenize",
        "logits",
        "generate",
        "activations",
        "Examples:",
        "default-instruct",
    ] {
        assert!(text.contains(sub), "`axbench model --help` lacks {sub:?}:\n{text}");
    }
    for sub in ["info", "tokenize", "logits", "generate", "activations"] {
        let out = axbench(&["model", sub, "--help"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Examples:") && text.contains(&format!("axbench model {sub}")),
            "{sub} --help:\n{text}"
        );
        assert!(
            text.contains("--device") && text.contains("--dtype") && text.contains("--json"),
            "{sub} --help:\n{text}"
        );
    }
    let out = axbench(&["model", "activations", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("`activations` of shape [T, D]") && text.contains("hidden_states[L+1]"),
        "{text}"
    );
}
