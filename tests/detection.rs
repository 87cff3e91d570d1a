//! End to end: `pipelines/detection.toml` through the `axbench` binary, on the real gemma-3-270m GGUF and a tiny
//! dataset written here in AxBench's released layout (two concepts; shared negatives of two genres; eval positives,
//! negatives and a hard negative).
//!
//! Checks what a user relies on: every node is computed once and a rerun computes none; raising `concepts.limit`
//! computes only the new concept's nodes; changing `model.layer` recomputes the activations and everything
//! downstream but not the concept list; `results --json` has the
//! documented shape (insta snapshot, numbers redacted); and the AUROC it reports equals a direct Mann-Whitney
//! computation from the infer nodes' `scores.parquet`. Skips (with a message) when the model is not installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use axbench_data::dataset::{Category, Example, examples_to_batch};
use axbench_data::tables::write_parquet_atomic;
use axbench_stages::infer::read_scores;
use serde_json::Value;

use crate::common::{artifact, root};

fn ex(input: &str, output: &str, concept: &str, genre: &str, category: Category, concept_id: i64) -> Example {
    Example {
        input: input.into(),
        output: output.into(),
        output_concept: concept.into(),
        concept_genre: genre.into(),
        category,
        dataset_category: "instruction".into(),
        concept_id,
        sae_link: None,
        sae_id: None,
    }
}

/// A two-concept dataset. Concept 0: 6 positives about cats, and an eval set of 4 positives, 4 negatives and 1 hard
/// negative; concept 1: 3 positives about the sea, 2 + 2 eval rows. Shared negatives: 6 text, 2 code.
fn write_dataset(dir: &Path) {
    let cat = "references to cats";
    let pos = [
        (
            "Describe your morning.",
            "My cat jumped on the bed and purred until I fed her.",
        ),
        ("Write a short poem.", "Soft paws, a tabby cat, whiskers in the sun."),
        ("What is a good pet?", "A cat is independent, playful and loves to nap."),
        (
            "Tell me a story.",
            "The kitten chased a ball of yarn across the kitchen.",
        ),
        (
            "Give a tip for apartments.",
            "Cats adapt well to small flats if they have a scratching post.",
        ),
        (
            "What sound do animals make?",
            "A cat meows when it wants attention and purrs when content.",
        ),
    ];
    let neg_text = [
        ("Describe your morning.", "I made coffee and read the news before work."),
        (
            "Write a short poem.",
            "Rivers run to the sea, mountains stand in the mist.",
        ),
        (
            "What is a good hobby?",
            "Gardening is relaxing and gives you fresh vegetables.",
        ),
        (
            "Tell me a story.",
            "The sailor crossed the ocean in a small wooden boat.",
        ),
        (
            "Give a tip for apartments.",
            "Use shelves to save floor space in a small flat.",
        ),
        (
            "What is the weather like?",
            "It is sunny with a light breeze this afternoon.",
        ),
    ];
    let neg_code = [
        ("Write a loop in Python.", "for i in range(3):\n    print(i)"),
        ("Add two numbers.", "def add(a, b):\n    return a + b"),
    ];
    let mut train = Vec::new();
    for (i, o) in neg_text {
        train.push(ex(i, o, "EEEEE", "text", Category::Negative, -1));
    }
    for (i, o) in neg_code {
        train.push(ex(i, o, "EEEEE", "code", Category::Negative, -1));
    }
    for (i, o) in pos {
        train.push(ex(i, o, cat, "text", Category::Positive, 0));
    }
    let eval = vec![
        ex(
            "Describe a pet.",
            "Our cat sleeps on the windowsill all afternoon.",
            cat,
            "text",
            Category::Positive,
            0,
        ),
        ex(
            "Write a sentence.",
            "The black cat stretched and yawned.",
            cat,
            "text",
            Category::Positive,
            0,
        ),
        ex(
            "What do you like?",
            "I love how cats knead blankets with their paws.",
            cat,
            "text",
            Category::Positive,
            0,
        ),
        ex(
            "Tell me a fact.",
            "A cat can sleep up to sixteen hours a day.",
            cat,
            "text",
            Category::Positive,
            0,
        ),
        ex(
            "Describe a pet.",
            "Goldfish need clean water and a quiet tank.",
            cat,
            "text",
            Category::Negative,
            0,
        ),
        ex(
            "Write a sentence.",
            "The train arrived at the station on time.",
            cat,
            "text",
            Category::Negative,
            0,
        ),
        ex(
            "What do you like?",
            "I enjoy long walks along the river.",
            cat,
            "text",
            Category::Negative,
            0,
        ),
        ex(
            "Tell me a fact.",
            "Water boils at one hundred degrees Celsius.",
            cat,
            "text",
            Category::Negative,
            0,
        ),
        ex(
            "Explain a tool.",
            "A cat-o-nine-tails was a whip used on ships.",
            "cat//whip",
            "text",
            Category::HardNegative,
            0,
        ),
        ex(
            "Describe a place.",
            "The ocean glittered under the morning sun.",
            "the ocean and the sea",
            "text",
            Category::Positive,
            1,
        ),
        ex(
            "Write a sentence.",
            "Waves crashed against the harbour wall.",
            "the ocean and the sea",
            "text",
            Category::Positive,
            1,
        ),
        ex(
            "Describe a place.",
            "The library was quiet and full of old books.",
            "the ocean and the sea",
            "text",
            Category::Negative,
            1,
        ),
        ex(
            "Write a sentence.",
            "She planted tomatoes in the spring.",
            "the ocean and the sea",
            "text",
            Category::Negative,
            1,
        ),
    ];
    let sea = "the ocean and the sea";
    for (i, o) in [
        (
            "Describe a holiday.",
            "We swam in the sea and watched the waves roll onto the beach.",
        ),
        ("Write a short poem.", "Salt wind, blue ocean, tides that never sleep."),
        ("Tell me a story.", "The ship sailed across the stormy ocean for weeks."),
    ] {
        train.push(ex(i, o, sea, "text", Category::Positive, 1));
    }
    write_parquet_atomic(
        &dir.join("train_data.parquet"),
        &examples_to_batch(&train, false).unwrap(),
    )
    .unwrap();
    let mut eval = eval;
    for e in &mut eval {
        e.sae_link = Some("https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/123".into());
        e.sae_id = Some(123);
    }
    write_parquet_atomic(
        &dir.join("latent_eval_data.parquet"),
        &examples_to_batch(&eval, true).unwrap(),
    )
    .unwrap();
    let meta = serde_json::json!({"concept_id": 0, "concept": cat, "ref": "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/123", "concept_genres_map": {cat: ["text"]}});
    let meta1 = serde_json::json!({"concept_id": 1, "concept": sea, "ref": "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/456", "concept_genres_map": {sea: ["text"]}});
    std::fs::write(dir.join("metadata.jsonl"), format!("{meta}\n{meta1}\n")).unwrap();
}

struct Env {
    cache: PathBuf,
    data: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str], sets: &[&str]) -> std::process::Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_axbench"));
        c.arg("-C")
            .arg(root())
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .arg("pipelines/detection.toml");
        c.arg("--set").arg(format!("dataset.dir={}", self.data.display()));
        for s in sets {
            c.arg("--set").arg(s);
        }
        c.env("OMP_WAIT_POLICY", "PASSIVE").output().unwrap()
    }

    /// `run --json`: the computed and cached node ids.
    fn run(&self, sets: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
        let out = self.cmd(&["run", "--json"], sets);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let ids = |k: &str| {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        (ids("computed"), ids("cached"))
    }
}

/// AUROC as the probability that a positive outscores a negative (ties count half): independent of sklearn's curve.
fn mann_whitney_auroc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut wins = 0.0;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Replaces every number by a placeholder, keeping the shape.
fn redact(v: &Value) -> Value {
    match v {
        Value::Number(_) => Value::String("[number]".into()),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        if k == "method" || k == "model" {
                            v.clone()
                        } else {
                            redact(v)
                        },
                    )
                })
                .collect(),
        ),
        v => v.clone(),
    }
}

#[test]
fn detection_pipeline_end_to_end() {
    if !root().join(".deps/models/gemma-3-270m-q4_k_m.gguf").exists() {
        eprintln!("skipping: .deps/models/gemma-3-270m-q4_k_m.gguf not installed (scripts/setup.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        cache: tmp.path().join("cache"),
        data: tmp.path().join("data"),
    };
    std::fs::create_dir_all(&env.data).unwrap();
    write_dataset(&env.data);

    // The declared params are listed.
    let out = env.cmd(&["plan", "--params"], &[]);
    let listing = String::from_utf8_lossy(&out.stdout);
    for p in ["dataset.dir", "model.path", "model.layer", "concepts.limit", "methods"] {
        assert!(listing.contains(p), "{p} missing from:\n{listing}");
    }
    // A bad value names the param and the valid ones.
    let out = env.cmd(&["plan"], &["methods.limit=3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("methods.limit") && err.contains("concepts.limit"), "{err}");

    // First run (one concept): every node once.
    let (computed, cached) = env.run(&["model.layer=3", "concepts.limit=1"]);
    let methods = ["bow", "diffmean", "lat", "pca", "probe", "probe_stable"];
    let concept_nodes = |c: i64| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = [format!("activations[concept={c}]")].into();
        for m in methods {
            s.insert(format!("fit[concept={c},method={m}]"));
            s.insert(format!("infer[concept={c},method={m}]"));
        }
        s
    };
    let mut all: BTreeSet<String> = ["concepts", "negatives", "evaluate"].map(String::from).into();
    all.extend(concept_nodes(0));
    assert_eq!(computed, all);
    assert!(cached.is_empty(), "{cached:?}");

    // Rerun: nothing computed.
    let (computed, cached) = env.run(&["model.layer=3", "concepts.limit=1"]);
    assert!(computed.is_empty(), "{computed:?}");
    assert_eq!(cached, all);

    // One more concept: only its nodes, the list and the gathering evaluate node; concept 0 and the shared
    // negatives stay cached.
    let (computed, cached) = env.run(&["model.layer=3", "concepts.limit=2"]);
    let mut new: BTreeSet<String> = ["concepts", "evaluate"].map(String::from).into();
    new.extend(concept_nodes(1));
    assert_eq!(computed, new);
    assert!(
        cached.contains("negatives") && cached.is_superset(&concept_nodes(0)),
        "{cached:?}"
    );
    all.extend(concept_nodes(1));

    // Another layer: activations and everything downstream, not the concept list.
    let (computed, _) = env.run(&["model.layer=5", "concepts.limit=2"]);
    let mut downstream = all.clone();
    downstream.remove("concepts");
    assert_eq!(computed, downstream);

    // results --json: the contract's shape.
    let out = env.cmd(&["results", "--json"], &["model.layer=5", "concepts.limit=2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    insta::assert_json_snapshot!("results_json_shape", redact(&results));
    let rows = results["detection"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * methods.len());
    assert!(
        rows.iter()
            .all(|r| r["layer"] == 5 && r["model"] == "gemma-3-270m-q4_k_m")
    );

    // The table prints too, and results for a layer never run say so.
    let out = env.cmd(&["results"], &["model.layer=5", "concepts.limit=2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("| DiffMean |"));
    let out = env.cmd(&["results", "--json"], &["model.layer=7", "concepts.limit=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not computed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // AUROC equals a direct computation from the infer nodes' scores (the evaluate node's inputs).
    let store = axbench_cache::Store::open(&env.cache).unwrap();
    let key = store
        .latest(store.reader().as_ref(), "evaluate")
        .expect("evaluate is cached");
    let manifest = store.read_manifest(&key).unwrap().unwrap();
    assert_eq!(manifest.inputs.len(), 2 * methods.len());
    for input in &manifest.inputs {
        let scores = read_scores(&store.blob_path(&input.outputs["scores.parquet"])).unwrap();
        let concept = scores[0].concept_id;
        assert_eq!(scores.len(), if concept == 0 { 9 } else { 4 });
        let of = |c: Category| {
            scores
                .iter()
                .filter(|s| s.category == c)
                .map(|s| s.max_act)
                .collect::<Vec<_>>()
        };
        let direct = mann_whitney_auroc(&of(Category::Positive), &of(Category::Negative));
        let infer =
            serde_json::from_slice::<Value>(&std::fs::read(store.blob_path(&input.outputs["infer.json"])).unwrap())
                .unwrap();
        let method = infer["method_class"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r["method"] == method && r["concept_id"] == concept)
            .unwrap_or_else(|| panic!("no result row for {method}"));
        let reported = row["auroc"].as_f64().unwrap();
        assert!(
            (reported - direct).abs() < 1e-12,
            "{method}: reported {reported}, direct {direct}"
        );
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Stage-level checks (no model needed): SAE wiring, plan-time method validation.

use axbench_engine::{Coord, InputArtifact, Stage, StageContext, Value as PValue};
use std::collections::BTreeMap;

/// Every declared param of `stage` at its default, with `set` over them.
fn params_for(stage: &dyn Stage, set: &[(&str, PValue)]) -> BTreeMap<String, PValue> {
    let mut p: BTreeMap<String, PValue> = stage
        .params()
        .into_iter()
        .filter_map(|s| s.default.map(|d| (s.name.to_string(), d)))
        .collect();
    for (k, v) in set {
        p.insert(k.to_string(), v.clone());
    }
    p
}

/// Runs `stage` with `params` and `inputs` into a fresh directory under `tmp`; returns it.
fn run_stage(
    stage: &dyn Stage,
    tmp: &Path,
    name: &str,
    params: BTreeMap<String, PValue>,
    inputs: Vec<(&str, Vec<InputArtifact>)>,
) -> Result<PathBuf, String> {
    let out = tmp.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let inputs = inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut ctx = StageContext::new(name, Coord::new(), params, inputs, out.clone(), root());
    stage.run(&mut ctx).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `sae` and `sae_a` through `axbench.fit` and `axbench.infer` on the synthetic SAE and activations of
/// tests/golden/detection/make_sae_golden.py: the chosen features, the per-row scores (numpy's JumpReLU, rounded and
/// max-pooled as AxBench does), the steering direction `W_dec[f]`; infer needs only the fit's output, not the SAE.
#[test]
fn sae_stages_match_numpy() {
    use axbench_stages::{fit::Fit, infer::Infer};
    let g = root().join("tests/golden/detection/sae");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(g.join("expected.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let acts = artifact("activations", &g.join("concept"));
    let negs = artifact("negatives", &g.join("negatives"));
    for (method, key) in [("sae", "sae"), ("sae_a", "sae_a"), ("SAE-A", "sae_a")] {
        let params = params_for(
            &Fit,
            &[
                ("method", PValue::Str(method.into())),
                ("sae", PValue::Str(g.join("sae.npz").display().to_string())),
            ],
        );
        let fit = run_stage(
            &Fit,
            tmp.path(),
            &format!("fit-{method}"),
            params,
            vec![("acts", vec![acts.clone()]), ("negatives", vec![negs.clone()])],
        )
        .unwrap();
        let detector: Value = serde_json::from_slice(&std::fs::read(fit.join("detector.json")).unwrap()).unwrap();
        assert_eq!(detector["kind"], "sae_feature");
        assert_eq!(detector["feature"], want[key]["feature"], "{method}");
        let infer = run_stage(
            &Infer,
            tmp.path(),
            &format!("infer-{method}"),
            BTreeMap::new(),
            vec![("fit", vec![artifact("fit", &fit)]), ("acts", vec![acts.clone()])],
        )
        .unwrap();
        let scores = read_scores(&infer.join("scores.parquet")).unwrap();
        let expected: Vec<f64> = want[key]["eval_max_act"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), expected.len());
        for (s, (e, cat)) in scores
            .iter()
            .zip(expected.iter().zip(want["categories"].as_array().unwrap()))
        {
            assert_eq!(s.category.as_str(), cat.as_str().unwrap());
            // Both sides round float32 sums to 3 decimals; summation order may move a value across a rounding edge.
            assert!(
                (s.max_act - e).abs() <= 1.0001e-3,
                "{method}: {} vs numpy {e}",
                s.max_act
            );
        }
        let exact = scores.iter().zip(&expected).filter(|(s, e)| s.max_act == **e).count();
        assert!(
            exact + 1 >= expected.len(),
            "{method}: only {exact} of {} scores equal numpy's",
            expected.len()
        );
    }
    // The plain SAE steers along the concept feature's decoder row.
    let params = params_for(
        &Fit,
        &[
            ("method", PValue::Str("sae".into())),
            ("sae", PValue::Str(g.join("sae.npz").display().to_string())),
        ],
    );
    let fit = run_stage(
        &Fit,
        tmp.path(),
        "fit-dir",
        params,
        vec![("acts", vec![acts.clone()]), ("negatives", vec![negs.clone()])],
    )
    .unwrap();
    let dir = tch::Tensor::read_safetensors(fit.join("direction.safetensors")).unwrap();
    let w: Vec<f32> = Vec::try_from(&dir.iter().find(|(n, _)| n == "w").unwrap().1).unwrap();
    let w_dec: Vec<f32> = want["sae"]["w_dec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(w, w_dec);
    // The imbalanced setting: infer scores the 600-row pool too (1 positive : 100 negatives), evaluate takes the max F1
    // of the positives against it, as scikit-learn's precision_recall_curve gives it.
    let pool = artifact("pool", &g.join("pool"));
    let infer = run_stage(
        &Infer,
        tmp.path(),
        "infer-pool",
        BTreeMap::new(),
        vec![
            ("fit", vec![artifact("fit", &fit)]),
            ("acts", vec![acts.clone()]),
            ("pool", vec![pool]),
        ],
    )
    .unwrap();
    let pool_scores = read_scores(&infer.join("pool_scores.parquet")).unwrap();
    let want_pool: Vec<f64> = want["imbalanced"]["pool_max_act"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(pool_scores.len(), 600);
    for (s, e) in pool_scores.iter().zip(&want_pool) {
        assert!((s.max_act - e).abs() <= 1.0001e-3, "pool: {} vs numpy {e}", s.max_act);
    }
    let ev = run_stage(
        &axbench_stages::evaluate::Evaluate,
        tmp.path(),
        "evaluate-pool",
        BTreeMap::new(),
        vec![("scores", vec![artifact("infer", &infer)])],
    )
    .unwrap();
    let results: Value = serde_json::from_slice(&std::fs::read(ev.join("results.json")).unwrap()).unwrap();
    let f1 = results["detection"][0]["f1_imbalanced"].as_f64().unwrap();
    let want_f1 = want["imbalanced"]["f1"].as_f64().unwrap();
    assert!(
        (f1 - want_f1).abs() < 1e-12,
        "imbalanced max-F1 {f1} vs sklearn {want_f1}"
    );
    let md = std::fs::read_to_string(ev.join("results.md")).unwrap();
    assert!(md.contains("mean max-F1 (pool)"), "{md}");

    // Without the SAE file the error names the param.
    let params = params_for(&Fit, &[("method", PValue::Str("sae".into()))]);
    let err = run_stage(
        &Fit,
        tmp.path(),
        "fit-nosae",
        params,
        vec![("acts", vec![acts.clone()]), ("negatives", vec![negs])],
    )
    .unwrap_err();
    assert!(err.contains("sae") && err.contains("needs a JumpReLU SAE"), "{err}");
}

/// An unknown name in `methods` fails `axbench plan` (exit 2) naming the method and the valid ones, before any
/// node runs; the SAE methods plan without an SAE file set (an empty path param reads nothing).
#[test]
fn unknown_method_fails_at_plan_time() {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        cache: tmp.path().join("cache"),
        data: tmp.path().join("data"),
    };
    std::fs::create_dir_all(&env.data).unwrap();
    write_dataset(&env.data);
    let out = env.cmd(&["plan"], &[r#"methods=["diffmean","difmean"]"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"difmean\"") && err.contains("methods") && err.contains("diffmean, pca"),
        "{err}"
    );
    let out = env.cmd(&["plan"], &[r#"methods=["diffmean","sae_a"]"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ------------------------------------------------------------------------------------------------------------------
// Synthesis and prompt detection through the scripted OpenAI-compatible test server.

use axbench_testkit::lm_server::{Reply, Rules, TestServer};

const GEMMA: &str = ".deps/models/gemma-3-270m-q4_k_m.gguf";

/// The data-generation LM: every concept is text; "union" and "wage" are related words, only "union" has another,
/// unrelated meaning; positives carry a marker and are longer than `output_length`; negatives and the hard negative
/// are plain. As the rating LM: positives get 2, negatives 0, the hard negative an unreadable reply.
fn synth_rules() -> Rules {
    Rules::new()
        .when("Which single kind of writing", Reply::text("Text"))
        .when("List up to 10 common English words", Reply::text("union\nwage"))
        .when("Here is a word:\n\nunion\n", Reply::text("the act of joining two things together"))
        .when("Here is a word:\n\nwage\n", Reply::text("a sum of money paid for work"))
        .when_all(&["truly separate", "joining two things"], |_| Reply::text("Nothing in common.\nAnswer: yes"))
        .when_all(&["truly separate", "money"], |_| Reply::text("Answer: no"))
        .when("brings in elements of the following concept", Reply::text("POS workers and their employer sign a contract about wages, shifts, holidays and the many duties of every employee"))
        .when("Stay completely away", Reply::text("NEG a plain answer"))
        .when("in the sense of: the act of joining", Reply::text("<FINAL> The union of two rivers forms a delta."))
        .when_all(&["Rating: [[score]]", "POS workers"], |_| Reply::text("Clearly present. Rating: [[2]]"))
        .when_all(&["Rating: [[score]]", "NEG a plain"], |_| Reply::text("Absent. Rating: [[0]]"))
        .when("Rating: [[score]]", Reply::text("I cannot say."))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `axbench.synthesize` writes AxBench's layout (columns, row counts, the 26/5/5 negative split, hard negatives from
/// the contrast concepts, responses cut to `output_length` target tokens, negatives answered by the target model);
/// `axbench.concepts` and `axbench.prompt_detect` read it through their `dataset` input; `axbench.evaluate` gathers
/// prompt-detection scores under a second input name; a rerun is answered from the LM cache.
#[test]
fn synthesize_then_prompt_detect() {
    use axbench_data::dataset::{AxBenchData, read_examples, read_metadata};
    use axbench_stages::{concepts::Concepts, evaluate::Evaluate, prompt_detect::PromptDetect, synthesize::Synthesize};
    if !root().join(GEMMA).exists() {
        eprintln!("skipping: {GEMMA} not installed (scripts/setup.sh)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::with_rules(synth_rules())).unwrap();
    // SAFETY: set before the stages read it; no other test of this binary reads OPENAI_API_KEY from its own
    // environment (those that need a key set it on the commands they spawn).
    unsafe { std::env::set_var("OPENAI_API_KEY", "test-key") };
    let tmp = tempfile::tempdir().unwrap();
    let concepts_csv = tmp.path().join("concepts.csv");
    std::fs::write(&concepts_csv, "terms related to employment and employees,https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7490\nphrases about the sea,null\n").unwrap();
    let lm = |extra: &[(&str, PValue)]| -> Vec<(String, PValue)> {
        let mut v = vec![
            ("backend".to_string(), PValue::Str("openai".into())),
            ("model".to_string(), PValue::Str("gpt-4o-mini".into())),
            ("base_url".to_string(), PValue::Str(server.base_url())),
            (
                "cache_dir".to_string(),
                PValue::Str(tmp.path().join("lm_cache").display().to_string()),
            ),
        ];
        v.extend(extra.iter().map(|(k, x)| (k.to_string(), x.clone())));
        v
    };
    let synth_params = {
        let set: Vec<(String, PValue)> = lm(&[
            ("concepts", PValue::Str(concepts_csv.display().to_string())),
            ("target", PValue::Str(GEMMA.into())),
            ("num_of_examples", PValue::Int(4)),
            ("output_length", PValue::Int(8)),
        ]);
        let set: Vec<(&str, PValue)> = set.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        params_for(&Synthesize, &set)
    };
    let t0 = std::time::Instant::now();
    let out = run_stage(&Synthesize, tmp.path(), "synthesize", synth_params.clone(), vec![]).unwrap();
    eprintln!(
        "synthesize: {:.1}s, {} LM requests",
        t0.elapsed().as_secs_f64(),
        server.requests()
    );

    // Columns as AxBench writes them.
    let cols = |name: &str| {
        let b = axbench_data::tables::read_parquet(&out.join(name)).unwrap();
        b.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>()
    };
    let base = [
        "input",
        "output",
        "output_concept",
        "concept_genre",
        "category",
        "dataset_category",
        "concept_id",
    ];
    assert_eq!(cols(AxBenchData::TRAIN), strs(&base));
    assert_eq!(
        cols(AxBenchData::EVAL),
        strs(&[&base[..], &["sae_link", "sae_id"]].concat())
    );

    // Training data: 2 shared negatives per genre (text, math, code) from the target model, then 2 positives each.
    let train = read_examples(&out.join(AxBenchData::TRAIN)).unwrap();
    assert_eq!(train.len(), 6 + 2 + 2);
    let genres: Vec<&str> = train[..6].iter().map(|e| e.concept_genre.as_str()).collect();
    assert_eq!(genres, ["text", "text", "math", "math", "code", "code"]);
    assert!(train[..6].iter().all(|e| e.concept_id == -1
        && e.output_concept == "EEEEE"
        && e.category == Category::Negative
        && !e.output.is_empty()
        && !e.output.starts_with("NEG")));
    let gemma = axbench_models::tokenizer::Tokenizer::from_gguf_path(root().join(GEMMA)).unwrap();
    for e in &train[6..] {
        assert_eq!(e.category, Category::Positive);
        assert!(e.output.starts_with("POS workers"), "{}", e.output);
        assert_eq!(
            gemma.encode(&e.output, false).unwrap().len(),
            8,
            "cut to output_length tokens: {:?}",
            e.output
        );
    }

    // Latent eval per concept: 36 positives, 36 negatives (26 text, 5 math, 5 code), one hard negative.
    let eval = read_examples(&out.join(AxBenchData::EVAL)).unwrap();
    for c in [0, 1] {
        let rows: Vec<&Example> = eval.iter().filter(|e| e.concept_id == c).collect();
        let count = |cat: Category, genre: Option<&str>| {
            rows.iter()
                .filter(|e| e.category == cat && genre.is_none_or(|g| e.concept_genre == g))
                .count()
        };
        assert_eq!(count(Category::Positive, Some("text")), 36);
        assert_eq!(
            (
                count(Category::Negative, Some("text")),
                count(Category::Negative, Some("math")),
                count(Category::Negative, Some("code"))
            ),
            (26, 5, 5)
        );
        let hard: Vec<&&Example> = rows.iter().filter(|e| e.category == Category::HardNegative).collect();
        assert_eq!(hard.len(), 1);
        assert_eq!(hard[0].output_concept, "union//the act of joining two things together");
        assert!(
            hard[0].output.starts_with("The union"),
            "leading tags stripped: {}",
            hard[0].output
        );
    }
    let employment = eval.iter().find(|e| e.concept_id == 0).unwrap();
    assert_eq!(
        (employment.sae_link.as_deref(), employment.sae_id),
        (
            Some("https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/7490"),
            Some(7490)
        )
    );
    let sea = eval.iter().find(|e| e.concept_id == 1).unwrap();
    assert_eq!((sea.sae_link.as_deref(), sea.sae_id), (None, None));
    let meta = read_metadata(&out.join(AxBenchData::METADATA)).unwrap();
    assert_eq!(
        meta.iter().map(|c| (c.id, c.genres.clone())).collect::<Vec<_>>(),
        [(0, vec!["text".to_string()]), (1, vec!["text".to_string()])]
    );
    let synth: Value = serde_json::from_slice(&std::fs::read(out.join("synth.json")).unwrap()).unwrap();
    assert_eq!(synth["report"]["failed_calls"], 0);

    // A rerun asks the LM nothing new and writes the same rows.
    let requests = server.requests();
    let again = run_stage(&Synthesize, tmp.path(), "synthesize-again", synth_params, vec![]).unwrap();
    assert_eq!(server.requests(), requests);
    assert_eq!(read_examples(&again.join(AxBenchData::EVAL)).unwrap(), eval);
    assert_eq!(read_examples(&again.join(AxBenchData::TRAIN)).unwrap(), train);

    // The concept list and prompt detection read the synthesized data through their `dataset` input.
    let data = artifact("synthesize", &out);
    let list = run_stage(
        &Concepts,
        tmp.path(),
        "concepts",
        params_for(&Concepts, &[]),
        vec![("dataset", vec![data.clone()])],
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(list.join("list.json")).unwrap(), "[0,1]");
    let set = lm(&[
        ("concept", PValue::Int(0)),
        ("target", PValue::Str(GEMMA.into())),
        ("layer", PValue::Int(9)),
    ]);
    let set: Vec<(&str, PValue)> = set.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let pd = run_stage(
        &PromptDetect,
        tmp.path(),
        "prompt_detect",
        params_for(&PromptDetect, &set),
        vec![("dataset", vec![data])],
    )
    .unwrap();
    let scores = read_scores(&pd.join("scores.parquet")).unwrap();
    assert_eq!(scores.len(), 73);
    for s in &scores {
        let want = if s.category == Category::Positive { 2.0 } else { 0.0 };
        assert_eq!(s.max_act, want, "{:?}", s.category);
    }
    let meta: Value = serde_json::from_slice(&std::fs::read(pd.join("prompt_detect.json")).unwrap()).unwrap();
    assert_eq!(
        (meta["ratings"]["parsed"].as_u64(), meta["ratings"]["missing"].as_u64()),
        (Some(72), Some(1))
    );

    // Evaluate takes prompt detection under its own input name, beside infer-style scores.
    let ev = run_stage(
        &Evaluate,
        tmp.path(),
        "evaluate",
        BTreeMap::new(),
        vec![("prompt_scores", vec![artifact("prompt_detect", &pd)])],
    )
    .unwrap();
    let results: Value = serde_json::from_slice(&std::fs::read(ev.join("results.json")).unwrap()).unwrap();
    let row = &results["detection"][0];
    assert_eq!(
        (row["method"].as_str(), row["model"].as_str(), row["layer"].as_i64()),
        (Some("PromptDetection"), Some("gemma-3-270m-q4_k_m"), Some(9))
    );
    assert_eq!((row["auroc"].as_f64(), row["f1"].as_f64()), (Some(1.0), Some(1.0)));
}
