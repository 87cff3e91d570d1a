//! The manager thread behind the Slurm executor, and the state it shares with the waiting `execute` calls.
//!
//! `execute` queues a node ([`Queued`]) and blocks on a channel; the thread submits every node of one stage queued
//! within the batch window as one job array, records each submitted node (`<cache>/slurm/keys/<key>.json`), polls
//! the exit files and asks squeue now and then about tasks without one, and sends each node its [`TaskEnd`].
//!
//! Imports `options`, `files` and `squeue` from this room and [`NodeJob`] from the executors; never the pipeline
//! spec (what a stage asks for was resolved into [`StageRequest`]s when the executor was made).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axbench_cache::{Digest, Store, write_atomic};
use serde::{Deserialize, Serialize};

use super::files::{job_script, read_exit_file};
use super::options::{SlurmConfig, SlurmOptions, StageRequest};
use super::squeue::{TaskState, squeue};
use crate::run::executor::{NodeJob, hostname};

/// Log lines of the whole Slurm executor carry one target, the room's public path, which `RUST_LOG` filters name.
const LOG: &str = "axbench_engine::slurm";

/// Counts of what the executor did, for the run report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SlurmStats {
    /// Job arrays submitted.
    pub arrays: usize,
    /// Array tasks submitted (one per `nodes_per_task` nodes of a stage, one per node by default).
    pub tasks: usize,
    /// Nodes submitted (in those tasks).
    pub nodes: usize,
    /// Nodes whose job, submitted by an earlier engine, was still queued or running.
    pub reattached: usize,
    /// Job ids this engine submitted, in order.
    pub job_ids: Vec<String>,
}

/// The record of one submitted node: `<cache>/slurm/keys/<key>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TaskRecord {
    pub(super) job_id: String,
    pub(super) batch: String,
    /// The node's line in the batch's `keys` (its exit file is `<index>.exit`).
    pub(super) index: usize,
    /// The array task that runs it (`<job_id>_<task>` in squeue, `<task>.log`); absent in
    /// records of one node per task, where it is `index`.
    #[serde(default)]
    pub(super) task: Option<usize>,
    pub(super) node: String,
}

impl TaskRecord {
    pub(super) fn task(&self) -> usize {
        self.task.unwrap_or(self.index)
    }
}

/// The record of one array: `<batch>/submit.json`.
#[derive(Serialize)]
struct SubmitRecord<'a> {
    job_id: &'a str,
    stage: &'a str,
    nodes_per_task: u32,
    nodes: Vec<&'a str>,
    keys: Vec<String>,
    sbatch: &'a [String],
    submitted_unix_ms: u64,
    host: String,
}

/// How an array task ended, as the manager tells the waiting `execute` call.
pub(super) enum TaskEnd {
    /// The exit file says `code`.
    Exit {
        code: i32,
        status: String,
        log: PathBuf,
    },
    /// squeue no longer lists it and it left no exit file.
    Lost {
        state: String,
        log: PathBuf,
    },
    /// sbatch failed.
    NotSubmitted {
        message: String,
        log: PathBuf,
    },
    Cancelled,
}

/// A node waiting to be submitted, and the channel its `execute` call waits on.
pub(super) struct Queued {
    pub(super) job: NodeJob,
    pub(super) tx: mpsc::Sender<TaskEnd>,
}

/// A submitted node: where its exit file and log are, and whom to tell when it ends.
pub(super) struct InFlight {
    pub(super) key: Digest,
    pub(super) job_id: String,
    pub(super) batch_dir: PathBuf,
    /// The node's line in the batch's `keys`: names its exit file.
    pub(super) line: usize,
    /// The array task that runs it (and maybe other lines): names its squeue id and log.
    pub(super) task: usize,
    pub(super) tx: mpsc::Sender<TaskEnd>,
    /// Submitted by an earlier engine: resubmit (rather than fail) if it turns out gone.
    pub(super) reattached: Option<NodeJob>,
    /// When squeue first stopped listing it as alive, and the last state it showed.
    pub(super) gone: Option<(Instant, String)>,
}

impl InFlight {
    pub(super) fn task_id(&self) -> String {
        format!("{}_{}", self.job_id, self.task)
    }
    pub(super) fn exit_path(&self) -> PathBuf {
        self.batch_dir.join(format!("{}.exit", self.line))
    }
    pub(super) fn log_path(&self) -> PathBuf {
        self.batch_dir.join(format!("{}.log", self.task))
    }
}

/// What the manager thread and the `execute` calls share, behind [`Inner::state`].
#[derive(Default)]
pub(super) struct State {
    /// Stage → nodes waiting to be submitted.
    pub(super) queue: BTreeMap<String, Vec<Queued>>,
    pub(super) queued_since: Option<Instant>,
    /// Submitted tasks by a number of our own (one key may be in flight twice: two stages
    /// with identical work share a key, and exec-node's lock makes the second one a no-op).
    pub(super) inflight: HashMap<u64, InFlight>,
    pub(super) next_task: u64,
    /// Batches this engine submitted: tasks not yet finished, and whether one failed.
    pub(super) batches: HashMap<PathBuf, (usize, bool)>,
    pub(super) squeue_due: bool,
    pub(super) cancelled: bool,
    pub(super) shutdown: bool,
    pub(super) stats: SlurmStats,
}

/// The executor's shared half: owned by [`SlurmExecutor`](super::SlurmExecutor) and its manager thread alike.
pub(super) struct Inner {
    pub(super) cfg: SlurmConfig,
    pub(super) store: Arc<Store>,
    /// Pipeline stage name → what its arrays ask for.
    pub(super) stages: HashMap<String, StageRequest>,
    pub(super) state: Mutex<State>,
    /// Wakes the manager thread: a node was queued or re-attached, or the executor is cancelled or dropped.
    pub(super) wake: Condvar,
    pub(super) batch_counter: AtomicU64,
}

impl Inner {
    pub(super) fn slurm_dir(&self) -> PathBuf {
        self.store.root().join("slurm")
    }

    /// What stage `stage`'s arrays ask for (the run's defaults for a stage not in the pipeline).
    pub(super) fn request(&self, stage: &str) -> std::borrow::Cow<'_, StageRequest> {
        match self.stages.get(stage) {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(StageRequest::resolve(
                &self.cfg,
                &SlurmOptions::default(),
                &BTreeMap::new(),
            )),
        }
    }

    pub(super) fn record_path(&self, key: &Digest) -> PathBuf {
        self.slurm_dir().join("keys").join(format!("{}.json", key.to_hex()))
    }

    /// Drops task records of nodes that are in the cache by now (their task finished while no
    /// engine watched; the plan finds them fresh and never asks about them again).
    pub(super) fn forget_finished_records(&self) {
        let dir = self.slurm_dir().join("keys");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(key) = name.strip_suffix(".json").and_then(|h| h.parse::<Digest>().ok())
                && self.store.manifest_path(&key).exists()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub(super) fn cancel_all(&self) {
        let (ids, waiting) = {
            let mut st = self.state.lock().unwrap();
            if st.cancelled {
                return;
            }
            st.cancelled = true;
            let mut ids: Vec<String> = st.inflight.values().map(|t| t.job_id.clone()).collect();
            ids.sort();
            ids.dedup();
            let mut waiting: Vec<mpsc::Sender<TaskEnd>> =
                st.queue.values_mut().flat_map(|q| q.drain(..).map(|q| q.tx)).collect();
            for (_, t) in st.inflight.drain() {
                let _ = std::fs::remove_file(self.record_path(&t.key));
                waiting.push(t.tx);
            }
            (ids, waiting)
        };
        if !ids.is_empty() {
            tracing::warn!(target: LOG, "cancelling Slurm jobs {}", ids.join(","));
            match Command::new("scancel").args(&ids).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::error!(target: LOG,
                    "scancel {}: {}",
                    ids.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => tracing::error!(target: LOG, "cannot run scancel: {e}"),
            }
        }
        for tx in waiting {
            let _ = tx.send(TaskEnd::Cancelled);
        }
        self.wake.notify_all();
    }

    /// The manager thread: submits queued nodes as arrays, polls exit files, asks squeue.
    pub(super) fn manage(&self) {
        let mut last_squeue = Instant::now();
        loop {
            let batches = {
                let mut st = self.state.lock().unwrap();
                let timeout = self.cfg.poll.min(self.cfg.batch_window);
                st = self.wake.wait_timeout(st, timeout).unwrap().0;
                if st.shutdown {
                    return;
                }
                if st.cancelled {
                    continue;
                }
                match st.queued_since {
                    Some(t) if t.elapsed() >= self.cfg.batch_window => {
                        st.queued_since = None;
                        std::mem::take(&mut st.queue)
                    }
                    _ => BTreeMap::new(),
                }
            };
            for (stage, mut items) in batches {
                // An array holds at most `max_array` tasks.
                let per_array = self.cfg.max_array * self.request(&stage).nodes_per_task as usize;
                while !items.is_empty() {
                    let rest = items.split_off(items.len().min(per_array));
                    self.submit(&stage, items);
                    items = rest;
                }
            }
            self.poll_exit_files();
            let due = {
                let mut st = self.state.lock().unwrap();
                let since = last_squeue.elapsed();
                // Re-attached tasks at once; tasks squeue stopped listing every 2 s until their
                // grace ends; everything else every `squeue_every`.
                let due = std::mem::take(&mut st.squeue_due)
                    || since >= self.cfg.squeue_every
                    || (since >= Duration::from_secs(2) && st.inflight.values().any(|t| t.gone.is_some()));
                due && !st.inflight.is_empty()
            };
            if due {
                last_squeue = Instant::now();
                self.check_squeue();
            }
        }
    }

    fn poll_exit_files(&self) {
        // Stat the files without holding the lock (a network filesystem may be slow).
        let paths: Vec<(u64, PathBuf)> = self
            .state
            .lock()
            .unwrap()
            .inflight
            .iter()
            .map(|(id, t)| (*id, t.exit_path()))
            .collect();
        // Written atomically, but a network filesystem may show the name before the bytes.
        let ended: Vec<(u64, i32, String)> = paths
            .into_iter()
            .filter_map(|(id, p)| read_exit_file(&p).map(|(code, status)| (id, code, status)))
            .collect();
        let mut st = self.state.lock().unwrap();
        for (id, code, status) in ended {
            let Some(t) = st.inflight.remove(&id) else { continue };
            if let Some(b) = st.batches.get_mut(&t.batch_dir) {
                b.0 -= 1;
                b.1 |= code != 0;
            }
            let _ = t.tx.send(TaskEnd::Exit {
                code,
                status,
                log: t.log_path(),
            });
        }
        // A batch whose every task succeeded leaves nothing worth keeping (the node logs are
        // in logs/); a batch with a failure keeps its Slurm logs, which the report points at.
        let finished: Vec<PathBuf> = st
            .batches
            .iter()
            .filter(|(_, (left, failed))| *left == 0 && !failed)
            .map(|(d, _)| d.clone())
            .collect();
        for d in finished {
            st.batches.remove(&d);
            let _ = std::fs::remove_dir_all(&d);
        }
        st.batches.retain(|_, (left, _)| *left > 0);
    }

    fn check_squeue(&self) {
        let ids: Vec<String> = {
            let st = self.state.lock().unwrap();
            let mut ids: Vec<String> = st.inflight.values().map(|t| t.job_id.clone()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let states = match squeue(&ids) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: LOG, "{e}; will ask again");
                return;
            }
        };
        let mut resubmit = Vec::new();
        let mut st = self.state.lock().unwrap();
        let mut lost = Vec::new();
        for (id, t) in st.inflight.iter_mut() {
            let state = states.get(&t.task_id()).or_else(|| states.get(&t.job_id));
            match state {
                Some(TaskState::Alive(_)) => t.gone = None,
                Some(TaskState::Ended(s)) => {
                    t.gone.get_or_insert_with(|| (Instant::now(), s.clone()));
                }
                None => {
                    t.gone
                        .get_or_insert_with(|| (Instant::now(), "no longer known to Slurm".into()));
                }
            }
            if let Some((since, _)) = &t.gone
                && since.elapsed() >= self.cfg.gone_grace
                && !t.exit_path().exists()
            {
                lost.push(*id);
            }
        }
        for id in lost {
            let t = st.inflight.remove(&id).expect("listed above");
            let state = t.gone.as_ref().map(|g| g.1.clone()).unwrap_or_default();
            if let Some(b) = st.batches.get_mut(&t.batch_dir) {
                b.0 -= 1;
                b.1 = true;
            }
            let _ = std::fs::remove_file(self.record_path(&t.key));
            let task_id = t.task_id();
            match t.reattached {
                // Died while no engine watched it: run it again.
                Some(job) => {
                    tracing::warn!(target: LOG, node = %job.node, "Slurm task {} ended ({state}) without an exit code; resubmitting", task_id);
                    resubmit.push(Queued { job, tx: t.tx });
                }
                None => {
                    let log = t.log_path();
                    let _ = t.tx.send(TaskEnd::Lost { state, log });
                }
            }
        }
        if !resubmit.is_empty() {
            for q in resubmit {
                st.queue.entry(q.job.stage.clone()).or_default().push(q);
            }
            st.queued_since.get_or_insert_with(Instant::now);
        }
    }

    /// Submits `items` (nodes of one stage) as one job array.
    fn submit(&self, stage: &str, items: Vec<Queued>) {
        let n = self.batch_counter.fetch_add(1, Ordering::Relaxed);
        let batch = format!("{}-{}-{n}", axbench_cache_unix_ms(), std::process::id());
        let batch_dir = self.slurm_dir().join("batches").join(&batch);
        let fail_all = |items: Vec<Queued>, message: String, log: PathBuf| {
            tracing::error!(target: LOG, "{message}");
            for q in items {
                let _ = q.tx.send(TaskEnd::NotSubmitted {
                    message: message.clone(),
                    log: log.clone(),
                });
            }
        };
        let req = self.request(stage);
        let args = req.sbatch_args(&format!("axb-{stage}"), items.len(), &batch_dir);
        if let Err(e) = self.write_batch(&batch_dir, stage, req.nodes_per_task, &items) {
            return fail_all(
                items,
                format!("cannot write Slurm batch {}: {e}", batch_dir.display()),
                batch_dir,
            );
        }
        let out = Command::new("sbatch").args(&args).output();
        let job_id = match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                // `--parsable` prints `id` or `id;cluster`.
                text.trim().split(';').next().unwrap_or("").to_string()
            }
            Ok(o) => {
                let log = batch_dir.join("sbatch.err");
                let _ = std::fs::write(&log, &o.stderr);
                let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                return fail_all(items, format!("sbatch {} failed: {err}", args.join(" ")), log);
            }
            Err(e) => {
                return fail_all(
                    items,
                    format!("cannot run sbatch (is Slurm installed here?): {e}"),
                    batch_dir,
                );
            }
        };
        if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
            return fail_all(items, format!("sbatch printed no job id ({job_id:?})"), batch_dir);
        }
        let k = req.nodes_per_task as usize;
        tracing::info!(target: LOG,
            "submitted {} node(s) of stage {stage} in {} task(s) as Slurm job {job_id}: sbatch {}",
            items.len(),
            req.tasks_for(items.len()),
            args.join(" ")
        );
        let rec = SubmitRecord {
            job_id: &job_id,
            stage,
            nodes_per_task: req.nodes_per_task,
            nodes: items.iter().map(|q| q.job.node.as_str()).collect(),
            keys: items.iter().map(|q| q.job.key.to_hex()).collect(),
            sbatch: &args,
            submitted_unix_ms: axbench_cache_unix_ms(),
            host: hostname(),
        };
        let _ = write_atomic(
            &batch_dir.join("submit.json"),
            &serde_json::to_vec_pretty(&rec).expect("serializes"),
        );
        let mut st = self.state.lock().unwrap();
        st.stats.arrays += 1;
        st.stats.tasks += req.tasks_for(items.len());
        st.stats.nodes += items.len();
        st.stats.job_ids.push(job_id.clone());
        st.batches.insert(batch_dir.clone(), (items.len(), false));
        let cancelled = st.cancelled;
        for (index, q) in items.into_iter().enumerate() {
            let rec = TaskRecord {
                job_id: job_id.clone(),
                batch: batch.clone(),
                index,
                task: Some(index / k),
                node: q.job.node.clone(),
            };
            let _ = write_atomic(
                &self.record_path(&q.job.key),
                &serde_json::to_vec(&rec).expect("serializes"),
            );
            st.next_task += 1;
            let id = st.next_task;
            st.inflight.insert(
                id,
                InFlight {
                    key: q.job.key,
                    job_id: job_id.clone(),
                    batch_dir: batch_dir.clone(),
                    line: index,
                    task: index / k,
                    tx: q.tx,
                    reattached: None,
                    gone: None,
                },
            );
        }
        drop(st);
        if cancelled {
            // Ctrl-C came while sbatch ran: cancel this one too.
            let _ = Command::new("scancel").arg(&job_id).output();
        }
    }

    fn write_batch(&self, dir: &Path, stage: &str, nodes_per_task: u32, items: &[Queued]) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(self.slurm_dir().join("keys"))?;
        let keys: String = items.iter().map(|q| format!("{}\n", q.job.key.to_hex())).collect();
        write_atomic(&dir.join("keys"), keys.as_bytes())?;
        let cache = std::fs::canonicalize(self.store.root())?;
        let script = job_script(&self.cfg.axbench, &cache, dir, stage, nodes_per_task);
        let path = dir.join("job.sh");
        let mut f = std::fs::File::create(&path)?;
        f.write_all(script.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }
}

fn axbench_cache_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_records_name_line_and_task_and_old_ones_read_as_one_node_per_task() {
        let old: TaskRecord = serde_json::from_str(r#"{"job_id":"12","batch":"b","index":3,"node":"n"}"#).unwrap();
        assert_eq!((old.index, old.task()), (3, 3));
        let new = TaskRecord {
            job_id: "12".into(),
            batch: "b".into(),
            index: 5,
            task: Some(2),
            node: "n".into(),
        };
        let back: TaskRecord = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
        assert_eq!(back.task(), 2);
        // In flight: squeue id and log by task, exit file by line.
        let t = InFlight {
            key: axbench_cache::hash_bytes(b"k"),
            job_id: "12".into(),
            batch_dir: "/b".into(),
            line: 5,
            task: 2,
            tx: mpsc::channel().0,
            reattached: None,
            gone: None,
        };
        assert_eq!(t.task_id(), "12_2");
        assert_eq!(t.exit_path(), Path::new("/b/5.exit"));
        assert_eq!(t.log_path(), Path::new("/b/2.log"));
    }
}
