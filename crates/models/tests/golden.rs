//! The model runtime against HF transformers (goldens from tests/golden/make_model_golden.py).
//!
//! Tiny random Gemma-2 / Gemma-3 / Llama checkpoints: logits and layer-L hidden states on left-
//! and right-padded batches within 1e-4 (f32), steering at layer L, greedy generation with and
//! without steering. Real GGUF models (gemma-3-270m, SmolLM2-135M; skipped with a note when
//! `.deps/models` lacks them): next-token top-5, layer-L activations, greedy continuations,
//! single and batched.

use std::path::{Path, PathBuf};

use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::{AddVectors, Hooks, Logits};
use axbench_models::{LoadOptions, Model};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::common::repo;

fn golden_dir() -> PathBuf {
    repo().join("tests/golden/models")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn ints2(v: &Value) -> Vec<Vec<i64>> {
    v.as_array().unwrap().iter().map(ints).collect()
}

fn tensor2(rows: &[Vec<i64>]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

/// Rows of `[B, T, X]` at positions where `mask` is 1, flattened row-major (HF's `t[mask.bool()]`).
fn real_positions(t: &Tensor, mask: &[Vec<i64>]) -> Vec<f32> {
    let x = *t.size().last().unwrap();
    let mut out = Vec::new();
    for (b, row) in mask.iter().enumerate() {
        for (i, &m) in row.iter().enumerate() {
            if m != 0 {
                out.extend(to_vec(&t.get(b as i64).get(i as i64)));
            }
        }
    }
    assert_eq!(out.len() as i64 % x, 0);
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load(path: &Path, dtype: DType) -> Model {
    axbench_models::device::set_threads(2);
    Model::load(
        path,
        &LoadOptions {
            device: DeviceSpec::Cpu,
            dtype,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn check_tiny(name: &str) {
    let dir = golden_dir().join(name);
    let g = read_json(&dir.join("golden.json"));
    let model = load(&dir, DType::F32);
    let layer = g["layer"].as_u64().unwrap() as usize;
    let _guard = tch::no_grad_guard();
    for padding in ["left", "right"] {
        let case = &g["cases"][padding];
        let ids = ints2(&case["input_ids"]);
        let mask = ints2(&case["attention_mask"]);
        let out = model
            .forward(
                &tensor2(&ids),
                Some(&tensor2(&mask)),
                &Hooks::none().capture(layer),
                Logits::All,
                None,
            )
            .unwrap();
        let logits = real_positions(out.logits.as_ref().unwrap(), &mask);
        let d = max_abs_diff(&logits, &floats(&case["logits"]));
        eprintln!("{name} {padding}: max |Δlogit| {d:.2e}");
        assert!(d < 1e-4, "{name} {padding}: logits differ by {d}");
        let hidden = real_positions(out.hidden(layer).unwrap(), &mask);
        let d = max_abs_diff(&hidden, &floats(&case["hidden"]));
        eprintln!("{name} {padding}: max |Δhidden L{layer}| {d:.2e}");
        assert!(d < 1e-4, "{name} {padding}: layer {layer} hidden differs by {d}");

        // Early stop returns the same activations without running later layers or the head.
        let early = model
            .forward(
                &tensor2(&ids),
                Some(&tensor2(&mask)),
                &Hooks::none().capture(layer),
                Logits::None,
                None,
            )
            .unwrap();
        assert!(early.logits.is_none());
        assert!(early.hidden(layer).unwrap().equal(out.hidden(layer).unwrap()));
    }

    // Steering with a different vector and scale per row.
    let case = &g["cases"]["left"];
    let ids = ints2(&case["input_ids"]);
    let mask = ints2(&case["attention_mask"]);
    let hidden = model.info().hidden_size as i64;
    let steer = AddVectors::new(
        Tensor::from_slice(&floats(&g["steer"]["vectors"])).view([-1, hidden]),
        Tensor::from_slice(&floats(&g["steer"]["scales"])),
    );
    let hooks = Hooks::none().intervene(layer, &steer);
    let out = model
        .forward(&tensor2(&ids), Some(&tensor2(&mask)), &hooks, Logits::All, None)
        .unwrap();
    let d = max_abs_diff(
        &real_positions(out.logits.as_ref().unwrap(), &mask),
        &floats(&g["steer"]["logits"]),
    );
    assert!(d < 1e-4, "{name}: steered logits differ by {d}");

    // Greedy continuations (KV cache, window smaller than the sequence), plain and steered.
    let prompts: Vec<Prompt> = ints2(&g["rows"]).into_iter().map(Prompt::from).collect();
    let cfg = GenerateConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let gens = generate(&model, &prompts, &cfg, &Hooks::none()).unwrap();
    let got: Vec<Vec<i64>> = gens.into_iter().map(|g| g.tokens).collect();
    assert_eq!(got, ints2(&g["greedy"]), "{name}: greedy continuation");
    let gens = generate(&model, &prompts, &cfg, &hooks).unwrap();
    let got: Vec<Vec<i64>> = gens.into_iter().map(|g| g.tokens).collect();
    assert_eq!(got, ints2(&g["steer"]["greedy"]), "{name}: steered greedy continuation");
}

#[test]
fn tiny_gemma2_matches_transformers() {
    check_tiny("tiny-gemma2");
}

#[test]
fn tiny_gemma3_matches_transformers() {
    check_tiny("tiny-gemma3");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_tiny("tiny-llama");
}

#[test]
fn bf16_stays_close_to_f32() {
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-llama"] {
        let dir = golden_dir().join(name);
        let g = read_json(&dir.join("golden.json"));
        let case = &g["cases"]["left"];
        let ids = tensor2(&ints2(&case["input_ids"]));
        let mask_rows = ints2(&case["attention_mask"]);
        let mask = tensor2(&mask_rows);
        let _guard = tch::no_grad_guard();
        let model = load(&dir, DType::Bf16);
        assert_eq!(model.kind(), Kind::BFloat16);
        let out = model
            .forward(&ids, Some(&mask), &Hooks::none(), Logits::All, None)
            .unwrap();
        let logits = real_positions(out.logits.as_ref().unwrap(), &mask_rows);
        let reference = floats(&case["logits"]);
        let scale = reference.iter().map(|x| x.abs()).fold(0.0, f32::max);
        let d = max_abs_diff(&logits, &reference);
        assert!(
            d < 0.1 * scale,
            "{name}: bf16 logits differ by {d} (max |logit| {scale})"
        );
    }
}

fn check_gguf(name: &str) {
    let g = read_json(&golden_dir().join(format!("{name}.json")));
    let path = repo().join(".deps/models").join(g["file"].as_str().unwrap());
    if !path.exists() {
        eprintln!("skipping {name}: {} not present (run scripts/setup.sh)", path.display());
        return;
    }
    let model = load(&path, DType::F32);
    let layer = g["layer"].as_u64().unwrap() as usize;
    let _guard = tch::no_grad_guard();
    let prompts = g["prompts"].as_object().unwrap();
    let mut batch = Vec::new();
    for (key, p) in prompts {
        let ids = ints(&p["input_ids"]);
        let out = model
            .forward(
                &tensor2(std::slice::from_ref(&ids)),
                None,
                &Hooks::none().capture(layer),
                Logits::Last,
                None,
            )
            .unwrap();
        let last = out.logits.as_ref().unwrap().view([-1]);
        let (vals, idx) = last.topk(5, -1, true, true);
        let top_ids = Vec::<i64>::try_from(&idx).unwrap();
        let ref_ids = ints(&p["top5_ids"]);
        let ref_logits = floats(&p["top5_logits"]);
        // Ids must agree except where two reference logits are within tolerance of each other.
        for (k, (a, b)) in top_ids.iter().zip(&ref_ids).enumerate() {
            if a != b {
                let tie = ref_logits.windows(2).any(|w| (w[0] - w[1]).abs() < 2e-3);
                assert!(tie, "{name}/{key}: top-5 ids {top_ids:?} vs {ref_ids:?} (rank {k})");
            }
        }
        let d = max_abs_diff(&to_vec(&vals), &ref_logits);
        eprintln!("{name}/{key}: top-5 ids {top_ids:?}, max |Δlogit| {d:.2e}");
        assert!(d < 2e-3, "{name}/{key}: top-5 logits differ by {d}");

        let h = out.hidden(layer).unwrap().get(0);
        let norms = to_vec(&h.norm_scalaropt_dim(2, [-1].as_slice(), false));
        let ref_norms = floats(&p["hidden_norms"]);
        for (i, (a, b)) in norms.iter().zip(&ref_norms).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * b.abs(),
                "{name}/{key}: position {i} norm {a} vs {b}"
            );
        }
        let last_h = to_vec(&h.get(h.size()[0] - 1));
        let ref_last = floats(&p["hidden_last"]);
        let ref_norm = ref_last.iter().map(|x| x * x).sum::<f32>().sqrt();
        let d = max_abs_diff(&last_h, &ref_last);
        assert!(
            d <= 1e-3 * ref_norm,
            "{name}/{key}: last-position activation differs by {d} (norm {ref_norm})"
        );
        let head = to_vec(&h.narrow(1, 0, 8));
        let d = head
            .chunks(8)
            .zip(floats(&p["hidden_head"]).chunks(8))
            .zip(&ref_norms)
            .map(|((a, b), n)| max_abs_diff(a, b) / n)
            .fold(0.0, f32::max);
        eprintln!("{name}/{key}: layer {layer} activations: max relative difference {d:.2e}");
        assert!(d <= 1e-3, "{name}/{key}: activation slices differ by {d} relative");

        let cfg = GenerateConfig {
            max_new_tokens: 20,
            ..Default::default()
        };
        let got = generate(&model, &[Prompt::from(ids.clone())], &cfg, &Hooks::none()).unwrap();
        assert_eq!(got[0].tokens, ints(&p["greedy"]), "{name}/{key}: greedy continuation");
        batch.push((ids, ints(&p["greedy"])));
    }
    // The same prompts as one left-padded batch give the same continuations.
    let prompts: Vec<Prompt> = batch.iter().map(|(ids, _)| Prompt::from(ids.clone())).collect();
    let cfg = GenerateConfig {
        max_new_tokens: 20,
        sampling: Sampling::Greedy,
        ..Default::default()
    };
    let got = generate(&model, &prompts, &cfg, &Hooks::none()).unwrap();
    for ((_, want), g) in batch.iter().zip(got) {
        assert_eq!(&g.tokens, want, "{name}: batched greedy continuation");
    }
}

#[test]
fn gemma3_270m_gguf_matches_transformers() {
    check_gguf("gemma-3-270m");
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check_gguf("smollm2-135m");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden_dir().join("tiny-llama");
    // Config contradicting the weights: wrong hidden size.
    let mut cfg = read_json(&src.join("config.json"));
    cfg["intermediate_size"] = 100.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[100, 64]"),
        "{err}"
    );
    // Missing tensor: an untied model without lm_head.
    let mut cfg = read_json(&src.join("config.json"));
    cfg["tie_word_embeddings"] = false.into();
    cfg["num_hidden_layers"] = 4.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tensor `model.layers.3."), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // Unknown architecture.
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported architecture `gpt2`"), "{err}");
    // Not a model at all.
    let err = Model::load(&dir.path().join("nope.bin"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.bin"), "{err}");
}
