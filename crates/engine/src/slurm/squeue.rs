//! Asking Slurm about tasks: `squeue` ([`parse_squeue`]) and `sinfo` ([`cluster_reachable`]). squeue only tells
//! whether a task without an exit file is still coming; how a task ended is read from its exit file.
//!
//! A leaf: it imports nothing from the rest of the engine.

use std::collections::HashMap;
use std::process::Command;

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
pub(super) fn squeue(job_ids: &[String]) -> Result<HashMap<String, TaskState>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_output_maps_tasks_to_alive_or_ended() {
        let s = parse_squeue("12_0|RUNNING\n12_1|PENDING\n12_2|COMPLETED\n13|TIMEOUT\n12_3|COMPLETING\n");
        assert_eq!(s["12_0"], TaskState::Alive("RUNNING".into()));
        assert_eq!(s["12_1"], TaskState::Alive("PENDING".into()));
        assert_eq!(s["12_2"], TaskState::Ended("COMPLETED".into()));
        assert_eq!(s["13"], TaskState::Ended("TIMEOUT".into()));
        assert_eq!(s["12_3"], TaskState::Alive("COMPLETING".into()));
    }
}
