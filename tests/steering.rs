//! Steering on the real gemma-3-270m GGUF: the `axbench.steer` stage run by hand on a fit node and an infer node
//! written here, and the LM-backed stages after it.
//!
//! What a user relies on: factor 0 (scale 0) reproduces the unsteered model token for token (same seed, same
//! sampling stream); a large factor along a direction changes the generations; the stage's table has one row per
//! factor × instruction with `strength = factor × max_act` and a perplexity; perplexity matches HF transformers on
//! the same token ids. Skips (with a message) when the model is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axbench_data::tables::{LatentScoreRow, latent_scores_batch, write_parquet_atomic};
use axbench_engine::{Coord, InputArtifact, Stage, StageContext, Value};
use axbench_models::device::{DType, DeviceSpec};
use axbench_stages::generation::{self as steer, SteerSettings, read_generations, steered_generations};

use crate::common::root;

fn gemma() -> Option<PathBuf> {
    let p = root().join(".deps/models/gemma-3-270m-q4_k_m.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is not installed (scripts/setup.sh)", p.display());
        None
    }
}

/// A seeded pseudo-random unit vector of size `d` (a fixed direction, independent of any fit).
fn direction(d: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..d)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        })
        .collect();
    let n = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt() as f32;
    v.into_iter().map(|a| a / n).collect()
}

fn instructions() -> Vec<String> {
    [
        "Write a short poem about the sea.",
        "Give me one tip for cooking rice.",
        "What is the capital of France?",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn factor_zero_is_the_unsteered_model_and_a_large_factor_changes_generations() {
    let Some(model) = gemma() else { return };
    let s = SteerSettings {
        layer: 9,
        max_new_tokens: 12,
        temperature: 1.0,
        seed: 7,
        batch_size: 2,
    };
    axbench_stages::model_cache::with_model(&model, DeviceSpec::Cpu, DType::F32, |m| {
        let d = m.model.info().hidden_size;
        let dir = direction(d, 1);
        let ins = instructions();
        let (plain, _) = steered_generations(m, &ins, None, 0.0, &s).unwrap();
        let (zero, _) = steered_generations(m, &ins, Some(&dir), 0.0, &s).unwrap();
        assert_eq!(plain, zero, "factor 0 must be the unsteered model");
        let (again, _) = steered_generations(m, &ins, None, 0.0, &s).unwrap();
        assert_eq!(plain, again, "generation is deterministic under a seed");
        let (big, _) = steered_generations(m, &ins, Some(&dir), 400.0, &s).unwrap();
        let changed = plain.iter().zip(&big).filter(|(a, b)| a != b).count();
        assert_eq!(
            changed,
            ins.len(),
            "every generation changes under a large vector: {plain:?} vs {big:?}"
        );
        Ok(())
    })
    .unwrap();
}

fn artifact(node: &str, files: &[(&str, PathBuf)]) -> InputArtifact {
    InputArtifact {
        node: node.into(),
        coord: Coord::new(),
        files: files.iter().map(|(n, p)| (n.to_string(), p.clone())).collect(),
    }
}

/// Writes a fit node (fit.json + direction.safetensors) and an infer node (scores.parquet) for concept 5.
fn upstream(dir: &Path, d: usize, max_acts: &[f64]) -> BTreeMap<String, Vec<InputArtifact>> {
    let fit_json = dir.join("fit.json");
    std::fs::write(
        &fit_json,
        serde_json::json!({"method": "diffmean", "method_class": "DiffMean", "concept_id": 5, "model": "gemma-3-270m-q4_k_m", "layer": 9, "n_positive": 1, "n_negative": 1, "seconds": 0.0}).to_string(),
    )
    .unwrap();
    let w: Vec<f32> = direction(d, 2).iter().map(|x| x * 3.0).collect(); // not unit: the stage normalizes
    let st = dir.join("direction.safetensors");
    tch::Tensor::write_safetensors(
        &[
            ("w", tch::Tensor::from_slice(&w)),
            ("bias", tch::Tensor::from_slice(&[0.0f32])),
        ],
        &st,
    )
    .unwrap();
    let rows: Vec<LatentScoreRow> = max_acts
        .iter()
        .enumerate()
        .map(|(i, &m)| LatentScoreRow {
            concept_id: 5,
            example_index: i as u32,
            method: "DiffMean".into(),
            category: "positive".into(),
            max_act: m,
            max_act_idx: Some(0),
            acts: vec![m as f32],
        })
        .collect();
    let sp = dir.join("scores.parquet");
    write_parquet_atomic(&sp, &latent_scores_batch(&rows).unwrap()).unwrap();
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "fit".to_string(),
        vec![artifact(
            "fit[concept=5,method=diffmean]",
            &[("fit.json", fit_json), ("direction.safetensors", st)],
        )],
    );
    inputs.insert(
        "scores".to_string(),
        vec![artifact("infer[concept=5,method=diffmean]", &[("scores.parquet", sp)])],
    );
    inputs
}

#[test]
fn steer_stage_writes_factor_by_instruction_rows_with_strength_from_max_act() {
    let Some(model) = gemma() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let inputs = upstream(tmp.path(), 640, &[1.5, 12.0, -3.0]);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut params = BTreeMap::new();
    params.insert("model".to_string(), Value::Str(model.display().to_string()));
    params.insert("layer".into(), Value::Int(9));
    params.insert("device".into(), Value::Str("cpu".into()));
    params.insert("dtype".into(), Value::Str("f32".into()));
    params.insert(
        "factors".into(),
        Value::List(vec![Value::Float(0.0), Value::Float(20.0)]),
    );
    params.insert(
        "instructions".into(),
        Value::Str("configs/instructions/demo.json".into()),
    );
    params.insert("per_concept".into(), Value::Int(4));
    params.insert("temperature".into(), Value::Float(1.0));
    params.insert("max_new_tokens".into(), Value::Int(8));
    params.insert("seed".into(), Value::Int(42));
    params.insert("batch_size".into(), Value::Int(4));
    let mut ctx = StageContext::new(
        "steer[concept=5,method=diffmean]",
        Coord::new(),
        params,
        inputs,
        out.clone(),
        root(),
    );
    axbench_stages::steer::Steer.run(&mut ctx).unwrap();

    let rows = read_generations(&out.join("generations.parquet")).unwrap();
    assert_eq!(rows.len(), 2 * 4);
    for r in &rows {
        assert_eq!((r.concept_id, r.method.as_str()), (5, "DiffMean"));
        assert_eq!(r.strength, r.factor * 12.0, "strength = factor × the largest max_act");
    }
    let all = steer::load_instructions(&root().join("configs/instructions/demo.json")).unwrap();
    let picked = steer::pick_instructions(&all, 5, 4);
    let zero: Vec<&str> = rows
        .iter()
        .filter(|r| r.factor == 0.0)
        .map(|r| r.instruction.as_str())
        .collect();
    assert_eq!(zero, picked.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        rows.iter()
            .filter(|r| r.factor == 0.0)
            .map(|r| r.input_id)
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );

    // Factor 0 rows are exactly what the unsteered model says with the same settings.
    let s = SteerSettings {
        layer: 9,
        max_new_tokens: 8,
        temperature: 1.0,
        seed: 42,
        batch_size: 4,
    };
    let plain = axbench_stages::model_cache::with_model(&model, DeviceSpec::Cpu, DType::F32, |m| {
        Ok(steered_generations(m, &picked, None, 0.0, &s).unwrap().0)
    })
    .unwrap();
    let zero_gens: Vec<String> = rows
        .iter()
        .filter(|r| r.factor == 0.0)
        .map(|r| r.generation.clone())
        .collect();
    assert_eq!(zero_gens, plain);
    let steered: Vec<String> = rows
        .iter()
        .filter(|r| r.factor == 20.0)
        .map(|r| r.generation.clone())
        .collect();
    assert_ne!(
        steered, plain,
        "strength 240 along the direction changes the generations"
    );

    // Perplexity of prompt + generation under the unsteered model, per row.
    assert!(
        rows.iter().all(|r| r.perplexity.is_finite() && r.perplexity > 1.0),
        "{rows:?}"
    );
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("steer.json")).unwrap()).unwrap();
    assert_eq!(meta["max_act"], 12.0);
    assert_eq!(meta["n_generations"], 8);
}

/// `perplexity_of_ids` against HF transformers on the same token ids (tests/golden/steering/make_perplexity_golden.py:
/// AxBench's CrossEntropyLoss-mean-then-exp on the GGUF models loaded by transformers in f32).
#[test]
fn perplexity_matches_hf_transformers() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/steering/perplexity.json")).unwrap())
            .unwrap();
    for (name, g) in golden.as_object().unwrap() {
        let path = root().join(".deps/models").join(g["file"].as_str().unwrap());
        if !path.exists() {
            eprintln!(
                "skipping {name}: {} is not installed (scripts/setup.sh)",
                path.display()
            );
            continue;
        }
        axbench_stages::model_cache::with_model(&path, DeviceSpec::Cpu, DType::F32, |m| {
            for row in g["rows"].as_array().unwrap() {
                let ids: Vec<i64> = row["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let want = row["perplexity"].as_f64().unwrap();
                let got = steer::perplexity_of_ids(m, &ids).unwrap();
                assert!(
                    (got - want).abs() / want < 2e-3,
                    "{name}: {:?}: perplexity {got} vs HF {want}",
                    row["text"]
                );
            }
            // Batched (right-padded, mixed lengths, a one-token row among them) equals one row at a time.
            let mut all: Vec<Vec<i64>> = g["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_i64().unwrap())
                        .collect()
                })
                .collect();
            all.insert(1, all[0][..1].to_vec());
            let batched = steer::perplexities_of_ids(m, &all).unwrap();
            assert!(batched[1].is_nan());
            for (ids, b) in all.iter().zip(&batched).filter(|(ids, _)| ids.len() >= 2) {
                let alone = steer::perplexity_of_ids(m, ids).unwrap();
                assert!((b - alone).abs() / alone < 1e-4, "{name}: batched {b} vs alone {alone}");
            }
            // Our own tokenization of the same text gives a finite perplexity of the same order.
            let texts: Vec<String> = g["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["text"].as_str().unwrap().to_owned())
                .collect();
            for p in steer::perplexities(m, &texts).unwrap() {
                assert!(p.is_finite() && p > 1.0, "{name}: {p}");
            }
            // Fewer than two tokens (at most a BOS): no next-token loss to average, NaN as in AxBench (0/0).
            assert!(steer::perplexities(m, &[String::new()]).unwrap()[0].is_nan());
            Ok(())
        })
        .unwrap();
    }
}
