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

use std::collections::{BTreeMap, HashMap, HashSet};
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
    let mut run = RunState {
        classes: spec
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(Semaphore::new(*v as usize))))
            .collect(),
        jobs: Arc::new(Semaphore::new(opts.jobs.max(1))),
        store,
        executor,
        reporter,
        cancel,
        report,
        lists: HashMap::new(),
        done_ids: HashSet::new(),
        failed_ids: HashSet::new(),
    };
    let mut record = None;
    loop {
        let p = plan(spec, registry, &run.store, &opts.project_dir, &mut run.lists)?;
        run.reporter.wave(&p);
        let (learned, complete) = run.wave(&p).await?;
        let _ = run.store.flush_index();
        if run.cancel.is_cancelled() {
            run.report.cancelled = true;
            break;
        }
        if p.graph.pending.is_empty() || !learned {
            run.report.pending = p.graph.pending.iter().map(|x| x.id.clone()).collect();
            if p.graph.pending.is_empty() {
                record = complete.map(|nodes| (nodes, p.paths.clone()));
            }
            break;
        }
    }
    // Borrowed, not taken apart: the executor (a Slurm one joins its thread when dropped) lives until the run
    // is recorded.
    let (store, report) = (&run.store, &mut run.report);
    report.keys.sort();
    report.keys.dedup();
    // A node skipped in one wave is skipped again in the next: list it once.
    let mut seen = HashSet::new();
    report.skipped.retain(|id| seen.insert(id.clone()));
    let run_file = if report.cancelled {
        None
    } else {
        Some(store.record_run(&report.keys)?)
    };
    // Every node reached: the next run with an unchanged pipeline can skip planning.
    if report.ok()
        && let Some((nodes, paths)) = record
        && let Some(fresh) = crate::compile::fingerprint::FreshPlan::from_nodes(nodes, paths, store)
    {
        let same_keys = fresh.keys() == report.keys;
        crate::compile::fingerprint::save(
            spec,
            registry,
            store,
            &opts.project_dir,
            &fresh,
            run_file.as_deref().filter(|_| same_keys),
        );
    }
    Ok(run.report)
}

/// The run's shared context: what every wave runs nodes with, and what the waves found out so far.
struct RunState {
    store: Arc<Store>,
    executor: Arc<dyn Executor>,
    /// `-j` slots.
    jobs: Arc<Semaphore>,
    /// One semaphore per resource class, made on first use for classes the pipeline gives no capacity (1).
    classes: BTreeMap<String, Arc<Semaphore>>,
    reporter: Arc<dyn Reporter>,
    cancel: CancelFlag,
    report: RunReport,
    /// The list outputs known so far (node id → items): each wave's plan expands over them.
    lists: HashMap<String, Vec<Value>>,
    /// Nodes already in the report (a later wave plans them again, as fresh).
    done_ids: HashSet<String>,
    /// Nodes that failed in an earlier wave: not tried again (a later wave re-plans the whole pipeline and would
    /// find them stale once more).
    failed_ids: HashSet<String>,
}

/// One wave's bookkeeping, by index into its plan's nodes.
struct Wave<'p> {
    plan: &'p Plan,
    outputs: Vec<Option<BTreeMap<String, OutputEntry>>>,
    keys: Vec<Option<Digest>>,
    /// Inputs not done yet.
    remaining: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    /// Skipped because an input failed.
    dead: Vec<bool>,
    /// Nodes whose inputs are all done, started from the end.
    ready: Vec<usize>,
    /// Whether a list node wrote a list not known before, so the next wave may expand further.
    learned: bool,
}

impl RunState {
    /// Runs the nodes of `p` that are not fresh. Returns whether a new list was learned and, when every node of the
    /// wave is done, what a no-op record of it lists.
    async fn wave(&mut self, p: &Plan) -> Result<(bool, Option<Vec<FreshNode>>), EngineError> {
        let mut w = Wave::new(p, self);
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut last_flush = Instant::now();
        loop {
            while let Some(i) = w.ready.pop() {
                if self.cancel.is_cancelled() {
                    w.ready.clear();
                    break;
                }
                self.start(&mut w, i, &mut running)?;
            }
            let Some(res) = running.join_next().await else { break };
            let done = res.map_err(|e| EngineError::Other(format!("scheduler task failed: {e}")))?;
            self.done(&mut w, done);
            if last_flush.elapsed() > Duration::from_millis(500) {
                let _ = self.store.flush_index();
                last_flush = Instant::now();
            }
        }
        Ok((w.learned, w.complete()))
    }

    /// Starts a ready node: finishes its key from its inputs' actual digests, takes it from the cache if that key is
    /// there (early cutoff), or hands it to the executor.
    fn start(&mut self, w: &mut Wave, i: usize, running: &mut JoinSet<Done>) -> Result<(), EngineError> {
        let p = w.plan;
        let node = &p.graph.nodes[i];
        if self.failed_ids.contains(&node.id) {
            w.skip_dependents(i, &mut self.report);
            return Ok(());
        }
        let digests = w.input_digests(i);
        let key = w.key(i, &digests);
        let store = &self.store;
        let reader = store.reader();
        if let Some(e) = store.lookup(reader.as_ref(), &key)?
            && e.outputs
                .values()
                .all(|o| store.check_blob_with(reader.as_ref(), &o.digest))
        {
            store.note_latest(&node.id, &key);
            self.finish(w, i, key, e.outputs, false);
            return Ok(());
        }
        let job = w.job(i, key, digests);
        self.spawn(running, node, i, key, job);
        Ok(())
    }

    /// Runs `job` on the executor once the node holds its resource classes (in name order, so there is no
    /// deadlock) and then a job slot (so a node waiting for the GPU never holds a slot other nodes could use).
    fn spawn(&mut self, running: &mut JoinSet<Done>, node: &Node, i: usize, key: Digest, job: NodeJob) {
        let no_resources = BTreeMap::new();
        let local_resources = if self.executor.uses_local_resources() {
            &node.resources
        } else {
            &no_resources
        };
        let needs: Vec<(Arc<Semaphore>, u32)> = local_resources
            .iter()
            .map(|(c, k)| {
                (
                    self.classes
                        .entry(c.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(1)))
                        .clone(),
                    *k,
                )
            })
            .collect();
        let jobs = self.jobs.clone();
        let executor = self.executor.clone();
        let cancel = self.cancel.clone();
        let progress = self.reporter.progress(node);
        let reporter = self.reporter.clone();
        let node = node.clone();
        running.spawn(async move {
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
            reporter.started(&node);
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

    /// Takes in a node the executor is done with.
    fn done(&mut self, w: &mut Wave, done: Done) {
        let nodes = &w.plan.graph.nodes;
        match done {
            Done::Ok { idx, key, outcome } => {
                let computed = matches!(outcome, ExecOutcome::Computed { .. });
                let outs = match outcome {
                    ExecOutcome::Computed { outputs, .. } | ExecOutcome::Cached { outputs } => outputs,
                };
                self.finish(w, idx, key, outs, computed);
            }
            Done::Err { idx, err } => match err {
                ExecError::Cancelled => {
                    self.reporter.finished(&nodes[idx], "cancelled");
                }
                ExecError::Failed { message, log } => {
                    self.reporter.finished(&nodes[idx], "failed");
                    tracing::error!(target: LOG, node = %nodes[idx].id, "failed: {message}");
                    self.fail(w, idx, message, (!log.as_os_str().is_empty()).then_some(log));
                }
                ExecError::Store(e) => {
                    self.reporter.finished(&nodes[idx], "failed");
                    self.fail(w, idx, e.to_string(), None);
                }
            },
        }
    }

    /// Records a failed node and skips everything downstream of it.
    fn fail(&mut self, w: &mut Wave, i: usize, error: String, log: Option<PathBuf>) {
        let node = &w.plan.graph.nodes[i];
        self.failed_ids.insert(node.id.clone());
        self.report.failed.push(Failure {
            node: node.id.clone(),
            error,
            log,
        });
        w.skip_dependents(i, &mut self.report);
    }

    /// Records a node that has its outputs (computed, or found in the cache) and readies the dependents whose
    /// inputs are now all done.
    fn finish(&mut self, w: &mut Wave, i: usize, key: Digest, outs: BTreeMap<String, OutputEntry>, computed: bool) {
        let node = &w.plan.graph.nodes[i];
        if node.list_output
            && !self.lists.contains_key(&node.id)
            && let Some(items) = read_list(&self.store, &outs)
        {
            self.lists.insert(node.id.clone(), items);
            w.learned = true;
        }
        w.outputs[i] = Some(outs);
        w.keys[i] = Some(key);
        self.report.keys.push(key);
        if self.done_ids.insert(node.id.clone()) {
            if computed {
                self.report.computed.push(node.id.clone());
            } else {
                self.report.cached.push(node.id.clone());
            }
        }
        self.reporter
            .finished(node, if computed { "computed" } else { "cached" });
        for &d in &w.dependents[i] {
            w.remaining[d] -= 1;
            if w.remaining[d] == 0 {
                w.ready.push(d);
            }
        }
    }
}

impl<'p> Wave<'p> {
    /// The wave over `p`: fresh nodes are done already (and counted in the run's report), the others wait for
    /// their inputs that are not fresh.
    fn new(p: &'p Plan, run: &mut RunState) -> Wave<'p> {
        let nodes = &p.graph.nodes;
        let n = nodes.len();
        let mut w = Wave {
            plan: p,
            outputs: vec![None; n],
            keys: vec![None; n],
            remaining: vec![0; n],
            dependents: vec![Vec::new(); n],
            dead: vec![false; n],
            ready: Vec::new(),
            learned: false,
        };
        let store = &run.store;
        let reader = store.reader();
        for (i, node) in nodes.iter().enumerate() {
            let mut ups: Vec<usize> = node.inputs.iter().flat_map(|(_, u)| u.iter().copied()).collect();
            ups.sort_unstable();
            ups.dedup();
            for &u in &ups {
                w.dependents[u].push(i);
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
                w.outputs[i] = planned.outputs.clone();
                w.keys[i] = planned.key;
                run.report.keys.push(planned.key.unwrap());
                if run.done_ids.insert(node.id.clone()) {
                    run.report.cached.push(node.id.clone());
                }
            }
            w.remaining[i] = ups.iter().filter(|&&u| p.nodes[u].state != NodeState::Fresh).count();
        }
        w.ready = (0..n)
            .filter(|&i| p.nodes[i].state != NodeState::Fresh && w.remaining[i] == 0)
            .collect();
        w.ready.reverse();
        w
    }

    /// The output digests of node `i`'s inputs, one map per upstream node, in input order.
    fn input_digests(&self, i: usize) -> Vec<BTreeMap<String, Digest>> {
        self.plan.graph.nodes[i]
            .inputs
            .iter()
            .flat_map(|(_, ups)| {
                ups.iter().map(|&u| {
                    self.outputs[u]
                        .as_ref()
                        .expect("inputs done")
                        .iter()
                        .map(|(k, o)| (k.clone(), o.digest))
                        .collect()
                })
            })
            .collect()
    }

    /// Node `i`'s full key: its static key and its inputs' actual output digests.
    fn key(&self, i: usize, digests: &[BTreeMap<String, Digest>]) -> Digest {
        let nodes = &self.plan.graph.nodes;
        let mut key_inputs = Vec::new();
        let mut di = 0;
        for (iname, ups) in &nodes[i].inputs {
            for &u in ups {
                key_inputs.push(KeyInput {
                    name: iname.as_ref(),
                    coord: &nodes[u].coord,
                    outputs: &digests[di],
                });
                di += 1;
            }
        }
        node_key(&self.plan.nodes[i].static_key, &key_inputs)
    }

    /// Everything the executor needs to run node `i` on its own.
    fn job(&self, i: usize, key: Digest, digests: Vec<BTreeMap<String, Digest>>) -> NodeJob {
        let p = self.plan;
        let nodes = &p.graph.nodes;
        let node = &nodes[i];
        let mut inputs: BTreeMap<String, Vec<JobInput>> = BTreeMap::new();
        let mut digests = digests.into_iter();
        for (iname, ups) in &node.inputs {
            let v = inputs.entry(iname.to_string()).or_default();
            for &u in ups {
                v.push(JobInput {
                    node: nodes[u].id.clone(),
                    coord: nodes[u].coord.clone(),
                    key: self.keys[u],
                    outputs: digests.next().expect("one digest map per upstream node"),
                });
            }
        }
        NodeJob {
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
        }
    }

    fn skip_dependents(&mut self, i: usize, report: &mut RunReport) {
        let nodes = &self.plan.graph.nodes;
        let mut stack = vec![i];
        while let Some(j) = stack.pop() {
            for &d in &self.dependents[j] {
                if !self.dead[d] {
                    self.dead[d] = true;
                    report.skipped.push(nodes[d].id.clone());
                    stack.push(d);
                }
            }
        }
    }

    /// Every node of the wave with its key and outputs, if all of them are done: what a no-op record lists.
    fn complete(&self) -> Option<Vec<FreshNode>> {
        let nodes = &self.plan.graph.nodes;
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        (0..nodes.len())
            .map(|i| {
                let outs = self.outputs[i].as_ref()?;
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
                    key: self.keys[i]?,
                    outputs,
                })
            })
            .collect()
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
            vec![ParamSpec::optional("i", crate::stage::ParamType::Int, 0, "index")]
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
        let exec = Arc::new(crate::run::executor::LocalExecutor::new(
            registry.clone(),
            store.clone(),
        ));
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
        let exec = Arc::new(crate::run::executor::LocalExecutor::new(
            registry.clone(),
            store.clone(),
        ));
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
