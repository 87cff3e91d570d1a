//! Helpers for the integration tests: a throwaway project dir and a way to run the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A temporary project dir (its cache is `<dir>/.axbench`). Commands run from the repo root
/// so fixture paths stay relative (and error messages stable).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join(".axbench")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_axbench"));
        c.current_dir(env!("CARGO_MANIFEST_DIR")).arg("-C").arg(self.path()).args(args).env_remove("AXBENCH_CACHE_DIR").env("RUST_LOG", "error");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run axbench")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn axbench")
    }

    /// `axbench run --json …`, asserting the exit code; returns the report.
    pub fn run_json(&self, args: &[&str], expect_code: i32) -> serde_json::Value {
        let mut a = vec!["run", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert_eq!(out.status.code(), Some(expect_code), "axbench {a:?}\nstdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&out.stdout)))
    }

    /// `axbench plan --json …`
    pub fn plan_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["plan", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(out.status.success(), "axbench {a:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The manifest of a node (via `axbench show`).
    pub fn show(&self, node: &str) -> serde_json::Value {
        let out = self.run(&["show", node]);
        assert!(out.status.success(), "show {node}: {}", text(&out.stderr));
        let s = text(&out.stdout);
        let json_end = s.rfind('}').unwrap() + 1;
        serde_json::from_str(&s[..json_end]).unwrap()
    }

    /// Path of the blob holding output `file` of `node`.
    pub fn blob_of(&self, node: &str, file: &str) -> PathBuf {
        let m = self.show(node);
        let d = m["outputs"][file]["digest"].as_str().unwrap().to_string();
        self.cache().join("blobs").join(&d[..2]).join(d)
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The node ids in a JSON array field, sorted.
pub fn ids(v: &serde_json::Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v[field].as_array().unwrap_or_else(|| panic!("no {field} in {v}")).iter().map(|x| x.as_str().unwrap().to_string()).collect();
    out.sort();
    out
}
