//! The files the Slurm executor shares with `axbench exec-node` through the cache, which every compute node sees:
//!
//! - `<cache>/jobs/<key>.json`: a node's [`NodeJob`], which exec-node replays ([`write_job_spec`], [`read_job_spec`]);
//! - `<batch>/job.sh`: an array's batch script ([`job_script`]);
//! - `<batch>/<line>.exit`: how the node on line `line` of the batch's `keys` ended ([`write_exit_file`],
//!   [`read_exit_file`]); the executor learns a task's end from these, never from Slurm's accounting;
//!
//! and their part of `axbench gc` ([`gc_files`]), which also removes the manager's task records
//! (`<cache>/slurm/keys/<key>.json`).
//!
//! Imports only [`NodeJob`] from the rest of the engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axbench_cache::{Digest, Store, StoreError, write_atomic};

use crate::run::executor::NodeJob;

/// Where the serialized [`NodeJob`] of `key` is kept: `<cache>/jobs/<key>.json`.
pub fn job_spec_path(store: &Store, key: &Digest) -> PathBuf {
    store.root().join("jobs").join(format!("{}.json", key.to_hex()))
}

/// Writes a node's job spec into the cache (atomically), for `axbench exec-node` to replay.
pub fn write_job_spec(store: &Store, job: &NodeJob) -> Result<PathBuf, StoreError> {
    let path = job_spec_path(store, &job.key);
    let bytes = serde_json::to_vec_pretty(job).map_err(|source| StoreError::Manifest {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &bytes).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A job spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobSpecError {
    #[error("{path}: no job spec for this key (was it submitted against another --cache-dir?)")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a job spec: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: field `key` is {found}, but the file is named after {expected}")]
    KeyMismatch {
        path: PathBuf,
        found: Digest,
        expected: Digest,
    },
}

/// Reads the job spec of `key` back.
pub fn read_job_spec(store: &Store, key: &Digest) -> Result<NodeJob, JobSpecError> {
    let path = job_spec_path(store, key);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(JobSpecError::Missing { path }),
        Err(source) => return Err(JobSpecError::Io { path, source }),
    };
    let job: NodeJob = serde_json::from_slice(&bytes).map_err(|source| JobSpecError::Parse {
        path: path.clone(),
        source,
    })?;
    if job.key != *key {
        return Err(JobSpecError::KeyMismatch {
            path,
            found: job.key,
            expected: *key,
        });
    }
    Ok(job)
}

/// Writes an exit-code file: the code on the first line, a word on the second (`computed`,
/// `cached`, `failed`, `cancelled`, `crashed`). Atomic, so a reader never sees half of it.
pub fn write_exit_file(path: &Path, code: i32, status: &str) -> std::io::Result<()> {
    write_atomic(path, format!("{code}\n{status}\n").as_bytes())
}

/// Reads an exit-code file: `None` if absent or not written completely.
pub fn read_exit_file(path: &Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let code = lines.next()?.trim().parse().ok()?;
    Some((code, lines.next().unwrap_or("").trim().to_string()))
}

/// The batch script of one array: task `i` runs one `axbench exec-node` for lines
/// `[i*k, i*k+k)` of `keys` (numbered from 0; `k` = `nodes_per_task`), one node after the other,
/// and makes sure every one of those lines has an exit file `<line>.exit` afterwards (exec-node
/// writes them; the script does for the lines exec-node did not reach when it died, e.g. killed
/// by the OOM killer).
pub fn job_script(axbench: &Path, cache: &Path, batch_dir: &Path, stage: &str, nodes_per_task: u32) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        r#"#!/bin/sh
# axbench: stage `{stage}`, {k} node(s) per Slurm array task; their keys are in ./keys.
dir={dir}
k={k}
i=${{SLURM_ARRAY_TASK_ID:?axbench: job.sh runs as a Slurm array task}}
first=$((i * k))
keys=$(sed -n "$((first + 1)),$((first + k))p" "$dir/keys")
# One exit file per key, in the keys' order: <line>.exit.
set --
l=$first
for key in $keys; do
  set -- "$@" --exit-file "$dir/$l.exit"
  l=$((l + 1))
done
{axbench} exec-node $keys --cache-dir {cache} "$@"
code=$?
# 0, 1, 2 and 130 are exec-node's own codes, after it wrote every exit file (and the engine may
# have removed this batch since); any other code means it died first (a signal, no binary): the
# lines it left without an exit file get one.
case $code in
  0|1|2|130) ;;
  *)
    l=$first
    for key in $keys; do
      if [ ! -e "$dir/$l.exit" ]; then
        printf '%s\ncrashed\n' "$code" > "$dir/$l.exit.tmp" && mv "$dir/$l.exit.tmp" "$dir/$l.exit"
      fi
      l=$((l + 1))
    done
    ;;
esac
exit $code
"#,
        dir = q(batch_dir),
        axbench = q(axbench),
        cache = q(cache),
        k = nodes_per_task.max(1),
    )
}

/// Single-quotes a string for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch dirs under `<cache>/slurm/batches/`, oldest first (what is left of submitted
/// arrays: batches whose every task succeeded are removed).
pub fn submitted_batches(store: &Store) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store.root().join("slurm").join("batches"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// What [`gc_files`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlurmGc {
    /// `<cache>/jobs/<key>.json` job specs.
    pub job_specs: usize,
    /// `<cache>/slurm/keys/<key>.json` task records.
    pub task_records: usize,
    /// `<cache>/slurm/batches/*` dirs (scripts and logs of arrays that had a failed task).
    pub batches: usize,
}

/// How long `axbench gc` keeps the Slurm executor's files of unfinished nodes and failed
/// arrays: long enough for a queue to drain and a user to read a failed task's log.
pub const SLURM_FILES_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Slurm executor's part of `axbench gc`: job specs and task records of nodes whose
/// manifest exists (their task finished; nothing reads them again), and every such file and
/// batch dir older than `max_age` (a task that has not finished in that time is gone). A run in
/// flight only has younger files, so it is never disturbed.
pub fn gc_files(store: &Store, max_age: Duration) -> SlurmGc {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age)
    };
    let per_key = |dir: PathBuf| -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let Some(key) = name.strip_suffix(".json").and_then(|h| h.parse::<Digest>().ok()) else {
                continue;
            };
            if (store.manifest_path(&key).exists() || old(&path)) && std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        n
    };
    let mut r = SlurmGc {
        job_specs: per_key(store.root().join("jobs")),
        task_records: per_key(store.root().join("slurm").join("keys")),
        batches: 0,
    };
    for batch in submitted_batches(store) {
        if old(&batch) && std::fs::remove_dir_all(&batch).is_ok() {
            r.batches += 1;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn gc_removes_files_of_finished_nodes_and_old_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
        let write = |p: PathBuf, old: bool| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"{}").unwrap();
            if old {
                std::fs::File::options()
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(long_ago)
                    .unwrap();
            }
            p
        };
        let key = |s: &str| axbench_cache::hash_bytes(s.as_bytes());
        // A finished node (manifest present), an unfinished young one, an unfinished old one.
        let (done, young, stale) = (key("done"), key("young"), key("stale"));
        write(store.manifest_path(&done), false);
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for sub in ["jobs", "slurm/keys"] {
            gone.push(write(
                store.root().join(sub).join(format!("{}.json", done.to_hex())),
                false,
            ));
            kept.push(write(
                store.root().join(sub).join(format!("{}.json", young.to_hex())),
                false,
            ));
            gone.push(write(
                store.root().join(sub).join(format!("{}.json", stale.to_hex())),
                true,
            ));
        }
        kept.push(write(store.root().join("jobs/notes.txt"), true)); // not ours: left alone
        let young_batch = write(store.root().join("slurm/batches/0001-a/job.sh"), false);
        let old_batch = store.root().join("slurm/batches/0000-b");
        write(old_batch.join("task-0.log"), true);
        std::fs::File::open(&old_batch).unwrap().set_modified(long_ago).unwrap();
        let r = gc_files(&store, SLURM_FILES_AGE);
        assert_eq!(
            r,
            SlurmGc {
                job_specs: 2,
                task_records: 2,
                batches: 1
            }
        );
        assert!(kept.iter().chain([&young_batch]).all(|p| p.exists()));
        assert!(gone.iter().chain([&old_batch]).all(|p| !p.exists()));
        assert!(store.manifest_path(&done).exists());
    }

    #[test]
    fn job_script_quotes_paths_and_always_leaves_an_exit_file() {
        let s = job_script(
            Path::new("/opt/ax bench/axbench"),
            Path::new("/shared/it's/cache"),
            Path::new("/shared/c/slurm/batches/b"),
            "fit",
            1,
        );
        assert!(
            s.contains("'/opt/ax bench/axbench' exec-node $keys --cache-dir '/shared/it'\\''s/cache' \"$@\""),
            "{s}"
        );
        assert!(s.contains("mv \"$dir/$l.exit.tmp\" \"$dir/$l.exit\""));
        // The script is valid sh.
        let out = Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs job.sh as Slurm would run task 0, with `fake` standing in for the axbench binary.
    fn run_job_script(fake: &str) -> (tempfile::TempDir, Option<(i32, String)>) {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("fake-axbench");
        std::fs::write(&bin, fake).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.path().join("keys"), "ab12\n").unwrap();
        std::fs::write(d.path().join("job.sh"), job_script(&bin, d.path(), d.path(), "s", 1)).unwrap();
        Command::new("sh")
            .arg(d.path().join("job.sh"))
            .env("SLURM_ARRAY_TASK_ID", "0")
            .status()
            .unwrap();
        let exit = read_exit_file(&d.path().join("0.exit"));
        (d, exit)
    }

    #[test]
    fn job_script_writes_the_exit_file_when_exec_node_dies_and_leaves_its_own_alone() {
        // Killed by a signal before it could write anything (the OOM killer): 128 + 9.
        let (_d, exit) = run_job_script("#!/bin/sh\nkill -9 $$\n");
        assert_eq!(exit, Some((137, "crashed".into())));
        // exec-node wrote its own (here: a failure) and the key reached it as its argument.
        let (d, exit) = run_job_script(
            "#!/bin/sh\n[ \"$1\" = exec-node ] && [ \"$2\" = ab12 ] || exit 7\nprintf '1\\nfailed\\n' > \"$6\"\nexit 1\n",
        );
        assert_eq!(
            exit,
            Some((1, "failed".into())),
            "{:?}",
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }

    /// Runs job.sh (`k` nodes per task) as Slurm would run array task `task`, with `fake`
    /// standing in for the axbench binary; `keys` holds one key per line.
    fn run_grouped_job_script(d: &Path, fake: &str, keys: &str, k: u32, task: usize) -> i32 {
        let bin = d.join("fake-axbench");
        std::fs::write(&bin, fake).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(d.join("keys"), keys).unwrap();
        std::fs::write(d.join("job.sh"), job_script(&bin, d, d, "s", k)).unwrap();
        Command::new("sh")
            .arg(d.join("job.sh"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .status()
            .unwrap()
            .code()
            .unwrap()
    }

    #[test]
    fn a_job_script_of_two_nodes_per_task_runs_each_task_s_lines_in_one_exec_node() {
        // Records its arguments, one per line, and writes every exit file as exec-node does.
        let fake = r#"#!/bin/sh
printf '%s\n' "$@" > "$(dirname "$0")/args.$SLURM_ARRAY_TASK_ID"
while [ $# -gt 0 ]; do
  if [ "$1" = --exit-file ]; then printf '0\ncomputed\n' > "$2"; shift; fi
  shift
done
exit 0
"#;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        for task in [0, 1] {
            assert_eq!(run_grouped_job_script(d.path(), fake, "aa\nbb\ncc\n", 2, task), 0);
        }
        let args = |t: usize| std::fs::read_to_string(d.path().join(format!("args.{t}"))).unwrap();
        assert_eq!(
            args(0),
            format!("exec-node\naa\nbb\n--cache-dir\n{dir}\n--exit-file\n{dir}/0.exit\n--exit-file\n{dir}/1.exit\n")
        );
        assert_eq!(
            args(1),
            format!("exec-node\ncc\n--cache-dir\n{dir}\n--exit-file\n{dir}/2.exit\n")
        );
        for line in 0..3 {
            assert_eq!(
                read_exit_file(&d.path().join(format!("{line}.exit"))),
                Some((0, "computed".into()))
            );
        }
    }

    #[test]
    fn a_job_script_of_two_nodes_per_task_writes_the_exit_files_a_crashed_exec_node_left_out() {
        // Finishes the first of its nodes (line 2), then dies of SIGKILL during the second.
        let fake = "#!/bin/sh\nprintf '1\\nfailed\\n' > \"$7\"\nkill -9 $$\n";
        let d = tempfile::tempdir().unwrap();
        assert_eq!(run_grouped_job_script(d.path(), fake, "aa\nbb\ncc\ndd\n", 2, 1), 137);
        let exit = |l: usize| read_exit_file(&d.path().join(format!("{l}.exit")));
        assert_eq!(exit(2), Some((1, "failed".into())), "exec-node's own is left alone");
        assert_eq!(exit(3), Some((137, "crashed".into())));
        assert_eq!((exit(0), exit(1)), (None, None), "another task's lines");
    }

    #[test]
    fn exit_files_round_trip_and_half_written_ones_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.exit");
        assert_eq!(read_exit_file(&p), None);
        write_exit_file(&p, 3, "failed").unwrap();
        assert_eq!(read_exit_file(&p), Some((3, "failed".into())));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_exit_file(&p), None);
    }
}
