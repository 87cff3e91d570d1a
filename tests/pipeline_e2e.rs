//! The whole AxBench graph (`pipelines/axbench.toml`) end to end through the `axbench` binary, and the paper's
//! settings (`configs/paper/*.toml`) expanded to their node counts.
//!
//! The end-to-end run uses the real gemma-3-270m GGUF on a one-concept dataset written here in AxBench's released
//! layout, with the LM (judge and steering-prompt writer) served by the scripted OpenAI-compatible test server
//! (`lm.backend = "openai"`, `lm.base_url` = the server). The judge's ratings are fixed per aspect (concept 1,
//! instruction 2, fluency 2), so every score is their harmonic mean, 1.5, and the aggregate must report exactly that.
//! What a user relies on: every stage runs, the aggregate writes its tables and report, each generation costs three
//! judge calls plus one call for the steering prompt, and a rerun computes nothing and calls no LM. Skips (with a
//! message) when the model is not installed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use axbench_engine::{PipelineSpec, Registry, StageGraph, Value};
use axbench_stages::generation::read_generations;
use axbench_stages::judge::read_judged;
use axbench_testkit::lm_server::{Rules, TestServer};
use serde_json::Value as Json;

use crate::common::{OneConcept, root, scripted_lm};

fn registry() -> Registry {
    axbench_stages::register(Registry::new())
}

/// One concept (cats): 3 positives and 3 shared text negatives to fit on, 2 + 2 eval rows.
fn write_dataset(dir: &Path) {
    OneConcept {
        concept: "references to cats",
        sae_id: 123,
        train_negatives: &[
            ("Describe your morning.", "I made coffee and read the news before work."),
            (
                "Write a short poem.",
                "Rivers run to the sea, mountains stand in the mist.",
            ),
            (
                "Tell me a story.",
                "The sailor crossed the ocean in a small wooden boat.",
            ),
        ],
        train_positives: &[
            (
                "Describe your morning.",
                "My cat jumped on the bed and purred until I fed her.",
            ),
            ("Write a short poem.", "Soft paws, a tabby cat, whiskers in the sun."),
            (
                "Tell me a story.",
                "The kitten chased a ball of yarn across the kitchen.",
            ),
        ],
        eval_positives: &[
            ("Describe a pet.", "Our cat sleeps on the windowsill all afternoon."),
            ("Tell me a fact.", "A cat can sleep up to sixteen hours a day."),
        ],
        eval_negatives: &[
            ("Describe a pet.", "Goldfish need clean water and a quiet tank."),
            ("Tell me a fact.", "Water boils at one hundred degrees Celsius."),
        ],
    }
    .write(dir);
}

/// The scripted LM: the steering-prompt writer, and one fixed rating per judge aspect.
fn rules() -> Rules {
    scripted_lm(
        "Mention cats in every answer, whatever the question.",
        [
            "Some cat content. Rating: [[1]]",
            "On topic. Rating: [[2]]",
            "Fluent. Rating: [[2]]",
        ],
    )
}

/// A throwaway project that sees the repository's configs, pipelines and models through symlinks, so relative
/// paths resolve as in the repository while the engine cache and the LM cache stay inside the temp dir.
struct E2e {
    project: tempfile::TempDir,
    base_url: String,
}

impl E2e {
    fn sets(&self) -> Vec<String> {
        let data = self.project.path().join("data");
        [
            format!("dataset.dir={}", data.display()),
            "concepts.limit=1".into(),
            r#"methods=["diffmean", "probe"]"#.into(),
            r#"steer.methods=["diffmean"]"#.into(),
            r#"steer.baselines=["prompt"]"#.into(),
            "steer.factors=[0.0, 1.0]".into(),
            "steer.per_concept=2".into(),
            "steer.max_new_tokens=4".into(),
            "steer.batch_size=2".into(),
            "lm.backend=openai".into(),
            // Not a real model name: scripted answers must never be cached as a real model's.
            "lm.model=scripted-e2e".into(),
            format!("lm.base_url={}", self.base_url),
        ]
        .into()
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_axbench"));
        c.arg("-C")
            .arg(self.project.path())
            .args(args)
            .arg("pipelines/axbench.toml");
        for s in self.sets() {
            c.arg("--set").arg(s);
        }
        c.env("OMP_WAIT_POLICY", "PASSIVE")
            .env("OPENAI_API_KEY", "test-key")
            .env_remove("AXBENCH_CACHE_DIR")
            .output()
            .unwrap()
    }

    /// `run --json`: computed and cached node ids.
    fn run(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let out = self.cmd(&["run", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: Json = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let ids = |k: &str| {
            j[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        (ids("computed"), ids("cached"))
    }

    /// Files of a node's outputs in the cache, by name (`axbench show` prints the manifest; blobs live at
    /// `blobs/<first two hex digits>/<digest>` in the store).
    fn outputs(&self, node: &str) -> BTreeMap<String, PathBuf> {
        let out = Command::new(env!("CARGO_BIN_EXE_axbench"))
            .arg("-C")
            .arg(self.project.path())
            .args(["show", node])
            .env_remove("AXBENCH_CACHE_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "show {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let json: String = text
            .lines()
            .take_while(|l| !l.starts_with("log:"))
            .collect::<Vec<_>>()
            .join("\n");
        let manifest: Json = serde_json::from_str(&json).unwrap_or_else(|e| panic!("show {node}: {e}: {text}"));
        let blobs = self.project.path().join(".axbench/blobs");
        manifest["outputs"]
            .as_object()
            .unwrap_or_else(|| panic!("show {node}: no outputs in {manifest}"))
            .iter()
            .map(|(name, o)| {
                let hex = o.get("digest").unwrap_or(o).as_str().unwrap().to_string();
                (name.clone(), blobs.join(&hex[..2]).join(&hex))
            })
            .collect()
    }
}

#[test]
fn whole_graph_runs_through_the_test_server_and_a_rerun_does_nothing() {
    let model = root().join(".deps/models/gemma-3-270m-q4_k_m.gguf");
    if !model.exists() {
        eprintln!("skipping: {} is not installed (scripts/setup.sh)", model.display());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::with_rules(rules())).unwrap();
    let project = tempfile::tempdir().unwrap();
    for link in ["configs", "pipelines", ".deps"] {
        std::os::unix::fs::symlink(root().join(link), project.path().join(link)).unwrap();
    }
    write_dataset(&project.path().join("data"));
    let e = E2e {
        project,
        base_url: server.base_url(),
    };

    let (computed, cached) = e.run();
    assert!(cached.is_empty(), "cold cache: {cached:?}");
    let stages: BTreeSet<&str> = computed.iter().map(|id| id.split('[').next().unwrap()).collect();
    let want: BTreeSet<&str> = [
        "concepts",
        "negatives",
        "activations",
        "fit",
        "infer",
        "evaluate",
        "steer",
        "steering_prompt",
        "prompt_steer",
        "judge",
        "aggregate",
    ]
    .into();
    assert_eq!(stages, want, "every stage of the graph ran: {computed:?}");
    // 2 instructions x 2 factors for DiffMean + 2 for the prompting baseline = 6 generations: 18 judge calls,
    // plus the steering prompt.
    assert_eq!(server.requests(), 6 * 3 + 1);

    // The judge's table: every generation, the fixed ratings' harmonic mean, perplexity carried over.
    let judged = e.outputs("judge[concept=0]");
    let rows = read_judged(&judged["judged.parquet"]).unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(
            (r.concept_rating, r.instruction_rating, r.fluency_rating, r.unparsable),
            (1.0, 2.0, 2.0, 0)
        );
        assert!((r.score - 1.5).abs() < 1e-12, "harmonic mean of 1, 2, 2: {}", r.score);
    }
    let methods: BTreeSet<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["DiffMean", "PromptSteering"].into());
    let gens = read_generations(&e.outputs("prompt_steer[concept=0,method=prompt]")["generations.parquet"]).unwrap();
    assert_eq!(gens.len(), 2);
    assert!(
        gens.iter()
            .all(|g| g.factor == 1.0 && g.perplexity.is_finite() && g.perplexity > 1.0),
        "{gens:?}"
    );
    let sp: Json = serde_json::from_slice(
        &std::fs::read(&e.outputs("steering_prompt[concept=0,method=prompt]")["steering_prompt.json"]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        sp["steering_prompt"],
        "Mention cats in every answer, whatever the question."
    );
    assert_eq!(sp["fallback"], false);

    // The aggregate: tables and report exist; every reported score is the scripted 1.5.
    let agg = e.outputs("aggregate");
    for f in [
        "steering.parquet",
        "steering_by_factor.parquet",
        "report.md",
        "report.html",
        "summary.json",
    ] {
        assert!(agg.contains_key(f), "aggregate output {f} missing: {:?}", agg.keys());
    }
    let out = e.cmd(&["results", "--json"]);
    assert!(
        out.status.success(),
        "results: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Json = serde_json::from_slice(&out.stdout).unwrap();
    let steering = results["steering"].as_array().unwrap();
    let reported: BTreeSet<&str> = steering.iter().map(|s| s["method"].as_str().unwrap()).collect();
    assert_eq!(reported, ["DiffMean", "PromptSteering"].into(), "{steering:?}");
    for s in steering {
        let score = s["score"].as_f64().unwrap();
        assert!((score - 1.5).abs() < 1e-9, "{s}");
    }
    assert!(results["detection"].as_array().is_some_and(|d| !d.is_empty()));

    // A rerun computes nothing and asks the LM nothing.
    let (computed, _) = e.run();
    assert!(computed.is_empty(), "rerun recomputed {computed:?}");
    assert_eq!(server.requests(), 6 * 3 + 1);
}

/// The concept ids AxBench's Concept500 release lists (the 2B L20 metadata is the one on disk; every setting has
/// 500 concepts).
fn concept500_ids() -> Option<Vec<Value>> {
    let p = root().join("../shared/axbench-data/concept500_2b_l20_metadata.jsonl");
    let concepts = axbench_data::dataset::read_metadata(&p).ok()?;
    Some(concepts.iter().map(|c| Value::Int(c.id)).collect())
}

/// Node counts per stage of `file` once the concept list is known: the expansion `axbench plan` shows after the
/// `concepts` node ran. No weights or data are read.
fn node_counts(file: &Path, concepts: &[Value]) -> BTreeMap<String, usize> {
    let spec = PipelineSpec::load(file).unwrap();
    let reg = registry();
    let graph = StageGraph::build(&spec, &reg).unwrap();
    let lists: HashMap<String, Vec<Value>> = [("concepts".to_string(), concepts.to_vec())].into();
    let nodes = axbench_engine::expand::expand(&spec, &reg, &graph, &lists).unwrap();
    assert!(nodes.pending.is_empty(), "{:?}", nodes.pending);
    let mut counts = BTreeMap::new();
    for n in &nodes.nodes {
        *counts.entry(n.stage.to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn paper_settings_expand_to_their_node_counts() {
    let Some(ids) = concept500_ids() else {
        eprintln!("skipping: ../shared/axbench-data/concept500_2b_l20_metadata.jsonl is not here");
        return;
    };
    assert_eq!(ids.len(), 500);
    let mut all = BTreeMap::new();
    for name in ["gemma2-2b-l10", "gemma2-2b-l20", "gemma2-9b-l20", "gemma2-9b-l31"] {
        let file = root().join(format!("configs/paper/{name}.toml"));
        // `axbench plan` works here without the weights or the data: the nodes that need them are listed missing.
        let cache = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_axbench"))
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["plan", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "plan {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Json = serde_json::from_slice(&out.stdout).unwrap();
        let concepts = plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "concepts")
            .unwrap();
        assert_eq!(concepts["state"], "missing");
        assert!(
            concepts["reason"].as_str().unwrap().contains("param `dataset`"),
            "{concepts}"
        );
        let counts = node_counts(&file, &ids);
        let total: usize = counts.values().sum();
        all.insert(name.to_string(), (counts, total));
    }
    insta::assert_debug_snapshot!(all);
}
