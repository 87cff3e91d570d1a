//! GGUF reading and dequantization against llama.cpp's `gguf` Python package
//! (tests/golden/make_gguf_golden.py): the two embedded model files (header facts, tensor
//! directory, hyperparameters, value slices and sums of a few tensors per quant type) and random
//! blocks of every supported quant type.
//!
//! The model files come from scripts/setup.sh (`.deps/models`, or `AXBENCH_MODELS_DIR`); tests that
//! need them say so on stderr and pass when they are absent.

use std::path::PathBuf;
use std::time::Instant;

use axbench_models::gguf::GgufFile;
use axbench_models::quant::{self, GgmlType};
use serde_json::Value;

use crate::common::{model_path, repo};

fn golden_dir() -> PathBuf {
    repo().join("tests/golden/gguf")
}

fn type_by_name(name: &str) -> GgmlType {
    (0..64)
        .map(GgmlType::from_u32)
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

/// Relative 1e-6 (absolute near zero): gguf-py computes in f32 with the same operation order, so
/// in practice values agree bit for bit.
fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-6 * scale.max(b.abs()).max(1e-30)
}

#[test]
fn synthetic_blocks_match_gguf_py() {
    let dir = golden_dir().join("synthetic");
    let mut n_types = 0;
    for name in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "Q8_K",
    ] {
        let input = std::fs::read(dir.join(format!("{name}.in"))).unwrap();
        let expected: Vec<f32> = std::fs::read(dir.join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let ty = type_by_name(name);
        let got = quant::dequantize_to_vec(ty, &input, expected.len()).unwrap();
        let mut mismatches = 0;
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            if !close(*g as f64, *e as f64, 1e-3) {
                if mismatches < 5 {
                    eprintln!("{name}[{i}]: got {g}, gguf-py {e}");
                }
                mismatches += 1;
            }
        }
        assert_eq!(
            mismatches,
            0,
            "{name}: {mismatches} of {} values differ",
            expected.len()
        );
        n_types += 1;
    }
    assert_eq!(n_types, 15);
}

fn check_model(golden_file: &str) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join(golden_file)).unwrap()).unwrap();
    let Some(path) = model_path(golden["file"].as_str().unwrap()) else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version() as u64, golden["version"].as_u64().unwrap());
    assert_eq!(f.architecture().unwrap(), golden["architecture"].as_str().unwrap());
    assert_eq!(f.metadata().len() as u64, golden["n_metadata"].as_u64().unwrap());
    assert_eq!(f.data_offset(), golden["data_offset"].as_u64().unwrap());

    // The whole tensor directory: names, types, torch shapes, absolute offsets, in file order.
    let dir = golden["tensor_dir"].as_array().unwrap();
    assert_eq!(f.tensor_infos().len(), dir.len());
    for (info, g) in f.tensor_infos().iter().zip(dir) {
        assert_eq!(info.name, g["name"].as_str().unwrap());
        assert_eq!(info.ggml_type.name(), g["type"].as_str().unwrap(), "{}", info.name);
        let shape: Vec<i64> = g["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(info.shape(), shape, "{}", info.name);
        assert_eq!(
            f.data_offset() + info.offset,
            g["abs_offset"].as_u64().unwrap(),
            "{}",
            info.name
        );
    }

    // Hyperparameters under `{arch}.*`.
    let hp = f.hparams().unwrap();
    let ghp = &golden["hparams"];
    let as_u32 = |k: &str| ghp[k].as_u64().map(|v| v as u32);
    let as_f32 = |k: &str| ghp[k].as_f64().map(|v| v as f32);
    assert_eq!(Some(hp.block_count), as_u32("block_count"));
    assert_eq!(Some(hp.embedding_length), as_u32("embedding_length"));
    assert_eq!(Some(hp.feed_forward_length), as_u32("feed_forward_length"));
    assert_eq!(Some(hp.head_count), as_u32("attention.head_count"));
    assert_eq!(Some(hp.head_count_kv), as_u32("attention.head_count_kv"));
    assert_eq!(hp.context_length, as_u32("context_length"));
    assert_eq!(hp.rope_freq_base, as_f32("rope.freq_base"));
    assert_eq!(hp.rope_dimension_count, as_u32("rope.dimension_count"));
    assert_eq!(hp.rms_norm_eps, as_f32("attention.layer_norm_rms_epsilon"));
    assert_eq!(hp.key_length, as_u32("attention.key_length"));
    assert_eq!(hp.value_length, as_u32("attention.value_length"));
    assert_eq!(hp.sliding_window, as_u32("attention.sliding_window"));
    if let Some(v) = as_u32("vocab_size") {
        assert_eq!(hp.vocab_size, Some(v));
    }

    // Dequantized tensors: shape, sums, and values at recorded flat indices.
    let tensors = golden["tensors"].as_array().unwrap();
    let mut types_seen = std::collections::BTreeSet::new();
    for g in tensors {
        let name = g["name"].as_str().unwrap();
        let t = f.tensor(name).unwrap();
        let shape: Vec<i64> = g["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(t.size(), shape, "{name}");
        assert_eq!(t.kind(), tch::Kind::Float);
        let flat: Vec<f32> = Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        let (mut sum, mut abs_sum, mut sq_sum) = (0f64, 0f64, 0f64);
        for &x in &flat {
            let x = x as f64;
            sum += x;
            abs_sum += x.abs();
            sq_sum += x * x;
        }
        let g_abs = g["abs_sum"].as_f64().unwrap();
        assert!(close(abs_sum, g_abs, g_abs), "{name}: abs_sum {abs_sum} vs {g_abs}");
        assert!(
            close(sum, g["sum"].as_f64().unwrap(), g_abs),
            "{name}: sum {sum} vs {}",
            g["sum"]
        );
        let g_sq = g["sq_sum"].as_f64().unwrap();
        assert!(close(sq_sum, g_sq, g_sq), "{name}: sq_sum {sq_sum} vs {g_sq}");
        for (i, v) in g["indices"]
            .as_array()
            .unwrap()
            .iter()
            .zip(g["values"].as_array().unwrap())
        {
            let i = i.as_u64().unwrap() as usize;
            let v = v.as_f64().unwrap();
            assert!(
                close(flat[i] as f64, v, 1e-6),
                "{name}[{i}]: {} vs gguf-py {v}",
                flat[i]
            );
        }
        types_seen.insert(g["type"].as_str().unwrap().to_string());
    }
    // Every quant type the file uses was checked.
    let file_types: std::collections::BTreeSet<String> = golden["types"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(types_seen, file_types);
}

#[test]
fn gemma3_270m_matches_gguf_py() {
    check_model("gemma-3-270m-q4_k_m.json");
}

#[test]
fn smollm2_135m_matches_gguf_py() {
    check_model("smollm2-135m-instruct-q4_1.json");
}

/// Dequantizes every tensor of both models (all must be finite) and reports the time: this is the
/// model load path.
#[test]
fn load_all_tensors_timed() {
    for file in ["gemma-3-270m-q4_k_m.gguf", "smollm2-135m-instruct-q4_1.gguf"] {
        let Some(path) = model_path(file) else { continue };
        let t0 = Instant::now();
        let f = GgufFile::open(&path).unwrap();
        let t_open = t0.elapsed();
        let t1 = Instant::now();
        let mut n_values = 0u64;
        for info in f.tensor_infos() {
            let t = f.tensor(&info.name).unwrap();
            assert_eq!(t.size(), info.shape());
            n_values += info.n_elements;
            let finite = t.isfinite().all().int64_value(&[]);
            assert_eq!(finite, 1, "{}: non-finite values", info.name);
        }
        let t_deq = t1.elapsed();
        eprintln!(
            "{file}: open+metadata {:.1} ms, dequantize {} tensors / {:.1} M values in {:.2} s (incl. finiteness check)",
            t_open.as_secs_f64() * 1e3,
            f.tensor_infos().len(),
            n_values as f64 / 1e6,
            t_deq.as_secs_f64()
        );
    }
}

/// Dequantization speed per ggml type and whole-model `tensor()` time, without other work
/// (`cargo test -p axbench-models --test tests gguf_golden:: -- --ignored --nocapture`).
#[test]
#[ignore = "timing report"]
fn dequant_speed_report() {
    for file in ["gemma-3-270m-q4_k_m.gguf", "smollm2-135m-instruct-q4_1.gguf"] {
        let Some(path) = model_path(file) else { continue };
        let f = GgufFile::open(&path).unwrap();
        let mut per_type: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
        let t0 = Instant::now();
        for info in f.tensor_infos() {
            let t1 = Instant::now();
            let t = f.tensor(&info.name).unwrap();
            let dt = t1.elapsed().as_secs_f64();
            drop(t);
            let e = per_type.entry(info.ggml_type.name()).or_default();
            e.0 += info.n_elements;
            e.1 += dt;
        }
        eprintln!(
            "{file}: all tensors via tensor() in {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        for (ty, (n, dt)) in per_type {
            eprintln!(
                "  {ty:>5}: {:7.1} M values in {:.3} s = {:.0} M values/s",
                n as f64 / 1e6,
                dt,
                n as f64 / dt / 1e6
            );
        }
        // The embedding again into an already-touched buffer: the kernel without page faults.
        let info = f.tensor_info("token_embd.weight").unwrap();
        let mut buf = vec![0f32; info.n_elements as usize];
        let t1 = Instant::now();
        f.dequantize_into(&info.name, &mut buf).unwrap();
        let dt = t1.elapsed().as_secs_f64();
        eprintln!(
            "  token_embd.weight ({}) into a reused buffer: {:.0} M values/s",
            info.ggml_type,
            info.n_elements as f64 / dt / 1e6
        );
    }
}
