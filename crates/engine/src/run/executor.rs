//! Executors run one node given everything needed to run it on its own ([`NodeJob`], which is
//! serializable: the Slurm executor ships it to `axbench exec-node` on another host).
//! The [`LocalExecutor`] runs stages in this process.
//!
//! Crash safety: a stage writes into a staging dir inside the cache; only after it returns Ok
//! are its files hashed and renamed into the blob store, then the manifest is written. Ctrl-C,
//! a panic or `kill -9` therefore never leave a partial artifact behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axbench_cache::{Digest, Manifest, ManifestInput, OutputEntry, Store};
use serde::{Deserialize, Serialize};

use crate::stage::{CancelFlag, InputArtifact, LIST_FILE, ProgressSink, Registry, StageContext, StageError};
use crate::value::{Coord, Value};

/// One upstream artifact of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobInput {
    pub node: String,
    pub coord: Coord,
    pub key: Option<Digest>,
    pub outputs: BTreeMap<String, Digest>,
}

/// Everything needed to run one node, independent of the pipeline it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeJob {
    pub key: Digest,
    pub node: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub coord: Coord,
    pub params: BTreeMap<String, Value>,
    /// Params as recorded in the manifest (paths with their content digest).
    pub manifest_params: serde_json::Value,
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    pub project_dir: PathBuf,
    pub list_output: bool,
}

/// How a node ended.
#[derive(Debug)]
pub enum ExecOutcome {
    /// This executor computed it.
    Computed {
        outputs: BTreeMap<String, OutputEntry>,
        duration_ms: u64,
    },
    /// Someone else (another process) computed it while we waited for its lock.
    Cached { outputs: BTreeMap<String, OutputEntry> },
}

impl ExecOutcome {
    pub fn outputs(&self) -> &BTreeMap<String, OutputEntry> {
        match self {
            ExecOutcome::Computed { outputs, .. } | ExecOutcome::Cached { outputs } => outputs,
        }
    }
}

/// A node did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{message} (log: {})", log.display())]
    Failed { message: String, log: PathBuf },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] axbench_cache::StoreError),
}

/// Runs nodes. Blocking: the scheduler calls it from `spawn_blocking`.
pub trait Executor: Send + Sync {
    fn execute(
        &self,
        job: &NodeJob,
        cancel: &CancelFlag,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<ExecOutcome, ExecError>;

    /// Whether the scheduler should hold resource-class semaphores (`gpu = 1`) around
    /// [`Executor::execute`]. True for executors that run on this machine; a cluster executor
    /// (Slurm) returns false because the cluster's own scheduler allocates GPUs, and holding a
    /// local `gpu = 1` permit would submit one GPU node at a time instead of a job array.
    fn uses_local_resources(&self) -> bool {
        true
    }
}

/// Runs stages in-process.
pub struct LocalExecutor {
    pub registry: Registry,
    pub store: Arc<Store>,
}

impl LocalExecutor {
    pub fn new(registry: Registry, store: Arc<Store>) -> Self {
        LocalExecutor { registry, store }
    }
}

impl Executor for LocalExecutor {
    fn execute(
        &self,
        job: &NodeJob,
        cancel: &CancelFlag,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<ExecOutcome, ExecError> {
        let store = &self.store;
        // Only one process computes a key; the others wait here and then find it cached.
        let _lock = store.lock_node(&job.key)?;
        if let Some(e) = store.lookup(store.reader().as_ref(), &job.key)?
            && e.outputs.values().all(|o| store.check_blob(&o.digest))
        {
            return Ok(ExecOutcome::Cached { outputs: e.outputs });
        }
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let log_path = store.log_path(&job.key);
        let stage = self.registry.get(&job.kind).ok_or_else(|| ExecError::Failed {
            message: format!("no stage kind `{}` in this binary", job.kind),
            log: log_path.clone(),
        })?;
        let staging = store.staging_dir(&job.key)?;
        let out_dir = staging.join("out");
        std::fs::create_dir_all(&out_dir).map_err(|source| axbench_cache::StoreError::Io {
            path: out_dir.clone(),
            source,
        })?;

        let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
        let mut manifest_inputs = Vec::new();
        for (name, ups) in &job.inputs {
            let mut arts = Vec::new();
            for u in ups {
                arts.push(InputArtifact {
                    node: u.node.clone(),
                    coord: u.coord.clone(),
                    files: u.outputs.iter().map(|(f, d)| (f.clone(), store.blob_path(d))).collect(),
                });
                manifest_inputs.push(ManifestInput {
                    name: name.clone(),
                    node: u.node.clone(),
                    key: u.key.unwrap_or(Digest([0; 32])),
                    outputs: u.outputs.clone(),
                });
            }
            inputs.insert(name.clone(), arts);
        }
        let mut ctx = StageContext {
            node: job.node.clone(),
            coord: job.coord.clone(),
            params: job.params.clone(),
            inputs,
            out_dir: out_dir.clone(),
            project_dir: job.project_dir.clone(),
            progress,
            cancel: cancel.clone(),
            log: Vec::new(),
        };
        let started = Instant::now();
        let started_unix_ms = axbench_cache_unix_ms();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&mut ctx)));
        let duration_ms = started.elapsed().as_millis() as u64;
        let result: Result<(), StageError> = match result {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(StageError::msg(format!("stage panicked: {msg}")))
            }
        };
        let write_log = |extra: &str| {
            if let Some(dir) = log_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Ok(mut f) = std::fs::File::create(&log_path) {
                let _ = writeln!(
                    f,
                    "node: {}\nstage: {} v{}\nkey: {}",
                    job.node, job.kind, job.version, job.key
                );
                for l in &ctx.log {
                    let _ = writeln!(f, "{l}");
                }
                if !extra.is_empty() {
                    let _ = writeln!(f, "{extra}");
                }
            }
        };
        let cleanup = || {
            let _ = std::fs::remove_dir_all(&staging);
        };
        match result {
            Ok(()) if cancel.is_cancelled() => {
                cleanup();
                return Err(ExecError::Cancelled);
            }
            Ok(()) => {}
            Err(StageError::Cancelled) => {
                cleanup();
                return Err(ExecError::Cancelled);
            }
            Err(e) => {
                cleanup();
                let message = e.to_string();
                write_log(&format!("error: {message}"));
                return Err(ExecError::Failed { message, log: log_path });
            }
        }
        // Promote: hash each file into the store.
        let mut outputs = BTreeMap::new();
        let mut files: Vec<_> = std::fs::read_dir(&out_dir)
            .map_err(|source| axbench_cache::StoreError::Io {
                path: out_dir.clone(),
                source,
            })?
            .flatten()
            .collect();
        files.sort_by_key(|e| e.file_name());
        for f in files {
            let name = f.file_name().to_string_lossy().to_string();
            if !f.file_type().map(|t| t.is_file()).unwrap_or(false) {
                cleanup();
                let message = format!("stage wrote `{name}`, which is not a plain file (outputs are flat files)");
                write_log(&format!("error: {message}"));
                return Err(ExecError::Failed { message, log: log_path });
            }
            let entry = store.put_file(&f.path())?;
            outputs.insert(name, entry);
        }
        if job.list_output && !outputs.contains_key(LIST_FILE) {
            cleanup();
            let message = format!("list stage `{}` did not write {LIST_FILE}", job.kind);
            write_log(&format!("error: {message}"));
            return Err(ExecError::Failed { message, log: log_path });
        }
        let manifest = Manifest {
            key: job.key,
            node: job.node.clone(),
            stage: job.kind.clone(),
            stage_version: job.version,
            coord: Value::Table(job.coord.clone()).to_json(),
            params: job.manifest_params.clone(),
            inputs: manifest_inputs,
            outputs: outputs.clone(),
            started_unix_ms,
            duration_ms,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            host: hostname(),
            extra: Some(serde_json::json!({ "pipeline_stage": job.stage })),
        };
        store.commit_manifest(&manifest)?;
        write_log(&format!("ok in {duration_ms} ms"));
        cleanup();
        Ok(ExecOutcome::Computed { outputs, duration_ms })
    }
}

fn axbench_cache_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This machine's name, for manifests.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
