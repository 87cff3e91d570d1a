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
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
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
    println!(
        "full plan: {} nodes, {} to run, {:.3} s",
        p.graph.nodes.len(),
        p.to_run(),
        plan_s
    );
    drop(p);

    // What `axbench plan` does first: the no-op record of the last complete run, if it holds.
    let t = Instant::now();
    let spec2 = PipelineSpec::load(&pipeline).expect("pipeline");
    let t_spec = t.elapsed().as_secs_f64();
    let store2 = Store::open(&project.join(".axbench")).expect("store");
    let t_open = t.elapsed().as_secs_f64() - t_spec;
    match axbench_engine::fresh_plan(&spec2, &registry, &store2, &project) {
        Some(f) => println!(
            "no-op plan (record): {} nodes fresh, {:.3} s (spec {:.3} s, store open {:.3} s)",
            f.nodes.len(),
            t.elapsed().as_secs_f64(),
            t_spec,
            t_open
        ),
        None => println!(
            "no-op plan (record): no valid record yet (a complete run writes one), {:.3} s",
            t.elapsed().as_secs_f64()
        ),
    }
    drop(store2);

    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let exec = Arc::new(LocalExecutor::new(registry.clone(), store.clone()));
    let opts = RunOptions {
        jobs: 2,
        project_dir: project.clone(),
    };
    let r = rt
        .block_on(axbench_engine::run(
            &spec,
            &registry,
            store.clone(),
            exec,
            &opts,
            Arc::new(Silent),
            CancelFlag::new(),
        ))
        .expect("run");
    println!(
        "run: {} computed, {} cached, {:.3} s",
        r.computed.len(),
        r.cached.len(),
        t.elapsed().as_secs_f64()
    );
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}
