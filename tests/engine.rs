//! Integration tests of the workflow engine through the `axbench` binary, with the toy stages
//! and the pipelines in tests/fixtures/engine/.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{Project, SLOW, STATIC, TOY, ids, states, text};

/// `--set` for `static.toml` with element `b` given offset `off`.
fn xs_with_b_offset(off: i64) -> String {
    format!(r#"xs=[{{name="a",v=1,off=0}},{{name="b",v=2,off={off}}},{{name="c",v=3,off=0}}]"#)
}

/// Asserts which nodes a `run --json` report computed (sorted ids).
macro_rules! assert_computed {
    ($report:expr, [$($id:expr),* $(,)?]) => {{
        let mut want: Vec<String> = vec![$($id.to_string()),*];
        want.sort();
        assert_eq!(ids(&$report, "computed"), want, "report: {}", $report);
    }};
}

/// Output digests of every node of a pipeline, by node id.
fn output_digests(p: &Project, args: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let plan = p.plan_json(args);
    assert_eq!(plan["to_run"], 0, "not everything is fresh: {plan}");
    states(&plan)
        .keys()
        .map(|id| (id.clone(), p.show(id)["outputs"].clone()))
        .collect()
}

#[test]
fn first_run_computes_every_node_and_a_second_run_none() {
    let p = Project::new();
    let first = p.run_json(&[STATIC], 0);
    assert_eq!(ids(&first, "computed").len(), 13);
    let second = p.run_json(&[STATIC], 0);
    assert_computed!(second, []);
    assert_eq!(ids(&second, "cached").len(), 13);
    // The sum of (2·v + off) over v = 1, 2, 3.
    let sum = std::fs::read_to_string(p.blob_of("sum", "value.json")).unwrap();
    assert_eq!(sum.trim(), "12");
}

#[test]
fn changing_one_elements_param_recomputes_that_node_and_dependents_and_reverting_hits_the_cache() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let changed = xs_with_b_offset(5);
    let plan = p.plan_json(&[STATIC, "--set", &changed]);
    let not_fresh: Vec<_> = states(&plan)
        .into_iter()
        .filter(|(_, s)| s != "fresh")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(not_fresh, ["shifted[x=b]", "sum"]);
    let reason = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "shifted[x=b]")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(reason, "param `offset` changed: 0 -> 5");

    let r = p.run_json(&[STATIC, "--set", &changed], 0);
    assert_computed!(r, ["shifted[x=b]", "sum"]);
    assert_eq!(
        std::fs::read_to_string(p.blob_of("sum", "value.json")).unwrap().trim(),
        "17"
    );

    let reverted = p.run_json(&[STATIC], 0);
    assert_computed!(reverted, []);
    assert_eq!(p.plan_json(&[STATIC])["to_run"], 0);
}

#[test]
fn dynamic_fan_out_expands_after_the_list_stage_ran() {
    let p = Project::new();
    let plan = p.plan_json(&[TOY]);
    insta::assert_json_snapshot!("toy_plan_empty_cache", plan);
    let r = p.run_json(&[TOY], 0);
    assert_eq!(ids(&r, "computed").len(), 9);
    // 3 concepts × 2 methods, each 10 + scale (1): 66.
    assert_eq!(
        std::fs::read_to_string(p.blob_of("total", "value.json"))
            .unwrap()
            .trim(),
        "66"
    );
    insta::assert_json_snapshot!("toy_plan_after_run", p.plan_json(&[TOY]));
    // A longer list: only the new fan-out elements (and the gather) run.
    let r = p.run_json(&[TOY, "--set", "concepts.limit=4"], 0);
    assert_computed!(
        r,
        [
            "concepts",
            "square[concept=3,method=pca]",
            "square[concept=3,method=probe]",
            "total"
        ]
    );
}

#[test]
fn kill_9_mid_run_then_rerun_matches_an_uninterrupted_run() {
    let reference = Project::new();
    reference.run_json(&[SLOW, "--set", "ms=100", "-j", "2"], 0);
    let want = output_digests(&reference, &[SLOW, "--set", "ms=100"]);

    let p = Project::new();
    let mut child = p.spawn(&["run", SLOW, "--set", "ms=100", "-j", "2"]);
    std::thread::sleep(Duration::from_millis(450));
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let partial = p.plan_json(&[SLOW, "--set", "ms=100"]);
    let fresh_after_kill = states(&partial).values().filter(|s| *s == "fresh").count();
    assert!(
        fresh_after_kill < 13,
        "the kill came too late to test anything: {partial}"
    );

    let r = p.run_json(&[SLOW, "--set", "ms=100", "-j", "2"], 0);
    assert_eq!(
        ids(&r, "computed").len(),
        13 - fresh_after_kill,
        "a rerun resumes: only unfinished nodes run"
    );
    assert_eq!(output_digests(&p, &[SLOW, "--set", "ms=100"]), want);
    // No partial artifacts: staging is empty and every blob matches its digest.
    assert_eq!(std::fs::read_dir(p.cache().join("tmp")).unwrap().count(), 0);
    let v = p.run(&["verify"]);
    assert!(v.status.success(), "{}", text(&v.stdout));
}

#[test]
fn a_corrupted_artifact_is_detected_by_digest_and_recomputed_with_early_cutoff() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let blob = p.blob_of("const[x=a]", "value.json");
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, b"9").unwrap(); // same length, different bytes

    let plan = p.plan_json(&[STATIC]);
    let node = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "const[x=a]")
        .unwrap()
        .clone();
    assert_eq!(node["state"], "stale");
    assert_eq!(node["reason"], "output `value.json` is missing or corrupted");
    // The store is content-addressed: `slow[x=a]` outputs the same bytes, so its output was
    // damaged too. Recomputing restores identical bytes, so the dependents keep their keys
    // and are cache hits (early cutoff). Whether `slow[x=a]` is recomputed or finds the blob
    // already restored by `const[x=a]` when its turn comes depends on timing: either is right.
    let r = p.run_json(&[STATIC], 0);
    let computed = ids(&r, "computed");
    assert!(
        computed == ["const[x=a]"] || computed == ["const[x=a]", "slow[x=a]"],
        "report: {r}"
    );
    for dependent in ["double[x=a]", "shifted[x=a]", "sum"] {
        assert!(
            ids(&r, "cached").contains(&dependent.to_string()),
            "{dependent} not a cache hit: {r}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(p.blob_of("const[x=a]", "value.json")).unwrap(),
        "1"
    );
}

#[test]
fn verify_quarantines_silent_corruption() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let blob = p.blob_of("sum", "value.json");
    let before = std::fs::metadata(&blob).unwrap();
    let mut perms = before.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, b"13").unwrap();
    let v = p.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(text(&v.stdout).contains("corrupt blob"), "{}", text(&v.stdout));
    let r = p.run_json(&[STATIC], 0);
    assert_computed!(r, ["sum"]);
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn two_concurrent_runs_never_compute_a_node_twice_and_both_finish() {
    let p = Project::new();
    let a = p.spawn(&["run", "--json", SLOW, "--set", "ms=150", "-j", "2"]);
    let b = p.spawn(&["run", "--json", SLOW, "--set", "ms=150", "-j", "2"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert!(b.status.success(), "{}", text(&b.stderr));
    let (ra, rb): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&a.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    let mut all = ids(&ra, "computed");
    all.extend(ids(&rb, "computed"));
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a node was computed twice: {ra} {rb}");
    assert_eq!(n, 13, "every node computed exactly once: {ra} {rb}");
    assert_eq!(p.plan_json(&[SLOW, "--set", "ms=150"])["to_run"], 0);
}

#[test]
fn a_failing_node_is_reported_with_its_log_and_independent_branches_finish() {
    let p = Project::new();
    let r = p.run_json(&["tests/fixtures/engine/fail.toml"], 1);
    assert_computed!(r, ["after_good", "good"]);
    assert_eq!(ids(&r, "skipped"), ["after_bad"]);
    let f = &r["failed"][0];
    assert_eq!(f["node"], "bad");
    assert_eq!(f["error"], "boom on purpose");
    let log = std::fs::read_to_string(f["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("about to fail") && log.contains("boom on purpose"),
        "{log}"
    );
    // Human output names the node, the error and the log.
    let out = p.run(&["run", "tests/fixtures/engine/fail.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("FAILED bad: boom on purpose (log: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_input_exits_2_naming_file_line_column_and_key() {
    let p = Project::new();
    let mut all = String::new();
    let mut names: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/engine/errors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let path = format!("tests/fixtures/engine/errors/{name}");
        let out = p.run(&["plan", &path]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out.stderr));
        all.push_str(&format!("== {name}\n{}\n", text(&out.stderr).trim_end()));
    }
    for set in ["model.layr=3", "xs=5", "nonsense"] {
        let out = p.run(&["plan", STATIC, "--set", set]);
        assert_eq!(out.status.code(), Some(2));
        all.push_str(&format!("== --set {set}\n{}\n", text(&out.stderr).trim_end()));
    }
    insta::assert_snapshot!("bad_input_errors", all);
}

#[test]
fn a_damaged_index_is_rebuilt_from_manifests() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    std::fs::write(p.cache().join("index.redb"), b"this is not a redb file").unwrap();
    let r = p.run_json(&[STATIC], 0);
    assert_computed!(r, []);
}

#[test]
fn sweep_files_extend_pipelines() {
    let p = Project::new();
    let r = p.run_json(&["tests/fixtures/engine/sweep.toml"], 0);
    assert!(ids(&r, "computed").contains(&"report".to_string()));
    assert_eq!(
        std::fs::read_to_string(p.blob_of("report", "value.json")).unwrap(),
        "\"2;4;6\""
    );
    let out = p.run(&["plan", "tests/fixtures/engine/sweep.toml", "--params"]);
    assert!(
        text(&out.stdout).contains("sleep_ms  = 1 (default 0, set by tests/fixtures/engine/sweep.toml:5:1)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn cache_dir_flag_and_env_var_relocate_the_cache() {
    let p = Project::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = p
        .command(&["run", STATIC])
        .env("AXBENCH_CACHE_DIR", elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(elsewhere.path().join("manifests").exists());
    assert!(!p.cache().exists());
}

#[test]
fn status_show_gc_dot() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    p.run_json(&[STATIC, "--set", &xs_with_b_offset(5)], 0);
    let status = text(&p.run(&["status"]).stdout);
    assert!(status.contains("nodes: 15"), "{status}");
    let m = p.show("shifted[x=b]");
    assert_eq!(m["params"]["offset"], 5.0);
    assert_eq!(m["inputs"][0]["node"], "double[x=b]");
    // Keep only the last run: the two nodes only the first run reached go.
    let gc = text(&p.run(&["gc", "--keep-runs", "1"]).stdout);
    assert!(gc.contains("kept 13 nodes; removed 2 nodes"), "{gc}");
    assert!(p.run(&["verify"]).status.success());
    let dot = text(&p.run(&["dot", TOY]).stdout);
    assert!(
        dot.contains("\"concepts\" -> \"square\" [label=\"foreach concept\", style=dashed]"),
        "{dot}"
    );
}

const FILES: &str = "tests/fixtures/engine/files.toml";

/// `plan --json` from the full planner (the no-op records removed first).
fn full_plan(p: &Project, args: &[&str]) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(p.cache().join("fingerprints"));
    p.plan_json(args)
}

/// Whether a `run` or `plan` took the no-op record (its debug line says so).
fn took_the_record(p: &Project, args: &[&str]) -> bool {
    let out = p
        .command(args)
        .env("RUST_LOG", "axbench_engine=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stderr).contains("(no-op record")
}

#[test]
fn the_no_op_record_agrees_with_the_full_plan_and_every_change_falls_back_to_it() {
    let p = Project::new();
    let data = p.path().join("data.txt");
    std::fs::write(&data, "hello").unwrap();
    let first = p.run_json(&[FILES], 0);
    assert_computed!(first, ["size", "plus"]);
    // The complete run left a record: the next plan and run take it, and agree with the
    // full planner node by node.
    assert!(took_the_record(&p, &["plan", FILES]));
    let fast = p.plan_json(&[FILES]);
    let again = p.run_json(&[FILES], 0);
    assert_computed!(again, []);
    assert_eq!(ids(&again, "cached"), ["plus", "size"]);
    // The no-op run's run record is a hard link to the complete run's (the same keys; nothing
    // rewritten or fsynced), so `gc` keeps what it reached like any other run.
    let mut runs: Vec<_> = std::fs::read_dir(p.cache().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    assert!(runs.len() >= 2);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(runs.last().unwrap()).unwrap().nlink() >= 2);
    assert_eq!(
        std::fs::read(runs.last().unwrap()).unwrap(),
        std::fs::read(&runs[0]).unwrap()
    );
    assert_eq!(fast, full_plan(&p, &[FILES]));
    assert_eq!(fast["to_run"], 0);
    p.run_json(&[FILES], 0); // rewrites the record the full plan above removed

    // The file a `Path` param names changes: the record no longer holds.
    std::fs::write(&data, "hello, world").unwrap();
    assert!(!took_the_record(&p, &["plan", FILES]));
    let changed = p.plan_json(&[FILES]);
    assert_eq!(changed, full_plan(&p, &[FILES]));
    assert_eq!(changed["to_run"], 2, "{changed}");
    let r = p.run_json(&[FILES], 0);
    assert_computed!(r, ["size", "plus"]);
    assert!(took_the_record(&p, &["run", FILES]));

    // A `--set` gets its own record; going back to the old value takes the old record.
    assert!(!took_the_record(&p, &["plan", FILES, "--set", "offset=2"]));
    let r = p.run_json(&[FILES, "--set", "offset=2"], 0);
    assert_computed!(r, ["plus"]);
    assert!(took_the_record(&p, &["plan", FILES, "--set", "offset=2"]));
    assert!(took_the_record(&p, &["plan", FILES]));

    // An output blob disappears: the full planner finds it stale, with the reason.
    std::fs::remove_file(p.blob_of("size", "value.json")).unwrap();
    assert!(!took_the_record(&p, &["plan", FILES]));
    let broken = p.plan_json(&[FILES]);
    assert_eq!(broken, full_plan(&p, &[FILES]));
    assert!(
        broken
            .to_string()
            .contains("output `value.json` is missing or corrupted"),
        "{broken}"
    );
    p.run_json(&[FILES], 0);

    // gc drops every record (it removes nodes a record may list).
    assert!(p.cache().join("fingerprints").exists());
    assert!(p.run(&["gc"]).status.success());
    assert!(!p.cache().join("fingerprints").exists());
    assert_eq!(p.plan_json(&[FILES])["to_run"], 0);
}

#[test]
fn a_damaged_manifest_is_reported_by_verify_and_its_node_recomputed() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let manifest = |node: &str| {
        let key = p.show(node)["key"].as_str().unwrap().to_string();
        p.cache().join("manifests").join(&key[..2]).join(format!("{key}.json"))
    };
    let path = manifest("sum");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let v = p.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v.stdout).contains("unreadable manifest") && text(&v.stdout).contains("will be recomputed"),
        "{}",
        text(&v.stdout)
    );
    let r = p.run_json(&[STATIC], 0);
    assert_computed!(r, ["sum"]);
    assert!(p.run(&["verify"]).status.success());
    assert_eq!(p.show("sum")["node"], "sum");

    // Without verify, with the index gone as well: the lookup falls back to the damaged
    // manifest, and the run recomputes its node instead of failing (early cutoff keeps `sum`).
    let path = manifest("shifted[x=a]");
    std::fs::write(&path, b"{\"key\": tru").unwrap();
    std::fs::remove_file(p.cache().join("index.redb")).unwrap();
    std::fs::remove_dir_all(p.cache().join("fingerprints")).unwrap();
    let r = p.run_json(&[STATIC], 0);
    assert_computed!(r, ["shifted[x=a]"]);
    assert!(p.run(&["verify"]).status.success());

    // gc meeting a damaged manifest of a node it keeps leaves that node's outputs alone (the
    // index still lists them; they may be intact), rather than deleting them as unreferenced.
    let blob = p.blob_of("sum", "value.json");
    std::fs::write(manifest("sum"), b"{\"key\": tru").unwrap();
    let gc = p.run(&["gc"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert!(
        blob.exists(),
        "gc deleted the outputs of a kept node whose manifest is damaged"
    );
}

#[test]
fn gc_removes_temp_files_a_killed_write_left_once_they_are_a_minute_old() {
    let p = Project::new();
    p.run_json(&[STATIC], 0);
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    let shard = std::fs::read_dir(p.cache().join("manifests"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let litter = [shard.join(".tmpKiLLed"), p.cache().join("runs").join(".tmpAbCdEf")];
    for l in &litter {
        std::fs::write(l, b"half a manifest").unwrap();
        std::fs::File::options()
            .write(true)
            .open(l)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // A temp file younger than a minute may be a write in progress: kept.
    let young = shard.join(".tmpInFlight");
    std::fs::write(&young, b"being written").unwrap();
    let gc = p.run(&["gc"]);
    assert!(gc.status.success());
    assert!(
        text(&gc.stdout).contains("2 temp file(s) a killed write left"),
        "{}",
        text(&gc.stdout)
    );
    assert!(litter.iter().all(|l| !l.exists()));
    assert!(young.exists());
    assert_eq!(p.plan_json(&[STATIC])["to_run"], 0);
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn a_node_failing_before_a_second_wave_is_run_and_listed_once() {
    let p = Project::new();
    let r = p.run_json(&["tests/fixtures/engine/fail_waves.toml"], 1);
    let failed: Vec<&str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["bad"], "{r}");
    assert_eq!(ids(&r, "skipped"), ["after_bad"]);
    assert_computed!(r, ["concepts", "use[c=0]", "use[c=1]"]);
}

#[test]
fn max_nodes_flag_refuses_a_pipeline_over_it_with_exit_2() {
    let p = Project::new();
    let out = p.run(&["plan", STATIC, "--max-nodes", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("stages.") && err.contains("over the limit of 5"), "{err}");
    assert!(p.run(&["plan", STATIC, "--max-nodes", "13"]).status.success());
}

#[test]
fn running_nodes_print_progress_lines_when_stderr_is_not_a_terminal() {
    let p = Project::new();
    // Every update printed (interval 0): `test.sleep` reports 10 steps of 10 ms.
    let out = p
        .command(&["run", SLOW, "--set", "ms=100", "-j", "2"])
        .env("AXBENCH_PROGRESS_EVERY", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for i in 1..=12 {
        assert!(
            err.contains(&format!("nap[i={i}]: 10/10 (100%)")),
            "no final progress line of nap[i={i}]:\n{err}"
        );
    }
    assert!(err.contains("nap[i=1]: 5/10 (50%)"), "{err}");
    // The default interval (10 s): nodes shorter than that print nothing.
    let p = Project::new();
    let out = p
        .command(&["run", SLOW, "--set", "ms=100", "-j", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!text(&out.stderr).contains("nap[i="), "{}", text(&out.stderr));
}

/// The `axbench` launcher answers an unchanged `plan`/`run` from the record the full binary filed
/// under its identity, printing what the full binary prints, and hands everything else over.
/// Proven with copies of both binaries whose full binary is made unstartable (`chmod -x` keeps
/// the size, mtime and inode the record is filed under): an answer that needed it would fail.
#[test]
fn the_launcher_answers_unchanged_plans_and_runs_without_starting_the_full_binary() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let bin = p.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let (launcher, full) = (bin.join("axbench"), bin.join("axbench-full"));
    std::fs::copy(env!("CARGO_BIN_EXE_axbench"), &launcher).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_axbench-full"), &full).unwrap();
    let with = |exe: &std::path::Path, args: &[&str]| {
        let mut c = std::process::Command::new(exe);
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("-C")
            .arg(p.path())
            .args(args)
            .env_remove("AXBENCH_CACHE_DIR")
            .env("RUST_LOG", "error");
        c.output().unwrap()
    };
    let executable = |on: bool| {
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(if on { 0o755 } else { 0o644 })).unwrap()
    };
    let first = with(&launcher, &["run", "--json", STATIC]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(ids(&first, "computed").len(), 13);

    // What the full binary itself prints for each no-op form...
    let forms: [&[&str]; 5] = [
        &["plan", STATIC],
        &["plan", "--json", STATIC],
        &["run", STATIC],
        &["run", STATIC, "--json", "-j", "2"],
        &["--cache-dir", ".axbench", "plan", STATIC],
    ];
    let cache_rel = |args: &[&str]| -> Vec<String> {
        // `--cache-dir` relative to the working directory: point it at the project's cache.
        args.iter()
            .map(|a| {
                if *a == ".axbench" {
                    p.cache().display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    let expected: Vec<_> = forms
        .iter()
        .map(|f| with(&full, &cache_rel(f).iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    // ...the launcher prints without it.
    executable(false);
    for (form, want) in forms.iter().zip(&expected) {
        let got = with(
            &launcher,
            &cache_rel(form).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(got.status.success(), "{form:?}: {}", text(&got.stderr));
        assert_eq!(text(&got.stdout), text(&want.stdout), "{form:?}");
        assert_eq!(text(&got.stderr), text(&want.stderr), "{form:?}");
    }
    // A no-op run through the launcher is a run like any other: gc keeps what it reached.
    let runs = std::fs::read_dir(p.cache().join("runs")).unwrap().count();
    assert!(runs >= 4, "{runs} run records");
    // Anything it cannot answer is handed over (and fails here, proving it was).
    for handed_over in [
        &["plan", STATIC, "--set", &xs_with_b_offset(5)][..],
        &["status"],
        &["plan", STATIC, "--params"],
        &["--help"],
    ] {
        let out = with(&launcher, handed_over);
        assert_eq!(out.status.code(), Some(1), "{handed_over:?}: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("could not start"),
            "{handed_over:?}: {}",
            text(&out.stderr)
        );
    }
    // A rebuilt full binary (new mtime) may have other stage versions: the launcher hands over
    // until the new binary files the record under its own identity.
    executable(true);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&full)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    executable(false);
    assert!(!with(&launcher, &["plan", STATIC]).status.success());
    executable(true);
    assert!(with(&launcher, &["plan", STATIC]).status.success());
    executable(false);
    let again = with(&launcher, &["plan", STATIC]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), text(&expected[0].stdout));
}
