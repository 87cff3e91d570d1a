//! `schedule`: runs a plan with tokio. Ready nodes run in parallel up to `-j`; resource
//! classes (e.g. `gpu = 1`) are semaphores acquired in name order before the job slot, so a
//! node waiting for the GPU never holds a slot other nodes could use, and there is no
//! deadlock. Stages are blocking code and run on `spawn_blocking` threads.
//!
//! Each node's key is finished when its inputs are done, from their actual output digests:
//! an input recomputed to identical bytes gives its dependents their old keys back (early
//! cutoff), so they are cache hits. A failing node is reported with its log path; nodes that
//! depend on it are skipped, independent branches go on. Dynamic fan-outs run in waves: when
//! a list node finishes, the pipeline is planned again and the newly expandable nodes run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axbench_cache::{Digest, OutputEntry, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::compile::expand::Node;
use crate::compile::fingerprint::FreshNode;
use crate::compile::key::{KeyInput, node_key};
use crate::compile::plan::{NodeState, Plan, plan, read_list};
use crate::compile::spec::PipelineSpec;
use crate::error::EngineError;
use crate::run::executor::{ExecError, ExecOutcome, Executor, JobInput, NodeJob};
use crate::stage::{CancelFlag, NoProgress, ProgressSink, Registry};
use crate::value::Value;

/// Log lines carry the module's flat public path, which `RUST_LOG` filters name, not its room's.
const LOG: &str = "axbench_engine::schedule";

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Parallel nodes (`-j`).
    pub jobs: usize,
    pub project_dir: PathBuf,
}

/// A failed node.
#[derive(Clone, Debug)]
pub struct Failure {
    pub node: String,
    pub error: String,
    pub log: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Nodes this process computed.
    pub computed: Vec<String>,
    /// Nodes that were already in the cache (fresh at plan time, early cutoff, or computed by
    /// another process while we waited).
    pub cached: Vec<String>,
    pub failed: Vec<Failure>,
    /// Nodes not run because an input failed.
    pub skipped: Vec<String>,
    /// Parts of the pipeline that could not be expanded (their list stage failed).
    pub pending: Vec<String>,
    pub cancelled: bool,
    /// Every key this run reached (what `gc` keeps).
    pub keys: Vec<Digest>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && self.pending.is_empty() && !self.cancelled
    }
}

/// Hooks for progress display (the CLI binds them to indicatif).
pub trait Reporter: Send + Sync {
    /// A wave is about to run `plan`'s non-fresh nodes.
    fn wave(&self, _plan: &Plan) {}
    fn started(&self, _node: &Node) {}
    fn finished(&self, _node: &Node, _outcome: &str) {}
    /// The progress sink handed to the running stage.
    fn progress(&self, _node: &Node) -> Arc<dyn ProgressSink> {
        Arc::new(NoProgress)
    }
}

/// A reporter that shows nothing.
pub struct Silent;
impl Reporter for Silent {}

enum Done {
    Ok {
        idx: usize,
        key: Digest,
        outcome: ExecOutcome,
    },
    Err {
        idx: usize,
        err: ExecError,
    },
}

/// Plans and runs `spec` to completion (all waves), or until cancelled.
pub async fn run(
    spec: &PipelineSpec,
    registry: &Registry,
    store: Arc<Store>,
    executor: Arc<dyn Executor>,
    opts: &RunOptions,
    reporter: Arc<dyn Reporter>,
    cancel: CancelFlag,
) -> Result<RunReport, EngineError> {
    store.clean_stale_staging();
    let mut report = RunReport::default();
    // Nothing changed since the last complete run: every node is fresh, skip planning.
    if let Some(fresh) = crate::compile::fingerprint::fresh_plan(spec, registry, &store, &opts.project_dir) {
        report.cached = fresh.nodes.iter().map(|n| n.id.clone()).collect();
        report.keys = fresh.keys();
        match &fresh.fingerprint {
            Some(fp) => store.record_run_like(fp, &report.keys)?,
            None => store.record_run(&report.keys)?,
        };
        return Ok(report);
    }
    let mut lists: HashMap<String, Vec<Value>> = HashMap::new();
    let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let mut classes: BTreeMap<String, Arc<Semaphore>> = BTreeMap::new();
    for (k, v) in &spec.resources {
        classes.insert(k.clone(), Arc::new(Semaphore::new(*v as usize)));
    }
    let mut done_ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut failed_ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut record = None;
    loop {
        let p = plan(spec, registry, &store, &opts.project_dir, &mut lists)?;
        reporter.wave(&p);
        let (learned, complete) = run_wave(
            &p,
            &store,
            &executor,
            &jobs,
            &mut classes,
            &reporter,
            &cancel,
            &mut report,
            &mut lists,
            &mut done_ids,
            &mut failed_ids,
        )
        .await?;
        let _ = store.flush_index();
        if cancel.is_cancelled() {
            report.cancelled = true;
            break;
        }
        if p.graph.pending.is_empty() || !learned {
            report.pending = p.graph.pending.iter().map(|x| x.id.clone()).collect();
            if p.graph.pending.is_empty() {
                record = complete.map(|nodes| (nodes, p.paths.clone()));
            }
            break;
        }
    }
    report.keys.sort();
    report.keys.dedup();
    // A node skipped in one wave is skipped again in the next: list it once.
    let mut seen = std::collections::HashSet::new();
    report.skipped.retain(|id| seen.insert(id.clone()));
    let run_file = if report.cancelled {
        None
    } else {
        Some(store.record_run(&report.keys)?)
    };
    // Every node reached: the next run with an unchanged pipeline can skip planning.
    if report.ok()
        && let Some((nodes, paths)) = record
        && let Some(fresh) = crate::compile::fingerprint::FreshPlan::from_nodes(nodes, paths, &store)
    {
        let same_keys = fresh.keys() == report.keys;
        crate::compile::fingerprint::save(
            spec,
            registry,
            &store,
            &opts.project_dir,
            &fresh,
            run_file.as_deref().filter(|_| same_keys),
        );
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn run_wave(
    p: &Plan,
    store: &Arc<Store>,
    executor: &Arc<dyn Executor>,
    jobs: &Arc<Semaphore>,
    classes: &mut BTreeMap<String, Arc<Semaphore>>,
    reporter: &Arc<dyn Reporter>,
    cancel: &CancelFlag,
    report: &mut RunReport,
    lists: &mut HashMap<String, Vec<Value>>,
    done_ids: &mut std::collections::HashSet<String>,
    failed_ids: &mut std::collections::HashSet<String>,
) -> Result<(bool, Option<Vec<FreshNode>>), EngineError> {
    let nodes = &p.graph.nodes;
    let n = nodes.len();
    let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> = vec![None; n];
    let mut keys: Vec<Option<Digest>> = vec![None; n];
    let mut remaining: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dead: Vec<bool> = vec![false; n];
    let mut learned = false;
    let reader = store.reader();
    for (i, node) in nodes.iter().enumerate() {
        let mut ups: Vec<usize> = node.inputs.iter().flat_map(|(_, u)| u.iter().copied()).collect();
        ups.sort_unstable();
        ups.dedup();
        for &u in &ups {
            dependents[u].push(i);
        }
        let planned = &p.nodes[i];
        if planned.state == NodeState::Fresh {
            // A fresh node may resolve to a key other than the one last recorded for its id
            // (a reverted change, or a run killed after its manifest was written but before its
            // index batch was): record it, so `show` and the next `plan` see the current key.
            if let Some(key) = planned.key
                && store.latest(reader.as_ref(), &node.id) != Some(key)
            {
                store.note_latest(&node.id, &key);
            }
            outputs[i] = planned.outputs.clone();
            keys[i] = planned.key;
            report.keys.push(planned.key.unwrap());
            if done_ids.insert(node.id.clone()) {
                report.cached.push(node.id.clone());
            }
        }
        remaining[i] = ups.iter().filter(|&&u| p.nodes[u].state != NodeState::Fresh).count();
    }
    let mut ready: Vec<usize> = (0..n)
        .filter(|&i| p.nodes[i].state != NodeState::Fresh && remaining[i] == 0)
        .collect();
    ready.reverse();
    let mut running: JoinSet<Done> = JoinSet::new();
    let mut last_flush = Instant::now();
    let no_resources: BTreeMap<String, u32> = BTreeMap::new();

    loop {
        while let Some(i) = ready.pop() {
            if cancel.is_cancelled() {
                ready.clear();
                break;
            }
            let node = &nodes[i];
            // A node that failed in an earlier wave of this run is not tried again (a later
            // wave re-plans the whole pipeline and would find it stale once more).
            if failed_ids.contains(&node.id) {
                skip_dependents(i, &dependents, &mut dead, nodes, report);
                continue;
            }
            // Finish the key from the inputs' actual digests.
            let digests: Vec<BTreeMap<String, Digest>> = node
                .inputs
                .iter()
                .flat_map(|(_, ups)| {
                    ups.iter().map(|&u| {
                        outputs[u]
                            .as_ref()
                            .expect("inputs done")
                            .iter()
                            .map(|(k, o)| (k.clone(), o.digest))
                            .collect()
                    })
                })
                .collect();
            let mut key_inputs = Vec::new();
            let mut di = 0;
            for (iname, ups) in &node.inputs {
                for &u in ups {
                    key_inputs.push(KeyInput {
                        name: iname.as_ref(),
                        coord: &nodes[u].coord,
                        outputs: &digests[di],
                    });
                    di += 1;
                }
            }
            let key = node_key(&p.nodes[i].static_key, &key_inputs);
            // Early cutoff: the key may already be in the cache.
            let reader = store.reader();
            if let Some(e) = store.lookup(reader.as_ref(), &key)?
                && e.outputs
                    .values()
                    .all(|o| store.check_blob_with(reader.as_ref(), &o.digest))
            {
                store.note_latest(&node.id, &key);
                finish(
                    i,
                    key,
                    e.outputs,
                    false,
                    nodes,
                    &mut outputs,
                    &mut keys,
                    &mut remaining,
                    &dependents,
                    &mut ready,
                    report,
                    done_ids,
                    reporter,
                    lists,
                    store,
                    &mut learned,
                );
                continue;
            }
            let mut inputs: BTreeMap<String, Vec<JobInput>> = BTreeMap::new();
            let mut di = 0;
            for (iname, ups) in &node.inputs {
                let v = inputs.entry(iname.to_string()).or_default();
                for &u in ups {
                    v.push(JobInput {
                        node: nodes[u].id.clone(),
                        coord: nodes[u].coord.clone(),
                        key: keys[u],
                        outputs: digests[di].clone(),
                    });
                    di += 1;
                }
            }
            let job = NodeJob {
                key,
                node: node.id.clone(),
                stage: node.stage.to_string(),
                kind: node.kind.to_string(),
                version: node.version,
                coord: node.coord.clone(),
                params: (*node.params).clone(),
                manifest_params: p.nodes[i].manifest_params.clone(),
                inputs,
                project_dir: p.project_dir.clone(),
                list_output: node.list_output,
            };
            let local_resources = if executor.uses_local_resources() {
                &node.resources
            } else {
                &no_resources
            };
            let needs: Vec<(Arc<Semaphore>, u32)> = local_resources
                .iter()
                .map(|(c, k)| {
                    (
                        classes
                            .entry(c.clone())
                            .or_insert_with(|| Arc::new(Semaphore::new(1)))
                            .clone(),
                        *k,
                    )
                })
                .collect();
            let jobs = jobs.clone();
            let executor = executor.clone();
            let cancel = cancel.clone();
            let progress = reporter.progress(node);
            let reporter2 = reporter.clone();
            let node2 = node.clone();
            running.spawn(async move {
                // Resource classes in name order (BTreeMap), then the job slot.
                let mut permits = Vec::new();
                for (sem, k) in needs {
                    permits.push(sem.acquire_many_owned(k).await.expect("semaphore open"));
                }
                let _slot = jobs.acquire_owned().await.expect("semaphore open");
                if cancel.is_cancelled() {
                    return Done::Err {
                        idx: i,
                        err: ExecError::Cancelled,
                    };
                }
                reporter2.started(&node2);
                let res = tokio::task::spawn_blocking(move || executor.execute(&job, &cancel, progress)).await;
                drop(permits);
                match res {
                    Ok(Ok(outcome)) => Done::Ok { idx: i, key, outcome },
                    Ok(Err(err)) => Done::Err { idx: i, err },
                    Err(join) => Done::Err {
                        idx: i,
                        err: ExecError::Failed {
                            message: format!("executor panicked: {join}"),
                            log: PathBuf::new(),
                        },
                    },
                }
            });
        }
        let Some(res) = running.join_next().await else { break };
        let done = res.map_err(|e| EngineError::Other(format!("scheduler task failed: {e}")))?;
        match done {
            Done::Ok { idx, key, outcome } => {
                let computed = matches!(outcome, ExecOutcome::Computed { .. });
                let outs = match outcome {
                    ExecOutcome::Computed { outputs, .. } | ExecOutcome::Cached { outputs } => outputs,
                };
                finish(
                    idx,
                    key,
                    outs,
                    computed,
                    nodes,
                    &mut outputs,
                    &mut keys,
                    &mut remaining,
                    &dependents,
                    &mut ready,
                    report,
                    done_ids,
                    reporter,
                    lists,
                    store,
                    &mut learned,
                );
            }
            Done::Err { idx, err } => match err {
                ExecError::Cancelled => {
                    reporter.finished(&nodes[idx], "cancelled");
                }
                ExecError::Failed { message, log } => {
                    reporter.finished(&nodes[idx], "failed");
                    tracing::error!(target: LOG, node = %nodes[idx].id, "failed: {message}");
                    failed_ids.insert(nodes[idx].id.clone());
                    report.failed.push(Failure {
                        node: nodes[idx].id.clone(),
                        error: message,
                        log: (!log.as_os_str().is_empty()).then_some(log),
                    });
                    skip_dependents(idx, &dependents, &mut dead, nodes, report);
                }
                ExecError::Store(e) => {
                    reporter.finished(&nodes[idx], "failed");
                    failed_ids.insert(nodes[idx].id.clone());
                    report.failed.push(Failure {
                        node: nodes[idx].id.clone(),
                        error: e.to_string(),
                        log: None,
                    });
                    skip_dependents(idx, &dependents, &mut dead, nodes, report);
                }
            },
        }
        if last_flush.elapsed() > Duration::from_millis(500) {
            let _ = store.flush_index();
            last_flush = Instant::now();
        }
    }
    // Every node of this wave done: what a no-op record lists.
    let mut names: HashMap<String, Arc<str>> = HashMap::new();
    let complete = (0..n)
        .map(|i| {
            let outs = outputs[i].as_ref()?;
            let outputs = outs
                .iter()
                .map(|(name, e)| {
                    (
                        names
                            .entry(name.clone())
                            .or_insert_with(|| Arc::from(name.as_str()))
                            .clone(),
                        e.clone(),
                    )
                })
                .collect();
            Some(FreshNode {
                id: nodes[i].id.clone(),
                stage: nodes[i].stage.clone(),
                key: keys[i]?,
                outputs,
            })
        })
        .collect::<Option<Vec<FreshNode>>>();
    Ok((learned, complete))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    i: usize,
    key: Digest,
    outs: BTreeMap<String, OutputEntry>,
    computed: bool,
    nodes: &[Node],
    outputs: &mut [Option<BTreeMap<String, OutputEntry>>],
    keys: &mut [Option<Digest>],
    remaining: &mut [usize],
    dependents: &[Vec<usize>],
    ready: &mut Vec<usize>,
    report: &mut RunReport,
    done_ids: &mut std::collections::HashSet<String>,
    reporter: &Arc<dyn Reporter>,
    lists: &mut HashMap<String, Vec<Value>>,
    store: &Store,
    learned: &mut bool,
) {
    let node = &nodes[i];
    if node.list_output
        && !lists.contains_key(&node.id)
        && let Some(items) = read_list(store, &outs)
    {
        lists.insert(node.id.clone(), items);
        *learned = true;
    }
    outputs[i] = Some(outs);
    keys[i] = Some(key);
    report.keys.push(key);
    if done_ids.insert(node.id.clone()) {
        if computed {
            report.computed.push(node.id.clone());
        } else {
            report.cached.push(node.id.clone());
        }
    }
    reporter.finished(node, if computed { "computed" } else { "cached" });
    for &d in &dependents[i] {
        remaining[d] -= 1;
        if remaining[d] == 0 {
            ready.push(d);
        }
    }
}

fn skip_dependents(i: usize, dependents: &[Vec<usize>], dead: &mut [bool], nodes: &[Node], report: &mut RunReport) {
    let mut stack = vec![i];
    while let Some(j) = stack.pop() {
        for &d in &dependents[j] {
            if !dead[d] {
                dead[d] = true;
                report.skipped.push(nodes[d].id.clone());
                stack.push(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{ParamSpec, Stage, StageContext, StageError};
    use crate::toy;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records how many instances run at once.
    struct Gpu {
        now: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
    }
    impl Stage for Gpu {
        fn kind(&self) -> &str {
            "test.gpu"
        }
        fn version(&self) -> u32 {
            1
        }
        fn params(&self) -> Vec<ParamSpec> {
            vec![ParamSpec::optional("i", crate::ParamType::Int, 0, "index")]
        }
        fn resources(&self) -> Vec<(&'static str, u32)> {
            vec![("gpu", 1)]
        }
        fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            self.now.fetch_sub(1, Ordering::SeqCst);
            ctx.write_output("value.json", b"0")
        }
    }

    async fn run_toml(text: &str, registry: Registry, jobs: usize) -> RunReport {
        let spec = PipelineSpec::parse("t.toml", text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
        let exec = Arc::new(crate::LocalExecutor::new(registry.clone(), store.clone()));
        let opts = RunOptions {
            jobs,
            project_dir: dir.path().to_path_buf(),
        };
        run(
            &spec,
            &registry,
            store,
            exec,
            &opts,
            Arc::new(Silent),
            CancelFlag::new(),
        )
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_classes_keep_gpu_stages_apart_while_others_run_in_parallel() {
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let registry = toy::register(Registry::new()).register(Box::new(Gpu {
            now: now.clone(),
            max: max.clone(),
        }));
        let text = r#"
[stages.g]
kind = "test.gpu"
foreach = { i = [1, 2, 3, 4, 5, 6] }
params = { i = "${i}" }

[stages.cpu]
kind = "test.sleep"
foreach = { i = [1, 2, 3, 4, 5, 6] }
params = { ms = 30, value = "${i}" }
"#;
        let started = Instant::now();
        let report = run_toml(text, registry, 8).await;
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.computed.len(), 12);
        assert_eq!(max.load(Ordering::SeqCst), 1, "two gpu stages overlapped");
        // 6 × 30 ms of GPU work is serialized, so this cannot be faster.
        assert!(
            started.elapsed() >= Duration::from_millis(6 * 30),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_leaves_nothing_partial() {
        let registry = toy::register(Registry::new());
        let spec = PipelineSpec::parse("t.toml", "[stages.s]\nkind = \"test.sleep\"\nforeach = { i = [1, 2, 3, 4] }\nparams = { ms = 2000, value = \"${i}\" }\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("cache")).unwrap());
        let exec = Arc::new(crate::LocalExecutor::new(registry.clone(), store.clone()));
        let opts = RunOptions {
            jobs: 4,
            project_dir: dir.path().to_path_buf(),
        };
        let cancel = CancelFlag::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c2.cancel();
        });
        let started = Instant::now();
        let report = run(&spec, &registry, store.clone(), exec, &opts, Arc::new(Silent), cancel)
            .await
            .unwrap();
        assert!(report.cancelled);
        assert!(report.computed.is_empty());
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "stages did not stop: {:?}",
            started.elapsed()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache/tmp")).unwrap().count(),
            0,
            "staging left behind"
        );
        assert!(store.manifest_keys().is_empty());
    }
}
