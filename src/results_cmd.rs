//! `axbench results PIPELINE [--set …] [--json]`: the detection results of a pipeline, read from the cached
//! outputs of its `axbench.evaluate` node(s). The node is found by planning the pipeline with the same `--set`
//! flags, so `plan`, `run` and `results` always agree on which results they mean; nothing is computed here.
//!
//! JSON (stable contract): `{"detection":[{"model","layer","method","concept_id","auroc","f1"}],"steering":[]}`;
//! without `--json`, the AUROC table per method (mean over concepts, and per concept).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use axbench_cache::Store;
use axbench_engine::{NodeState, PipelineSpec, Registry};
use axbench_stages::stages::evaluate::Results;
use clap::Args;

use crate::pipeline_cmd::{GlobalArgs, registry};

/// Kind of the stage whose outputs `results` reads.
pub const EVALUATE_KIND: &str = "axbench.evaluate";

/// `axbench results`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench results pipelines/detection.toml
  axbench results pipelines/detection.toml --set concepts.limit=10 --json

JSON output (stable contract):
  {\"detection\":[{\"model\":…,\"layer\":…,\"method\":…,\"concept_id\":…,\"auroc\":…,\"f1\":…}],\"steering\":[]}")]
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

/// What went wrong, with the exit code it maps to (2: bad input or nothing computed yet, 1: other failures).
struct Failure(u8, anyhow::Error);

pub fn run(g: &GlobalArgs, a: ResultsArgs) -> ExitCode {
    match results(g, &a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn project_dir(g: &GlobalArgs) -> Result<PathBuf> {
    let p = match &g.project_dir {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    std::fs::canonicalize(&p).with_context(|| format!("project dir {}", p.display()))
}

fn results(g: &GlobalArgs, a: &ResultsArgs) -> Result<(), Failure> {
    let bad = |e: anyhow::Error| Failure(2, e);
    let mut spec = PipelineSpec::load(&a.pipeline).map_err(|e| bad(e.into()))?;
    spec.apply_sets(&a.sets).map_err(|e| bad(e.into()))?;
    let project = project_dir(g).map_err(|e| Failure(1, e))?;
    let cache = g.cache_dir.clone().unwrap_or_else(|| project.join(".axbench"));
    let store = Store::open(&cache).with_context(|| format!("opening cache {}", cache.display())).map_err(|e| Failure(1, e))?;
    let found = evaluate_outputs(&spec, &registry(), &store, &project).map_err(|e| Failure(1, e))?;
    if found.is_empty() {
        return Err(bad(anyhow::anyhow!("{} has no `{EVALUATE_KIND}` stage", a.pipeline.display())));
    }
    let mut detection = Vec::new();
    let mut tables = String::new();
    for (id, outputs) in found {
        let Some(outputs) = outputs else {
            let sets: String = a.sets.iter().map(|s| format!(" --set {s}")).collect();
            return Err(bad(anyhow::anyhow!("`{id}` is not computed for these params: run `axbench run {}{sets}` first", a.pipeline.display())));
        };
        let json = std::fs::read(&outputs.json).with_context(|| outputs.json.display().to_string()).map_err(|e| Failure(1, e))?;
        let r: Results = serde_json::from_slice(&json).with_context(|| format!("{}: results.json", id)).map_err(|e| Failure(1, e))?;
        detection.extend(r.detection.into_iter().map(|r| {
            serde_json::json!({"model": r.model, "layer": r.layer, "method": r.method, "concept_id": r.concept_id, "auroc": r.auroc, "f1": r.f1})
        }));
        tables.push_str(&std::fs::read_to_string(&outputs.markdown).unwrap_or_default());
    }
    if a.json {
        println!("{}", serde_json::json!({"detection": detection, "steering": []}));
    } else {
        print!("{tables}");
    }
    Ok(())
}

/// Blob paths of an evaluate node's outputs.
pub struct EvaluateOutputs {
    pub json: PathBuf,
    pub markdown: PathBuf,
}

/// Every `axbench.evaluate` node of the planned pipeline with its outputs, `None` where it is not fresh.
pub fn evaluate_outputs(spec: &PipelineSpec, registry: &Registry, store: &Store, project: &Path) -> Result<Vec<(String, Option<EvaluateOutputs>)>> {
    let mut lists = Default::default();
    let plan = axbench_engine::plan(spec, registry, store, project, &mut lists)?;
    let mut out = Vec::new();
    for (n, p) in plan.graph.nodes.iter().zip(&plan.nodes) {
        if &*n.kind != EVALUATE_KIND {
            continue;
        }
        let outputs = match (&p.state, &p.outputs) {
            (NodeState::Fresh, Some(o)) => {
                let blob = |name: &str| o.get(name).map(|e| store.blob_path(&e.digest)).with_context(|| format!("`{}` has no output {name}", n.id));
                Some(EvaluateOutputs { json: blob("results.json")?, markdown: blob("results.md")? })
            }
            _ => None,
        };
        out.push((n.id.clone(), outputs));
    }
    for p in &plan.graph.pending {
        if spec.stages.get(&p.stage).is_some_and(|s| s.kind.value == EVALUATE_KIND) {
            out.push((p.id.clone(), None));
        }
    }
    Ok(out)
}

/// After a successful run: prints the AUROC tables of the pipeline's evaluate nodes (nothing if it has none).
pub fn print_tables(spec: &PipelineSpec, registry: &Registry, store: &Store, project: &Path) {
    let Ok(found) = evaluate_outputs(spec, registry, store, project) else { return };
    for (_, outputs) in found {
        if let Some(o) = outputs
            && let Ok(md) = std::fs::read_to_string(&o.markdown)
        {
            println!("\n{md}");
        }
    }
}
