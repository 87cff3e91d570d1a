//! Compiling a pipeline: TOML → stage graph → nodes → keys → plan, without running anything.
//!
//! One file per step; each reads only the steps before it:
//!
//! | file | step | imports (in the engine) |
//! |---|---|---|
//! | [`spec`] | TOML, sweep files and `--set` → [`spec::PipelineSpec`], every value with its file:line:col | `key`, `value`, `slurm::options` |
//! | [`graph`] | stage-level DAG: unknown kinds, missing inputs, cycles; the topological order | `spec`, `stage` |
//! | [`expand`] | fan-out → [`expand::Node`]s, params substituted and type-checked, inputs bound | `graph`, `spec`, `stage`, `value` |
//! | [`key`] | [`key::CacheKey`] hashing; the static and the full node key | `value` |
//! | [`plan`] | fresh / stale / missing per node, and why | `spec`, `graph`, `expand`, `key`, `stage`, `value`, `error` |
//! | [`fingerprint`] | the no-op record: skips planning when nothing changed since the last complete run | `spec`, `key`, `plan`, `stage` |
//!
//! This room never imports `run` or the Slurm executor: what a pipeline compiles to does not depend on
//! how it will be run. The one thing it takes from `slurm` is the leaf [`crate::slurm::options`], because
//! a stage's `[stages.x.slurm]` table is written in the pipeline and parsed with it.

pub mod expand;
pub mod fingerprint;
pub mod graph;
pub mod key;
pub mod plan;
pub mod spec;
