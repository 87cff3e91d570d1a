//! Running compiled nodes: the scheduler, the executors that run one node, and the progress display.
//!
//! | file | what | imports (in the engine) |
//! |---|---|---|
//! | [`schedule`] | [`schedule::run`]: waves of a plan on tokio, `-j` slots and resource semaphores, keys finished from actual input digests (early cutoff), failures skip dependents only | `compile`, `executor`, `stage`, `value`, `error` |
//! | [`executor`] | the [`executor::Executor`] trait, the serializable [`executor::NodeJob`], and the in-process [`executor::LocalExecutor`] | `stage`, `value` |
//! | [`report`] | [`report::BarReporter`]: indicatif bars, or plain lines when stderr is not a terminal | `compile`, `schedule`, `stage` |
//!
//! This room imports `compile` (plans, nodes, keys, no-op records) but never `slurm`: the Slurm executor
//! is one more [`executor::Executor`], and the scheduler does not know which one it drives.

pub mod executor;
pub mod report;
pub mod schedule;
