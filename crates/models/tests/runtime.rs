//! Runtime behaviour beyond numerical agreement: sharded checkpoints, KV-cache decoding equal to
//! a full forward pass, stop tokens per row, seeded sampling, interventions during generation.

use std::path::{Path, PathBuf};

use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{FinishReason, GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::{AddVectors, Hooks, Logits};
use axbench_models::{LoadOptions, Model};
use tch::{Kind, Tensor};

fn tiny_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/models")
        .join(name)
}

fn load(path: &Path) -> Model {
    Model::load(
        path,
        &LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![2, 17, 33, 91, 5, 120, 7, 64, 100, 11],
        vec![2, 45, 46, 47, 48, 3, 9],
        vec![2, 125, 127, 77],
    ]
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = tiny_dir("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = tensors.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let part: Vec<(String, Tensor)> = part.into_iter().map(|(_, t)| t).collect();
        for (name, _) in &part {
            map.insert(name.clone(), file.into());
        }
        Tensor::write_safetensors(&part, dir.path().join(file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&prompts()[0]).view([1, -1]);
    let one = load(&src)
        .forward(&ids, None, &Hooks::none(), Logits::All, None)
        .unwrap()
        .logits
        .unwrap();
    let two = load(dir.path())
        .forward(&ids, None, &Hooks::none(), Logits::All, None)
        .unwrap()
        .logits
        .unwrap();
    assert!(one.equal(&two));
}

#[test]
fn cached_decoding_equals_a_full_forward_pass() {
    // Gemma-3 tiny: sliding window 4 and a global layer, so the cache must respect both.
    let model = load(&tiny_dir("tiny-gemma3"));
    let _g = tch::no_grad_guard();
    let seq: Vec<i64> = vec![2, 17, 33, 91, 5, 120, 7, 64, 100, 11, 42, 8];
    let ids = Tensor::from_slice(&seq).view([1, -1]);
    let full = model
        .forward(&ids, None, &Hooks::none().capture(3), Logits::All, None)
        .unwrap();
    let mut cache = model.new_cache(1, 4); // deliberately too small: the cache must grow
    let mut steps = Vec::new();
    let prefix = 5;
    let out = model
        .forward(
            &ids.narrow(1, 0, prefix),
            None,
            &Hooks::none(),
            Logits::All,
            Some(&mut cache),
        )
        .unwrap();
    steps.push(out.logits.unwrap());
    for i in prefix..seq.len() as i64 {
        let mask = Tensor::ones([1, i + 1], (Kind::Int64, tch::Device::Cpu));
        let out = model
            .forward(
                &ids.narrow(1, i, 1),
                Some(&mask),
                &Hooks::none(),
                Logits::All,
                Some(&mut cache),
            )
            .unwrap();
        steps.push(out.logits.unwrap());
    }
    let cached = Tensor::cat(&steps, 1);
    let d = (cached - full.logits.unwrap()).abs().max().double_value(&[]);
    assert!(d < 1e-4, "cached decoding differs from the full pass by {d}");
    assert_eq!(cache.len(), seq.len() as i64);
}

#[test]
fn stop_tokens_end_rows_independently() {
    let model = load(&tiny_dir("tiny-gemma2"));
    let ps: Vec<Prompt> = prompts().into_iter().map(Prompt::from).collect();
    let cfg = GenerateConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let free = generate(&model, &ps, &cfg, &Hooks::none()).unwrap();
    assert!(
        free.iter()
            .all(|g| g.finish == FinishReason::Length && g.tokens.len() == 8)
    );
    // Row 1 stops at its third token (a per-row stop token); the others run on unchanged.
    let stop = free[1].tokens[2];
    let first = free[1].tokens.iter().position(|&t| t == stop).unwrap();
    let mut ps2 = ps.clone();
    ps2[1].stop_tokens = vec![stop];
    let got = generate(&model, &ps2, &cfg, &Hooks::none()).unwrap();
    assert_eq!(got[1].finish, FinishReason::Stop(stop));
    assert_eq!(got[1].tokens, free[1].tokens[..=first].to_vec());
    assert_eq!(got[0].tokens, free[0].tokens);
    assert_eq!(got[2].tokens, free[2].tokens);
    // A global stop token applies to every row.
    let cfg = GenerateConfig {
        max_new_tokens: 8,
        stop_tokens: vec![free[0].tokens[0]],
        ..Default::default()
    };
    let got = generate(&model, &ps, &cfg, &Hooks::none()).unwrap();
    assert_eq!(got[0].tokens, vec![free[0].tokens[0]]);
}

#[test]
fn sampling_is_seeded_and_reproducible() {
    let model = load(&tiny_dir("tiny-llama"));
    let ps: Vec<Prompt> = prompts().into_iter().map(Prompt::from).collect();
    let cfg = |seed| GenerateConfig {
        max_new_tokens: 12,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
        },
        seed,
        ..Default::default()
    };
    let a = generate(&model, &ps, &cfg(7), &Hooks::none()).unwrap();
    let b = generate(&model, &ps, &cfg(7), &Hooks::none()).unwrap();
    let c = generate(&model, &ps, &cfg(8), &Hooks::none()).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn interventions_stay_active_while_generating() {
    let model = load(&tiny_dir("tiny-llama"));
    let ps: Vec<Prompt> = prompts().into_iter().map(Prompt::from).collect();
    let cfg = GenerateConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let plain = generate(&model, &ps, &cfg, &Hooks::none()).unwrap();
    let v = Tensor::randn([1, 64], (Kind::Float, tch::Device::Cpu)) * 5.0;
    let add = AddVectors::new(v, Tensor::from_slice(&[1.0f32]));
    // Only on the prompt: the first token changes, later tokens see the prompt's cached keys.
    let prompt_only = generate(&model, &ps, &cfg, &Hooks::none().intervene(1, &add).prompt_only()).unwrap();
    let always = generate(&model, &ps, &cfg, &Hooks::none().intervene(1, &add)).unwrap();
    assert_ne!(plain, always);
    assert_ne!(prompt_only, always);
    // A prompt whose intervention mask is all false behaves like a prompt-only run with no
    // prompt positions: nothing changes before the first generated token.
    let masked: Vec<Prompt> = ps
        .iter()
        .map(|p| Prompt {
            intervene_on: Some(vec![false; p.ids.len()]),
            ..p.clone()
        })
        .collect();
    let masked_prompt_only = generate(&model, &masked, &cfg, &Hooks::none().intervene(1, &add).prompt_only()).unwrap();
    assert_eq!(masked_prompt_only, plain);
}

#[test]
fn padding_helper_and_activations_agree_with_forward() {
    use axbench_models::model::{Padding, pad};
    let model = load(&tiny_dir("tiny-gemma2"));
    let rows = prompts();
    let (ids, mask) = pad(&rows, 0, Padding::Left);
    assert_eq!(ids.size(), vec![3, 10]);
    assert_eq!(
        Vec::<i64>::try_from(mask.get(2)).unwrap(),
        vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    );
    let acts = model.activations(&ids, Some(&mask), 2).unwrap();
    let _g = tch::no_grad_guard();
    let full = model
        .forward(&ids, Some(&mask), &Hooks::none().capture(2), Logits::All, None)
        .unwrap();
    assert!(acts.equal(full.hidden(2).unwrap()));
    // Right padding: real positions agree with the left-padded batch.
    let (rids, rmask) = pad(&rows, 0, Padding::Right);
    let r = model.activations(&rids, Some(&rmask), 2).unwrap();
    let left_real = acts.get(2).narrow(0, 6, 4);
    let right_real = r.get(2).narrow(0, 0, 4);
    let d = (left_real - right_real).abs().max().double_value(&[]);
    assert!(d < 1e-5, "{d}");
    // Hooking a layer above an explicit stop is refused.
    let err = model
        .forward(
            &ids,
            Some(&mask),
            &Hooks::none().capture(3).stop_after(1),
            Logits::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("stops after layer 1"), "{err}");
}

#[test]
fn a_cache_for_another_batch_size_is_refused() {
    let model = load(&tiny_dir("tiny-llama"));
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(2, 8);
    let ids = Tensor::from_slice(&[2i64, 5, 6]).view([1, 3]);
    let err = model
        .forward(&ids, None, &Hooks::none(), Logits::Last, Some(&mut cache))
        .unwrap_err();
    assert!(err.to_string().contains("KV cache holds 2 rows"), "{err}");
}
