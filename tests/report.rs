//! `axbench report` and the steering half of `axbench results --json`, through the binary.
//!
//! Without a model: the errors a user sees before anything ran. With the gemma-3-270m GGUF installed: a tiny run of
//! `pipelines/axbench.toml` (one concept, DiffMean at two factors against the prompting baseline, two instructions,
//! four new tokens) with the LM served by the scripted test server, then the report is exported and opened as a
//! user would, and `results --json` is checked against its documented contract.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use axbench_testkit::lm_server::{Rules, TestServer};

use crate::common::{OneConcept, Project, root, scripted_lm, text};

#[test]
fn report_on_a_pipeline_without_aggregate_is_bad_input() {
    let p = Project::new();
    let out = p.run(&["report", "tests/fixtures/engine/toy.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("has no `axbench.aggregate` stage"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["results", "tests/fixtures/engine/toy.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has no `axbench.evaluate` or `axbench.aggregate` stage"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn report_before_the_run_says_how_to_run_it() {
    let p = Project::new();
    // Planned from the repository, cached in the empty temp dir. The dataset dir only has to
    // exist to be planned (its content is hashed), so an empty one keeps the test independent
    // of ../shared/axbench-data.
    let cache = p.cache();
    let data = p.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let set_data = format!("dataset.dir={}", data.display());
    let out = Command::new(env!("CARGO_BIN_EXE_axbench"))
        .current_dir(root())
        .args([
            "--cache-dir",
            cache.to_str().unwrap(),
            "report",
            "pipelines/axbench.toml",
            "--set",
            "concepts.limit=1",
            "--set",
            &set_data,
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("is not computed")
            && err.contains(&format!(
                "axbench run pipelines/axbench.toml --set concepts.limit=1 --set {set_data}"
            )),
        "{err}"
    );
}

/// One concept (the ocean) in AxBench's released layout: 2 positives and 2 shared negatives to fit on, 2 + 2 eval rows.
fn write_dataset(dir: &Path) {
    OneConcept {
        concept: "the ocean and the sea",
        sae_id: 7,
        train_negatives: &[
            ("Plan a weekend.", "Clean the garage, then bake bread on Sunday."),
            ("Name a color.", "Green, like fresh grass in a park."),
        ],
        train_positives: &[
            ("Plan a weekend.", "Sail along the coast and swim in the salty waves."),
            ("Name a color.", "Deep blue, like the open sea at noon."),
        ],
        eval_positives: &[
            ("Describe a trip.", "We watched whales breach beyond the reef."),
            ("Give advice.", "Respect the tide when you walk on the beach."),
        ],
        eval_negatives: &[
            ("Describe a trip.", "We hiked through the desert canyon at dawn."),
            ("Give advice.", "Save a little money every month."),
        ],
    }
    .write(dir);
}

/// The scripted LM: a steering prompt, and one fixed rating per judge aspect, so every reported number is known:
/// score = harmonic mean of 1, 2, 2 = 1.5, and every comparison a tie.
fn rules() -> Rules {
    scripted_lm(
        "Talk about the sea in every answer.",
        ["Rating: [[1]]", "Rating: [[2]]", "Rating: [[2]]"],
    )
}

fn axbench(project: &Path, base_url: &str, args: &[&str]) -> Output {
    let data = project.join("data");
    let sets = [
        format!("dataset.dir={}", data.display()),
        r#"methods=["diffmean"]"#.into(),
        r#"steer.methods=["diffmean"]"#.into(),
        "steer.factors=[0.5, 1.0]".into(),
        "steer.per_concept=2".into(),
        "steer.max_new_tokens=4".into(),
        "lm.backend=openai".into(),
        "lm.model=scripted-report-test".into(),
        format!("lm.base_url={base_url}"),
        "model.label=tiny gemma".into(),
    ];
    let mut c = Command::new(env!("CARGO_BIN_EXE_axbench"));
    c.arg("-C").arg(project).args(args).arg("pipelines/axbench.toml");
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.env("OMP_WAIT_POLICY", "PASSIVE")
        .env("OPENAI_API_KEY", "test-key")
        .env("RUST_LOG", "error")
        .env_remove("AXBENCH_CACHE_DIR")
        .output()
        .unwrap()
}

#[test]
fn report_and_results_after_a_tiny_run() {
    if !root().join(".deps/models/gemma-3-270m-q4_k_m.gguf").exists() {
        eprintln!("skipping: gemma-3-270m is not installed (scripts/setup.sh)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::with_rules(rules())).unwrap();
    let project = tempfile::tempdir().unwrap();
    for link in ["configs", "pipelines", ".deps"] {
        std::os::unix::fs::symlink(root().join(link), project.path().join(link)).unwrap();
    }
    write_dataset(&project.path().join("data"));
    let url = server.base_url();

    let out = axbench(project.path(), &url, &["run"]);
    assert!(
        out.status.success(),
        "run: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // After the run, the steering tables are printed next to the AUROC table.
    assert!(text(&out.stdout).contains("Table 2: steering"), "{}", text(&out.stdout));

    // `report`: two paths, exported under the cache, named, with the plots next to report.md.
    let out = axbench(project.path(), &url, &["report"]);
    assert!(out.status.success(), "report: {}", text(&out.stderr));
    let lines: Vec<PathBuf> = text(&out.stdout).lines().map(PathBuf::from).collect();
    let dir = project.path().join(".axbench/reports/axbench");
    assert_eq!(lines, vec![dir.join("report.html"), dir.join("report.md")]);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| tiny gemma |")
            && md.contains("Table 1: concept detection")
            && md.contains("Table 3: win rate against PromptSteering"),
        "{md}"
    );
    for link in md
        .lines()
        .filter_map(|l| l.strip_prefix("!["))
        .map(|l| &l[l.find("](").unwrap() + 2..l.len() - 1])
    {
        assert!(
            dir.join(link).is_file(),
            "report.md links {link}, which is not next to it"
        );
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 3,
        "score, ratings and perplexity plots inline"
    );
    // `--open` without a desktop says where the file is instead of failing.
    let out = axbench(project.path(), &url, &["report", "--open"]);
    assert!(out.status.success(), "report --open: {}", text(&out.stderr));

    // `results --json`: the documented keys, one row per concept x method.
    let out = axbench(project.path(), &url, &["results", "--json"]);
    assert!(out.status.success(), "results: {}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = j["steering"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let keys: BTreeSet<&str> = [
        "model",
        "layer",
        "method",
        "concept_id",
        "factor",
        "score",
        "concept",
        "instruction",
        "fluency",
    ]
    .into();
    for r in rows {
        assert_eq!(
            r.as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            keys,
            "{r}"
        );
        assert_eq!(
            (r["model"].as_str(), r["layer"].as_i64(), r["concept_id"].as_i64()),
            (Some("gemma-3-270m-q4_k_m"), Some(9), Some(0)),
            "{r}"
        );
        // Ratings 1, 2, 2 everywhere: score 1.5, and each rating mean exactly the scripted value.
        assert_eq!(
            (
                r["score"].as_f64(),
                r["concept"].as_f64(),
                r["instruction"].as_f64(),
                r["fluency"].as_f64()
            ),
            (Some(1.5), Some(1.0), Some(2.0), Some(2.0)),
            "{r}"
        );
    }
    // All scores tie: the selection half keeps the smallest factor (np.argmax).
    let dm = rows.iter().find(|r| r["method"] == "DiffMean").unwrap();
    assert_eq!(dm["factor"].as_f64(), Some(0.5));
    assert!(!j["detection"].as_array().unwrap().is_empty());
}
