//! `axbench`: the command users run. A small launcher in front of `axbench-full`.
//!
//! Why: the full binary links the stages and with them libtorch, whose static initializers cost
//! ~0.3 s of CPU at every start, before `main`. That is most of what an unchanged `plan` or `run`
//! costs (the target is 0.5 s for an 82k-node sweep). This binary links only the engine
//! and the cache. For `plan`/`run` it looks up the pipeline's no-op record, which the full binary
//! files under its own identity (`axbench_engine::fingerprint::launch_key`) after a complete run
//! or a no-op plan. If the record holds, every node is fresh and this binary prints exactly what
//! the full binary would (`src/output.rs`). Everything else, and anything it is unsure about
//! (an unknown flag, `--help`, `RUST_LOG`, a pipeline with results tables, a parse error, a
//! stale record), it hands over unchanged: `exec` of `axbench-full` beside it, same arguments,
//! same process id.

mod output;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axbench_cache::Store;
use axbench_engine::{PipelineSpec, RunReport};

/// The file name of the full binary, looked up next to this one.
const FULL_BIN: &str = "axbench-full";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let full = full_binary();
    if let Some(cmd) = parse(&args[1..])
        && let Some(code) = full.as_deref().and_then(|full| answer_noop(&cmd, full))
    {
        return code;
    }
    let Some(full) = full else {
        eprintln!(
            "error: `{FULL_BIN}` is not next to this launcher ({}); build or install both binaries \
             (`cargo build --release`, `cargo install --path .`), or set AXBENCH_FULL_BIN",
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return ExitCode::from(1);
    };
    let mut c = std::process::Command::new(&full);
    c.args(&args[1..]);
    if let Some(arg0) = args.first() {
        c.arg0(arg0);
    }
    let e = c.exec();
    eprintln!("error: could not start {}: {e}", full.display());
    ExitCode::from(1)
}

/// `AXBENCH_FULL_BIN`, or `axbench-full` in this binary's directory.
fn full_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AXBENCH_FULL_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let full = exe.parent()?.join(FULL_BIN);
    full.is_file().then_some(full)
}

#[derive(Debug, Default, PartialEq)]
struct NoopCmd {
    run: bool,
    pipeline: PathBuf,
    sets: Vec<String>,
    json: bool,
    max_nodes: Option<usize>,
    cache_dir: Option<PathBuf>,
    project_dir: Option<PathBuf>,
}

/// The `plan`/`run` invocations this launcher may answer: the subcommand, one pipeline, and
/// the flags that do not change what a no-op prints. `None` (hand over) for anything else,
/// including every form clap would reject, so errors always come from the full binary.
fn parse(args: &[OsString]) -> Option<NoopCmd> {
    let mut cmd = NoopCmd::default();
    let mut sub: Option<&str> = None;
    let mut pipeline: Option<PathBuf> = None;
    let mut seen: Vec<&str> = Vec::new();
    let mut once = |flag: &'static str| -> Option<()> {
        if seen.contains(&flag) {
            return None;
        }
        seen.push(flag);
        Some(())
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg.to_str()?;
        // `--flag=value` or `--flag value`; `-j4` or `-j 4`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ if arg.len() > 2 && !arg.starts_with("--") && (arg.starts_with("-j") || arg.starts_with("-C")) => {
                (&arg[..2], Some(arg[2..].to_string()))
            }
            _ => (arg, None),
        };
        let mut value = || -> Option<String> {
            match &inline {
                Some(v) => Some(v.clone()),
                None => it.next()?.to_str().map(str::to_string),
            }
        };
        match flag {
            "--cache-dir" => {
                once("cache-dir")?;
                cmd.cache_dir = Some(PathBuf::from(value()?));
            }
            "-C" | "--project-dir" => {
                once("project-dir")?;
                cmd.project_dir = Some(PathBuf::from(value()?));
            }
            "--log-format" => {
                once("log-format")?;
                (value()? == "text").then_some(())?;
            }
            "--set" if sub.is_some() => cmd.sets.push(value()?),
            "--json" if sub.is_some() && inline.is_none() => {
                once("json")?;
                cmd.json = true;
            }
            "--max-nodes" if sub.is_some() => {
                once("max-nodes")?;
                cmd.max_nodes = Some(value()?.parse().ok()?);
            }
            "-j" | "--jobs" if sub == Some("run") => {
                once("jobs")?;
                value()?.parse::<usize>().ok()?;
            }
            "--executor" if sub == Some("run") => {
                once("executor")?;
                (value()? == "local").then_some(())?;
            }
            "--limit" if sub == Some("plan") => {
                once("limit")?;
                value()?.parse::<usize>().ok()?;
            }
            _ if inline.is_some() || arg.starts_with('-') => return None,
            "plan" | "run" if sub.is_none() => sub = Some(if arg == "run" { "run" } else { "plan" }),
            _ if sub.is_some() && pipeline.is_none() => pipeline = Some(PathBuf::from(arg)),
            _ => return None,
        }
    }
    cmd.run = sub? == "run";
    cmd.pipeline = pipeline?;
    Some(cmd)
}

/// Answers `cmd` from the no-op record filed for `full`, if it holds; `None` hands over.
fn answer_noop(cmd: &NoopCmd, full: &Path) -> Option<ExitCode> {
    // A debug log would say more than this launcher can (a no-op logs nothing at warn or above).
    if let Some(filter) = std::env::var_os("RUST_LOG")
        && !filter.to_str().is_some_and(logs_at_most_warnings)
    {
        return None;
    }
    let mut spec = PipelineSpec::load(&cmd.pipeline).ok()?;
    spec.apply_sets(&cmd.sets).ok()?;
    if let Some(n) = cmd.max_nodes {
        spec.max_nodes = n.max(1);
    }
    // A run prints results tables after its summary, which needs the stages.
    if cmd.run && !cmd.json && spec.stages.values().any(|s| s.kind.value == output::EVALUATE_KIND) {
        return None;
    }
    let project = std::fs::canonicalize(match &cmd.project_dir {
        Some(p) => p.clone(),
        None => std::env::current_dir().ok()?,
    })
    .ok()?;
    let cache = match (&cmd.cache_dir, std::env::var_os("AXBENCH_CACHE_DIR")) {
        (Some(d), _) if !d.as_os_str().is_empty() => d.clone(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        (None, None) => project.join(".axbench"),
        // An empty value: what clap makes of it is the full binary's business.
        _ => return None,
    };
    // Only an existing cache can hold a record; opening creates one, which is the full binary's call.
    if !cache.join("fingerprints").is_dir() {
        return None;
    }
    let store = Store::open(&cache).ok()?;
    let fresh = axbench_engine::fingerprint::launch_fresh_plan(&spec, &store, &project, full)?;
    if !cmd.run {
        output::print_fresh_plan(&spec.name, &fresh, cmd.json).ok()?;
        return Some(ExitCode::SUCCESS);
    }
    // What the engine's run does on a no-op: record the run (for `gc`), report every node cached.
    let keys = fresh.keys();
    let recorded = match &fresh.fingerprint {
        Some(fp) => store.record_run_like(fp, &keys),
        None => store.record_run(&keys),
    };
    if recorded.is_err() {
        return None;
    }
    let report = RunReport {
        cached: fresh.nodes.iter().map(|n| n.id.clone()).collect(),
        keys,
        ..Default::default()
    };
    output::print_run_report(&spec.name, &report, None, cmd.json);
    Some(ExitCode::SUCCESS)
}

/// Whether an `EnvFilter` directive list enables nothing below `warn` (`error`,
/// `axbench_engine=warn,off`, ...). Anything unusual counts as verbose.
fn logs_at_most_warnings(filter: &str) -> bool {
    filter.split(',').map(str::trim).filter(|d| !d.is_empty()).all(|d| {
        let level = d
            .rsplit_once('=')
            .map_or(d, |(target, level)| if target.contains('[') { "debug" } else { level });
        matches!(level.to_ascii_lowercase().as_str(), "off" | "error" | "warn")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn p(args: &[&str]) -> Option<NoopCmd> {
        parse(&args.iter().map(OsStr::new).map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn answers_only_plain_plan_and_run() {
        let c = p(&[
            "run",
            "x.toml",
            "--set",
            "a=1",
            "--set=b=2",
            "-j4",
            "--json",
            "-C",
            "/p",
        ])
        .unwrap();
        assert_eq!(
            c,
            NoopCmd {
                run: true,
                pipeline: "x.toml".into(),
                sets: vec!["a=1".into(), "b=2".into()],
                json: true,
                project_dir: Some("/p".into()),
                ..Default::default()
            }
        );
        let c = p(&["--cache-dir", "/c", "plan", "x.toml", "--max-nodes=10", "--limit", "5"]).unwrap();
        assert_eq!(
            (c.run, c.cache_dir, c.max_nodes),
            (false, Some(PathBuf::from("/c")), Some(10))
        );
        for hand_over in [
            &["plan"][..],
            &["plan", "x.toml", "y.toml"],
            &["plan", "x.toml", "--params"],
            &["plan", "x.toml", "--help"],
            &["plan", "x.toml", "-j", "2"],
            &["run", "x.toml", "--executor", "slurm"],
            &["run", "x.toml", "--json", "--json"],
            &["run", "x.toml", "--json=true"],
            &["run", "x.toml", "-j", "two"],
            &["run", "x.toml", "--set"],
            &["run", "x.toml", "--log-format", "json"],
            &["status"],
            &["model", "info"],
            &["--version"],
            &["-h"],
            &[],
        ] {
            assert_eq!(p(hand_over), None, "{hand_over:?}");
        }
    }

    #[test]
    fn only_quiet_log_filters_are_answered() {
        for quiet in ["error", "warn", "off", "axbench_engine=warn,error", " WARN "] {
            assert!(logs_at_most_warnings(quiet), "{quiet}");
        }
        for verbose in [
            "debug",
            "info",
            "axbench_engine=debug",
            "error,axbench=trace",
            "axbench_engine",
            "x[span]=warn",
        ] {
            assert!(!logs_at_most_warnings(verbose), "{verbose}");
        }
    }
}
