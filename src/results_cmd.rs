//! `axbench results PIPELINE [--set …] [--json]`: the results of a pipeline, read from the cached outputs of its
//! `axbench.evaluate` node(s) (detection) and `axbench.aggregate` node(s) (steering). The nodes are found by planning
//! the pipeline with the same `--set` flags, so `plan`, `run` and `results` always agree on which results they mean;
//! nothing is computed here.
//!
//! JSON (stable contract): `{"detection":[{"model","layer","method","concept_id","auroc","f1"}],
//! "steering":[{"model","layer","method","concept_id","factor","score","concept","instruction","fluency"}]}`, where a
//! steering row is one concept × method at the factor its selection half chose, with the held-out half's mean score
//! and mean concept / instruction / fluency ratings (null when that half is empty). Without `--json`, the AUROC
//! table per method, then the steering and win-rate tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use axbench_cache::Store;
use axbench_data::results::Results;
use axbench_engine::{NodeState, PipelineSpec, Registry};
use axbench_report::Summary;
use clap::Args;

use crate::context::{GlobalArgs, project_dir, registry};
use crate::error::bad;

/// Kind of the stage whose detection results `results` reads.
pub use crate::output::EVALUATE_KIND;
/// Kind of the stage whose steering results (and report) `results` and `report` read.
pub const AGGREGATE_KIND: &str = "axbench.aggregate";

/// `axbench results`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench results pipelines/detection.toml
  axbench results pipelines/detection.toml --set concepts.limit=10 --json

JSON output (stable contract):
  {\"detection\":[{\"model\":…,\"layer\":…,\"method\":…,\"concept_id\":…,\"auroc\":…,\"f1\":…}],
   \"steering\":[{\"model\":…,\"layer\":…,\"method\":…,\"concept_id\":…,\"factor\":…,\"score\":…,
                 \"concept\":…,\"instruction\":…,\"fluency\":…}]}")]
pub struct ResultsArgs {
    /// Pipeline TOML, or a sweep file
    pub pipeline: PathBuf,
    /// The same --set flags the run used (repeatable): --set model.layer=12
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Print JSON instead of the table
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalArgs, a: ResultsArgs) -> Result<()> {
    results(g, &a)
}

/// The hint appended to "not computed" errors: the run command with the same flags.
pub(crate) fn run_hint(pipeline: &Path, sets: &[String]) -> String {
    let sets: String = sets.iter().map(|s| format!(" --set {s}")).collect();
    format!("run `axbench run {}{sets}` first", pipeline.display())
}

/// A pipeline with its `--set` flags applied, and the project and cache it runs in.
pub(crate) struct Opened {
    pub spec: PipelineSpec,
    pub project: PathBuf,
    pub cache: PathBuf,
    pub store: Store,
}

/// Loads `pipeline` with `sets` (errors are bad input, exit 2) and opens the cache (exit 1).
pub(crate) fn open_pipeline(g: &GlobalArgs, pipeline: &Path, sets: &[String]) -> Result<Opened> {
    let mut spec = PipelineSpec::load(pipeline).map_err(bad)?;
    spec.apply_sets(sets).map_err(bad)?;
    let project = project_dir(g)?;
    let cache = g.cache_dir.clone().unwrap_or_else(|| project.join(".axbench"));
    let store = Store::open(&cache).with_context(|| format!("opening cache {}", cache.display()))?;
    Ok(Opened {
        spec,
        project,
        cache,
        store,
    })
}

fn results(g: &GlobalArgs, a: &ResultsArgs) -> Result<()> {
    let Opened {
        spec, project, store, ..
    } = open_pipeline(g, &a.pipeline, &a.sets)?;
    let registry = registry();
    let found = stage_outputs(&spec, &registry, &store, &project, &[EVALUATE_KIND, AGGREGATE_KIND])?;
    let [evaluates, aggregates] = <[KindOutputs; 2]>::try_from(found).expect("one list per kind asked for");
    if evaluates.is_empty() && aggregates.is_empty() {
        return Err(bad(format!(
            "{} has no `{EVALUATE_KIND}` or `{AGGREGATE_KIND}` stage",
            a.pipeline.display()
        )));
    }
    let not_computed = |id: &str| {
        bad(format!(
            "`{id}` is not computed for these params: {}",
            run_hint(&a.pipeline, &a.sets)
        ))
    };
    let read = |id: &str, files: &BTreeMap<String, PathBuf>, name: &str| -> Result<Vec<u8>> {
        let p = files
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("`{id}` has no output {name}"))?;
        std::fs::read(p).with_context(|| format!("{id}: {name} ({})", p.display()))
    };
    let mut detection = Vec::new();
    let mut tables = String::new();
    for (id, outputs) in &evaluates {
        let files = outputs.as_ref().ok_or_else(|| not_computed(id))?;
        let r: Results =
            serde_json::from_slice(&read(id, files, "results.json")?).with_context(|| format!("{id}: results.json"))?;
        detection.extend(r.detection.into_iter().map(|r| {
            serde_json::json!({"model": r.model, "layer": r.layer, "method": r.method, "concept_id": r.concept_id, "auroc": r.auroc, "f1": r.f1})
        }));
        tables.push_str(&String::from_utf8_lossy(&read(id, files, "results.md")?));
    }
    let mut steering = Vec::new();
    for (id, outputs) in &aggregates {
        let files = outputs.as_ref().ok_or_else(|| not_computed(id))?;
        let s: Summary =
            serde_json::from_slice(&read(id, files, "summary.json")?).with_context(|| format!("{id}: summary.json"))?;
        steering.extend(steering_json(&s));
        let t = axbench_report::markdown::steering_tables(&s);
        if !t.is_empty() {
            tables.push_str(&format!("\n{t}"));
        }
    }
    if a.json {
        println!("{}", serde_json::json!({"detection": detection, "steering": steering}));
    } else {
        print!("{tables}");
    }
    Ok(())
}

/// The `steering` rows of `--json` (the stable contract) from an aggregate node's summary.
pub fn steering_json(s: &Summary) -> Vec<serde_json::Value> {
    s.steering
        .iter()
        .map(|r| {
            serde_json::json!({
                "model": r.model, "layer": r.layer, "method": r.method, "concept_id": r.concept_id, "factor": r.factor,
                "score": r.score, "concept": r.concept_rating, "instruction": r.instruction_rating, "fluency": r.fluency_rating,
            })
        })
        .collect()
}

/// A node's output files: name → blob path in the store.
pub type NodeFiles = BTreeMap<String, PathBuf>;

/// The nodes of one stage kind: node id and its outputs, `None` where the node is not fresh.
pub type KindOutputs = Vec<(String, Option<NodeFiles>)>;

/// Every node of each stage kind in `kinds` in the planned pipeline with its outputs, one list per kind, `None`
/// where the node is not fresh (never run, or stale for these params). One plan serves every kind.
pub fn stage_outputs(
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Store,
    project: &Path,
    kinds: &[&str],
) -> Result<Vec<KindOutputs>> {
    let mut lists = Default::default();
    let plan = axbench_engine::plan(spec, registry, store, project, &mut lists)?;
    let mut out = vec![Vec::new(); kinds.len()];
    for (n, p) in plan.graph.nodes.iter().zip(&plan.nodes) {
        let Some(k) = kinds.iter().position(|k| *k == &*n.kind) else {
            continue;
        };
        let outputs = match (&p.state, &p.outputs) {
            (NodeState::Fresh, Some(o)) => Some(
                o.iter()
                    .map(|(name, e)| (name.clone(), store.blob_path(&e.digest)))
                    .collect(),
            ),
            _ => None,
        };
        out[k].push((n.id.clone(), outputs));
    }
    for p in &plan.graph.pending {
        if let Some(k) = spec
            .stages
            .get(&p.stage)
            .and_then(|s| kinds.iter().position(|k| *k == s.kind.value))
        {
            out[k].push((p.id.clone(), None));
        }
    }
    Ok(out)
}

/// After a successful run: prints the AUROC tables of the pipeline's evaluate nodes and the steering tables of its
/// aggregate nodes (nothing if it has neither).
pub fn print_tables(spec: &PipelineSpec, registry: &Registry, store: &Store, project: &Path) {
    let Ok(found) = stage_outputs(spec, registry, store, project, &[EVALUATE_KIND, AGGREGATE_KIND]) else {
        return;
    };
    for (kind, nodes) in [EVALUATE_KIND, AGGREGATE_KIND].into_iter().zip(found) {
        for files in nodes.into_iter().filter_map(|(_, f)| f) {
            if kind == EVALUATE_KIND
                && let Some(md) = files.get("results.md").and_then(|p| std::fs::read_to_string(p).ok())
            {
                println!("\n{md}");
            }
            if kind == AGGREGATE_KIND
                && let Some(s) = files
                    .get("summary.json")
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| serde_json::from_slice::<Summary>(&b).ok())
            {
                println!("\n{}", axbench_report::markdown::steering_tables(&s));
            }
        }
    }
}
