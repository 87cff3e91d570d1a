//! Detection methods against the reference outputs of tests/golden/methods/make_methods_golden.py (numpy,
//! scikit-learn and torch re-implementations of AxBench's code on the same synthetic activations).

use std::path::PathBuf;
use std::sync::Arc;

use axbench_methods::{
    self as methods, DetectionMethod, FitInput, MethodResources, MethodsConfig, ProbeConfig, Registry, ScoreInput,
    TokenActivations, bow, diffmean, lat, pca, probe,
};
use serde_json::Value;
use tch::{Kind, Tensor};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/methods")
}

struct Golden {
    inputs: Vec<(String, Tensor)>,
    expected: Vec<(String, Tensor)>,
    json: Value,
}

impl Golden {
    fn load() -> Self {
        let d = golden_dir();
        Self {
            inputs: Tensor::read_safetensors(d.join("inputs.safetensors")).unwrap(),
            expected: Tensor::read_safetensors(d.join("expected.safetensors")).unwrap(),
            json: serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap(),
        }
    }

    fn input(&self, name: &str) -> Tensor {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no input {name}"))
            .1
            .shallow_clone()
    }

    fn expected(&self, name: &str) -> Tensor {
        self.expected
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no expected {name}"))
            .1
            .shallow_clone()
    }

    fn split(&self, which: &str) -> (TokenActivations, Vec<bool>) {
        let offsets: Vec<i64> = Vec::try_from(&self.input(&format!("{which}_offsets"))).unwrap();
        let labels: Vec<i64> = Vec::try_from(&self.input(&format!("{which}_labels"))).unwrap();
        let acts = TokenActivations::new(
            self.input(&format!("{which}_acts")),
            offsets.iter().map(|o| *o as usize).collect(),
        )
        .unwrap();
        (acts, labels.iter().map(|l| *l == 1).collect())
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Detector scores on the eval split vs the reference's rounded, max-pooled `h·w`.
fn check_scores(g: &Golden, name: &str, w: &Tensor) {
    let (eval, _) = g.split("eval");
    let det = methods::LinearDetector::new("t", w.shallow_clone(), 0.0);
    let scores = methods::Detector::score(
        &det,
        &ScoreInput {
            activations: Some(&eval),
            texts: None,
        },
    )
    .unwrap();
    let want = &g.json["scores"][name];
    let want_max = f64s(&want["max_act"]);
    for (i, (s, m)) in scores.iter().zip(&want_max).enumerate() {
        // Directions agree to ~1e-6; a score can land on the other side of a rounding boundary: 1 ulp of 1e-3.
        assert!(
            (s.max_act - m).abs() <= 1.001e-3,
            "{name} example {i}: {} vs {m}",
            s.max_act
        );
    }
    let idx: Vec<u64> = want["max_act_idx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let same = scores
        .iter()
        .zip(&idx)
        .filter(|(s, i)| s.max_act_idx == Some(**i as usize))
        .count();
    assert!(
        same >= idx.len() - 1,
        "{name}: max_act_idx agree on {same}/{}",
        idx.len()
    );
}

#[test]
fn diffmean_matches_reference() {
    let g = Golden::load();
    let (train, labels) = g.split("train");
    let w = diffmean::fit_direction(&train, &labels);
    let diff = max_abs_diff(&w, &g.expected("diffmean"));
    assert!(diff < 1e-6, "DiffMean differs by {diff}");
    assert!((w.norm().double_value(&[]) - 1.0).abs() < 1e-6);
    check_scores(&g, "DiffMean", &w);
}

#[test]
fn pca_matches_sklearn_including_sign() {
    let g = Golden::load();
    let (train, labels) = g.split("train");
    let fitted = pca::Pca.fit(&FitInput::activations(&labels, &train)).unwrap();
    let w = fitted.detection_direction().unwrap();
    // Same sign, not just the same axis: sklearn >= 1.5 makes the largest-magnitude coordinate positive.
    let diff = max_abs_diff(&w, &g.expected("pca"));
    assert!(diff < 1e-5, "PCA differs by {diff}");
    check_scores(&g, "PCA", &w);
}

#[test]
fn lat_matches_reference_with_the_same_permutation() {
    let g = Golden::load();
    let (train, labels) = g.split("train");
    let positives = train.tokens_with_label(&labels, true);
    let perm: Vec<i64> = Vec::try_from(&g.input("lat_perm")).unwrap();
    let w = lat::fit_direction(&positives, &perm).unwrap();
    let diff = max_abs_diff(&w, &g.expected("lat"));
    assert!(diff < 1e-5, "LAT differs by {diff}");
    check_scores(&g, "LAT", &w);
    // The registry's LAT replays numpy's RandomState(42).shuffle, as AxBench's LAT after set_seed(42).
    let seeded = lat::Lat::new(Default::default())
        .fit(&FitInput::activations(&labels, &train))
        .unwrap();
    let diff = max_abs_diff(&seeded.detection_direction().unwrap(), &g.expected("lat_seed42"));
    assert!(diff < 1e-5, "LAT(seed 42) differs by {diff}");
}

fn probe_config(g: &Golden, l1: f64) -> ProbeConfig {
    let p = &g.json["probe"];
    ProbeConfig {
        batch_size: p["batch_size"].as_u64().unwrap() as usize,
        n_epochs: p["epochs"].as_u64().unwrap() as usize,
        lr: p["lr"].as_f64().unwrap(),
        weight_decay: p["weight_decay"].as_f64().unwrap(),
        coeff_l1_loss: l1,
        seed: 0,
    }
}

fn run_probe(g: &Golden, scale: f64, l1: f64, loss: probe::ProbeLoss) -> Tensor {
    let (train, labels) = g.split("train");
    let train = TokenActivations::new(train.acts * scale, train.offsets).unwrap();
    let orders: Vec<Vec<usize>> = (0..g.input("probe_orders").size()[0])
        .map(|e| {
            Vec::<i64>::try_from(&g.input("probe_orders").get(e))
                .unwrap()
                .iter()
                .map(|i| *i as usize)
                .collect()
        })
        .collect();
    probe::train(
        &train,
        &labels,
        &g.input("probe_init"),
        &orders,
        &probe_config(g, l1),
        loss,
    )
    .unwrap()
}

#[test]
fn probe_matches_torch_reference() {
    let g = Golden::load();
    let l1 = g.json["probe"]["l1"].as_f64().unwrap();
    let big = g.json["probe"]["big_scale"].as_f64().unwrap();
    use probe::ProbeLoss::*;
    for (name, scale, coeff, loss) in [
        ("probe_faithful", 1.0, 0.0, SigmoidBce),
        ("probe_l1", 1.0, l1, SigmoidBce),
        ("probe_stable", 1.0, 0.0, BceWithLogits),
        ("probe_faithful_big", big, 0.0, SigmoidBce),
        ("probe_stable_big", big, 0.0, BceWithLogits),
    ] {
        let w = run_probe(&g, scale, coeff, loss);
        let diff = max_abs_diff(&w, &g.expected(name));
        assert!(diff < 2e-5, "{name}: final w differs by {diff}");
    }
    check_scores(&g, "LinearProbe", &run_probe(&g, 1.0, 0.0, SigmoidBce));
}

#[test]
fn stable_probe_learns_where_faithful_one_saturates() {
    // At residual-stream scale the sigmoid saturates; measure each probe's AUROC on the eval split.
    let g = Golden::load();
    let big = g.json["probe"]["big_scale"].as_f64().unwrap();
    let (eval, eval_labels) = g.split("eval");
    let auroc = |w: &Tensor| {
        let det = methods::LinearDetector::new("t", w.shallow_clone(), 0.0);
        let s = methods::Detector::score(
            &det,
            &ScoreInput {
                activations: Some(&eval),
                texts: None,
            },
        )
        .unwrap();
        axbench_data::metrics::roc_auc(&eval_labels, &s.iter().map(|s| s.max_act).collect::<Vec<_>>())
    };
    let faithful = auroc(&g.expected("probe_faithful_big"));
    let stable = auroc(&g.expected("probe_stable_big"));
    let init = auroc(&g.input("probe_init"));
    eprintln!("AUROC at scale {big}: init {init:.3}, faithful {faithful:.3}, stable {stable:.3}");
    assert!(stable >= 0.85, "stable probe AUROC {stable}");
}

#[test]
fn bow_matches_sklearn() {
    let g = Golden::load();
    let b = &g.json["bow"];
    let texts = strings(&b["train_texts"]);
    let labels: Vec<bool> = b["train_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64() == Some(1))
        .collect();
    assert_eq!(bow::fit_vocabulary(&texts), strings(&b["vocabulary"]));
    let model = bow::fit(&texts, &labels, &MethodsConfig::default().bow).unwrap();
    let probs = model.predict_proba(&strings(&b["eval_texts"]));
    let tight = f64s(&b["probs_tight"]);
    let default = f64s(&b["probs"]);
    let d_tight = probs.iter().zip(&tight).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let d_default = probs
        .iter()
        .zip(&default)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "BoW: {} L-BFGS iterations; max |p - sklearn(tol=1e-12)| = {d_tight:.2e}, vs sklearn default tol: {d_default:.2e}",
        model.n_iter
    );
    assert!(
        d_tight < 1e-4,
        "BoW probabilities differ from converged sklearn by {d_tight}"
    );
    assert!(
        d_default < 0.1,
        "BoW probabilities differ from default sklearn by {d_default}"
    );
}

#[test]
fn sae_and_sae_a_match_reference() {
    let g = Golden::load();
    let d = golden_dir();
    let sae = Arc::new(methods::sae::Sae::load(&d.join("sae_params.npz")).unwrap());
    let (train, labels) = g.split("train");
    let (eval, _) = g.split("eval");
    // JumpReLU activations of every feature on the eval tokens.
    let all: Vec<usize> = (0..sae.width()).collect();
    let diff = max_abs_diff(&sae.encode(&eval.acts, &all), &g.expected("sae_eval_acts"));
    assert!(diff < 1e-5, "SAE activations differ by {diff}");
    // Per-feature training AUROC and the SAE-A choice.
    let aucs = methods::sae::feature_aucs(&sae, &train, &labels, &all);
    let want = f64s(&g.json["sae"]["feature_aucs"]);
    for (f, (a, b)) in aucs.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-12, "feature {f}: AUROC {a} vs {b}");
    }
    let res = MethodResources { sae: Some(sae.clone()) };
    let reg = Registry::builtin();
    let sae_a = reg.build("SAE-A", &MethodsConfig::default(), &res).unwrap();
    let det = sae_a.fit(&FitInput::activations(&labels, &train)).unwrap();
    let best = g.json["sae"]["best_feature"].as_u64().unwrap() as usize;
    assert_eq!(
        det.artifact(),
        methods::FittedArtifact::SaeFeature {
            method: "GemmaScopeSAEMaxAUC".into(),
            feature: best,
            params: Some(sae.prune(best)),
        }
    );
    // The saved artifact scores alone, without the SAE file.
    let alone = det.artifact().into_detector(&MethodResources::default()).unwrap();
    let input = ScoreInput {
        activations: Some(&eval),
        texts: None,
    };
    assert_eq!(alone.score(&input).unwrap(), det.score(&input).unwrap());
    assert!(max_abs_diff(&alone.steering_direction().unwrap(), &sae.w_dec.get(best as i64)) == 0.0);
    let scores = det
        .score(&ScoreInput {
            activations: Some(&eval),
            texts: None,
        })
        .unwrap();
    let want = f64s(&g.json["sae"]["eval_max_act"][best.to_string()]);
    for (s, w) in scores.iter().zip(&want) {
        assert!((s.max_act - w).abs() <= 1.001e-3, "{} vs {w}", s.max_act);
    }
    // The concept's own feature comes from its Neuronpedia ref.
    let concept = axbench_data::dataset::Concept {
        id: 0,
        concept: "c".into(),
        reference: "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/5".into(),
        genres: vec!["text".into()],
    };
    let plain = reg.build("SAE", &MethodsConfig::default(), &res).unwrap();
    let det = plain
        .fit(&FitInput {
            concept: Some(&concept),
            ..FitInput::activations(&labels, &train)
        })
        .unwrap();
    let dir = det.steering_direction().unwrap();
    assert!(max_abs_diff(&dir, &sae.w_dec.get(5)) == 0.0);
    // The same SAE from safetensors.
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("sae.safetensors");
    Tensor::write_safetensors(
        &[
            ("W_enc", &sae.w_enc),
            ("b_enc", &sae.b_enc),
            ("threshold", &sae.threshold),
            ("W_dec", &sae.w_dec),
            ("b_dec", &sae.b_dec),
        ],
        &st,
    )
    .unwrap();
    let again = methods::sae::Sae::load(&st).unwrap();
    assert_eq!(
        max_abs_diff(&again.encode(&eval.acts, &all), &sae.encode(&eval.acts, &all)),
        0.0
    );
}

#[test]
fn fitted_artifacts_roundtrip_through_json() {
    let g = Golden::load();
    let (train, labels) = g.split("train");
    let (eval, _) = g.split("eval");
    let reg = Registry::builtin();
    let cfg = MethodsConfig::default();
    let res = MethodResources::default();
    for name in ["DiffMean", "PCA", "LAT", "LinearProbeStable"] {
        let det = reg
            .build(name, &cfg, &res)
            .unwrap()
            .fit(&FitInput::activations(&labels, &train))
            .unwrap();
        let json = serde_json::to_string(&det.artifact()).unwrap();
        let back: methods::FittedArtifact = serde_json::from_str(&json).unwrap();
        let det2 = back.into_detector(&res).unwrap();
        assert_eq!(det2.method(), name);
        let input = ScoreInput {
            activations: Some(&eval),
            texts: None,
        };
        assert_eq!(det.score(&input).unwrap(), det2.score(&input).unwrap());
    }
}
