//! Pipeline commands: `run`, `plan`, `status`, `show`, `gc`, `dot`, `verify`. Parses flags
//! into engine calls and prints for humans (or JSON); exit codes come from `error.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::context::{GlobalArgs, open_store, project_dir, registry};
use crate::error::{CliError, FAILED, INTERRUPTED, bad};
use anyhow::{Context, Result};
use axbench_cache::Store;
use axbench_engine::{
    BarReporter, CancelFlag, EngineError, LocalExecutor, NodeState, PipelineSpec, Registry, RunOptions, StageGraph,
};
use clap::{Args, ValueEnum};

/// `axbench run`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench run tests/fixtures/engine/toy.toml
  axbench run configs/paper/gemma2-2b-l20.toml -j 4   a sweep file extends a pipeline
  axbench run pipelines/detection.toml --set model.layer=12 --set concepts.limit=10")]
pub struct RunArgs {
    /// Pipeline TOML, or a sweep file (one with `extends = \"pipeline.toml\"`)
    pub pipeline: PathBuf,
    /// Override a declared pipeline param (repeatable): --set model.layer=12
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Nodes to run in parallel [default: the CPU count; 1000 with --executor slurm, where it
    /// caps the nodes submitted and not yet finished]
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Print the run report as JSON on stdout (computed, cached, failed, skipped nodes)
    #[arg(long)]
    pub json: bool,
    /// Refuse pipelines that expand to more nodes than this [default: the pipeline's
    /// `[pipeline] max_nodes`, or 1,000,000]
    #[arg(long, value_name = "N")]
    pub max_nodes: Option<usize>,
    /// Where nodes run: in this process, or as Slurm array tasks of `axbench exec-node`
    /// against a shared cache (docs/slurm.md)
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local)]
    pub executor: ExecutorKind,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

/// Options of `--executor slurm`; a stage's `[stages.x.slurm]` table overrides them.
#[derive(Args)]
#[command(next_help_heading = "Slurm executor (--executor slurm)")]
pub struct SlurmArgs {
    /// Partition for every stage (sbatch --partition)
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// Generic resources for GPU stages, e.g. gpu:1 (CPU stages never get it)
    #[arg(long, value_name = "SPEC")]
    pub gres: Option<String>,
    /// Time limit per array task (one node, or --nodes-per-task of them), e.g. 2:00:00
    /// (sbatch --time)
    #[arg(long, value_name = "LIMIT")]
    pub time: Option<String>,
    /// Any other sbatch option, repeatable: --slurm-opt account=proj1 --slurm-opt qos=long
    #[arg(long = "slurm-opt", value_name = "NAME=VALUE")]
    pub slurm_opts: Vec<String>,
    /// At most this many tasks of one job array run at once (the array's `%` limit)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub array_limit: u32,
    /// Nodes one array task runs, one after the other in one process (a model stage loads its
    /// model once for all of them); --time is then per task [default: 1]
    #[arg(long, value_name = "N")]
    pub nodes_per_task: Option<u32>,
    /// The axbench binary the array tasks run (must exist at this path on the compute nodes)
    /// [default: this binary]
    #[arg(long, value_name = "PATH")]
    pub axbench_bin: Option<PathBuf>,
}

/// `axbench plan`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench plan tests/fixtures/engine/toy.toml
  axbench plan tests/fixtures/engine/toy.toml --set scale=3 --json
  axbench plan pipelines/detection.toml --params

JSON output (stable contract):
  {\"nodes\":[{\"id\":\"…\",\"stage\":\"…\",\"state\":\"fresh\"|\"stale\"|\"missing\",\"reason\":\"…\"}],\"to_run\":N}")]
pub struct PlanArgs {
    /// Pipeline TOML, or a sweep file
    pub pipeline: PathBuf,
    /// Override a declared pipeline param (repeatable): --set model.layer=12
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Print the plan as JSON (every node with state and reason)
    #[arg(long)]
    pub json: bool,
    /// List the pipeline's declared params (name, value, default, description) instead
    #[arg(long)]
    pub params: bool,
    /// Show at most this many not-fresh nodes in the human listing
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Refuse pipelines that expand to more nodes than this [default: the pipeline's
    /// `[pipeline] max_nodes`, or 1,000,000]
    #[arg(long, value_name = "N")]
    pub max_nodes: Option<usize>,
}

/// `axbench show`
#[derive(Args)]
pub struct ShowArgs {
    /// A node id (`fit[concept=3,method=pca]`) or a key (hex prefix, at least 6 characters)
    pub node: String,
}

/// `axbench gc`
#[derive(Args)]
pub struct GcArgs {
    /// Keep what this many most recent runs reached
    #[arg(long, default_value_t = 3)]
    pub keep_runs: usize,
}

/// `axbench dot`
#[derive(Args)]
pub struct DotArgs {
    /// Pipeline TOML, or a sweep file
    pub pipeline: PathBuf,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn engine(e: EngineError) -> anyhow::Error {
    if e.is_bad_input() {
        bad(e)
    } else {
        anyhow::Error::new(e)
    }
}

fn load(pipeline: &Path, sets: &[String]) -> Result<PipelineSpec> {
    let mut spec = PipelineSpec::load(pipeline).map_err(bad)?;
    spec.apply_sets(sets).map_err(bad)?;
    Ok(spec)
}

/// `--max-nodes` overrides the pipeline's own limit.
fn with_max_nodes(mut spec: PipelineSpec, max_nodes: Option<usize>) -> PipelineSpec {
    if let Some(n) = max_nodes {
        spec.max_nodes = n.max(1);
    }
    spec
}

pub fn run(g: &GlobalArgs, a: RunArgs) -> Result<()> {
    let spec = with_max_nodes(load(&a.pipeline, &a.sets)?, a.max_nodes);
    let registry = registry();
    StageGraph::build(&spec, &registry).map_err(bad)?;
    let store = Arc::new(open_store(g)?);
    let project = project_dir(g)?;
    let slurm = match a.executor {
        ExecutorKind::Slurm => Some(Arc::new(slurm_executor(&a.slurm, &spec, &registry, &store)?)),
        ExecutorKind::Local => {
            let s = &a.slurm;
            if s.partition.is_some()
                || s.gres.is_some()
                || s.time.is_some()
                || !s.slurm_opts.is_empty()
                || s.axbench_bin.is_some()
                || s.nodes_per_task.is_some()
            {
                return Err(bad(
                    "--partition, --gres, --time, --slurm-opt, --nodes-per-task and --axbench-bin need --executor slurm",
                ));
            }
            None
        }
    };
    let exec: Arc<dyn axbench_engine::Executor> = match &slurm {
        Some(s) => s.clone(),
        None => Arc::new(LocalExecutor::new(registry.clone(), store.clone())),
    };
    let jobs = a.jobs.unwrap_or(if slurm.is_some() { 1000 } else { default_jobs() });
    let cancel = CancelFlag::new();
    // Every node in flight holds a blocking thread (a Slurm node mostly sleeps in it).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(jobs.max(512) + 16)
        .build()?;
    let report = rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("cancelling: waiting for running nodes to stop (their partial outputs are discarded)");
                c.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let opts = RunOptions {
            jobs,
            project_dir: project.clone(),
        };
        axbench_engine::run(
            &spec,
            &registry,
            store.clone(),
            exec,
            &opts,
            Arc::new(reporter()),
            cancel.clone(),
        )
        .await
    });
    if let Some(s) = &slurm
        && cancel.is_cancelled()
    {
        s.cancel_all();
    }
    let slurm_stats = slurm.as_ref().map(|s| s.stats());
    let report = report.map_err(engine)?;
    let _ = store.flush_index();
    if report.ok() {
        save_launch_alias(&spec, &registry, &store, &project);
    }
    crate::output::print_run_report(&spec.name, &report, slurm_stats.as_ref(), a.json);
    if !a.json {
        // Results tables plan the pipeline again: only for pipelines that have results.
        if report.ok()
            && spec
                .stages
                .values()
                .any(|s| s.kind.value == crate::output::EVALUATE_KIND)
        {
            crate::results_cmd::print_tables(&spec, &registry, &store, &project);
        }
    }
    if report.cancelled {
        return Err(CliError::reported(INTERRUPTED));
    }
    if !report.ok() {
        return Err(CliError::reported(FAILED));
    }
    Ok(())
}

/// Lets the `axbench` launcher answer the next unchanged `plan`/`run` without starting this
/// binary (and libtorch): files the pipeline's no-op record under this binary's identity.
fn save_launch_alias(spec: &PipelineSpec, registry: &Registry, store: &Store, project: &Path) {
    if let Ok(exe) = std::env::current_exe() {
        axbench_engine::fingerprint::save_launch_alias(spec, registry, store, project, &exe);
    }
}

/// The Slurm executor for `spec`, from the run's flags.
fn slurm_executor(
    a: &SlurmArgs,
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Arc<Store>,
) -> Result<axbench_engine::slurm::SlurmExecutor> {
    use axbench_engine::slurm::{SlurmConfig, SlurmExecutor};
    let bin = match &a.axbench_bin {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("--axbench-bin {}", p.display()))?,
        None => std::env::current_exe().context("locating this axbench binary for the Slurm tasks")?,
    };
    let mut cfg = SlurmConfig::new(bin);
    cfg.defaults.partition = a.partition.clone();
    cfg.defaults.gres = a.gres.clone();
    cfg.defaults.time = a.time.clone();
    if a.nodes_per_task == Some(0) {
        return Err(bad("--nodes-per-task must be at least 1"));
    }
    cfg.defaults.nodes_per_task = a.nodes_per_task;
    for kv in &a.slurm_opts {
        cfg.defaults
            .parse_opt(kv)
            .map_err(|e| bad(format!("--slurm-opt {kv}: {e}")))?;
    }
    cfg.defaults
        .check()
        .map_err(|(field, e)| bad(format!("--{}: {e}", field.trim_start_matches('.'))))?;
    if a.array_limit == 0 {
        return Err(bad("--array-limit must be at least 1"));
    }
    cfg.array_limit = a.array_limit;
    if let Err(e) = axbench_engine::slurm::cluster_reachable() {
        anyhow::bail!("--executor slurm: no Slurm cluster answers here ({e})");
    }
    Ok(SlurmExecutor::new(cfg, store.clone(), spec, registry))
}

/// Bars on a terminal; otherwise plain progress lines every `AXBENCH_PROGRESS_EVERY` seconds
/// (default 10) per running node.
fn reporter() -> BarReporter {
    use std::io::IsTerminal;
    let every = std::env::var("AXBENCH_PROGRESS_EVERY")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0);
    let every = every
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(axbench_engine::report::DEFAULT_PLAIN_INTERVAL);
    BarReporter::with_mode(std::io::stderr().is_terminal(), every)
}

pub fn plan(g: &GlobalArgs, a: PlanArgs) -> Result<()> {
    let spec = with_max_nodes(load(&a.pipeline, &a.sets)?, a.max_nodes);
    if a.params {
        if a.json {
            let params: Vec<_> = spec
                .params
                .values()
                .map(|p| serde_json::json!({"name": p.name, "value": p.value.to_json(), "default": p.default.to_json(), "description": p.description}))
                .collect();
            println!("{}", serde_json::json!({ "params": params }));
            return Ok(());
        }
        if spec.params.is_empty() {
            println!("{} declares no params", spec.file.display());
        }
        let w = spec.params.keys().map(|k| k.len()).max().unwrap_or(0);
        for p in spec.params.values() {
            let set = if p.value != p.default {
                format!(
                    " (default {}, set by {})",
                    p.default.to_json(),
                    p.set_by.as_ref().map(|l| l.to_string()).unwrap_or_default()
                )
            } else {
                String::new()
            };
            println!(
                "{:w$}  = {}{set}\n{:w$}    {}",
                p.name,
                p.value.to_json(),
                "",
                p.description
            );
        }
        return Ok(());
    }
    let registry = registry();
    let store = open_store(g)?;
    let project = project_dir(g)?;
    // Unchanged since the last complete run (the common case for a no-op): no full plan.
    if let Some(fresh) = axbench_engine::fresh_plan(&spec, &registry, &store, &project) {
        save_launch_alias(&spec, &registry, &store, &project);
        crate::output::print_fresh_plan(&spec.name, &fresh, a.json)?;
        return Ok(());
    }
    let mut lists = Default::default();
    // A preview: nodes whose weights or data are not on this machine are listed as missing, not an error.
    let p = axbench_engine::plan_preview(&spec, &registry, &store, &project, &mut lists).map_err(engine)?;
    let _ = store.flush_index();
    if a.json {
        println!("{}", serde_json::to_string(&p.to_json())?);
        return Ok(());
    }
    let j = p.to_json();
    let (mut fresh, mut stale, mut missing) = (0, 0, 0);
    let mut shown = 0;
    for n in &j.nodes {
        match n.state {
            NodeState::Fresh => fresh += 1,
            NodeState::Stale => stale += 1,
            NodeState::Missing => missing += 1,
        }
        if n.state != NodeState::Fresh {
            if shown < a.limit {
                println!("{:7}  {}  ({})", n.state.as_str(), n.id, n.reason);
            }
            shown += 1;
        }
    }
    if shown > a.limit {
        println!("… and {} more (--limit, or --json for all)", shown - a.limit);
    }
    println!(
        "{}: {} nodes: {fresh} fresh, {stale} stale, {missing} missing; {} to run",
        spec.name,
        j.nodes.len(),
        j.to_run
    );
    Ok(())
}

pub fn status(g: &GlobalArgs) -> Result<()> {
    let store = open_store(g)?;
    let (manifests, blobs, bytes) = store.stats();
    println!("cache: {}", store.root().display());
    println!("nodes: {manifests}   blobs: {blobs}   size: {}", human_bytes(bytes));
    let runs = store.runs();
    if runs.is_empty() {
        println!("no runs recorded yet");
    }
    for (name, n) in runs.iter().take(5) {
        println!("run {name}: reached {n} nodes");
    }
    Ok(())
}

pub fn show(g: &GlobalArgs, a: ShowArgs) -> Result<()> {
    let store = open_store(g)?;
    let reader = store.reader();
    let key = if a.node.len() >= 6 && a.node.chars().all(|c| c.is_ascii_hexdigit()) {
        let matches: Vec<_> = store
            .manifest_keys()
            .into_iter()
            .filter(|(k, _)| k.to_hex().starts_with(&a.node.to_lowercase()))
            .collect();
        match matches.as_slice() {
            [(k, _)] => Some(*k),
            [] => None,
            _ => {
                return Err(bad(format!(
                    "key prefix `{}` is ambiguous ({} matches)",
                    a.node,
                    matches.len()
                )));
            }
        }
    } else {
        None
    };
    let key = key.or_else(|| store.latest(reader.as_ref(), &a.node));
    let Some(key) = key else {
        return Err(bad(format!(
            "no cached node `{}` (give a node id as `plan` prints it, or a key prefix)",
            a.node
        )));
    };
    let m = store
        .read_manifest(&key)?
        .with_context(|| format!("manifest of {key} is missing"))?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    let log = store.log_path(&key);
    if log.exists() {
        println!("log: {}", log.display());
    }
    Ok(())
}

pub fn gc(g: &GlobalArgs, a: GcArgs) -> Result<()> {
    let mut store = open_store(g)?;
    let r = store.gc(a.keep_runs)?;
    let s = axbench_engine::slurm::gc_files(&store, axbench_engine::slurm::SLURM_FILES_AGE);
    println!(
        "kept {} nodes; removed {} nodes and {} blobs ({}){}{}",
        r.kept_manifests,
        r.removed_manifests,
        r.removed_blobs,
        human_bytes(r.freed_bytes),
        if r.removed_temp > 0 {
            format!(", and {} temp file(s) a killed write left", r.removed_temp)
        } else {
            String::new()
        },
        if s.job_specs + s.task_records + s.batches > 0 {
            format!(
                ", and {} Slurm job spec(s), {} task record(s), {} failed batch dir(s)",
                s.job_specs, s.task_records, s.batches
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

pub fn dot(_g: &GlobalArgs, a: DotArgs) -> Result<()> {
    let spec = load(&a.pipeline, &[])?;
    let sg = StageGraph::build(&spec, &registry()).map_err(bad)?;
    print!("{}", sg.dot(&spec));
    Ok(())
}

pub fn verify(g: &GlobalArgs) -> Result<()> {
    let mut store = open_store(g)?;
    let r = store.verify()?;
    for p in &r.problems {
        println!("problem: {p}");
    }
    println!(
        "verified {} nodes, {} blobs ({}){}: {} problem(s)",
        r.manifests,
        r.blobs,
        human_bytes(r.bytes),
        if r.index_rebuilt { ", index rebuilt" } else { "" },
        r.problems.len()
    );
    if !r.problems.is_empty() {
        return Err(CliError::reported(FAILED));
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
