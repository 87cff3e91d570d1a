//! Training through the model (issue #9; ReFT-r1 from issue #4): the training core against its references, each
//! trained method on a tiny random Gemma-3, and the `axbench.train` stage on the real gemma-3-270m.
//!
//! * References (tests/golden/training/make_training_golden.py): HF transformers' loss with `labels = -100` on
//!   prompts and padding, the gradient of a steering vector added at a layer's output through the frozen model, peft's
//!   rsLoRA loss and gradients on `o_proj`, and `torch.optim.AdamW` + `clip_grad_norm_` + the linear schedule.
//! * Methods (tests/golden/models/tiny-gemma3, 6 layers, d = 64): each method's loss decreases on a learnable
//!   synthetic task, its intervention at zero strength is the identity, LoReFT's `R` stays orthonormal
//!   (`|RᵀR − I| < 1e-4` after training), ReFT-r1's `w` is unit norm.
//! * Stage: `axbench.train` on concept 0 of the real Concept10 data with a few examples per method; ReFT-r1 writes a
//!   detector `axbench.infer` reads; LoReFT's checkpoint steers generation. Skips when the model is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axbench_engine::{Coord, Stage, StageContext, Value};
use axbench_methods::finetune::{LoraTrainable, Sft};
use axbench_methods::loreft::{Loreft, prompt_positions};
use axbench_methods::reft_r1::{ReftR1, ReftR1Config};
use axbench_methods::ssv::Ssv;
use axbench_models::hooks::{Hooks, Logits};
use axbench_models::lora::{Lora, LoraConfig};
use axbench_models::model::{LoadOptions, Model};
use axbench_models::train::{
    AdamW, TrainBatch, TrainConfig, TrainExample, TrainReport, Trainable, clip_grad_norm, lm_loss, train,
};
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::common::{artifact, floats, root};

fn golden() -> Json {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/training/expected.json")).unwrap()).unwrap()
}

fn tiny() -> Model {
    Model::load(
        &root().join("tests/golden/models/tiny-gemma3"),
        &LoadOptions {
            device: axbench_models::device::DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap()
}

fn golden_rows(g: &Json) -> Vec<TrainExample> {
    g["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let p: Vec<i64> = serde_json::from_value(r["prompt"].clone()).unwrap();
            let resp: Vec<i64> = serde_json::from_value(r["response"].clone()).unwrap();
            TrainExample {
                response_start: p.len(),
                ids: [p, resp].concat(),
                intervene: None,
            }
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    let err = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err:e} > {tol:e} x {scale:e}"
    );
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn lm_loss_on_response_tokens_matches_hf_transformers() {
    let g = golden();
    let m = tiny();
    let rows = golden_rows(&g);
    let batch = TrainBatch::new(&rows.iter().collect::<Vec<_>>(), 0, Device::Cpu).unwrap();
    let _ng = tch::no_grad_guard();
    let loss = lm_loss(&m, &batch, Hooks::none()).unwrap().double_value(&[]);
    assert!(
        (loss - g["lm_loss"].as_f64().unwrap()).abs() < 1e-5,
        "ours {loss}, HF {}",
        g["lm_loss"]
    );
}

#[test]
fn steering_vector_gradient_through_the_frozen_model_matches_hf() {
    let g = golden();
    let m = tiny();
    let rows = golden_rows(&g);
    let batch = TrainBatch::new(&rows.iter().collect::<Vec<_>>(), 0, Device::Cpu).unwrap();
    let ssv = Ssv::new(2, 64, Device::Cpu);
    let loss = lm_loss(
        &m,
        &batch,
        ssv.attach(Hooks::none().positions(batch.positions.shallow_clone())),
    )
    .unwrap();
    loss.backward();
    assert!((loss.double_value(&[]) - g["ssv_loss"].as_f64().unwrap()).abs() < 1e-5);
    assert_close(&to_vec(&ssv.w.grad()), &floats(&g["ssv_grad"]), 1e-4, "SSV gradient");
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    let g = golden();
    let m = tiny();
    let rows = golden_rows(&g);
    let batch = TrainBatch::new(&rows.iter().collect::<Vec<_>>(), 0, Device::Cpu).unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 32.0,
        rslora: true,
        dropout: 0.0,
        layers: vec![1, 3],
    };
    let lora = Lora::load(&root().join("tests/golden/training/lora.safetensors"), cfg, Device::Cpu).unwrap();
    for p in lora.parameters() {
        let _ = p.set_requires_grad(true);
    }
    let loss = lm_loss(&m, &batch, lora.attach(Hooks::none())).unwrap();
    loss.backward();
    assert!((loss.double_value(&[]) - g["lora_loss"].as_f64().unwrap()).abs() < 1e-5);
    let grads = g["lora_grads"].as_object().unwrap();
    let mut checked = 0;
    for (name, t) in lora.named_tensors() {
        let l = lora
            .layers
            .iter()
            .find(|l| name.contains(&format!("layers.{}.", l.layer)))
            .unwrap();
        let ours = if name.contains("lora_A") {
            l.a.grad()
        } else {
            l.b.grad()
        };
        assert_close(&to_vec(&ours), &floats(&grads[&name]), 1e-4, &name);
        assert_eq!(t.size(), ours.size());
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn adamw_with_clipping_and_linear_schedule_matches_torch() {
    let g = &golden()["adamw"];
    let p =
        Tensor::from_slice(&floats(&g["init"]).iter().map(|x| *x as f32).collect::<Vec<_>>()).set_requires_grad(true);
    let target = Tensor::from_slice(&floats(&g["target"]).iter().map(|x| *x as f32).collect::<Vec<_>>());
    let weights = Tensor::from_slice(&floats(&g["weights"]).iter().map(|x| *x as f32).collect::<Vec<_>>());
    let steps = g["steps"].as_u64().unwrap() as usize;
    let lr = g["lr"].as_f64().unwrap();
    let params = [p.shallow_clone()];
    let mut opt = AdamW::new(&params, (0.9, 0.999), 1e-8, g["weight_decay"].as_f64().unwrap());
    for (k, want) in g["trace"].as_array().unwrap().iter().enumerate() {
        ((&p - &target).square() * &weights).sum(Kind::Float).backward();
        clip_grad_norm(&params, g["max_grad_norm"].as_f64().unwrap());
        opt.step(&params, lr * (steps - k) as f64 / steps as f64);
        let _ = p.grad().zero_();
        assert_close(&to_vec(&p), &floats(want), 1e-6, &format!("AdamW step {k}"));
    }
}

/// A learnable task for a 128-token vocabulary: prompts of random tokens, responses that repeat a fixed "concept"
/// pattern; the intervention positions follow `positions`.
fn synthetic(n: usize, positions: &dyn Fn(usize, usize) -> Option<Vec<bool>>) -> Vec<TrainExample> {
    let mut rng = 12345u64;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as i64
    };
    (0..n)
        .map(|_| {
            let plen = 6 + (next() % 4) as usize;
            let mut ids = vec![2i64];
            ids.extend((1..plen).map(|_| 3 + next() % 120));
            let rlen = 5 + (next() % 3) as usize;
            ids.extend((0..rlen).map(|i| [77i64, 78, 79][i % 3]));
            let len = ids.len();
            TrainExample {
                ids,
                response_start: plen,
                intervene: positions(plen, len),
            }
        })
        .collect()
}

fn fit(m: &Model, t: &dyn Trainable, ex: &[TrainExample], cfg: TrainConfig) -> TrainReport {
    train(m, t, ex, &cfg, 0, &mut |_| true).unwrap()
}

fn logits(m: &Model, ids: &Tensor, hooks: Hooks) -> Tensor {
    let _g = tch::no_grad_guard();
    m.forward(ids, None, &hooks, Logits::All, None).unwrap().logits.unwrap()
}

fn assert_decreased(r: &TrainReport, what: &str) {
    let (first, last) = r.first_last_mean(3);
    eprintln!("{what}: loss {first:.4} -> {last:.4} in {} steps", r.steps);
    assert!(
        last < 0.9 * first,
        "{what}: loss {first:.4} -> {last:.4} ({:?})",
        r.losses
    );
    assert!(r.tokens > 0 && r.steps > 0);
}

#[test]
fn each_method_learns_and_is_the_identity_at_zero_strength() {
    let m = tiny();
    let probe = Tensor::from_slice(&[2i64, 9, 30, 77, 78, 79, 5]).view([1, 7]);
    let plain = logits(&m, &probe, Hooks::none());
    let all = |_: usize, len: usize| Some((0..len).map(|i| i >= 1).collect::<Vec<bool>>());
    let cfg = |epochs, lr| TrainConfig {
        epochs,
        batch_size: 4,
        grad_accum: 1,
        lr,
        ..Default::default()
    };

    // SSV.
    tch::manual_seed(0);
    let ex = synthetic(16, &all);
    let mut ssv = Ssv::new(3, 64, Device::Cpu);
    assert_decreased(&fit(&m, &ssv, &ex, cfg(8, 1.0)), "SSV");
    ssv.strength = 0.0;
    assert!(
        logits(&m, &probe, ssv.attach(Hooks::none())).equal(&plain),
        "SSV at strength 0"
    );

    // ReFT-r1 (top-k 2 on these short rows), trained on positives and negatives alike as AxBench does.
    // The tiny random model's latents are in the hundreds, so the L1 weight is scaled down with them.
    let rc = ReftR1Config {
        topk: 2,
        coeff_latent_l1_loss: 1e-4,
        ..Default::default()
    };
    let mut reft = ReftR1::new(3, 64, &rc, Device::Cpu);
    assert_decreased(&fit(&m, &reft, &ex, cfg(8, 0.05)), "ReFT-r1");
    assert!(
        (reft.w.norm().double_value(&[]) - 1.0).abs() < 0.2,
        "w is renormalised before every step"
    );
    assert!((reft.unit_w().norm().double_value(&[]) - 1.0).abs() < 1e-5);
    reft.strength = 0.0;
    assert!(
        logits(&m, &probe, reft.attach(Hooks::none())).equal(&plain),
        "ReFT-r1 at strength 0"
    );

    // LoReFT at two layers on the prompt's first and last 5 positions.
    tch::manual_seed(1);
    let lex = synthetic(16, &|p, len| Some(prompt_positions(p, len, 5, 5)));
    let mut lo = Loreft::new(&[1, 4], 64, 4, Device::Cpu);
    assert_decreased(&fit(&m, &lo, &lex, cfg(10, 0.05)), "LoReFT");
    let err = lo.orthonormality_error();
    assert!(err < 1e-4, "|R^T R - I| = {err:e} after training");
    lo.set_strength(0.0);
    assert!(
        logits(&m, &probe, lo.attach(Hooks::none())).equal(&plain),
        "LoReFT at strength 0"
    );

    // LoRA on o_proj of two layers.
    tch::manual_seed(2);
    let fex = synthetic(16, &|_, _| None);
    let lora = LoraTrainable(
        Lora::new(
            &m,
            LoraConfig {
                rank: 4,
                alpha: 32.0,
                rslora: true,
                dropout: 0.05,
                layers: vec![1, 4],
            },
        )
        .unwrap(),
    );
    assert_decreased(&fit(&m, &lora, &fex, cfg(8, 0.05)), "LoRA");
    lora.0.set_training(false);
    lora.0.set_strength(0.0);
    assert!(
        logits(&m, &probe, lora.0.attach(Hooks::none())).equal(&plain),
        "LoRA at strength 0"
    );

    // The frozen model did not move through any of this.
    assert!(logits(&m, &probe, Hooks::none()).equal(&plain));

    // SFT on a private copy: every weight trains, the shared model stays as it was.
    let own = tiny();
    let sft = Sft::new(&own);
    assert!(sft.params.len() > 10 && sft.params.iter().all(|(_, t)| t.requires_grad()));
    assert_decreased(&fit(&own, &sft, &fex, cfg(8, 0.01)), "SFT");
    assert!(!logits(&own, &probe, Hooks::none()).equal(&plain));
    assert!(logits(&m, &probe, Hooks::none()).equal(&plain));
}

// ---------------------------------------------------------------------------------------------------------------
// The stage on the real model.

fn gemma() -> Option<PathBuf> {
    let p = root().join(".deps/models/gemma-3-270m-q4_k_m.gguf");
    let data = root().join("../shared/axbench-data/concept10/prod_2b_l20_v1");
    if p.exists() && data.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} or {} is not installed", p.display(), data.display());
        None
    }
}

fn run_train(model: &Path, method: &str, overrides: Json, out: &Path) {
    let mut params = BTreeMap::new();
    params.insert(
        "dataset".to_string(),
        Value::Str("../shared/axbench-data/concept10/prod_2b_l20_v1".into()),
    );
    params.insert("concept".into(), Value::Int(0));
    params.insert("model".into(), Value::Str(model.display().to_string()));
    params.insert("layer".into(), Value::Int(9));
    params.insert("device".into(), Value::Str("cpu".into()));
    params.insert("dtype".into(), Value::Str("f32".into()));
    params.insert("method".into(), Value::Str(method.into()));
    params.insert("config".into(), Value::Str("configs/methods.toml".into()));
    params.insert("overrides".into(), Value::from_json(&overrides));
    params.insert("max_examples".into(), Value::Int(8));
    std::fs::create_dir_all(out).unwrap();
    let mut ctx = StageContext::new(
        &format!("train[concept=0,method={method}]"),
        Coord::new(),
        params,
        BTreeMap::new(),
        out.to_path_buf(),
        root(),
    );
    axbench_stages::train::Train.run(&mut ctx).unwrap();
}

#[test]
fn train_stage_on_gemma_writes_a_detector_and_a_steerable_checkpoint() {
    use axbench_stages::checkpoint::{Checkpoint, trained_generations};
    use axbench_stages::generation::SteerSettings;
    use axbench_stages::model_cache::with_model;
    use axbench_stages::train::TrainMeta;
    let Some(model) = gemma() else { return };
    let tmp = tempfile::tempdir().unwrap();

    // ReFT-r1: 4 positives + 4 negatives, one epoch of 2 steps.
    let reft = tmp.path().join("reft");
    run_train(
        &model,
        "reft_r1",
        serde_json::json!({"LsReFT": {"n_epochs": 1, "batch_size": 4}}),
        &reft,
    );
    let meta: TrainMeta = serde_json::from_slice(&std::fs::read(reft.join("train.json")).unwrap()).unwrap();
    assert_eq!(
        (meta.method_class.as_str(), meta.n_positive, meta.n_negative, meta.steps),
        ("LsReFT", 4, 4, 2)
    );
    assert!(meta.losses.iter().all(|l| l.is_finite() && *l > 0.0) && meta.tokens_per_s > 0.0);
    let det: axbench_methods::FittedArtifact =
        serde_json::from_slice(&std::fs::read(reft.join("detector.json")).unwrap()).unwrap();
    let axbench_methods::FittedArtifact::ReluLinear { w, .. } = &det else {
        panic!("ReFT-r1 detects with ReLU(h·w)")
    };
    let norm = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert_eq!(w.len(), 640);
    assert!((norm - 1.0).abs() < 1e-4, "unit-norm w, got {norm}");
    assert!(reft.join("direction.safetensors").exists() && reft.join("fit.json").exists());

    // LoReFT: a checkpoint with orthonormal R at L/4, L/2, 3L/4, L, applied during generation.
    let lo = tmp.path().join("loreft");
    run_train(
        &model,
        "loreft",
        serde_json::json!({"LoReFT": {"n_epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 1}}),
        &lo,
    );
    let meta: TrainMeta = serde_json::from_slice(&std::fs::read(lo.join("train.json")).unwrap()).unwrap();
    assert_eq!(meta.layers, vec![2, 4, 6, 9]);
    assert_eq!(meta.positions, "f5+l5");
    assert!(meta.orthonormality_error.unwrap() < 1e-4);
    let ck = Checkpoint::from_input(&artifact("train", &lo), Device::Cpu)
        .unwrap()
        .expect("a checkpoint");
    let opts = LoadOptions {
        device: axbench_models::device::DeviceSpec::Cpu,
        ..Default::default()
    };
    let s = SteerSettings {
        layer: 9,
        max_new_tokens: 6,
        temperature: 0.0,
        seed: 1,
        batch_size: 2,
    };
    let (gens, tokens) = with_model(&model, opts.device, opts.dtype, |m| {
        trained_generations(m, &model, opts, &ck, &["Write a haiku about the sea.".to_string()], &s)
    })
    .unwrap();
    assert_eq!(gens.len(), 1);
    assert!(tokens > 0);

    // Through axbench.steer: a train node with a checkpoint needs no scores and generates once, at factor 1.
    let out = tmp.path().join("steer");
    std::fs::create_dir(&out).unwrap();
    let mut params = BTreeMap::new();
    params.insert("model".to_string(), Value::Str(model.display().to_string()));
    params.insert("layer".into(), Value::Int(9));
    params.insert("device".into(), Value::Str("cpu".into()));
    params.insert("dtype".into(), Value::Str("f32".into()));
    params.insert(
        "factors".into(),
        Value::List(vec![Value::Float(0.5), Value::Float(2.0)]),
    );
    params.insert(
        "instructions".into(),
        Value::Str("configs/instructions/demo.json".into()),
    );
    params.insert("per_concept".into(), Value::Int(2));
    params.insert("temperature".into(), Value::Float(1.0));
    params.insert("max_new_tokens".into(), Value::Int(4));
    params.insert("seed".into(), Value::Int(42));
    params.insert("batch_size".into(), Value::Int(2));
    let inputs = BTreeMap::from([("fit".to_string(), vec![artifact("train", &lo)])]);
    let mut ctx = StageContext::new(
        "steer[concept=0,method=loreft]",
        Coord::new(),
        params,
        inputs,
        out.clone(),
        root(),
    );
    axbench_stages::steer::Steer.run(&mut ctx).unwrap();
    let rows = axbench_stages::generation::read_generations(&out.join("generations.parquet")).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.factor == 1.0 && r.method == "LoReFT" && r.concept_id == 0)
    );
    // A fit node's artifact is not a checkpoint.
    assert!(
        Checkpoint::from_input(&artifact("train", &reft), Device::Cpu)
            .unwrap()
            .is_none()
    );
}
