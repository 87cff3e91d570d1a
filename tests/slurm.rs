//! `axbench run --executor slurm` against a real Slurm cluster (issue #7): the toy `test.*`
//! stages run as job-array tasks of `axbench exec-node`, so no model is needed.
//!
//! - a pipeline runs through Slurm: one array per stage, `--gres` only on the GPU stage, the
//!   results equal a local run's;
//! - `kill -9` of the engine mid-run, then a rerun: finished nodes are reused, running tasks are
//!   awaited (re-attached, not resubmitted), and no node runs twice — `test.tally` appends a
//!   line to a file outside the cache every time it really runs;
//! - a failing node is reported with its Slurm log, which holds the stage's error; nodes that do
//!   not depend on it finish;
//! - Ctrl-C cancels every job the engine submitted (`scancel`).
//!
//! These tests need a cluster: `scripts/slurm-up.sh` (as root) starts a single-node one on
//! loopback, and scripts/test.sh runs it when it can. Without one they pass after printing why
//! they skipped — unless `AXBENCH_REQUIRE_SLURM=1` (set by scripts/test.sh after it started the
//! cluster), where a missing cluster is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Project, ids, text};

/// Whether a Slurm cluster answers; prints the reason when it does not.
fn cluster() -> bool {
    let why = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => return true,
        Ok(o) => format!("sinfo failed: {}", text(&o.stderr).trim()),
        Err(e) => format!("sinfo cannot run: {e}"),
    };
    if std::env::var("AXBENCH_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
        panic!("AXBENCH_REQUIRE_SLURM=1 but no Slurm cluster answers ({why})");
    }
    eprintln!("skipping: no Slurm cluster answers here ({why}); `sudo scripts/slurm-up.sh` starts one");
    false
}

/// A pipeline in the project dir whose `{tally}` placeholders name the project's tally file.
fn pipeline(p: &Project, text: &str) -> PathBuf {
    let file = p.path().join("pipeline.toml");
    std::fs::write(&file, text.replace("{tally}", &tally_path(p).display().to_string())).unwrap();
    file
}

fn tally_path(p: &Project) -> PathBuf {
    p.path().join("tally.txt")
}

/// How many times each node really ran.
fn tally(p: &Project) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(tally_path(p)).unwrap_or_default().lines() {
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

fn value(p: &Project, node: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p.blob_of(node, "value.json")).unwrap()).unwrap()
}

fn slurm_run(p: &Project, file: &Path, extra: &[&str]) -> std::process::Command {
    let mut args = vec!["run", "--json", file.to_str().unwrap(), "--executor", "slurm"];
    args.extend_from_slice(extra);
    let mut c = p.command(&args);
    // The executor logs each sbatch command line at info.
    c.env("RUST_LOG", "axbench_engine::slurm=info");
    c
}

/// Runs `file` through Slurm, asserts the run succeeded, and returns its `--json` report and stderr
/// (where the executor logs each sbatch line).
fn slurm_run_ok(p: &Project, file: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let out = slurm_run(p, file, extra).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {err}\nstdout: {}",
        text(&out.stdout)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

/// Job ids (as squeue prints them, `123_4`) still known to Slurm as pending or running.
fn alive(job_ids: &[String]) -> Vec<String> {
    if job_ids.is_empty() {
        return vec![];
    }
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i", "-j", &job_ids.join(",")])
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.push(e.path());
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn manifests(p: &Project) -> usize {
    std::fs::read_dir(p.cache().join("manifests"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).map(|f| f.count()).unwrap_or(0))
        .sum()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job_ids(report: &serde_json::Value) -> Vec<String> {
    report["slurm"]["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_pipeline_runs_as_one_job_array_per_stage_with_gres_only_on_gpu_stages() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.cpu]
kind = "test.tally"
foreach = { i = [1, 2, 3, 4] }
params = { tally = "{tally}", value = "${i}" }

[stages.gpu]
kind = "test.tally"
foreach = { i = [10, 20] }
params = { tally = "{tally}", value = "${i}" }
resources = { gpu = 1 }

[stages.sum]
kind = "test.add"
inputs = { a = "cpu", b = "gpu" }
"#,
    );
    let (r, err) = slurm_run_ok(&p, &file, &["--gres", "gpu:1", "--array-limit", "3"]);
    assert_eq!(ids(&r, "computed").len(), 7, "{r}");
    assert_eq!(r["slurm"]["arrays"], 3, "one array per stage: {r}");
    assert_eq!(r["slurm"]["tasks"], 7);
    assert_eq!(value(&p, "sum"), serde_json::json!(1 + 2 + 3 + 4 + 10 + 20));
    assert!(tally(&p).values().all(|&n| n == 1), "{:?}", tally(&p));
    assert_eq!(tally(&p).len(), 6);
    // The sbatch lines: the GPU stage asks for the GPU, the CPU stages do not; the % limit holds.
    let sbatch: Vec<&str> = err.lines().filter(|l| l.contains("as Slurm job")).collect();
    let line = |stage: &str| {
        *sbatch
            .iter()
            .find(|l| l.contains(&format!("--job-name=axb-{stage} ")))
            .unwrap_or_else(|| panic!("no sbatch for {stage} in {err}"))
    };
    assert!(line("gpu").contains("--gres=gpu:1"), "{}", line("gpu"));
    assert!(!line("cpu").contains("--gres"), "{}", line("cpu"));
    assert!(!line("sum").contains("--gres"), "{}", line("sum"));
    assert!(line("cpu").contains("--array=0-3%3"), "{}", line("cpu"));
    // Successful arrays leave nothing behind.
    let left: Vec<_> = walk(&p.cache().join("slurm/batches"));
    assert!(left.is_empty(), "left behind: {left:?}");
    // A local rerun finds everything cached: the Slurm runs wrote ordinary cache entries.
    let again = p.run_json(&[file.to_str().unwrap()], 0);
    assert_eq!(ids(&again, "computed"), Vec::<String>::new());
}

#[test]
fn killed_engine_rerun_reuses_finished_awaits_running_and_runs_nothing_twice() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.quick]
kind = "test.tally"
foreach = { i = [1, 2, 3] }
params = { tally = "{tally}", value = "${i}" }

[stages.slow]
kind = "test.tally"
foreach = { i = [4, 5, 6] }
params = { tally = "{tally}", value = "${i}", ms = 8000 }

[stages.sum]
kind = "test.add"
inputs = { a = "quick", b = "slow" }
"#,
    );
    let mut engine = slurm_run(&p, &file, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the quick nodes are in the cache and the slow ones are running.
    wait_until(
        "quick nodes to finish and slow nodes to start",
        Duration::from_secs(60),
        || {
            let t = tally(&p);
            let slow_started = t.keys().filter(|k| k.starts_with("slow")).count() == 3;
            // The engine holds the index, so count manifests: while the slow nodes run, the only
            // finished nodes are the quick ones.
            let quick_done = manifests(&p) == 3;
            slow_started && quick_done
        },
    );
    engine.kill().unwrap(); // SIGKILL
    engine.wait().unwrap();
    let running: Vec<String> = Command::new("squeue")
        .args(["-h", "-r", "-o", "%j %i"])
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("axb-slow"))
        .map(str::to_string)
        .collect();
    assert!(!running.is_empty(), "the slow tasks should outlive the engine");

    let (r, _) = slurm_run_ok(&p, &file, &[]);
    // Finished nodes reused; the running ones awaited, not resubmitted; only `sum` submitted.
    for q in ["quick[i=1]", "quick[i=2]", "quick[i=3]"] {
        assert!(ids(&r, "cached").contains(&q.to_string()), "{q} not reused: {r}");
    }
    assert_eq!(
        r["slurm"]["reattached"].as_u64().unwrap()
            + ids(&r, "cached").iter().filter(|n| n.starts_with("slow")).count() as u64,
        3,
        "{r}"
    );
    assert!(
        r["slurm"]["reattached"].as_u64().unwrap() >= 1,
        "the slow tasks were still running: {r}"
    );
    assert_eq!(r["slurm"]["tasks"], 1, "only sum is new: {r}");
    let t = tally(&p);
    assert_eq!(t.len(), 6, "{t:?}");
    assert!(t.values().all(|&n| n == 1), "a node ran twice: {t:?}");
    assert_eq!(value(&p, "sum"), serde_json::json!(21));
}

#[test]
fn a_failing_job_is_reported_with_its_log_and_independent_branches_finish() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.bad]
kind = "test.fail"
params = { message = "boom inside the Slurm task" }

[stages.after_bad]
kind = "test.add"
inputs = { x = "bad" }

[stages.good]
kind = "test.tally"
foreach = { i = [1, 2] }
params = { tally = "{tally}", value = "${i}" }

[stages.good_sum]
kind = "test.add"
inputs = { x = "good" }
"#,
    );
    let out = slurm_run(&p, &file, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["node"], "bad");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("boom inside the Slurm task"),
        "{r}"
    );
    let log = PathBuf::from(failed[0]["log"].as_str().unwrap());
    let log_text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
    assert!(log_text.contains("boom inside the Slurm task"), "{log_text}");
    assert_eq!(ids(&r, "skipped"), vec!["after_bad".to_string()]);
    assert_eq!(
        ids(&r, "computed"),
        vec!["good[i=1]".to_string(), "good[i=2]".to_string(), "good_sum".to_string()]
    );
    assert_eq!(value(&p, "good_sum"), serde_json::json!(3));
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.long]
kind = "test.tally"
foreach = { i = [1, 2] }
params = { tally = "{tally}", value = "${i}", ms = 60000 }
"#,
    );
    let engine = slurm_run(&p, &file, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("both tasks to start", Duration::from_secs(60), || tally(&p).len() == 2);
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &engine.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "Ctrl-C took {:?}",
        started.elapsed()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["cancelled"], true);
    let jobs = job_ids(&r);
    assert_eq!(jobs.len(), 1, "{r}");
    wait_until("scancel to take effect", Duration::from_secs(30), || {
        alive(&jobs).is_empty()
    });
    assert_eq!(manifests(&p), 0, "a cancelled node has no manifest");
}

/// A task that dies without leaving an exit file (SIGKILL to the whole job, batch script included,
/// as a node failure or an OOM kill of the step would) is found gone through squeue, reported as a
/// failed node naming what Slurm said, and a rerun computes it; the other branch finishes meanwhile.
#[test]
fn a_task_killed_without_an_exit_file_is_reported_lost_and_a_rerun_computes_it() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.doomed]
kind = "test.tally"
params = { tally = "{tally}", value = 7, ms = 20000 }

[stages.fine]
kind = "test.tally"
params = { tally = "{tally}", value = 1 }
"#,
    );
    let engine = slurm_run(&p, &file, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The task's `axbench exec-node` (its command line names this project's cache) and the batch
    // script that started it: freeze the first so it cannot react, kill the script, then it. Neither
    // writes the exit file (`scancel` would not do: exec-node catches its SIGTERM and writes one).
    let exec_nodes = || -> Vec<String> {
        let pgrep = Command::new("pgrep")
            .args(["-f", &format!("exec-node .*{}", p.cache().display())])
            .output()
            .unwrap();
        text(&pgrep.stdout).lines().map(str::to_string).collect()
    };
    // Once `fine` is done and gone, the one exec-node left is the doomed one's.
    wait_until(
        "the doomed task to start and `fine` to finish",
        Duration::from_secs(60),
        || tally(&p).contains_key("doomed") && manifests(&p) == 1 && exec_nodes().len() == 1,
    );
    let pids = exec_nodes();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let ppid = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    for (signal, pid) in [("-STOP", &pids[0]), ("-KILL", &ppid), ("-KILL", &pids[0])] {
        assert!(
            Command::new("kill").args([signal, pid]).status().unwrap().success(),
            "kill {signal} {pid}"
        );
    }
    let out = engine.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["node"], "doomed");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("without an exit code"),
        "{r}"
    );
    assert_eq!(ids(&r, "computed"), vec!["fine".to_string()]);
    assert!(
        !p.cache().join("manifests").exists() || manifests(&p) == 1,
        "the killed node left a manifest"
    );

    // The rerun submits it again and it completes; `fine` is not run twice.
    let (r, _) = slurm_run_ok(&p, &file, &[]);
    assert_eq!(ids(&r, "computed"), vec!["doomed".to_string()], "{r}");
    assert_eq!(value(&p, "doomed"), serde_json::json!(7));
    assert_eq!(tally(&p).get("fine"), Some(&1));
}

/// `nodes_per_task = 2` on a stage of 5 nodes: one array of 3 tasks, the last running one node;
/// every node computed once, and a rerun computes nothing.
#[test]
fn nodes_per_task_runs_a_stage_s_nodes_in_fewer_array_tasks() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    let file = pipeline(
        &p,
        r#"
[stages.many]
kind = "test.tally"
foreach = { i = [1, 2, 3, 4, 5] }
params = { tally = "{tally}", value = "${i}" }

[stages.many.slurm]
nodes_per_task = 2

[stages.sum]
kind = "test.add"
inputs = { x = "many" }
"#,
    );
    let (r, err) = slurm_run_ok(&p, &file, &[]);
    assert_eq!(ids(&r, "computed").len(), 6, "{r}");
    assert_eq!(r["slurm"]["arrays"], 2, "{r}");
    assert_eq!(r["slurm"]["tasks"], 3 + 1, "{r}");
    assert_eq!(r["slurm"]["nodes"], 5 + 1, "{r}");
    let many = err
        .lines()
        .find(|l| l.contains("as Slurm job") && l.contains("--job-name=axb-many "))
        .unwrap_or_else(|| panic!("no sbatch for `many` in {err}"));
    assert!(many.contains("--array=0-2%"), "{many}");
    assert_eq!(value(&p, "sum"), serde_json::json!(15));
    let t = tally(&p);
    assert_eq!(t.len(), 5, "{t:?}");
    assert!(t.values().all(|&n| n == 1), "{t:?}");
    assert!(walk(&p.cache().join("slurm/batches")).is_empty());

    let (r, _) = slurm_run_ok(&p, &file, &[]);
    assert_eq!(ids(&r, "computed"), Vec::<String>::new(), "{r}");
    assert_eq!(r["slurm"]["tasks"], 0, "{r}");
    assert!(tally(&p).values().all(|&n| n == 1));
}

// ---- exec-node with several keys: no cluster needed -------------------------------------------

/// Writes the job spec of a toy node under `<cache>/jobs/`, as the executor does; its key is
/// made up (exec-node only checks it names the file).
fn job_spec(p: &Project, node: &str, kind: &str, params: serde_json::Value) -> String {
    let key = blake3::hash(node.as_bytes()).to_hex().to_string();
    let spec = serde_json::json!({
        "key": key, "node": node, "stage": node, "kind": kind, "version": 1, "coord": {},
        "params": params, "manifest_params": params, "inputs": {},
        "project_dir": p.path(), "list_output": false,
    });
    let dir = p.cache().join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{key}.json")), spec.to_string()).unwrap();
    key
}

fn exit_file(path: &Path) -> Option<(i32, String)> {
    let t = std::fs::read_to_string(path).ok()?;
    let mut l = t.lines();
    Some((l.next()?.parse().ok()?, l.next()?.to_string()))
}

#[test]
fn exec_node_runs_several_keys_in_order_one_failure_does_not_stop_the_rest() {
    let p = Project::new();
    let bad = job_spec(&p, "bad", "test.fail", serde_json::json!({ "message": "boom" }));
    let good = job_spec(&p, "good", "test.const", serde_json::json!({ "value": 4 }));
    let missing = "ab".repeat(32);
    let cache = p.cache().display().to_string();
    let e: Vec<PathBuf> = (0..3).map(|i| p.path().join(format!("{i}.exit"))).collect();
    let es: Vec<&str> = e.iter().map(|p| p.to_str().unwrap()).collect();
    let out = p
        .command(&[
            "exec-node",
            &bad,
            &good,
            &missing,
            "--cache-dir",
            &cache,
            "--exit-file",
            es[0],
            "--exit-file",
            es[1],
            "--exit-file",
            es[2],
        ])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the first failure's code: {err}");
    assert_eq!(exit_file(&e[0]), Some((1, "failed".into())), "{err}");
    assert_eq!(exit_file(&e[1]), Some((0, "computed".into())), "{err}");
    assert_eq!(exit_file(&e[2]), Some((2, "bad-input".into())), "{err}");
    assert!(err.contains("boom") && err.contains("no job spec"), "{err}");
    assert_eq!(manifests(&p), 1, "only `good` is done");

    // Every node succeeding (here: found cached) is 0.
    let out = p
        .command(&["exec-node", &good, "--cache-dir", &cache, "--exit-file", es[1]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(exit_file(&e[1]), Some((0, "cached".into())));

    // One --exit-file per KEY, or nothing runs.
    std::fs::remove_file(&e[0]).unwrap();
    let out = p
        .command(&["exec-node", &bad, &good, "--cache-dir", &cache, "--exit-file", es[0]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("one --exit-file per KEY"),
        "{}",
        text(&out.stderr)
    );
    assert!(!e[0].exists());
}

#[test]
fn exec_node_sigterm_cancels_the_running_node_and_the_ones_not_started() {
    let p = Project::new();
    let tally_file = tally_path(&p).display().to_string();
    let slow = job_spec(
        &p,
        "slow",
        "test.tally",
        serde_json::json!({ "tally": tally_file, "value": 1, "ms": 60000 }),
    );
    let next = job_spec(&p, "next", "test.const", serde_json::json!({ "value": 2 }));
    let cache = p.cache().display().to_string();
    let (e0, e1) = (p.path().join("0.exit"), p.path().join("1.exit"));
    let child = p
        .command(&[
            "exec-node",
            &slow,
            &next,
            "--cache-dir",
            &cache,
            "--exit-file",
            e0.to_str().unwrap(),
            "--exit-file",
            e1.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the slow node to start", Duration::from_secs(30), || {
        tally(&p).contains_key("slow")
    });
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(exit_file(&e0), Some((130, "cancelled".into())));
    assert_eq!(exit_file(&e1), Some((130, "cancelled".into())));
    assert_eq!(manifests(&p), 0, "neither node has a manifest");
}
