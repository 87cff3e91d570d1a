//! `axbench exec-node KEY`: runs one node from the job spec an executor stored in the cache
//! (`<cache>/jobs/<KEY>.json`, a serialized `NodeJob`). This is what every Slurm array task runs.
//!
//! The node runs through the local executor, exactly as `axbench run` would run it: under the
//! node's file lock (a second job of the same key waits, then finds it cached), in a staging dir
//! inside the cache, and promoted only on success — files renamed into the blob store under their
//! digests, then the manifest. So exec-node promotes its own outputs; the engine that submitted
//! it re-hashes them before it uses them. SIGTERM (what `scancel` and a Slurm time limit send)
//! cancels the stage, and its partial outputs are discarded.
//!
//! With `--exit-file PATH` the outcome is also written to PATH (atomically): the exit code on the
//! first line, `computed`, `cached`, `failed`, `cancelled` or `bad-input` on the second. The
//! engine polls these files instead of Slurm accounting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axbench_cache::Digest;
use axbench_engine::slurm::{read_job_spec, write_exit_file};
use axbench_engine::stage::NoProgress;
use axbench_engine::{CancelFlag, ExecError, ExecOutcome, Executor, LocalExecutor};
use clap::Args;

use crate::pipeline_cmd::GlobalArgs;

/// `axbench exec-node`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench exec-node 3f9a…(64 hex digits) --cache-dir /shared/proj/.axbench
  axbench exec-node KEY --cache-dir D --exit-file D/slurm/batches/B/0.exit

Exit codes: 0 computed or already cached, 1 the stage failed, 2 no usable job spec, 130 cancelled.")]
pub struct ExecNodeArgs {
    /// The node key (64 hex digits), as named by <cache>/jobs/<KEY>.json
    pub key: String,
    /// Also write the exit code (and a word saying how it ended) to this file
    #[arg(long, value_name = "PATH")]
    pub exit_file: Option<PathBuf>,
}

pub fn run(g: &GlobalArgs, a: ExecNodeArgs) -> ExitCode {
    let (code, status) = match exec(g, &a) {
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
    };
    if let Some(p) = &a.exit_file
        && let Err(e) = write_exit_file(p, code, status)
    {
        eprintln!("error: cannot write the exit file {}: {e}", p.display());
    }
    ExitCode::from(code as u8)
}

enum Outcome {
    Failed,
    BadInput(anyhow::Error),
    Cancelled,
}

fn exec(g: &GlobalArgs, a: &ExecNodeArgs) -> Result<&'static str, Outcome> {
    let key: Digest = a
        .key
        .parse()
        .map_err(|e| Outcome::BadInput(anyhow::anyhow!("KEY `{}`: {e}", a.key)))?;
    let store = Arc::new(crate::pipeline_cmd::open_store(g).map_err(Outcome::BadInput)?);
    let job = read_job_spec(&store, &key)
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
    let cancel = CancelFlag::new();
    cancel_on_signals(cancel.clone());
    let exec = LocalExecutor::new(crate::pipeline_cmd::registry(), store.clone());
    let outcome = exec.execute(&job, &cancel, Arc::new(NoProgress));
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
