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
//! are off ([`crate::Executor::uses_local_resources`]): Slurm allocates the GPUs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axbench_cache::{Digest, Store, StoreError, write_atomic};
use serde::{Deserialize, Serialize};

use crate::compile::spec::PipelineSpec;
use crate::run::executor::{ExecError, ExecOutcome, Executor, NodeJob};
use crate::stage::{CancelFlag, ProgressSink, Registry};

// ---- options ----------------------------------------------------------------------------------

/// What a stage asks Slurm for: `[stages.x.slurm]` in a pipeline, and the run-wide defaults from
/// `axbench run --executor slurm --partition … --gres … --time … --slurm-opt K=V`. Unset fields
/// fall back to the run's defaults; none of this enters a node key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres`, e.g. `gpu:1` or `gpu:a100:1`. Set on a stage, it applies even to a CPU stage;
    /// the run-wide value applies to GPU stages only.
    pub gres: Option<String>,
    /// `--time`, e.g. `2:00:00` or `1-00:00:00`.
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// The `%` limit of this stage's job arrays: at most this many of its tasks run at once.
    pub array_limit: Option<u32>,
    /// Nodes one array task runs, one after the other in one `axbench exec-node` process
    /// (default 1). For model stages with many small nodes: the model is loaded once per task
    /// instead of once per node. `time` is then the limit of all of them together.
    pub nodes_per_task: Option<u32>,
    /// Any other sbatch option, `name = "value"` → `--name=value` (`""` → `--name`),
    /// e.g. `{ account = "proj1", qos = "long", constraint = "a100" }`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl SlurmOptions {
    /// Fields set in `other` win; `options` are merged key by key.
    pub fn merge(&mut self, other: SlurmOptions) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(partition, gres, time, cpus_per_task, mem, array_limit, nodes_per_task);
        self.options.extend(other.options);
    }

    /// Rejects values that cannot be passed to sbatch safely. `Err((".field", message))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let strings = [
            ("partition", &self.partition),
            ("gres", &self.gres),
            ("time", &self.time),
            ("mem", &self.mem),
        ];
        for (field, v) in strings {
            if let Some(v) = v {
                check_value(v).map_err(|m| (format!(".{field}"), m))?;
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err((".cpus_per_task".into(), "must be at least 1".into()));
        }
        if self.array_limit == Some(0) {
            return Err((".array_limit".into(), "must be at least 1".into()));
        }
        if self.nodes_per_task == Some(0) {
            return Err((".nodes_per_task".into(), "must be at least 1".into()));
        }
        for (k, v) in &self.options {
            check_option_name(k).map_err(|m| (format!(".options.{k}"), m))?;
            check_value(v).map_err(|m| (format!(".options.{k}"), m))?;
        }
        Ok(())
    }

    /// Parses one `--slurm-opt K=V` (or `K` for a flag without value).
    pub fn parse_opt(&mut self, kv: &str) -> Result<(), String> {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = k.trim_start_matches("--");
        check_option_name(k)?;
        check_value(v)?;
        self.options.insert(k.to_string(), v.to_string());
        Ok(())
    }
}

fn check_value(v: &str) -> Result<(), String> {
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{v:?} contains a control character"));
    }
    Ok(())
}

fn check_option_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        return Err(format!("`{k}` is not an sbatch option name (letters, digits, `-`)"));
    }
    // These are how the executor itself runs a batch: changing them would break it.
    const OURS: &[&str] = &[
        "array", "output", "error", "parsable", "chdir", "wrap", "job-name", "export",
    ];
    if OURS.contains(&k) {
        return Err(format!("`--{k}` is set by the Slurm executor itself"));
    }
    Ok(())
}

/// Run-wide settings of the Slurm executor.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// Defaults for every stage (`--partition`, `--gres` (GPU stages only), `--time`,
    /// `--slurm-opt`).
    pub defaults: SlurmOptions,
    /// The `%` limit of job arrays whose stage sets no `array_limit`.
    pub array_limit: u32,
    /// The `axbench` binary the array tasks run; it must be reachable at this path on the
    /// compute nodes (a shared filesystem).
    pub axbench: PathBuf,
    /// Resource classes that mark a GPU stage (it gets `--gres`).
    pub gpu_classes: Vec<String>,
    /// Nodes that become ready within this window are submitted as one array.
    pub batch_window: Duration,
    /// How often exit files are checked.
    pub poll: Duration,
    /// How often squeue is asked about tasks without an exit file.
    pub squeue_every: Duration,
    /// How long a task may be gone from squeue without an exit file before it counts as dead
    /// (covers attribute caching on network filesystems).
    pub gone_grace: Duration,
    /// Largest array submitted at once (Slurm's MaxArraySize defaults to 1001).
    pub max_array: usize,
}

impl SlurmConfig {
    pub fn new(axbench: PathBuf) -> SlurmConfig {
        SlurmConfig {
            defaults: SlurmOptions::default(),
            array_limit: 100,
            axbench,
            gpu_classes: vec!["gpu".into(), "model".into()],
            batch_window: Duration::from_millis(500),
            poll: Duration::from_millis(500),
            squeue_every: Duration::from_secs(10),
            gone_grace: Duration::from_secs(20),
            max_array: 1000,
        }
    }
}

/// What one stage's arrays ask for, after merging the run's defaults and the stage's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageRequest {
    pub opts: SlurmOptions,
    pub gpu: bool,
    pub array_limit: u32,
    /// Nodes per array task (at least 1).
    pub nodes_per_task: u32,
}

impl StageRequest {
    /// Resolves the request of a stage that holds `resources` and sets `stage` in its TOML.
    pub fn resolve(cfg: &SlurmConfig, stage: &SlurmOptions, resources: &BTreeMap<String, u32>) -> StageRequest {
        let gpu = resources.keys().any(|c| cfg.gpu_classes.contains(c));
        let mut opts = cfg.defaults.clone();
        if !gpu {
            opts.gres = None;
        }
        opts.merge(stage.clone());
        let array_limit = opts.array_limit.unwrap_or(cfg.array_limit);
        let nodes_per_task = opts.nodes_per_task.unwrap_or(1).max(1);
        StageRequest {
            opts,
            gpu,
            array_limit,
            nodes_per_task,
        }
    }

    /// How many array tasks run `n` nodes: one per `nodes_per_task` of them.
    pub fn tasks_for(&self, n: usize) -> usize {
        n.div_ceil(self.nodes_per_task as usize)
    }

    /// The sbatch arguments of an array for `n` nodes ([`Self::tasks_for`] tasks) whose files
    /// live in `batch_dir`.
    pub fn sbatch_args(&self, job_name: &str, n: usize, batch_dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={job_name}"),
            format!("--array=0-{}%{}", self.tasks_for(n).saturating_sub(1), self.array_limit),
            format!("--output={}/%a.log", batch_dir.display()),
            format!("--chdir={}", batch_dir.display()),
        ];
        let o = &self.opts;
        if let Some(v) = &o.partition {
            a.push(format!("--partition={v}"));
        }
        if let Some(v) = &o.gres {
            a.push(format!("--gres={v}"));
        }
        if let Some(v) = &o.time {
            a.push(format!("--time={v}"));
        }
        if let Some(v) = o.cpus_per_task {
            a.push(format!("--cpus-per-task={v}"));
        }
        if let Some(v) = &o.mem {
            a.push(format!("--mem={v}"));
        }
        for (k, v) in &o.options {
            a.push(if v.is_empty() {
                format!("--{k}")
            } else {
                format!("--{k}={v}")
            });
        }
        a.push(batch_dir.join("job.sh").display().to_string());
        a
    }
}

// ---- job specs in the cache (shared with `axbench exec-node`) ---------------------------------

/// Where the serialized [`NodeJob`] of `key` is kept: `<cache>/jobs/<key>.json`.
pub fn job_spec_path(store: &Store, key: &Digest) -> PathBuf {
    store.root().join("jobs").join(format!("{}.json", key.to_hex()))
}

/// Writes a node's job spec into the cache (atomically), for `axbench exec-node` to replay.
pub fn write_job_spec(store: &Store, job: &NodeJob) -> Result<PathBuf, StoreError> {
    let path = job_spec_path(store, &job.key);
    let bytes = serde_json::to_vec_pretty(job).map_err(|source| StoreError::Manifest {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &bytes).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A job spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobSpecError {
    #[error("{path}: no job spec for this key (was it submitted against another --cache-dir?)")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a job spec: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: field `key` is {found}, but the file is named after {expected}")]
    KeyMismatch {
        path: PathBuf,
        found: Digest,
        expected: Digest,
    },
}

/// Reads the job spec of `key` back.
pub fn read_job_spec(store: &Store, key: &Digest) -> Result<NodeJob, JobSpecError> {
    let path = job_spec_path(store, key);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(JobSpecError::Missing { path }),
        Err(source) => return Err(JobSpecError::Io { path, source }),
    };
    let job: NodeJob = serde_json::from_slice(&bytes).map_err(|source| JobSpecError::Parse {
        path: path.clone(),
        source,
    })?;
    if job.key != *key {
        return Err(JobSpecError::KeyMismatch {
            path,
            found: job.key,
            expected: *key,
        });
    }
    Ok(job)
}

/// Writes an exit-code file: the code on the first line, a word on the second (`computed`,
/// `cached`, `failed`, `cancelled`, `crashed`). Atomic, so a reader never sees half of it.
pub fn write_exit_file(path: &Path, code: i32, status: &str) -> std::io::Result<()> {
    write_atomic(path, format!("{code}\n{status}\n").as_bytes())
}

/// Reads an exit-code file: `None` if absent or not written completely.
pub fn read_exit_file(path: &Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let code = lines.next()?.trim().parse().ok()?;
    Some((code, lines.next().unwrap_or("").trim().to_string()))
}

// ---- squeue -----------------------------------------------------------------------------------

/// A task's state as squeue reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Pending, running, completing, suspended, requeued…: an exit file is still to come.
    Alive(String),
    /// Completed, failed, cancelled, timed out…: its exit file is written or never will be.
    Ended(String),
}

/// Parses `squeue -h -r -t all -o %i|%T` output into `"job_task"` (or `"job"`) → state.
pub fn parse_squeue(out: &str) -> HashMap<String, TaskState> {
    const ENDED: &[&str] = &[
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "REVOKED",
    ];
    out.lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once('|')?;
            let state = state.split_whitespace().next().unwrap_or("").to_string();
            let st = if ENDED.contains(&state.as_str()) {
                TaskState::Ended(state)
            } else {
                TaskState::Alive(state)
            };
            Some((id.trim().to_string(), st))
        })
        .collect()
}

/// Asks squeue about `job_ids` (including finished jobs it still remembers). `Ok(empty)` when
/// Slurm knows none of them; `Err` when squeue cannot be run or slurmctld does not answer.
fn squeue(job_ids: &[String]) -> Result<HashMap<String, TaskState>, String> {
    if job_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let out = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-o", "%i|%T", "-j", &job_ids.join(",")])
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid job id") {
            return Ok(HashMap::new());
        }
        return Err(format!("squeue failed: {}", err.trim()));
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout)))
}

/// Whether a Slurm cluster answers here (`sinfo` works): the tests' skip condition.
pub fn cluster_reachable() -> Result<(), String> {
    let out = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map_err(|e| format!("sinfo: {e}"))?;
    if !out.status.success() {
        return Err(format!("sinfo failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

// ---- the executor -----------------------------------------------------------------------------

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
struct TaskRecord {
    job_id: String,
    batch: String,
    /// The node's line in the batch's `keys` (its exit file is `<index>.exit`).
    index: usize,
    /// The array task that runs it (`<job_id>_<task>` in squeue, `<task>.log`); absent in
    /// records of one node per task, where it is `index`.
    #[serde(default)]
    task: Option<usize>,
    node: String,
}

impl TaskRecord {
    fn task(&self) -> usize {
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
enum TaskEnd {
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

struct Queued {
    job: NodeJob,
    tx: mpsc::Sender<TaskEnd>,
}

struct InFlight {
    key: Digest,
    job_id: String,
    batch_dir: PathBuf,
    /// The node's line in the batch's `keys`: names its exit file.
    line: usize,
    /// The array task that runs it (and maybe other lines): names its squeue id and log.
    task: usize,
    tx: mpsc::Sender<TaskEnd>,
    /// Submitted by an earlier engine: resubmit (rather than fail) if it turns out gone.
    reattached: Option<NodeJob>,
    /// When squeue first stopped listing it as alive, and the last state it showed.
    gone: Option<(Instant, String)>,
}

impl InFlight {
    fn task_id(&self) -> String {
        format!("{}_{}", self.job_id, self.task)
    }
    fn exit_path(&self) -> PathBuf {
        self.batch_dir.join(format!("{}.exit", self.line))
    }
    fn log_path(&self) -> PathBuf {
        self.batch_dir.join(format!("{}.log", self.task))
    }
}

#[derive(Default)]
struct State {
    /// Stage → nodes waiting to be submitted.
    queue: BTreeMap<String, Vec<Queued>>,
    queued_since: Option<Instant>,
    /// Submitted tasks by a number of our own (one key may be in flight twice: two stages
    /// with identical work share a key, and exec-node's lock makes the second one a no-op).
    inflight: HashMap<u64, InFlight>,
    next_task: u64,
    /// Batches this engine submitted: tasks not yet finished, and whether one failed.
    batches: HashMap<PathBuf, (usize, bool)>,
    squeue_due: bool,
    cancelled: bool,
    shutdown: bool,
    stats: SlurmStats,
}

struct Inner {
    cfg: SlurmConfig,
    store: Arc<Store>,
    /// Pipeline stage name → what its arrays ask for.
    stages: HashMap<String, StageRequest>,
    state: Mutex<State>,
    wake: Condvar,
    batch_counter: AtomicU64,
}

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
    fn slurm_dir(&self) -> PathBuf {
        self.store.root().join("slurm")
    }

    /// What stage `stage`'s arrays ask for (the run's defaults for a stage not in the pipeline).
    fn request(&self, stage: &str) -> std::borrow::Cow<'_, StageRequest> {
        match self.stages.get(stage) {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(StageRequest::resolve(
                &self.cfg,
                &SlurmOptions::default(),
                &BTreeMap::new(),
            )),
        }
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        self.slurm_dir().join("keys").join(format!("{}.json", key.to_hex()))
    }

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

    /// Drops task records of nodes that are in the cache by now (their task finished while no
    /// engine watched; the plan finds them fresh and never asks about them again).
    fn forget_finished_records(&self) {
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
        tracing::info!(node = %job.node, "re-attaching to Slurm task {}", task.task_id());
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

    fn cancel_all(&self) {
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
            tracing::warn!("cancelling Slurm jobs {}", ids.join(","));
            match Command::new("scancel").args(&ids).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::error!(
                    "scancel {}: {}",
                    ids.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => tracing::error!("cannot run scancel: {e}"),
            }
        }
        for tx in waiting {
            let _ = tx.send(TaskEnd::Cancelled);
        }
        self.wake.notify_all();
    }

    /// The manager thread: submits queued nodes as arrays, polls exit files, asks squeue.
    fn manage(&self) {
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
                tracing::warn!("{e}; will ask again");
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
                    tracing::warn!(node = %job.node, "Slurm task {} ended ({state}) without an exit code; resubmitting", task_id);
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
            tracing::error!("{message}");
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
        tracing::info!(
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
            host: crate::run::executor::hostname(),
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

/// The batch script of one array: task `i` runs one `axbench exec-node` for lines
/// `[i*k, i*k+k)` of `keys` (numbered from 0; `k` = `nodes_per_task`), one node after the other,
/// and makes sure every one of those lines has an exit file `<line>.exit` afterwards (exec-node
/// writes them; the script does for the lines exec-node did not reach when it died, e.g. killed
/// by the OOM killer).
pub fn job_script(axbench: &Path, cache: &Path, batch_dir: &Path, stage: &str, nodes_per_task: u32) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        r#"#!/bin/sh
# axbench: stage `{stage}`, {k} node(s) per Slurm array task; their keys are in ./keys.
dir={dir}
k={k}
i=${{SLURM_ARRAY_TASK_ID:?axbench: job.sh runs as a Slurm array task}}
first=$((i * k))
keys=$(sed -n "$((first + 1)),$((first + k))p" "$dir/keys")
# One exit file per key, in the keys' order: <line>.exit.
set --
l=$first
for key in $keys; do
  set -- "$@" --exit-file "$dir/$l.exit"
  l=$((l + 1))
done
{axbench} exec-node $keys --cache-dir {cache} "$@"
code=$?
# 0, 1, 2 and 130 are exec-node's own codes, after it wrote every exit file (and the engine may
# have removed this batch since); any other code means it died first (a signal, no binary): the
# lines it left without an exit file get one.
case $code in
  0|1|2|130) ;;
  *)
    l=$first
    for key in $keys; do
      if [ ! -e "$dir/$l.exit" ]; then
        printf '%s\ncrashed\n' "$code" > "$dir/$l.exit.tmp" && mv "$dir/$l.exit.tmp" "$dir/$l.exit"
      fi
      l=$((l + 1))
    done
    ;;
esac
exit $code
"#,
        dir = q(batch_dir),
        axbench = q(axbench),
        cache = q(cache),
        k = nodes_per_task.max(1),
    )
}

/// Single-quotes a string for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

fn axbench_cache_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<SlurmExecutor>();
}

/// The batch dirs under `<cache>/slurm/batches/`, oldest first (what is left of submitted
/// arrays: batches whose every task succeeded are removed).
pub fn submitted_batches(store: &Store) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store.root().join("slurm").join("batches"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// What [`gc_files`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlurmGc {
    /// `<cache>/jobs/<key>.json` job specs.
    pub job_specs: usize,
    /// `<cache>/slurm/keys/<key>.json` task records.
    pub task_records: usize,
    /// `<cache>/slurm/batches/*` dirs (scripts and logs of arrays that had a failed task).
    pub batches: usize,
}

/// How long `axbench gc` keeps the Slurm executor's files of unfinished nodes and failed
/// arrays: long enough for a queue to drain and a user to read a failed task's log.
pub const SLURM_FILES_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Slurm executor's part of `axbench gc`: job specs and task records of nodes whose
/// manifest exists (their task finished; nothing reads them again), and every such file and
/// batch dir older than `max_age` (a task that has not finished in that time is gone). A run in
/// flight only has younger files, so it is never disturbed.
pub fn gc_files(store: &Store, max_age: Duration) -> SlurmGc {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age)
    };
    let per_key = |dir: PathBuf| -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".json").and_then(|h| h.parse::<Digest>().ok()) else {
                continue;
            };
            if (store.manifest_path(&key).exists() || old(&path)) && std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        n
    };
    let mut r = SlurmGc {
        job_specs: per_key(store.root().join("jobs")),
        task_records: per_key(store.root().join("slurm").join("keys")),
        batches: 0,
    };
    for batch in submitted_batches(store) {
        if old(&batch) && std::fs::remove_dir_all(&batch).is_ok() {
            r.batches += 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_removes_files_of_finished_nodes_and_old_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
        let write = |p: PathBuf, old: bool| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"{}").unwrap();
            if old {
                std::fs::File::options()
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(long_ago)
                    .unwrap();
            }
            p
        };
        let key = |s: &str| axbench_cache::hash_bytes(s.as_bytes());
        // A finished node (manifest present), an unfinished young one, an unfinished old one.
        let (done, young, stale) = (key("done"), key("young"), key("stale"));
        write(store.manifest_path(&done), false);
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for sub in ["jobs", "slurm/keys"] {
            gone.push(write(
                store.root().join(sub).join(format!("{}.json", done.to_hex())),
                false,
            ));
            kept.push(write(
                store.root().join(sub).join(format!("{}.json", young.to_hex())),
                false,
            ));
            gone.push(write(
                store.root().join(sub).join(format!("{}.json", stale.to_hex())),
                true,
            ));
        }
        kept.push(write(store.root().join("jobs/notes.txt"), true)); // not ours: left alone
        let young_batch = write(store.root().join("slurm/batches/0001-a/job.sh"), false);
        let old_batch = store.root().join("slurm/batches/0000-b");
        write(old_batch.join("task-0.log"), true);
        std::fs::File::open(&old_batch).unwrap().set_modified(long_ago).unwrap();
        let r = gc_files(&store, SLURM_FILES_AGE);
        assert_eq!(
            r,
            SlurmGc {
                job_specs: 2,
                task_records: 2,
                batches: 1
            }
        );
        assert!(kept.iter().chain([&young_batch]).all(|p| p.exists()));
        assert!(gone.iter().chain([&old_batch]).all(|p| !p.exists()));
        assert!(store.manifest_path(&done).exists());
    }

    fn cfg() -> SlurmConfig {
        let mut c = SlurmConfig::new("/opt/axbench".into());
        c.defaults.partition = Some("main".into());
        c.defaults.gres = Some("gpu:1".into());
        c.defaults.time = Some("1:00:00".into());
        c.defaults.parse_opt("account=proj1").unwrap();
        c
    }

    #[test]
    fn gpu_stages_get_the_run_gres_cpu_stages_do_not() {
        let c = cfg();
        let gpu: BTreeMap<String, u32> = [("model".to_string(), 1)].into();
        let cpu = BTreeMap::new();
        let g = StageRequest::resolve(&c, &SlurmOptions::default(), &gpu);
        let p = StageRequest::resolve(&c, &SlurmOptions::default(), &cpu);
        assert!(g.gpu && !p.gpu);
        let dir = Path::new("/c/slurm/batches/b1");
        let ga = g.sbatch_args("axb-acts", 3, dir);
        let pa = p.sbatch_args("axb-fit", 3, dir);
        assert!(ga.contains(&"--gres=gpu:1".to_string()), "{ga:?}");
        assert!(!pa.iter().any(|a| a.starts_with("--gres")), "{pa:?}");
        for a in [&ga, &pa] {
            assert!(a.contains(&"--array=0-2%100".to_string()), "{a:?}");
            assert!(a.contains(&"--partition=main".to_string()));
            assert!(a.contains(&"--time=1:00:00".to_string()));
            assert!(a.contains(&"--account=proj1".to_string()));
            assert!(a.contains(&"--output=/c/slurm/batches/b1/%a.log".to_string()));
            assert_eq!(a.last().unwrap(), "/c/slurm/batches/b1/job.sh");
        }
    }

    #[test]
    fn a_stage_table_overrides_the_run_defaults() {
        let c = cfg();
        let stage = SlurmOptions {
            gres: Some("gpu:a100:2".into()),
            time: Some("2:00:00".into()),
            array_limit: Some(4),
            cpus_per_task: Some(8),
            options: [("account".into(), "proj2".into()), ("exclusive".into(), String::new())].into(),
            ..Default::default()
        };
        // A gres set on the stage applies even though the stage holds no GPU class.
        let r = StageRequest::resolve(&c, &stage, &BTreeMap::new());
        let a = r.sbatch_args("x", 10, Path::new("/b"));
        for want in [
            "--gres=gpu:a100:2",
            "--time=2:00:00",
            "--array=0-9%4",
            "--cpus-per-task=8",
            "--account=proj2",
            "--exclusive",
            "--partition=main",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        assert!(!a.contains(&"--account=proj1".to_string()));
    }

    #[test]
    fn options_that_would_break_the_executor_are_refused() {
        let mut o = SlurmOptions::default();
        assert!(
            o.parse_opt("array=0-3")
                .unwrap_err()
                .contains("set by the Slurm executor")
        );
        assert!(o.parse_opt("--output=x").is_err());
        assert!(o.parse_opt("qos=a\nb").unwrap_err().contains("control character"));
        assert!(o.parse_opt("bad name=1").is_err());
        o.parse_opt("--qos=long").unwrap();
        assert_eq!(o.options["qos"], "long");
        let bad = SlurmOptions {
            array_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, ".array_limit");
    }

    #[test]
    fn pipeline_stage_tables_parse_and_unknown_fields_name_file_and_key() {
        let spec = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\nparams = { value = 1 }\n[stages.a.slurm]\ngres = \"gpu:1\"\ntime = \"2:00:00\"\noptions = { qos = \"long\" }\n",
        )
        .unwrap();
        let s = &spec.stages["a"].slurm;
        assert_eq!(s.gres.as_deref(), Some("gpu:1"));
        assert_eq!(s.time.as_deref(), Some("2:00:00"));
        assert_eq!(s.options["qos"], "long");
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\ngpus = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("p.toml:") && err.contains("gpus"), "{err}");
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\noptions = { array = \"1\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stages.a.slurm.options.array"), "{err}");
    }

    #[test]
    fn squeue_output_maps_tasks_to_alive_or_ended() {
        let s = parse_squeue("12_0|RUNNING\n12_1|PENDING\n12_2|COMPLETED\n13|TIMEOUT\n12_3|COMPLETING\n");
        assert_eq!(s["12_0"], TaskState::Alive("RUNNING".into()));
        assert_eq!(s["12_1"], TaskState::Alive("PENDING".into()));
        assert_eq!(s["12_2"], TaskState::Ended("COMPLETED".into()));
        assert_eq!(s["13"], TaskState::Ended("TIMEOUT".into()));
        assert_eq!(s["12_3"], TaskState::Alive("COMPLETING".into()));
    }

    #[test]
    fn job_script_quotes_paths_and_always_leaves_an_exit_file() {
        let s = job_script(
            Path::new("/opt/ax bench/axbench"),
            Path::new("/shared/it's/cache"),
            Path::new("/shared/c/slurm/batches/b"),
            "fit",
            1,
        );
        assert!(
            s.contains("'/opt/ax bench/axbench' exec-node $keys --cache-dir '/shared/it'\\''s/cache' \"$@\""),
            "{s}"
        );
        assert!(s.contains("mv \"$dir/$l.exit.tmp\" \"$dir/$l.exit\""));
        // The script is valid sh.
        let out = Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs job.sh as Slurm would run task 0, with `fake` standing in for the axbench binary.
    fn run_job_script(fake: &str) -> (tempfile::TempDir, Option<(i32, String)>) {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("fake-axbench");
        std::fs::write(&bin, fake).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.path().join("keys"), "ab12\n").unwrap();
        std::fs::write(d.path().join("job.sh"), job_script(&bin, d.path(), d.path(), "s", 1)).unwrap();
        Command::new("sh")
            .arg(d.path().join("job.sh"))
            .env("SLURM_ARRAY_TASK_ID", "0")
            .status()
            .unwrap();
        let exit = read_exit_file(&d.path().join("0.exit"));
        (d, exit)
    }

    #[test]
    fn job_script_writes_the_exit_file_when_exec_node_dies_and_leaves_its_own_alone() {
        // Killed by a signal before it could write anything (the OOM killer): 128 + 9.
        let (_d, exit) = run_job_script("#!/bin/sh\nkill -9 $$\n");
        assert_eq!(exit, Some((137, "crashed".into())));
        // exec-node wrote its own (here: a failure) and the key reached it as its argument.
        let (d, exit) = run_job_script(
            "#!/bin/sh\n[ \"$1\" = exec-node ] && [ \"$2\" = ab12 ] || exit 7\nprintf '1\\nfailed\\n' > \"$6\"\nexit 1\n",
        );
        assert_eq!(
            exit,
            Some((1, "failed".into())),
            "{:?}",
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn nodes_per_task_parses_merges_is_checked_and_sizes_the_array() {
        let spec = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\nparams = { value = 1 }\n[stages.a.slurm]\nnodes_per_task = 8\n",
        )
        .unwrap();
        assert_eq!(spec.stages["a"].slurm.nodes_per_task, Some(8));
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\nnodes_per_task = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("stages.a.slurm.nodes_per_task") && err.contains("at least 1"),
            "{err}"
        );
        let zero = SlurmOptions {
            nodes_per_task: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.check().unwrap_err().0, ".nodes_per_task");

        // The run-wide value applies where a stage sets none; a stage's own wins.
        let mut c = cfg();
        c.defaults.nodes_per_task = Some(3);
        let none = BTreeMap::new();
        let run_wide = StageRequest::resolve(&c, &SlurmOptions::default(), &none);
        assert_eq!(run_wide.nodes_per_task, 3);
        let stage = SlurmOptions {
            nodes_per_task: Some(2),
            ..Default::default()
        };
        let r = StageRequest::resolve(&c, &stage, &none);
        assert_eq!(r.nodes_per_task, 2);
        assert_eq!(
            StageRequest::resolve(&cfg(), &SlurmOptions::default(), &none).nodes_per_task,
            1
        );

        // ceil(n / k) tasks.
        let dir = Path::new("/b");
        for (n, want) in [(5, "--array=0-2%100"), (4, "--array=0-1%100"), (1, "--array=0-0%100")] {
            let a = r.sbatch_args("x", n, dir);
            assert!(a.contains(&want.to_string()), "{n} nodes: {a:?}");
        }
        assert_eq!((r.tasks_for(5), r.tasks_for(6), r.tasks_for(7)), (3, 3, 4));
        // The %-limit still counts tasks.
        let limited = StageRequest::resolve(
            &c,
            &SlurmOptions {
                array_limit: Some(4),
                nodes_per_task: Some(8),
                ..Default::default()
            },
            &none,
        );
        assert!(
            limited
                .sbatch_args("x", 100, dir)
                .contains(&"--array=0-12%4".to_string())
        );
    }

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

    /// Runs job.sh (`k` nodes per task) as Slurm would run array task `task`, with `fake`
    /// standing in for the axbench binary; `keys` holds one key per line.
    fn run_grouped_job_script(d: &Path, fake: &str, keys: &str, k: u32, task: usize) -> i32 {
        let bin = d.join("fake-axbench");
        std::fs::write(&bin, fake).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.join("keys"), keys).unwrap();
        std::fs::write(d.join("job.sh"), job_script(&bin, d, d, "s", k)).unwrap();
        Command::new("sh")
            .arg(d.join("job.sh"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .status()
            .unwrap()
            .code()
            .unwrap()
    }

    #[test]
    fn a_job_script_of_two_nodes_per_task_runs_each_task_s_lines_in_one_exec_node() {
        // Records its arguments, one per line, and writes every exit file as exec-node does.
        let fake = r#"#!/bin/sh
printf '%s\n' "$@" > "$(dirname "$0")/args.$SLURM_ARRAY_TASK_ID"
while [ $# -gt 0 ]; do
  if [ "$1" = --exit-file ]; then printf '0\ncomputed\n' > "$2"; shift; fi
  shift
done
exit 0
"#;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        for task in [0, 1] {
            assert_eq!(run_grouped_job_script(d.path(), fake, "aa\nbb\ncc\n", 2, task), 0);
        }
        let args = |t: usize| std::fs::read_to_string(d.path().join(format!("args.{t}"))).unwrap();
        assert_eq!(
            args(0),
            format!("exec-node\naa\nbb\n--cache-dir\n{dir}\n--exit-file\n{dir}/0.exit\n--exit-file\n{dir}/1.exit\n")
        );
        assert_eq!(
            args(1),
            format!("exec-node\ncc\n--cache-dir\n{dir}\n--exit-file\n{dir}/2.exit\n")
        );
        for line in 0..3 {
            assert_eq!(
                read_exit_file(&d.path().join(format!("{line}.exit"))),
                Some((0, "computed".into()))
            );
        }
    }

    #[test]
    fn a_job_script_of_two_nodes_per_task_writes_the_exit_files_a_crashed_exec_node_left_out() {
        // Finishes the first of its nodes (line 2), then dies of SIGKILL during the second.
        let fake = "#!/bin/sh\nprintf '1\\nfailed\\n' > \"$7\"\nkill -9 $$\n";
        let d = tempfile::tempdir().unwrap();
        assert_eq!(run_grouped_job_script(d.path(), fake, "aa\nbb\ncc\ndd\n", 2, 1), 137);
        let exit = |l: usize| read_exit_file(&d.path().join(format!("{l}.exit")));
        assert_eq!(exit(2), Some((1, "failed".into())), "exec-node's own is left alone");
        assert_eq!(exit(3), Some((137, "crashed".into())));
        assert_eq!((exit(0), exit(1)), (None, None), "another task's lines");
    }

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

    #[test]
    fn exit_files_round_trip_and_half_written_ones_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.exit");
        assert_eq!(read_exit_file(&p), None);
        write_exit_file(&p, 3, "failed").unwrap();
        assert_eq!(read_exit_file(&p), Some((3, "failed".into())));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_exit_file(&p), None);
    }
}
