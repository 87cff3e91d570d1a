//! The Slurm executor: runs each node as a Slurm array task of `axbench exec-node KEY` (or, with a
//! stage's `nodes_per_task = k`, k nodes per task in one process), against a cache directory every
//! compute node sees (a shared filesystem).
//!
//! # How a node runs
//!
//! ```text
//!  scheduler ──execute(job)──▶ SlurmExecutor
//!                               1. write the NodeJob to <cache>/jobs/<key>.json
//!                               2. queue it; after a short window the manager thread submits
//!                                  every queued node of one stage as ONE job array:
//!                                  <cache>/slurm/batches/<batch>/{keys, job.sh, submit.json}
//!                                  sbatch --array=0-(m-1)%limit job.sh, m = ceil(n / k)
//!                               3. array task i runs `axbench exec-node <key>...` for lines
//!                                  [i*k, i*k+k) of keys, which runs each node exactly like the
//!                                  local executor (staging dir in the cache, hash, rename into
//!                                  blobs/, manifest last) and writes <batch>/<line>.exit as it
//!                                  ends (`job.sh` writes those missing if exec-node crashed)
//!                               4. the manager polls the .exit files (never sacct), and asks
//!                                  squeue now and then whether tasks without one still exist
//!                               5. exit 0: the engine re-hashes every output blob the manifest
//!                                  names (verification on the engine host) and reports the node
//! ```
//!
//! Promotion happens in `exec-node` on the compute node, through the same code as a local run:
//! outputs are renamed into the blob store one by one and the manifest — the atomic "this node
//! is done" record — is written only after all of them are in place. The engine then verifies
//! the digests before any dependent is scheduled. Two jobs of one key (a resubmission racing a
//! job the engine lost track of) serialize on the node's file lock, and the second finds the
//! first one's manifest: a node is never computed twice.
//!
//! # Restarts and Ctrl-C
//!
//! Every submitted node is recorded in `<cache>/slurm/keys/<key>.json` (job id, batch, its line
//! in the batch and its array task). A restarted engine that needs such a key re-attaches: it
//! waits for the node's exit file as long as squeue still lists its task, and resubmits only when
//! the task is gone without one. Ctrl-C `scancel`s every job this engine submitted or
//! re-attached to.
//!
//! # Resources
//!
//! GPU stages (those holding a resource class in [`SlurmConfig::gpu_classes`], `gpu` or `model`)
//! get the run's `--gres`; CPU stages do not. A stage's `[stages.x.slurm]` table overrides the
//! run's options for that stage ([`SlurmOptions`]). The scheduler's local resource semaphores
//! are off ([`Executor::uses_local_resources`](crate::run::executor::Executor::uses_local_resources)): Slurm allocates the GPUs.
//!
//! # Files
//!
//! | file | what | imports (in the engine) |
//! |---|---|---|
//! | [`options`] | [`SlurmOptions`], [`SlurmConfig`], [`StageRequest`] → sbatch arguments | nothing: a leaf, which the pipeline spec imports |
//! | [`squeue`] | squeue and sinfo | nothing: a leaf |
//! | [`files`] | job specs, exit files, the batch script, their gc | `run::executor` ([`NodeJob`](crate::run::executor::NodeJob)) |
//! | `manager` | the manager thread: batching, sbatch, exit-file polling, squeue, scancel | `options`, `files`, `squeue`, `run::executor` |
//! | [`executor`] | [`SlurmExecutor`]: `execute`, re-attaching, verifying a finished node | `manager`, `options`, `files`, `compile::spec`, `run::executor`, `stage` |

pub mod executor;
pub mod files;
mod manager;
pub mod options;
pub mod squeue;

pub use executor::SlurmExecutor;
pub use files::{
    JobSpecError, SLURM_FILES_AGE, SlurmGc, gc_files, job_script, job_spec_path, read_exit_file, read_job_spec,
    shell_quote, submitted_batches, write_exit_file, write_job_spec,
};
pub use manager::SlurmStats;
pub use options::{SlurmConfig, SlurmOptions, StageRequest};
pub use squeue::{TaskState, cluster_reachable, parse_squeue};
