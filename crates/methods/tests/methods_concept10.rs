//! End to end on AxBench's released Concept10 (2B, L20) where it is present: the per-concept training selection
//! (data.rs), BoW (methods/bow.rs) and the latent evaluators (metrics.rs), against the same pipeline in pandas +
//! scikit-learn (tests/golden/methods/make_methods_golden.py, `concept10_bow`).

use std::path::PathBuf;

use axbench_data::dataset::{self as data, AxBenchData};
use axbench_data::metrics;
use axbench_methods::{DetectionMethod, FitInput, MethodsConfig, ScoreInput, bow};

/// The released Concept10 data, beside the checkout (`../shared/axbench-data`) as on every machine of this project.
fn concept10() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/axbench-data/concept10/prod_2b_l20_v1")
}

fn train_text(e: &data::Example) -> String {
    format!(
        "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n{}<end_of_turn>\n<start_of_turn>",
        e.input, e.output
    )
}

fn eval_text(e: &data::Example) -> String {
    format!(
        "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n{}",
        e.input, e.output
    )
}

#[test]
fn bow_on_concept10_matches_sklearn_pipeline() {
    let concept10 = concept10();
    if !concept10.exists() {
        eprintln!("skipping: {} not present", concept10.display());
        return;
    }
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/methods/expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want = golden["concept10_bow"]
        .as_array()
        .expect("golden made with the data present");
    let data = AxBenchData::open(&concept10).unwrap();
    let eval = data.eval.as_ref().unwrap();
    let method = bow::Bow::new(MethodsConfig::default().bow);
    let (mut ours, mut sk_default, mut sk_tight) = (Vec::new(), Vec::new(), Vec::new());
    for (concept, w) in data.concepts.iter().zip(want) {
        let ts = data::training_set(&data.train, concept, None).unwrap();
        let (texts, labels): (Vec<String>, Vec<bool>) = ts.labeled().map(|(e, l)| (train_text(e), l)).unzip();
        let det = method
            .fit(&FitInput {
                labels: &labels,
                activations: None,
                texts: Some(&texts),
                model: None,
                concept: Some(concept),
            })
            .unwrap();
        let rows = data::eval_set(eval, concept.id);
        let eval_texts: Vec<String> = rows.iter().map(|e| eval_text(e)).collect();
        let scores = det
            .score(&ScoreInput {
                activations: None,
                texts: Some(&eval_texts),
            })
            .unwrap();
        let max_acts: Vec<f64> = scores.iter().map(|s| s.max_act).collect();
        let cats: Vec<_> = rows.iter().map(|e| e.category).collect();
        let r = metrics::aucroc_evaluator(&max_acts, &cats);
        let tight = w["tight_auroc"].as_f64().unwrap();
        if let axbench_methods::FittedArtifact::Bow(m) = det.artifact() {
            eprintln!(
                "concept {}: {} L-BFGS iterations, vocabulary {}",
                concept.id,
                m.n_iter,
                m.vocabulary.len()
            );
        }
        let head: Vec<f64> = w["tight_probs_head"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (p, q) in max_acts.iter().zip(&head) {
            assert!(
                (p - q).abs() < 1e-4,
                "concept {}: P(positive) {p} vs converged sklearn {q}",
                concept.id
            );
        }
        assert!(
            (r.roc_auc - tight).abs() < 1e-9,
            "concept {}: AUROC {} vs converged sklearn {tight}",
            concept.id,
            r.roc_auc
        );
        ours.push(r.roc_auc);
        sk_default.push(w["default_auroc"].as_f64().unwrap());
        sk_tight.push(tight);
    }
    let mean = |v: &[f64]| metrics::mean_over_concepts(v.iter().copied()).0;
    eprintln!(
        "Concept10 2B L20 BoW mean AUROC: ours {:.4}, sklearn converged {:.4}, sklearn default tol (AxBench) {:.4}",
        mean(&ours),
        mean(&sk_tight),
        mean(&sk_default)
    );
}
