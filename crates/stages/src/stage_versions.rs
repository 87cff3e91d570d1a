//! Stage code versions that cannot be forgotten. A node key holds its stage kind's `version()`, so
//! a change to what a stage computes must bump it, or stale artifacts are silently reused. Each kind
//! is recorded in `stage-versions.toml` with its version and a blake3 of the source files it runs;
//! changing one of those files without touching the record fails this test, so whoever edits a
//! stage decides in the same commit: bump `version()` and the record (results change), or update
//! only the record's `source` (cosmetic: same results).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u32,
    /// blake3 over the listed files, each as its path, a NUL and its bytes, in the listed order.
    source: String,
    /// Paths relative to `crates/`; a path ending in `/` means every `.rs` file under it.
    files: Vec<String>,
    /// What each version changed, newest last (the history that used to sit in comments).
    #[serde(default)]
    #[allow(dead_code)]
    changes: Vec<String>,
}

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn expand(entry: &str) -> Vec<String> {
    if !entry.ends_with('/') {
        return vec![entry.to_string()];
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&crates_dir().join(entry), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(crates_dir()).unwrap().to_string_lossy().into_owned())
        .collect();
    rel.sort();
    rel
}

fn source_digest(files: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    for entry in files {
        for f in expand(entry) {
            let bytes = std::fs::read(crates_dir().join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            h.update(f.as_bytes());
            h.update(&[0]);
            h.update(&bytes);
        }
    }
    h.finalize().to_hex().to_string()
}

#[test]
fn every_stage_kind_has_its_version_and_source_recorded() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("stage-versions.toml");
    let records: BTreeMap<String, Record> =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let registry = crate::register(axbench_engine::Registry::new());
    let mut problems = Vec::new();
    for kind in registry.kinds().map(str::to_string).collect::<Vec<_>>() {
        let stage = registry.get(&kind).unwrap();
        let Some(r) = records.get(&kind) else {
            problems.push(format!("[\"{kind}\"] is not recorded in {}", path.display()));
            continue;
        };
        if r.version != stage.version() {
            problems.push(format!(
                "[\"{kind}\"]: the stage says version {}, the record {}",
                stage.version(),
                r.version
            ));
        }
        let now = source_digest(&r.files);
        if now != r.source {
            problems.push(format!(
                "[\"{kind}\"]: its source changed ({}): if results change, bump its version() and the record's \
                 version; if not, set source = \"{now}\"",
                r.files.join(", ")
            ));
        }
    }
    for kind in records.keys() {
        if registry.get(kind).is_none() {
            problems.push(format!("[\"{kind}\"] is recorded but no such stage kind is registered"));
        }
    }
    assert!(problems.is_empty(), "{}:\n{}", path.display(), problems.join("\n"));
}
