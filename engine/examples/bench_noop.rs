//! Engine-only timing of a no-op `plan` and `run` (the `axbench` binary additionally pays
//! libtorch's static initialization at startup). Used by benches/engine/run.sh.
//!
//! usage: cargo run -p axbench-engine --release --example bench_noop -- PIPELINE PROJECT_DIR

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axbench_cache::Store;
use axbench_engine::{CancelFlag, LocalExecutor, PipelineSpec, Registry, RunOptions, Silent, toy};

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (pipeline, project) = (std::path::PathBuf::from(&args[1]), std::path::PathBuf::from(&args[2]));
    let registry = toy::register(Registry::new());

    let t = Instant::now();
    let spec = PipelineSpec::load(&pipeline).expect("pipeline");
    let store = Arc::new(Store::open(&project.join(".axbench")).expect("store"));
    let p = axbench_engine::plan(&spec, &registry, &store, &project, &mut HashMap::new()).expect("plan");
    let plan_s = t.elapsed().as_secs_f64();
    println!("plan: {} nodes, {} to run, {:.3} s", p.graph.nodes.len(), p.to_run(), plan_s);
    drop(p);

    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let exec = Arc::new(LocalExecutor::new(registry.clone(), store.clone()));
    let opts = RunOptions { jobs: 2, project_dir: project.clone() };
    let r = rt.block_on(axbench_engine::run(&spec, &registry, store.clone(), exec, &opts, Arc::new(Silent), CancelFlag::new())).expect("run");
    println!("run: {} computed, {} cached, {:.3} s", r.computed.len(), r.cached.len(), t.elapsed().as_secs_f64());
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}
