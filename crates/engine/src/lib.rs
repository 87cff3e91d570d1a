//! axbench-engine: TOML pipelines as a content-addressed DAG of cached stages.
//!
//! # Rooms
//!
//! The engine knows pipelines, not tensors (it imports only `axbench-cache`). Its files sit in three rooms, plus
//! the words every room shares at the crate root:
//!
//! | room | what it is for | may import (in the engine) |
//! |---|---|---|
//! | root: [`value`], [`stage`], [`error`], [`toy`] | param values and coordinates; the [`stage::Stage`] trait and the [`stage::Registry`]; [`EngineError`]; the toy stages of tests, examples and benchmarks | each other only (`stage` → `value`, `toy` → `stage`), and `error` wraps [`compile::spec::SpecError`] |
//! | [`compile`] | a pipeline → nodes and their keys, without running anything: `spec`, `graph`, `expand`, `key`, `plan`, `fingerprint` | the root; from `slurm` only the leaf [`slurm::options`] |
//! | [`run`](mod@run) | running the nodes of a plan: `schedule`, `executor`, `report` | the root, `compile` |
//! | [`slurm`] | the Slurm executor: `options`, `squeue`, `files`, `manager`, `executor` | the root, [`run::executor`], and in `slurm/executor.rs` alone [`compile::spec`] |
//!
//! No two files import each other; each room's `mod.rs` lists its files and what each one imports.
//!
//! # Data flow
//!
//! One step per file, and data never goes back:
//!
//! ```text
//!  pipeline.toml (+ configs/sweep.toml, --set)
//!        │  compile::spec     TOML → PipelineSpec; every value keeps file:line:col; deny_unknown_fields
//!        ▼
//!  compile::graph        stage-level petgraph DAG: unknown kinds, missing inputs, cycles → errors
//!        │                                         naming the stages; stable topological order
//!        ▼
//!  compile::expand       fan-out (cartesian product of lists, list params, upstream list outputs)
//!        │               → nodes (stage × coordinate), params substituted and type-checked,
//!        ▼               inputs bound by shared dimensions (one-to-one, broadcast or gather)
//!  compile::key          blake3(kind, code version, coordinate, canonical params it reads
//!        │               (files by content digest), inputs' output digests) — [`key::CacheKey`]
//!        ▼
//!  compile::plan         fresh / stale / missing per node, with the reason (which param or
//!        │               input changed, by diffing the node's previous manifest); skipped
//!        │               entirely when `compile::fingerprint`'s no-op record of the last complete
//!        │               run still holds (same pipeline, same path-param contents, every output
//!        ▼               blob with its recorded stat)
//!  run::schedule         tokio; `-j` slots; resource-class semaphores (gpu = 1); keys finished
//!        │               from actual input digests (early cutoff); failures skip dependents only
//!        ▼
//!  run::executor         [`executor::Executor`] trait; [`executor::LocalExecutor`] runs stages
//!  (or slurm::executor)  in-process on blocking threads. A [`executor::NodeJob`] holds everything
//!                        one node needs, so [`slurm::SlurmExecutor`] runs it as a Slurm array task
//!                        of `axbench exec-node`.
//! ```
//!
//! Storage is `axbench-cache`: blobs by digest, one JSON manifest per node key, a redb index,
//! per-node file locks. Stages write into a staging dir; only a finished node's files are
//! promoted, so Ctrl-C or `kill -9` leaves nothing partial and a rerun resumes.
//!
//! Stages implement [`stage::Stage`] (in `axbench-stages`, and the toy stages in [`toy`]);
//! the engine never imports a stage — the binary builds a [`stage::Registry`].
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), axbench_engine::EngineError> {
//! use std::sync::Arc;
//! use axbench_engine::{PipelineSpec, Registry, RunOptions, LocalExecutor, CancelFlag, Silent, toy};
//! let registry = toy::register(Registry::new());
//! let mut spec = PipelineSpec::load("tests/fixtures/engine/toy.toml".as_ref())?;
//! spec.apply_sets(&["scale=3".to_string()])?;
//! let store = Arc::new(axbench_cache::Store::open(".axbench".as_ref())?);
//! let exec = Arc::new(LocalExecutor::new(registry.clone(), store.clone()));
//! let opts = RunOptions { jobs: 4, project_dir: ".".into() };
//! let report = axbench_engine::run(&spec, &registry, store, exec, &opts, Arc::new(Silent), CancelFlag::new()).await?;
//! assert!(report.ok());
//! # Ok(()) }
//! ```

pub mod compile;
pub mod run;
pub mod slurm;

pub mod error;
pub mod stage;
pub mod toy;
pub mod value;

// Every file keeps a flat path as well (`axbench_engine::spec`, `axbench_engine::executor`, …), so a
// caller names a module without knowing which room it sits in.
pub use compile::{expand, fingerprint, graph, key, plan, spec};
pub use run::{executor, report, schedule};

pub use error::EngineError;
pub use executor::{ExecError, ExecOutcome, Executor, LocalExecutor, NodeJob};
pub use expand::{Node, NodeGraph};
pub use fingerprint::{FreshNode, FreshPlan, fresh_plan};
pub use graph::StageGraph;
pub use key::{CacheKey, KeyHasher};
pub use plan::{NodeState, Plan, PlanJson, plan, plan_preview};
pub use report::BarReporter;
pub use schedule::{Failure, Reporter, RunOptions, RunReport, Silent, run};
pub use spec::{Loc, PipelineSpec, SpecError};
pub use stage::{
    CancelFlag, InputArtifact, OutputKind, ParamSpec, ParamType, ProgressSink, Registry, Stage, StageContext,
    StageError,
};
pub use value::{Coord, Value};
