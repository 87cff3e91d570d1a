//! Fit and score times at AxBench's sizes (144 training examples of ~150 tokens; d = 640 for Gemma-3-270M, 2304 for
//! Gemma-2-2B). Ignored by default: `cargo test -p axbench-methods --release --test tests methods_timing:: --
//! --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use axbench_methods::{FitInput, MethodResources, MethodsConfig, Registry, ScoreInput, TokenActivations, sae::Sae};
use tch::{Device, Kind, Tensor};

fn synthetic(n_examples: usize, dir: &Tensor) -> (TokenActivations, Vec<bool>) {
    let d = dir.size()[0];
    let mut examples = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n_examples {
        let t = 120 + (i as i64 * 7) % 60;
        let mut x = Tensor::randn([t, d], (Kind::Float, Device::Cpu)) * 50.0;
        if i % 2 == 0 {
            x += dir.unsqueeze(0) * 40.0;
        }
        examples.push(x);
        labels.push(i % 2 == 0);
    }
    (TokenActivations::from_examples(&examples).unwrap(), labels)
}

#[test]
#[ignore]
fn fit_and_score_times() {
    let reg = Registry::builtin();
    let cfg = MethodsConfig::default();
    for d in [640i64, 2304] {
        tch::manual_seed(0);
        let dir = Tensor::randn([d], (Kind::Float, Device::Cpu));
        let dir = &dir / dir.norm();
        let (train, labels) = synthetic(144, &dir);
        let (eval, eval_labels) = synthetic(72, &dir);
        let width = 4096i64;
        let sae = Arc::new(
            Sae::from_named(
                vec![
                    (
                        "W_enc".into(),
                        Tensor::randn([d, width], (Kind::Float, Device::Cpu)) * 0.05,
                    ),
                    ("b_enc".into(), Tensor::zeros([width], (Kind::Float, Device::Cpu))),
                    ("threshold".into(), Tensor::ones([width], (Kind::Float, Device::Cpu))),
                    ("W_dec".into(), Tensor::randn([width, d], (Kind::Float, Device::Cpu))),
                    ("b_dec".into(), Tensor::zeros([d], (Kind::Float, Device::Cpu))),
                ],
                "random",
            )
            .unwrap(),
        );
        let res = MethodResources { sae: Some(sae) };
        eprintln!(
            "d = {d}: {} training tokens, {} eval tokens",
            train.n_tokens(),
            eval.n_tokens()
        );
        for name in [
            "DiffMean",
            "PCA",
            "LAT",
            "LinearProbe",
            "LinearProbeStable",
            "GemmaScopeSAEMaxAUC",
        ] {
            let method = reg.build(name, &cfg, &res).unwrap();
            let t = Instant::now();
            let det = method.fit(&FitInput::activations(&labels, &train)).unwrap();
            let fit = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let scores = det
                .score(&ScoreInput {
                    activations: Some(&eval),
                    texts: None,
                })
                .unwrap();
            let score = t.elapsed().as_secs_f64();
            let s: Vec<f64> = scores.iter().map(|s| s.max_act).collect();
            let auroc = axbench_data::metrics::roc_auc(&eval_labels, &s);
            eprintln!(
                "  {name:<20} fit {fit:>7.3}s  score {score:>6.3}s  AUROC {auroc:.3}{}",
                if name.contains("SAE") {
                    format!(" (SAE width {width})")
                } else {
                    String::new()
                }
            );
        }
    }
}
