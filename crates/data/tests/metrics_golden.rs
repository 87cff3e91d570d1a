//! Metrics against scikit-learn 1.9 and AxBench's evaluators (tests/golden/methods/make_methods_golden.py).

use std::path::PathBuf;

use axbench_data::dataset::Category;
use axbench_data::metrics;
use serde_json::Value;

fn golden() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/methods/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(num).collect()
}

/// A number, or one of the strings the generator writes for non-finite values.
fn num(x: &Value) -> f64 {
    match x.as_str() {
        Some("inf") => f64::INFINITY,
        Some("-inf") => f64::NEG_INFINITY,
        Some("nan") => f64::NAN,
        _ => x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")),
    }
}

fn labels(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|x| x.as_i64() == Some(1)).collect()
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length {} vs {}", a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same = (x.is_infinite() && y.is_infinite() && x.signum() == y.signum()) || (x - y).abs() < 1e-12;
        assert!(same, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn roc_curve_and_auc_match_sklearn_with_ties() {
    let g = golden();
    for (k, case) in g["metrics"]["cases"].as_array().unwrap().iter().enumerate() {
        let y = labels(&case["labels"]);
        let s = f64s(&case["scores"]);
        let c = metrics::roc_curve(&y, &s, true);
        close(&c.fpr, &f64s(&case["fpr"]), &format!("case {k} fpr"));
        close(&c.tpr, &f64s(&case["tpr"]), &format!("case {k} tpr"));
        close(
            &c.thresholds,
            &f64s(&case["thresholds"]),
            &format!("case {k} thresholds"),
        );
        let all = metrics::roc_curve(&y, &s, false);
        close(&all.fpr, &f64s(&case["fpr_all"]), &format!("case {k} fpr (all)"));
        close(
            &all.thresholds,
            &f64s(&case["thresholds_all"]),
            &format!("case {k} thresholds (all)"),
        );
        let auc = metrics::roc_auc(&y, &s);
        assert!(
            (auc - case["roc_auc"].as_f64().unwrap()).abs() < 1e-12,
            "case {k}: auc {auc}"
        );
        let f1 = metrics::max_f1(&y, &s).unwrap();
        let want = &case["max_f1"];
        assert!(
            (f1.f1 - want["f1"].as_f64().unwrap()).abs() < 1e-12,
            "case {k}: f1 {}",
            f1.f1
        );
        assert_eq!(
            f1.threshold,
            want["threshold"].as_f64().unwrap(),
            "case {k}: f1 threshold"
        );
        let pr = metrics::precision_recall_curve(&y, &s);
        close(&pr.precision, &f64s(&want["precision"]), &format!("case {k} precision"));
        close(&pr.recall, &f64s(&want["recall"]), &format!("case {k} recall"));
        close(
            &pr.thresholds,
            &f64s(&want["thresholds"]),
            &format!("case {k} pr thresholds"),
        );
    }
}

#[test]
fn degenerate_inputs_behave_like_sklearn() {
    let g = golden();
    let d = &g["metrics"]["degenerate"];
    let eq = &d["all_equal"];
    let (y, s) = (labels(&eq["labels"]), f64s(&eq["scores"]));
    assert_eq!(metrics::roc_auc(&y, &s), eq["roc_auc"].as_f64().unwrap());
    assert!((metrics::max_f1(&y, &s).unwrap().f1 - eq["max_f1"]["f1"].as_f64().unwrap()).abs() < 1e-12);
    let one = &d["one_class"];
    assert!(one["roc_auc_is_nan"].as_bool().unwrap());
    assert!(metrics::roc_auc(&labels(&one["labels"]), &f64s(&one["scores"])).is_nan());
}

fn categories(v: &Value) -> Vec<Category> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| Category::parse(x.as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn axbench_evaluators_match() {
    let g = golden();
    for (k, c) in g["metrics"]["concepts"].as_array().unwrap().iter().enumerate() {
        let cats = categories(&c["categories"]);
        let acts = f64s(&c["max_act"]);
        let r = metrics::aucroc_evaluator(&acts, &cats);
        let want = &c["aucroc"];
        assert!(
            (r.roc_auc - want["roc_auc"].as_f64().unwrap()).abs() < 1e-12,
            "concept {k}: auroc {}",
            r.roc_auc
        );
        assert_eq!(r.max_act, want["max_act"].as_f64().unwrap());
        let thr = num(&want["optimal_threshold"]);
        assert!(
            r.optimal_threshold == thr || (r.optimal_threshold - thr).abs() < 1e-12,
            "concept {k}: threshold"
        );
        close(&r.roc.fpr, &f64s(&want["fpr"]), &format!("concept {k} fpr"));
        close(&r.roc.tpr, &f64s(&want["tpr"]), &format!("concept {k} tpr"));
        let hn = metrics::hard_negative_evaluator(&acts, &cats);
        let want = c["hard_negative"].as_object().unwrap();
        match hn {
            None => assert!(want.is_empty(), "concept {k}: AxBench gives {want:?}"),
            Some(h) => {
                for (key, got) in [
                    ("positive_accuracy", h.positive_accuracy),
                    ("hard_negative_accuracy", h.hard_negative_accuracy),
                    ("macro_avg_accuracy", h.macro_avg_accuracy),
                    ("threshold", h.threshold),
                ] {
                    assert!(
                        (got - want[key].as_f64().unwrap()).abs() < 1e-12,
                        "concept {k}: {key} {got}"
                    );
                }
            }
        }
    }
}

#[test]
fn imbalanced_max_f1_matches() {
    let g = golden();
    let im = &g["metrics"]["imbalanced"];
    let (pos, neg) = (f64s(&im["pos"]), f64s(&im["neg"]));
    assert_eq!(neg.len(), 100 * pos.len());
    let f1 = metrics::imbalanced_max_f1(&pos, &neg).unwrap().f1;
    assert!((f1 - im["max_f1"].as_f64().unwrap()).abs() < 1e-12, "{f1}");
    let balanced = metrics::imbalanced_max_f1(&pos, &neg[..pos.len()]).unwrap().f1;
    assert!(
        (balanced - im["balanced_max_f1"].as_f64().unwrap()).abs() < 1e-12,
        "{balanced}"
    );
}
