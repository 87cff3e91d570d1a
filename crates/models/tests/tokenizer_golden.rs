//! Tokenizers built from the GGUF vocabularies against their reference, llama.cpp (through
//! llama-cpp-python), and chat templates against HF's Jinja rendering
//! (tests/golden/make_tokenizer_golden.py), for Gemma 3 270M and SmolLM2-135M-Instruct.
//! Every text of tests/golden/tokenizer/texts.jsonl (unicode, whitespace runs, code, digits,
//! special tokens in text) must give identical ids, with and without special tokens, and decode
//! to the reference's text. Gemma's non-default `SpmFlavor::Transformers` is checked the same way
//! against HF transformers loading the GGUF.

use std::sync::OnceLock;
use std::time::Instant;

use axbench_models::chat::{ChatTemplate, Message, Role};
use axbench_models::gguf::GgufFile;
use axbench_models::tokenizer::{GgufTokenizerOptions, SpmFlavor, Tokenizer};
use serde_json::Value;

use crate::common::{model_path, repo};

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
const SMOL: &str = "smollm2-135m-instruct-q4_1.gguf";

struct Loaded {
    file: GgufFile,
    tok: Tokenizer,
}

/// Building the 262k-token Gemma vocabulary takes a moment: share it between tests.
fn load(file: &'static str) -> Option<&'static Loaded> {
    static GEMMA_L: OnceLock<Option<Loaded>> = OnceLock::new();
    static SMOL_L: OnceLock<Option<Loaded>> = OnceLock::new();
    let cell = if file == GEMMA { &GEMMA_L } else { &SMOL_L };
    cell.get_or_init(|| {
        let path = model_path(file)?;
        let t0 = Instant::now();
        let gguf = GgufFile::open(&path).unwrap();
        let t1 = Instant::now();
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        eprintln!(
            "{file}: GGUF open {:.0} ms, tokenizer build {:.0} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
        Some(Loaded { file: gguf, tok })
    })
    .as_ref()
}

fn texts() -> Vec<(String, String)> {
    std::fs::read_to_string(repo().join("tests/golden/tokenizer/texts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/golden/tokenizer").join(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Compares `tok` with the golden rows; `reference` picks the object holding the reference's
/// results in a row (the row itself, or its `"transformers"` member).
fn check_texts(tok: &Tokenizer, golden_name: &str, reference: impl Fn(&Value) -> &Value, check_skip_decode: bool) {
    let g = golden(golden_name);
    let texts = texts();
    let rows = g["texts"].as_array().unwrap();
    assert_eq!(rows.len(), texts.len(), "golden file is stale: regenerate it");
    let mut failures = Vec::new();
    for ((id, text), row) in texts.iter().zip(rows) {
        assert_eq!(row["id"].as_str().unwrap(), id);
        let r = reference(row);
        let with = tok.encode(text, true).unwrap();
        if with != ids(&r["ids"]) {
            failures.push(format!(
                "{id}: encode(add_special=true)\n  got  {with:?}\n  want {:?}",
                ids(&r["ids"])
            ));
        }
        let plain = tok.encode(text, false).unwrap();
        let want_plain = ids(&r["ids_no_special"]);
        if plain != want_plain {
            failures.push(format!(
                "{id}: encode(add_special=false)\n  got  {plain:?}\n  want {want_plain:?}"
            ));
        }
        let dec = tok.decode(&want_plain, false).unwrap();
        if dec != r["decode"].as_str().unwrap() {
            failures.push(format!(
                "{id}: decode\n  got  {dec:?}\n  want {:?}",
                r["decode"].as_str().unwrap()
            ));
        }
        if check_skip_decode {
            let dec = tok.decode(&ids(&r["ids"]), true).unwrap();
            let want = r["decode_skip_special"].as_str().unwrap();
            if dec != want {
                failures.push(format!("{id}: decode(skip_special)\n  got  {dec:?}\n  want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_chats(file: &'static str, golden_name: &str, expected: ChatTemplate) {
    let Some(l) = load(file) else { return };
    let template = ChatTemplate::from_gguf(&l.file).unwrap();
    assert_eq!(template, expected);
    let g = golden(golden_name);
    for c in g["chats"].as_array().unwrap() {
        let messages: Vec<Message> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    r => panic!("role {r}"),
                },
                content: m["content"].as_str().unwrap().to_string(),
            })
            .collect();
        let add_gen = c["add_generation_prompt"].as_bool().unwrap();
        let text = template.render(&messages, add_gen).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap(), "render of {messages:?}");
        assert_eq!(
            template.encode(&l.tok, &messages, add_gen).unwrap(),
            ids(&c["ids"]),
            "ids of {text:?}"
        );
    }
}

#[test]
fn gemma3_texts_match_llama_cpp() {
    let Some(l) = load(GEMMA) else { return };
    check_texts(&l.tok, "gemma-3-270m.json", |row| row, true);
}

#[test]
fn smollm2_texts_match_llama_cpp() {
    let Some(l) = load(SMOL) else { return };
    check_texts(&l.tok, "smollm2-135m.json", |row| row, true);
}

#[test]
fn gemma3_chats_match_hf_template() {
    check_chats(GEMMA, "gemma-3-270m.json", ChatTemplate::Gemma);
}

#[test]
fn smollm2_chats_match_hf_template() {
    check_chats(SMOL, "smollm2-135m.json", ChatTemplate::smollm2());
}

/// The selectable transformers flavor of the Gemma vocabulary against HF transformers loading
/// the GGUF (kept for comparisons with Python code that tokenizes that way).
#[test]
fn gemma3_transformers_flavor_matches_transformers() {
    let Some(l) = load(GEMMA) else { return };
    let t0 = Instant::now();
    let tok = Tokenizer::from_gguf_with(
        &l.file,
        GgufTokenizerOptions {
            spm: SpmFlavor::Transformers,
        },
    )
    .unwrap();
    eprintln!(
        "gemma transformers-flavor tokenizer build {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    check_texts(&tok, "gemma-3-270m.json", |row| &row["transformers"], true);
    for c in golden("gemma-3-270m.json")["chats"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        // The rendered text carries `<bos>` itself.
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&c["transformers_ids"]),
            "{text:?}"
        );
    }
}

/// The two flavors really differ on ordinary English (the reason the default changed).
#[test]
fn gemma3_flavors_differ_on_plain_text() {
    let Some(l) = load(GEMMA) else { return };
    let hf = Tokenizer::from_gguf_with(
        &l.file,
        GgufTokenizerOptions {
            spm: SpmFlavor::Transformers,
        },
    )
    .unwrap();
    let text = "The quick brown fox jumps over the lazy dog.";
    let ours = l.tok.encode(text, true).unwrap();
    assert_eq!(ours.len(), 11, "{ours:?}"); // <bos> + 10 words/punctuation, as llama.cpp
    assert!(hf.encode(text, true).unwrap().len() > ours.len());
}

#[test]
fn special_ids() {
    if let Some(l) = load(GEMMA) {
        let t = &l.tok;
        assert_eq!(t.bos_id(), Some(2));
        assert!(t.adds_bos());
        assert_eq!(t.eos_ids(), [1, 106, 212]); // <eos>, <end_of_turn>, </s> (llama.cpp's end-of-generation texts)
        assert_eq!(t.vocab_size(), 262144);
        assert_eq!(t.id_to_token(106).as_deref(), Some("<end_of_turn>"));
        assert_eq!(t.token_to_id("<start_of_turn>"), Some(105));
        assert_eq!(t.encode("<start_of_turn>", false).unwrap(), [105]);
        assert_eq!(t.encode("", true).unwrap(), [2]);
    }
    if let Some(l) = load(SMOL) {
        let t = &l.tok;
        assert_eq!(t.bos_id(), Some(1));
        assert!(!t.adds_bos());
        assert_eq!(t.eos_ids(), [2, 0]); // <|im_end|>, <|endoftext|>
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!(t.encode("<|im_start|>", true).unwrap(), [1]);
        // smollm pre-tokenizer: one id per digit.
        assert_eq!(t.encode("2024", false).unwrap().len(), 4);
    }
}

/// Throughput on the golden texts, repeated (reported, not asserted).
#[test]
fn tokenizer_throughput() {
    let texts = texts();
    let corpus: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
    let bytes: usize = corpus.iter().map(|t| t.len()).sum();
    for file in [GEMMA, SMOL] {
        let Some(l) = load(file) else { continue };
        let reps = 20;
        let t0 = Instant::now();
        let mut n_tokens = 0;
        for _ in 0..reps {
            for t in &corpus {
                n_tokens += l.tok.encode(t, true).unwrap().len();
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "{file}: encode {:.2} MB/s, {:.0} k tokens/s ({} texts x {reps}, one thread)",
            (bytes * reps) as f64 / dt / 1e6,
            n_tokens as f64 / dt / 1e3,
            corpus.len()
        );
    }
}

/// `from_hf_file`: the GGUF-built pipelines written as HF `tokenizer.json` (plus the config files
/// HF keeps BOS/EOS in) load back with the same ids on every golden text and the same specials.
#[test]
fn hf_tokenizer_json_round_trip() {
    let texts = texts();
    for (file, config, generation) in [
        (
            GEMMA,
            r#"{"bos_token": "<bos>", "eos_token": {"content": "<eos>", "special": true}}"#,
            r#"{"eos_token_id": [1, 106]}"#,
        ),
        (
            SMOL,
            r#"{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#,
            r#"{"eos_token_id": 2}"#,
        ),
    ] {
        let Some(l) = load(file) else { continue };
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        l.tok.inner().save(&json, false).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        std::fs::write(dir.path().join("generation_config.json"), generation).unwrap();
        let hf = Tokenizer::from_hf_file(&json).unwrap();
        assert_eq!(hf.bos_id(), l.tok.bos_id(), "{file}");
        assert_eq!(hf.adds_bos(), l.tok.adds_bos(), "{file}");
        assert_eq!(hf.eos_ids(), l.tok.eos_ids(), "{file}");
        assert_eq!(hf.vocab_size(), l.tok.vocab_size(), "{file}");
        for (id, text) in &texts {
            assert_eq!(
                hf.encode(text, true).unwrap(),
                l.tok.encode(text, true).unwrap(),
                "{file} {id}"
            );
        }
    }
    let e = Tokenizer::from_hf_file("/nonexistent/tokenizer.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
}

/// Vocabulary problems in a GGUF file are reported with the file and the key.
#[test]
fn bad_gguf_vocabulary_is_a_clear_error() {
    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let write = |kvs: &[(&str, u32, Vec<u8>)]| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in kvs {
            put_str(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vocab.gguf");
        std::fs::write(&p, b).unwrap();
        (dir, p)
    };
    let s = |v: &str| {
        let mut b = vec![];
        put_str(&mut b, v);
        b
    };
    let tokens = {
        let mut b = vec![];
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        put_str(&mut b, "a");
        put_str(&mut b, "b");
        b
    };
    let arch = ("general.architecture", 8, s("llama"));
    // Unknown tokenizer model.
    let (_d, p) = write(&[
        arch.clone(),
        ("tokenizer.ggml.model", 8, s("wordpiece")),
        ("tokenizer.ggml.tokens", 9, tokens.clone()),
    ]);
    let e = Tokenizer::from_gguf_path(&p).unwrap_err().to_string();
    assert!(e.contains("vocab.gguf") && e.contains("`wordpiece`"), "{e}");
    // BOS id outside the vocabulary.
    let (_d, p) = write(&[
        arch.clone(),
        ("tokenizer.ggml.model", 8, s("gpt2")),
        ("tokenizer.ggml.tokens", 9, tokens.clone()),
        ("tokenizer.ggml.bos_token_id", 4, 7u32.to_le_bytes().to_vec()),
    ]);
    let e = Tokenizer::from_gguf_path(&p).unwrap_err().to_string();
    assert!(
        e.contains("vocab.gguf") && e.contains("tokenizer.ggml.bos_token_id"),
        "{e}"
    );
    // Byte-level BPE without merges; SentencePiece without scores; missing tokens.
    let (_d, p) = write(&[
        arch.clone(),
        ("tokenizer.ggml.model", 8, s("gpt2")),
        ("tokenizer.ggml.tokens", 9, tokens.clone()),
    ]);
    let e = Tokenizer::from_gguf_path(&p).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
    let (_d, p) = write(&[
        arch.clone(),
        ("tokenizer.ggml.model", 8, s("llama")),
        ("tokenizer.ggml.tokens", 9, tokens.clone()),
    ]);
    let e = Tokenizer::from_gguf_path(&p).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    let (_d, p) = write(&[arch, ("tokenizer.ggml.model", 8, s("llama"))]);
    let e = Tokenizer::from_gguf_path(&p).unwrap_err().to_string();
    assert!(e.contains("`tokenizer.ggml.tokens` is missing"), "{e}");
}
