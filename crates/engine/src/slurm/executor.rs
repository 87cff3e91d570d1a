//! [`SlurmExecutor`]: the [`Executor`] that runs nodes as Slurm array tasks. `execute` writes the node's job spec and
//! hands the node to the manager thread (or re-attaches to the task an earlier engine submitted for its key), blocks
//! until the task ends, and turns the exit file into the node's outcome, re-hashing every output on this host first.
//!
//! The only file under `slurm/` that imports the pipeline spec: a stage's resources and `[stages.x.slurm]` table
//! decide what its arrays ask for.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axbench_cache::{Digest, Store};

use super::files::{read_exit_file, write_job_spec};
use super::manager::{InFlight, Inner, Queued, SlurmStats, State, TaskEnd, TaskRecord};
use super::options::{SlurmConfig, StageRequest};
use crate::compile::spec::PipelineSpec;
use crate::run::executor::{ExecError, ExecOutcome, Executor, NodeJob};
use crate::stage::{CancelFlag, ProgressSink, Registry};

/// Log lines of the whole Slurm executor carry one target, the room's public path, which `RUST_LOG` filters name.
const LOG: &str = "axbench_engine::slurm";

/// Runs nodes as Slurm array tasks. See the module docs.
pub struct SlurmExecutor {
    inner: Arc<Inner>,
    manager: Option<std::thread::JoinHandle<()>>,
}

impl SlurmExecutor {
    /// An executor for the stages of `spec`, whose resources and `[stages.x.slurm]` tables decide
    /// what each stage's arrays ask for.
    pub fn new(cfg: SlurmConfig, store: Arc<Store>, spec: &PipelineSpec, registry: &Registry) -> SlurmExecutor {
        let mut stages = HashMap::new();
        for (name, s) in &spec.stages {
            let mut resources: BTreeMap<String, u32> = registry
                .get(&s.kind.value)
                .map(|k| k.resources().into_iter().map(|(c, n)| (c.to_string(), n)).collect())
                .unwrap_or_default();
            resources.extend(s.resources.iter().map(|(c, n)| (c.clone(), n.value)));
            stages.insert(name.clone(), StageRequest::resolve(&cfg, &s.slurm, &resources));
        }
        let inner = Arc::new(Inner {
            cfg,
            store,
            stages,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            batch_counter: AtomicU64::new(0),
        });
        inner.forget_finished_records();
        let i2 = inner.clone();
        let manager = std::thread::Builder::new()
            .name("slurm-manager".into())
            .spawn(move || i2.manage())
            .expect("spawn the slurm manager thread");
        SlurmExecutor {
            inner,
            manager: Some(manager),
        }
    }

    /// What was submitted and re-attached so far.
    pub fn stats(&self) -> SlurmStats {
        self.inner.state.lock().unwrap().stats.clone()
    }

    /// What stage `stage`'s arrays ask for (None for a stage not in the pipeline).
    pub fn request(&self, stage: &str) -> Option<&StageRequest> {
        self.inner.stages.get(stage)
    }

    /// Cancels every job this engine submitted or re-attached to (`scancel`) and fails every
    /// waiting node with `Cancelled`. Idempotent; what Ctrl-C ends in.
    pub fn cancel_all(&self) {
        self.inner.cancel_all();
    }
}

impl Drop for SlurmExecutor {
    fn drop(&mut self) {
        self.inner.state.lock().unwrap().shutdown = true;
        self.inner.wake.notify_all();
        if let Some(h) = self.manager.take() {
            let _ = h.join();
        }
    }
}

impl Executor for SlurmExecutor {
    fn execute(
        &self,
        job: &NodeJob,
        cancel: &CancelFlag,
        _progress: Arc<dyn ProgressSink>,
    ) -> Result<ExecOutcome, ExecError> {
        let inner = &self.inner;
        let store = &inner.store;
        // Computed since the plan (by a job an earlier engine submitted)?
        if let Some(outputs) = inner.cached(&job.key)? {
            return Ok(ExecOutcome::Cached { outputs });
        }
        if cancel.is_cancelled() || inner.state.lock().unwrap().cancelled {
            return Err(ExecError::Cancelled);
        }
        let (tx, rx) = mpsc::channel();
        match inner.reattach(job, tx.clone()) {
            Reattach::Finished(end) => return inner.collect(job, end),
            Reattach::Waiting => {}
            Reattach::No => {
                write_job_spec(store, job)?;
                let mut st = inner.state.lock().unwrap();
                if st.cancelled {
                    return Err(ExecError::Cancelled);
                }
                st.queue
                    .entry(job.stage.clone())
                    .or_default()
                    .push(Queued { job: job.clone(), tx });
                st.queued_since.get_or_insert_with(Instant::now);
                inner.wake.notify_all();
            }
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(end) => return inner.collect(job, end),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.is_cancelled() {
                        inner.cancel_all();
                        return Err(ExecError::Cancelled);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ExecError::Failed {
                        message: "the Slurm executor stopped watching this node".into(),
                        log: inner.record_path(&job.key),
                    });
                }
            }
        }
    }

    fn uses_local_resources(&self) -> bool {
        false
    }
}

enum Reattach {
    /// No earlier task to wait for: submit.
    No,
    /// Registered with the manager; the result comes through the channel.
    Waiting,
    /// The earlier task already finished successfully.
    Finished(TaskEnd),
}

impl Inner {
    /// The node's outputs if its manifest exists and every blob is intact.
    fn cached(&self, key: &Digest) -> Result<Option<BTreeMap<String, axbench_cache::OutputEntry>>, ExecError> {
        let store = &self.store;
        let reader = store.reader();
        if let Some(e) = store.lookup(reader.as_ref(), key)?
            && e.outputs
                .values()
                .all(|o| store.check_blob_with(reader.as_ref(), &o.digest))
        {
            return Ok(Some(e.outputs));
        }
        Ok(None)
    }

    /// Looks for a task an earlier engine submitted for this key.
    fn reattach(&self, job: &NodeJob, tx: mpsc::Sender<TaskEnd>) -> Reattach {
        let path = self.record_path(&job.key);
        let Ok(bytes) = std::fs::read(&path) else {
            return Reattach::No;
        };
        let Ok(rec) = serde_json::from_slice::<TaskRecord>(&bytes) else {
            return Reattach::No;
        };
        let batch_dir = self.slurm_dir().join("batches").join(&rec.batch);
        let mut st = self.state.lock().unwrap();
        if st.inflight.values().any(|t| t.key == job.key) {
            // Submitted by this engine already (another node with the same key): a second
            // submission waits on the node lock and then finds it cached.
            return Reattach::No;
        }
        let task = InFlight {
            key: job.key,
            job_id: rec.job_id.clone(),
            batch_dir,
            line: rec.index,
            task: rec.task(),
            tx,
            reattached: Some(job.clone()),
            gone: None,
        };
        if let Some((code, status)) = read_exit_file(&task.exit_path()) {
            // It finished. A success is collected (and verified); a failure is retried.
            if code == 0 {
                return Reattach::Finished(TaskEnd::Exit {
                    code,
                    status,
                    log: task.log_path(),
                });
            }
            return Reattach::No;
        }
        tracing::info!(target: LOG, node = %job.node, "re-attaching to Slurm task {}", task.task_id());
        st.stats.reattached += 1;
        st.squeue_due = true;
        st.next_task += 1;
        let id = st.next_task;
        st.inflight.insert(id, task);
        self.wake.notify_all();
        Reattach::Waiting
    }

    /// Turns a task's end into the node's outcome, verifying the outputs of a success.
    fn collect(&self, job: &NodeJob, end: TaskEnd) -> Result<ExecOutcome, ExecError> {
        match end {
            TaskEnd::Cancelled => Err(ExecError::Cancelled),
            TaskEnd::NotSubmitted { message, log } => Err(ExecError::Failed { message, log }),
            TaskEnd::Lost { state, log } => Err(ExecError::Failed {
                message: format!(
                    "the Slurm task ended ({state}) without an exit code: a time or memory limit, scancel or a node failure"
                ),
                log,
            }),
            TaskEnd::Exit { code, status, log } if code != 0 => {
                let why = node_error_line(&log, &job.key).unwrap_or_else(|| match status.as_str() {
                    "cancelled" => "cancelled (SIGTERM: scancel, or the task's time limit)".to_string(),
                    _ => describe_code(code),
                });
                Err(ExecError::Failed {
                    message: format!("exec-node exited with code {code}: {why}"),
                    log,
                })
            }
            TaskEnd::Exit { status, log, .. } => {
                let store = &self.store;
                let m = store.read_manifest(&job.key)?.ok_or_else(|| ExecError::Failed {
                    message: format!("exec-node exited 0 but wrote no manifest for key {} (is the cache at {} shared with the compute nodes?)", job.key.short(), store.root().display()),
                    log: log.clone(),
                })?;
                // Verification: every output re-hashed here, on the engine's view of the files.
                for (name, o) in &m.outputs {
                    if !store.check_blob(&o.digest) {
                        return Err(ExecError::Failed {
                            message: format!(
                                "output `{name}` ({}) is missing or does not match its digest",
                                o.digest.short()
                            ),
                            log,
                        });
                    }
                }
                let _ = store.lookup(None, &job.key);
                store.note_latest(&job.node, &job.key);
                let _ = std::fs::remove_file(self.record_path(&job.key));
                if status == "cached" {
                    Ok(ExecOutcome::Cached { outputs: m.outputs })
                } else {
                    Ok(ExecOutcome::Computed {
                        outputs: m.outputs,
                        duration_ms: m.duration_ms,
                    })
                }
            }
        }
    }
}

/// The last `error:` line that `key`'s node left in its task's log. A task that ran several
/// nodes logged them one after the other, each part starting with exec-node's line naming the
/// node's key: only that part counts. Without one (its job spec was unreadable), the last error
/// naming the key; in a log of no node at all (exec-node never started one), the last error.
fn node_error_line(log: &Path, key: &Digest) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let hex = key.to_hex();
    let error = |l: &str| l.trim().strip_prefix("error:").map(|m| m.trim().to_string());
    let mut current: Option<bool> = None;
    let mut found = false;
    let mut last = None;
    for l in text.lines() {
        if let Some(k) = node_start_key(l) {
            current = Some(k == hex);
            found |= k == hex;
        } else if current == Some(true)
            && let Some(m) = error(l)
        {
            last = Some(m);
        }
    }
    if found {
        return last;
    }
    let mut lines = text.lines().rev();
    if let Some(m) = lines.clone().filter(|l| l.contains(&hex)).find_map(error) {
        return Some(m);
    }
    if current.is_none() {
        return lines.find_map(error);
    }
    None
}

/// The key of the node whose part of a task log `line` starts: exec-node's
/// `exec-node: <node> (<kind> v<version>) key <64 hex digits> on <host>`.
fn node_start_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("exec-node: ")?;
    let (_, after) = rest.rsplit_once(" key ")?;
    let hex = after.split_whitespace().next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn describe_code(code: i32) -> String {
    match code {
        101 => "exec-node panicked before it could write an exit file (a full disk? see the log)".to_string(),
        127 => "the axbench binary was not found on the compute node (is it on a shared filesystem?)".to_string(),
        c if c > 128 => format!("killed by signal {} (out of memory, or a limit?)", c - 128),
        c => format!("exit code {c}; see the log"),
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<SlurmExecutor>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_error_is_read_from_its_own_part_of_a_shared_task_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        let (a, b, c) = (
            axbench_cache::hash_bytes(b"a"),
            axbench_cache::hash_bytes(b"b"),
            axbench_cache::hash_bytes(b"c"),
        );
        std::fs::write(
            &log,
            format!(
                "exec-node: node 1 of 3: key {a}\nexec-node: s[i=1] (test.fail v1) key {a} on h\nerror: boom a\n\
                 exec-node: node 2 of 3: key {b}\nerror: exec-node: /c/jobs/{b}.json: no job spec\n\
                 exec-node: node 3 of 3: key {c}\nexec-node: s[i=3] (test.fail v1) key {c} on h\nerror: boom c\n"
            ),
        )
        .unwrap();
        assert_eq!(node_error_line(&log, &a).as_deref(), Some("boom a"));
        assert_eq!(
            node_error_line(&log, &b).as_deref(),
            Some(format!("exec-node: /c/jobs/{b}.json: no job spec").as_str())
        );
        assert_eq!(node_error_line(&log, &c).as_deref(), Some("boom c"));
        // A node without a part and no line naming it: nothing another node said.
        assert_eq!(node_error_line(&log, &axbench_cache::hash_bytes(b"d")), None);
        // One node per task: the last error, as always.
        std::fs::write(&log, "something\nerror: first\nerror: second\n").unwrap();
        assert_eq!(node_error_line(&log, &a).as_deref(), Some("second"));
    }
}
