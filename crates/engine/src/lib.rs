//! axbench-engine: TOML pipelines as a content-addressed DAG of cached stages.
//!
//! # Architecture
//!
//! The engine knows pipelines, not tensors (it imports only `axbench-cache`). Data flows through one module per step and never
//! goes back:
//!
//! ```text
//!  pipeline.toml (+ configs/sweep.toml, --set)
//!        │  spec      TOML → PipelineSpec; every value keeps file:line:col; deny_unknown_fields
//!        ▼
//!  graph             stage-level petgraph DAG: unknown kinds, missing inputs, cycles → errors
//!        │                                     naming the stages; stable topological order
//!        ▼
//!  expand            fan-out (cartesian product of lists, list params, upstream list outputs)
//!        │           → nodes (stage × coordinate), params substituted and type-checked,
//!        ▼           inputs bound by shared dimensions (one-to-one, broadcast or gather)
//!  key               blake3(kind, code version, coordinate, canonical params it reads
//!        │           (files by content digest), inputs' output digests) — [`key::CacheKey`]
//!        ▼
//!  plan              fresh / stale / missing per node, with the reason (which param or
//!        │           input changed, by diffing the node's previous manifest); skipped
//!        │           entirely when `fingerprint`'s no-op record of the last complete run
//!        │           still holds (same pipeline, same path-param contents, every output
//!        ▼           blob with its recorded stat)
//!  schedule          tokio; `-j` slots; resource-class semaphores (gpu = 1); keys finished
//!        │           from actual input digests (early cutoff); failures skip dependents only
//!        ▼
//!  executor          [`executor::Executor`] trait; [`executor::LocalExecutor`] runs stages
//!                    in-process on blocking threads. A [`executor::NodeJob`] holds
//!                    everything one node needs, so a remote (slurm) executor can run
//!                    `axbench exec-node` with it.
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
