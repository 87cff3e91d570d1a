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

use axbench_stages::data::{Category, Example, examples_to_batch};
use axbench_stages::stages::infer::read_scores;
use axbench_stages::tables::write_parquet_atomic;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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
        ("Describe your morning.", "My cat jumped on the bed and purred until I fed her."),
        ("Write a short poem.", "Soft paws, a tabby cat, whiskers in the sun."),
        ("What is a good pet?", "A cat is independent, playful and loves to nap."),
        ("Tell me a story.", "The kitten chased a ball of yarn across the kitchen."),
        ("Give a tip for apartments.", "Cats adapt well to small flats if they have a scratching post."),
        ("What sound do animals make?", "A cat meows when it wants attention and purrs when content."),
    ];
    let neg_text = [
        ("Describe your morning.", "I made coffee and read the news before work."),
        ("Write a short poem.", "Rivers run to the sea, mountains stand in the mist."),
        ("What is a good hobby?", "Gardening is relaxing and gives you fresh vegetables."),
        ("Tell me a story.", "The sailor crossed the ocean in a small wooden boat."),
        ("Give a tip for apartments.", "Use shelves to save floor space in a small flat."),
        ("What is the weather like?", "It is sunny with a light breeze this afternoon."),
    ];
    let neg_code = [("Write a loop in Python.", "for i in range(3):\n    print(i)"), ("Add two numbers.", "def add(a, b):\n    return a + b")];
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
        ex("Describe a pet.", "Our cat sleeps on the windowsill all afternoon.", cat, "text", Category::Positive, 0),
        ex("Write a sentence.", "The black cat stretched and yawned.", cat, "text", Category::Positive, 0),
        ex("What do you like?", "I love how cats knead blankets with their paws.", cat, "text", Category::Positive, 0),
        ex("Tell me a fact.", "A cat can sleep up to sixteen hours a day.", cat, "text", Category::Positive, 0),
        ex("Describe a pet.", "Goldfish need clean water and a quiet tank.", cat, "text", Category::Negative, 0),
        ex("Write a sentence.", "The train arrived at the station on time.", cat, "text", Category::Negative, 0),
        ex("What do you like?", "I enjoy long walks along the river.", cat, "text", Category::Negative, 0),
        ex("Tell me a fact.", "Water boils at one hundred degrees Celsius.", cat, "text", Category::Negative, 0),
        ex("Explain a tool.", "A cat-o-nine-tails was a whip used on ships.", "cat//whip", "text", Category::HardNegative, 0),
        ex("Describe a place.", "The ocean glittered under the morning sun.", "the ocean and the sea", "text", Category::Positive, 1),
        ex("Write a sentence.", "Waves crashed against the harbour wall.", "the ocean and the sea", "text", Category::Positive, 1),
        ex("Describe a place.", "The library was quiet and full of old books.", "the ocean and the sea", "text", Category::Negative, 1),
        ex("Write a sentence.", "She planted tomatoes in the spring.", "the ocean and the sea", "text", Category::Negative, 1),
    ];
    let sea = "the ocean and the sea";
    for (i, o) in [
        ("Describe a holiday.", "We swam in the sea and watched the waves roll onto the beach."),
        ("Write a short poem.", "Salt wind, blue ocean, tides that never sleep."),
        ("Tell me a story.", "The ship sailed across the stormy ocean for weeks."),
    ] {
        train.push(ex(i, o, sea, "text", Category::Positive, 1));
    }
    write_parquet_atomic(&dir.join("train_data.parquet"), &examples_to_batch(&train, false).unwrap()).unwrap();
    let mut eval = eval;
    for e in &mut eval {
        e.sae_link = Some("https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/123".into());
        e.sae_id = Some(123);
    }
    write_parquet_atomic(&dir.join("latent_eval_data.parquet"), &examples_to_batch(&eval, true).unwrap()).unwrap();
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
        c.arg("-C").arg(root()).arg("--cache-dir").arg(&self.cache).args(args).arg("pipelines/detection.toml");
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
        assert!(out.status.success(), "run failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let j: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let ids = |k: &str| j[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        (ids("computed"), ids("cached"))
    }
}

/// AUROC as the probability that a positive outscores a negative (ties count half): independent of sklearn's curve.
fn mann_whitney_auroc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut wins = 0.0;
    for p in pos {
        for n in neg {
            wins += if p > n { 1.0 } else if p == n { 0.5 } else { 0.0 };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Replaces every number by a placeholder, keeping the shape.
fn redact(v: &Value) -> Value {
    match v {
        Value::Number(_) => Value::String("[number]".into()),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), if k == "method" || k == "model" { v.clone() } else { redact(v) })).collect()),
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
    let env = Env { cache: tmp.path().join("cache"), data: tmp.path().join("data") };
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
    assert!(cached.contains("negatives") && cached.is_superset(&concept_nodes(0)), "{cached:?}");
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
    assert!(rows.iter().all(|r| r["layer"] == 5 && r["model"] == "gemma-3-270m-q4_k_m"));

    // The table prints too, and results for a layer never run say so.
    let out = env.cmd(&["results"], &["model.layer=5", "concepts.limit=2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("| DiffMean |"));
    let out = env.cmd(&["results", "--json"], &["model.layer=7", "concepts.limit=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not computed"), "{}", String::from_utf8_lossy(&out.stderr));

    // AUROC equals a direct computation from the infer nodes' scores (the evaluate node's inputs).
    let store = axbench_cache::Store::open(&env.cache).unwrap();
    let key = store.latest(store.reader().as_ref(), "evaluate").expect("evaluate is cached");
    let manifest = store.read_manifest(&key).unwrap().unwrap();
    assert_eq!(manifest.inputs.len(), 2 * methods.len());
    for input in &manifest.inputs {
        let scores = read_scores(&store.blob_path(&input.outputs["scores.parquet"])).unwrap();
        let concept = scores[0].concept_id;
        assert_eq!(scores.len(), if concept == 0 { 9 } else { 4 });
        let of = |c: Category| scores.iter().filter(|s| s.category == c).map(|s| s.max_act).collect::<Vec<_>>();
        let direct = mann_whitney_auroc(&of(Category::Positive), &of(Category::Negative));
        let infer = serde_json::from_slice::<Value>(&std::fs::read(store.blob_path(&input.outputs["infer.json"])).unwrap()).unwrap();
        let method = infer["method_class"].as_str().unwrap();
        let row = rows.iter().find(|r| r["method"] == method && r["concept_id"] == concept).unwrap_or_else(|| panic!("no result row for {method}"));
        let reported = row["auroc"].as_f64().unwrap();
        assert!((reported - direct).abs() < 1e-12, "{method}: reported {reported}, direct {direct}");
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Stage-level checks (no model needed): SAE wiring, plan-time method validation.

use axbench_engine::{Coord, InputArtifact, Stage, StageContext, Value as PValue};
use std::collections::BTreeMap;

/// Every declared param of `stage` at its default, with `set` over them.
fn params_for(stage: &dyn Stage, set: &[(&str, PValue)]) -> BTreeMap<String, PValue> {
    let mut p: BTreeMap<String, PValue> = stage.params().into_iter().filter_map(|s| s.default.map(|d| (s.name.to_string(), d))).collect();
    for (k, v) in set {
        p.insert(k.to_string(), v.clone());
    }
    p
}

/// The files of directory `dir` as an upstream node's outputs.
fn artifact(node: &str, dir: &Path) -> InputArtifact {
    let files = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p)).collect();
    InputArtifact { node: node.into(), coord: Coord::new(), files }
}

/// Runs `stage` with `params` and `inputs` into a fresh directory under `tmp`; returns it.
fn run_stage(stage: &dyn Stage, tmp: &Path, name: &str, params: BTreeMap<String, PValue>, inputs: Vec<(&str, Vec<InputArtifact>)>) -> Result<PathBuf, String> {
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
    use axbench_stages::stages::{fit::Fit, infer::Infer};
    let g = root().join("tests/golden/detection/sae");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(g.join("expected.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let acts = artifact("activations", &g.join("concept"));
    let negs = artifact("negatives", &g.join("negatives"));
    for (method, key) in [("sae", "sae"), ("sae_a", "sae_a"), ("SAE-A", "sae_a")] {
        let params = params_for(&Fit, &[("method", PValue::Str(method.into())), ("sae", PValue::Str(g.join("sae.npz").display().to_string()))]);
        let fit = run_stage(&Fit, tmp.path(), &format!("fit-{method}"), params, vec![("acts", vec![acts.clone()]), ("negatives", vec![negs.clone()])]).unwrap();
        let detector: Value = serde_json::from_slice(&std::fs::read(fit.join("detector.json")).unwrap()).unwrap();
        assert_eq!(detector["kind"], "sae_feature");
        assert_eq!(detector["feature"], want[key]["feature"], "{method}");
        let infer = run_stage(&Infer, tmp.path(), &format!("infer-{method}"), BTreeMap::new(), vec![("fit", vec![artifact("fit", &fit)]), ("acts", vec![acts.clone()])]).unwrap();
        let scores = read_scores(&infer.join("scores.parquet")).unwrap();
        let expected: Vec<f64> = want[key]["eval_max_act"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(scores.len(), expected.len());
        for (s, (e, cat)) in scores.iter().zip(expected.iter().zip(want["categories"].as_array().unwrap())) {
            assert_eq!(s.category.as_str(), cat.as_str().unwrap());
            // Both sides round float32 sums to 3 decimals; summation order may move a value across a rounding edge.
            assert!((s.max_act - e).abs() <= 1.0001e-3, "{method}: {} vs numpy {e}", s.max_act);
        }
        let exact = scores.iter().zip(&expected).filter(|(s, e)| s.max_act == **e).count();
        assert!(exact + 1 >= expected.len(), "{method}: only {exact} of {} scores equal numpy's", expected.len());
    }
    // The plain SAE steers along the concept feature's decoder row.
    let params = params_for(&Fit, &[("method", PValue::Str("sae".into())), ("sae", PValue::Str(g.join("sae.npz").display().to_string()))]);
    let fit = run_stage(&Fit, tmp.path(), "fit-dir", params, vec![("acts", vec![acts.clone()]), ("negatives", vec![negs.clone()])]).unwrap();
    let dir = tch::Tensor::read_safetensors(fit.join("direction.safetensors")).unwrap();
    let w: Vec<f32> = Vec::try_from(&dir.iter().find(|(n, _)| n == "w").unwrap().1).unwrap();
    let w_dec: Vec<f32> = want["sae"]["w_dec"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(w, w_dec);
    // Without the SAE file the error names the param.
    let params = params_for(&Fit, &[("method", PValue::Str("sae".into()))]);
    let err = run_stage(&Fit, tmp.path(), "fit-nosae", params, vec![("acts", vec![acts.clone()]), ("negatives", vec![negs])]).unwrap_err();
    assert!(err.contains("sae") && err.contains("needs a JumpReLU SAE"), "{err}");
}

/// An unknown name in `methods` fails `axbench plan` (exit 2) naming the method and the valid ones, before any
/// node runs; the SAE methods plan without an SAE file set (an empty path param reads nothing).
#[test]
fn unknown_method_fails_at_plan_time() {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env { cache: tmp.path().join("cache"), data: tmp.path().join("data") };
    std::fs::create_dir_all(&env.data).unwrap();
    write_dataset(&env.data);
    let out = env.cmd(&["plan"], &[r#"methods=["diffmean","difmean"]"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"difmean\"") && err.contains("methods") && err.contains("diffmean, pca"), "{err}");
    let out = env.cmd(&["plan"], &[r#"methods=["diffmean","sae_a"]"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
