//! `axbench exec-node KEY...`: runs nodes from the job specs an executor stored in the cache
//! (`<cache>/jobs/<KEY>.json`, a serialized `NodeJob`). This is what every Slurm array task runs:
//! one node, or with `nodes_per_task = k` up to k nodes of one stage, one after the other in this
//! process, so what a stage keeps per process (the last model loaded) serves all of them.
//!
//! Each node runs through the local executor, exactly as `axbench run` would run it: under the
//! node's file lock (a second job of the same key waits, then finds it cached), in a staging dir
//! inside the cache, and promoted only on success — files renamed into the blob store under their
//! digests, then the manifest. So exec-node promotes its own outputs; the engine that submitted
//! it re-hashes them before it uses them. SIGTERM (what `scancel` and a Slurm time limit send)
//! cancels the running stage, whose partial outputs are discarded, and the nodes not started yet.
//!
//! With `--exit-file PATH` (one per KEY, in order) each node's outcome is also written to its PATH
//! (atomically) as soon as the node ends: the exit code on the first line, `computed`, `cached`,
//! `failed`, `cancelled` or `bad-input` on the second. The engine polls these files instead of
//! Slurm accounting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axbench_cache::{Digest, Store};
use axbench_engine::slurm::{read_job_spec, write_exit_file};
use axbench_engine::stage::NoProgress;
use axbench_engine::{CancelFlag, ExecError, ExecOutcome, Executor, LocalExecutor};
use clap::Args;

use crate::context::GlobalArgs;

/// `axbench exec-node`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench exec-node 3f9a…(64 hex digits) --cache-dir /shared/proj/.axbench
  axbench exec-node KEY --cache-dir D --exit-file D/slurm/batches/B/0.exit
  axbench exec-node KEY1 KEY2 --cache-dir D --exit-file B/0.exit --exit-file B/1.exit

Several KEYs run one after the other in this process; one failing does not stop the others,
SIGTERM cancels the running one and the ones not started.

Exit codes (per node, in its exit file): 0 computed or already cached, 1 the stage failed, 2 no
usable job spec, 130 cancelled. The process exits 0 if every node did, else with the first
non-zero code in KEY order; 2 also when the --exit-file count does not match the KEY count.")]
pub struct ExecNodeArgs {
    /// The node keys (64 hex digits), as named by <cache>/jobs/<KEY>.json; run in this order
    #[arg(value_name = "KEY", required = true)]
    pub keys: Vec<String>,
    /// Also write a node's exit code (and a word saying how it ended) to this file; one per
    /// KEY, matched in order
    #[arg(long, value_name = "PATH")]
    pub exit_file: Vec<PathBuf>,
}

pub fn run(g: &GlobalArgs, a: ExecNodeArgs) -> ExitCode {
    if !a.exit_file.is_empty() && a.exit_file.len() != a.keys.len() {
        eprintln!(
            "error: {} KEY(s) but {} --exit-file: give one --exit-file per KEY, in the same order",
            a.keys.len(),
            a.exit_file.len()
        );
        return ExitCode::from(2);
    }
    let cancel = CancelFlag::new();
    cancel_on_signals(cancel.clone());
    // One store and one executor for all the nodes, opened when a node first needs them.
    let mut setup: Option<Result<(Arc<Store>, LocalExecutor), String>> = None;
    let n = a.keys.len();
    let mut first_failure = 0;
    for (i, key) in a.keys.iter().enumerate() {
        if n > 1 {
            // Starts this node's part of the task log (the engine reads a node's error from it).
            eprintln!("exec-node: node {} of {n}: key {key}", i + 1);
        }
        let result = if cancel.is_cancelled() {
            Err(Outcome::NotStarted)
        } else {
            key.parse::<Digest>()
                .map_err(|e| Outcome::BadInput(anyhow::anyhow!("KEY `{key}`: {e}")))
                .and_then(|key| {
                    let setup = setup.get_or_insert_with(|| {
                        let store = Arc::new(crate::context::open_store(g).map_err(|e| format!("{e:#}"))?);
                        let exec = LocalExecutor::new(crate::context::registry(), store.clone());
                        Ok((store, exec))
                    });
                    match setup {
                        Ok((store, exec)) => exec_one(store, exec, &key, &cancel),
                        Err(e) => Err(Outcome::BadInput(anyhow::anyhow!("{e}"))),
                    }
                })
        };
        let (code, status) = match result {
            Ok(status) => (0, status),
            Err(Outcome::Failed) => (1, "failed"),
            Err(Outcome::BadInput(e)) => {
                eprintln!("error: {e:#}");
                (2, "bad-input")
            }
            Err(Outcome::Cancelled) => {
                eprintln!("exec-node: cancelled; partial outputs discarded");
                (130, "cancelled")
            }
            Err(Outcome::NotStarted) => {
                eprintln!("exec-node: {key} not started: cancelled");
                (130, "cancelled")
            }
        };
        if let Some(p) = a.exit_file.get(i)
            && let Err(e) = write_exit_file(p, code, status)
        {
            eprintln!("error: cannot write the exit file {}: {e}", p.display());
        }
        if first_failure == 0 {
            first_failure = code;
        }
    }
    ExitCode::from(first_failure as u8)
}

enum Outcome {
    Failed,
    BadInput(anyhow::Error),
    Cancelled,
    /// Cancelled before it started.
    NotStarted,
}

fn exec_one(store: &Store, exec: &LocalExecutor, key: &Digest, cancel: &CancelFlag) -> Result<&'static str, Outcome> {
    let job = read_job_spec(store, key)
        .context("exec-node")
        .map_err(Outcome::BadInput)?;
    eprintln!(
        "exec-node: {} ({} v{}) key {} on {}",
        job.node,
        job.kind,
        job.version,
        key,
        axbench_engine::executor::hostname()
    );
    let outcome = exec.execute(&job, cancel, Arc::new(NoProgress));
    let _ = store.flush_index();
    match outcome {
        Ok(ExecOutcome::Computed { outputs, duration_ms }) => {
            eprintln!(
                "exec-node: computed {} in {duration_ms} ms ({} output files)",
                job.node,
                outputs.len()
            );
            Ok("computed")
        }
        Ok(ExecOutcome::Cached { .. }) => {
            eprintln!("exec-node: {} was already in the cache; nothing to do", job.node);
            Ok("cached")
        }
        Err(ExecError::Cancelled) => Err(Outcome::Cancelled),
        Err(ExecError::Failed { message, log }) => {
            eprintln!("node log: {}", log.display());
            eprintln!("error: {message}");
            Err(Outcome::Failed)
        }
        Err(ExecError::Store(e)) => {
            eprintln!("error: cache {}: {e}", store.root().display());
            Err(Outcome::Failed)
        }
    }
}

/// SIGTERM (scancel, a Slurm time limit) and SIGINT cancel the running stage.
fn cancel_on_signals(cancel: CancelFlag) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            cancel.cancel();
        });
    });
}
