//! Helpers shared by the test modules: a throwaway project dir and a way to run the binary, fixture
//! paths, and small readers of plans, JSON and stage outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Engine fixtures with the toy stages: a static fan-out, a small graph, one slow node.
pub const STATIC: &str = "tests/fixtures/engine/static.toml";
pub const TOY: &str = "tests/fixtures/engine/toy.toml";
pub const SLOW: &str = "tests/fixtures/engine/slow.toml";

/// A temporary project dir (its cache is `<dir>/.axbench`). Commands run from the repo root
/// so fixture paths stay relative (and error messages stable).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join(".axbench")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_axbench"));
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("-C")
            .arg(self.path())
            .args(args)
            .env_remove("AXBENCH_CACHE_DIR")
            .env("RUST_LOG", "error");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run axbench")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn axbench")
    }

    /// `axbench run --json …`, asserting the exit code; returns the report.
    pub fn run_json(&self, args: &[&str], expect_code: i32) -> serde_json::Value {
        let mut a = vec!["run", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "axbench {a:?}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&out.stdout)))
    }

    /// `axbench plan --json …`
    pub fn plan_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["plan", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(out.status.success(), "axbench {a:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The manifest of a node (via `axbench show`).
    pub fn show(&self, node: &str) -> serde_json::Value {
        let out = self.run(&["show", node]);
        assert!(out.status.success(), "show {node}: {}", text(&out.stderr));
        let s = text(&out.stdout);
        let json_end = s.rfind('}').unwrap() + 1;
        serde_json::from_str(&s[..json_end]).unwrap()
    }

    /// Path of the blob holding output `file` of `node`.
    pub fn blob_of(&self, node: &str, file: &str) -> PathBuf {
        let m = self.show(node);
        let d = m["outputs"][file]["digest"].as_str().unwrap().to_string();
        self.cache().join("blobs").join(&d[..2]).join(d)
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The node ids in a JSON array field, sorted.
pub fn ids(v: &serde_json::Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// Every node id of a plan with its state.
pub fn states(plan: &serde_json::Value) -> BTreeMap<String, String> {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The repository root (fixtures, pipelines and configs are relative to it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of directory `dir` as an upstream node's outputs.
pub fn artifact(node: &str, dir: &Path) -> axbench_engine::InputArtifact {
    let files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    axbench_engine::InputArtifact {
        node: node.into(),
        coord: axbench_engine::Coord::new(),
        files,
    }
}

/// One concept's data in AxBench's released layout (`train_data.parquet`, `latent_eval_data.parquet`,
/// `metadata.jsonl`), small enough for a test: (instruction, response) pairs per split.
pub struct OneConcept<'a> {
    pub concept: &'a str,
    /// The GemmaScope feature the concept came from (`sae_link`/`sae_id` of the rows and `ref`).
    pub sae_id: i64,
    /// Shared negatives (concept id -1, genre text) to fit on.
    pub train_negatives: &'a [(&'a str, &'a str)],
    pub train_positives: &'a [(&'a str, &'a str)],
    pub eval_positives: &'a [(&'a str, &'a str)],
    pub eval_negatives: &'a [(&'a str, &'a str)],
}

impl OneConcept<'_> {
    /// Writes the three files into `dir` (created), as concept 0.
    pub fn write(&self, dir: &Path) {
        use axbench_data::dataset::{Category, Example, examples_to_batch};
        use axbench_data::tables::write_parquet_atomic;
        let link = format!(
            "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/{}",
            self.sae_id
        );
        let rows = |pairs: &[(&str, &str)], concept: &str, category: Category, concept_id: i64| -> Vec<Example> {
            pairs
                .iter()
                .map(|(input, output)| Example {
                    input: input.to_string(),
                    output: output.to_string(),
                    output_concept: concept.into(),
                    concept_genre: "text".into(),
                    category,
                    dataset_category: "instruction".into(),
                    concept_id,
                    sae_link: Some(link.clone()),
                    sae_id: Some(self.sae_id),
                })
                .collect()
        };
        std::fs::create_dir_all(dir).unwrap();
        let mut train = rows(self.train_negatives, "EEEEE", Category::Negative, -1);
        train.extend(rows(self.train_positives, self.concept, Category::Positive, 0));
        write_parquet_atomic(
            &dir.join("train_data.parquet"),
            &examples_to_batch(&train, false).unwrap(),
        )
        .unwrap();
        let mut eval = rows(self.eval_positives, self.concept, Category::Positive, 0);
        eval.extend(rows(self.eval_negatives, self.concept, Category::Negative, 0));
        write_parquet_atomic(
            &dir.join("latent_eval_data.parquet"),
            &examples_to_batch(&eval, true).unwrap(),
        )
        .unwrap();
        let meta = serde_json::json!({"concept_id": 0, "concept": self.concept, "ref": link, "concept_genres_map": {self.concept: ["text"]}});
        std::fs::write(dir.join("metadata.jsonl"), format!("{meta}\n")).unwrap();
    }
}

/// The scripted LM of the steering tests (wording of `configs/prompts/`): the steering-prompt writer
/// answers `steering_prompt`, and each judge aspect one fixed reply (concept, instruction, fluency).
pub fn scripted_lm(
    steering_prompt: &str,
    [concept, instruction, fluency]: [&str; 3],
) -> axbench_testkit::lm_server::Rules {
    use axbench_testkit::lm_server::{Reply, Rules};
    Rules::new()
        .when("Write a prompt that will steer", Reply::text(steering_prompt))
        .when("presence of the concept", Reply::text(concept))
        .when("topical relatedness", Reply::text(instruction))
        .when("how fluent", Reply::text(fluency))
}
