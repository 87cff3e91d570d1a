//! What `plan` and `run` print, shared by the full binary and the launcher (`src/launcher.rs`),
//! so a no-op answered by the launcher prints byte for byte what the full binary would.

use axbench_engine::slurm::SlurmStats;
use axbench_engine::{FreshPlan, RunReport};

/// The stage kind whose nodes `run` summarizes as results tables after a successful run.
pub const EVALUATE_KIND: &str = "axbench.evaluate";

/// `plan`'s answer when the no-op record holds: every node fresh.
pub fn print_fresh_plan(pipeline: &str, fresh: &FreshPlan, json: bool) -> serde_json::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&fresh.to_json())?);
    } else {
        let n = fresh.nodes.len();
        println!("{pipeline}: {n} nodes: {n} fresh, 0 stale, 0 missing; 0 to run");
    }
    Ok(())
}

/// `run`'s report: JSON on stdout, or failures on stderr and a summary line on stdout.
pub fn print_run_report(pipeline: &str, report: &RunReport, slurm: Option<&SlurmStats>, json: bool) {
    if json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|f| serde_json::json!({"node": f.node, "error": f.error, "log": f.log}))
            .collect();
        let j = serde_json::json!({
            "computed": report.computed, "cached": report.cached, "failed": failed,
            "skipped": report.skipped, "pending": report.pending, "cancelled": report.cancelled,
            "slurm": slurm,
        });
        println!("{j}");
        return;
    }
    for f in &report.failed {
        match &f.log {
            Some(log) => eprintln!("FAILED {}: {} (log: {})", f.node, f.error, log.display()),
            None => eprintln!("FAILED {}: {}", f.node, f.error),
        }
    }
    if !report.skipped.is_empty() {
        eprintln!("skipped {} node(s) downstream of failures", report.skipped.len());
    }
    for p in &report.pending {
        eprintln!("not expanded: {p} (its list stage did not finish)");
    }
    if let Some(st) = slurm {
        let tasks = if st.tasks == st.nodes {
            String::new()
        } else {
            format!(" as {} task(s)", st.tasks)
        };
        eprintln!(
            "slurm: submitted {} node(s){tasks} in {} job array(s), re-attached to {} running job task(s)",
            st.nodes, st.arrays, st.reattached
        );
    }
    println!(
        "{}: {} computed, {} cached, {} failed, {} skipped{}",
        pipeline,
        report.computed.len(),
        report.cached.len(),
        report.failed.len(),
        report.skipped.len(),
        if report.cancelled { ", cancelled" } else { "" }
    );
}
