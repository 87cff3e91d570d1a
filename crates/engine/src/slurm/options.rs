//! What a stage asks Slurm for ([`SlurmOptions`]: a stage's `[stages.x.slurm]` table, or the run's `--partition`,
//! `--gres`, `--time`, `--slurm-opt`), the run-wide settings ([`SlurmConfig`]), and both merged into what one stage's
//! arrays ask sbatch for ([`StageRequest`]).
//!
//! A leaf: it imports nothing from the rest of the engine, so the pipeline spec can hold a stage's options without
//! depending on the executor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a stage asks Slurm for: `[stages.x.slurm]` in a pipeline, and the run-wide defaults from
/// `axbench run --executor slurm --partition … --gres … --time … --slurm-opt K=V`. Unset fields
/// fall back to the run's defaults; none of this enters a node key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres`, e.g. `gpu:1` or `gpu:a100:1`. Set on a stage, it applies even to a CPU stage;
    /// the run-wide value applies to GPU stages only.
    pub gres: Option<String>,
    /// `--time`, e.g. `2:00:00` or `1-00:00:00`.
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `16G`.
    pub mem: Option<String>,
    /// The `%` limit of this stage's job arrays: at most this many of its tasks run at once.
    pub array_limit: Option<u32>,
    /// Nodes one array task runs, one after the other in one `axbench exec-node` process
    /// (default 1). For model stages with many small nodes: the model is loaded once per task
    /// instead of once per node. `time` is then the limit of all of them together.
    pub nodes_per_task: Option<u32>,
    /// Any other sbatch option, `name = "value"` → `--name=value` (`""` → `--name`),
    /// e.g. `{ account = "proj1", qos = "long", constraint = "a100" }`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl SlurmOptions {
    /// Fields set in `other` win; `options` are merged key by key.
    pub fn merge(&mut self, other: SlurmOptions) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(partition, gres, time, cpus_per_task, mem, array_limit, nodes_per_task);
        self.options.extend(other.options);
    }

    /// Rejects values that cannot be passed to sbatch safely. `Err((".field", message))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let strings = [
            ("partition", &self.partition),
            ("gres", &self.gres),
            ("time", &self.time),
            ("mem", &self.mem),
        ];
        for (field, v) in strings {
            if let Some(v) = v {
                check_value(v).map_err(|m| (format!(".{field}"), m))?;
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err((".cpus_per_task".into(), "must be at least 1".into()));
        }
        if self.array_limit == Some(0) {
            return Err((".array_limit".into(), "must be at least 1".into()));
        }
        if self.nodes_per_task == Some(0) {
            return Err((".nodes_per_task".into(), "must be at least 1".into()));
        }
        for (k, v) in &self.options {
            check_option_name(k).map_err(|m| (format!(".options.{k}"), m))?;
            check_value(v).map_err(|m| (format!(".options.{k}"), m))?;
        }
        Ok(())
    }

    /// Parses one `--slurm-opt K=V` (or `K` for a flag without value).
    pub fn parse_opt(&mut self, kv: &str) -> Result<(), String> {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = k.trim_start_matches("--");
        check_option_name(k)?;
        check_value(v)?;
        self.options.insert(k.to_string(), v.to_string());
        Ok(())
    }
}

fn check_value(v: &str) -> Result<(), String> {
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{v:?} contains a control character"));
    }
    Ok(())
}

fn check_option_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        return Err(format!("`{k}` is not an sbatch option name (letters, digits, `-`)"));
    }
    // These are how the executor itself runs a batch: changing them would break it.
    const OURS: &[&str] = &[
        "array", "output", "error", "parsable", "chdir", "wrap", "job-name", "export",
    ];
    if OURS.contains(&k) {
        return Err(format!("`--{k}` is set by the Slurm executor itself"));
    }
    Ok(())
}

/// Run-wide settings of the Slurm executor.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// Defaults for every stage (`--partition`, `--gres` (GPU stages only), `--time`,
    /// `--slurm-opt`).
    pub defaults: SlurmOptions,
    /// The `%` limit of job arrays whose stage sets no `array_limit`.
    pub array_limit: u32,
    /// The `axbench` binary the array tasks run; it must be reachable at this path on the
    /// compute nodes (a shared filesystem).
    pub axbench: PathBuf,
    /// Resource classes that mark a GPU stage (it gets `--gres`).
    pub gpu_classes: Vec<String>,
    /// Nodes that become ready within this window are submitted as one array.
    pub batch_window: Duration,
    /// How often exit files are checked.
    pub poll: Duration,
    /// How often squeue is asked about tasks without an exit file.
    pub squeue_every: Duration,
    /// How long a task may be gone from squeue without an exit file before it counts as dead
    /// (covers attribute caching on network filesystems).
    pub gone_grace: Duration,
    /// Largest array submitted at once (Slurm's MaxArraySize defaults to 1001).
    pub max_array: usize,
}

impl SlurmConfig {
    pub fn new(axbench: PathBuf) -> SlurmConfig {
        SlurmConfig {
            defaults: SlurmOptions::default(),
            array_limit: 100,
            axbench,
            gpu_classes: vec!["gpu".into(), "model".into()],
            batch_window: Duration::from_millis(500),
            poll: Duration::from_millis(500),
            squeue_every: Duration::from_secs(10),
            gone_grace: Duration::from_secs(20),
            max_array: 1000,
        }
    }
}

/// What one stage's arrays ask for, after merging the run's defaults and the stage's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageRequest {
    pub opts: SlurmOptions,
    pub gpu: bool,
    pub array_limit: u32,
    /// Nodes per array task (at least 1).
    pub nodes_per_task: u32,
}

impl StageRequest {
    /// Resolves the request of a stage that holds `resources` and sets `stage` in its TOML.
    pub fn resolve(cfg: &SlurmConfig, stage: &SlurmOptions, resources: &BTreeMap<String, u32>) -> StageRequest {
        let gpu = resources.keys().any(|c| cfg.gpu_classes.contains(c));
        let mut opts = cfg.defaults.clone();
        if !gpu {
            opts.gres = None;
        }
        opts.merge(stage.clone());
        let array_limit = opts.array_limit.unwrap_or(cfg.array_limit);
        let nodes_per_task = opts.nodes_per_task.unwrap_or(1).max(1);
        StageRequest {
            opts,
            gpu,
            array_limit,
            nodes_per_task,
        }
    }

    /// How many array tasks run `n` nodes: one per `nodes_per_task` of them.
    pub fn tasks_for(&self, n: usize) -> usize {
        n.div_ceil(self.nodes_per_task as usize)
    }

    /// The sbatch arguments of an array for `n` nodes ([`Self::tasks_for`] tasks) whose files
    /// live in `batch_dir`.
    pub fn sbatch_args(&self, job_name: &str, n: usize, batch_dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={job_name}"),
            format!("--array=0-{}%{}", self.tasks_for(n).saturating_sub(1), self.array_limit),
            format!("--output={}/%a.log", batch_dir.display()),
            format!("--chdir={}", batch_dir.display()),
        ];
        let o = &self.opts;
        if let Some(v) = &o.partition {
            a.push(format!("--partition={v}"));
        }
        if let Some(v) = &o.gres {
            a.push(format!("--gres={v}"));
        }
        if let Some(v) = &o.time {
            a.push(format!("--time={v}"));
        }
        if let Some(v) = o.cpus_per_task {
            a.push(format!("--cpus-per-task={v}"));
        }
        if let Some(v) = &o.mem {
            a.push(format!("--mem={v}"));
        }
        for (k, v) in &o.options {
            a.push(if v.is_empty() {
                format!("--{k}")
            } else {
                format!("--{k}={v}")
            });
        }
        a.push(batch_dir.join("job.sh").display().to_string());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SlurmConfig {
        let mut c = SlurmConfig::new("/opt/axbench".into());
        c.defaults.partition = Some("main".into());
        c.defaults.gres = Some("gpu:1".into());
        c.defaults.time = Some("1:00:00".into());
        c.defaults.parse_opt("account=proj1").unwrap();
        c
    }

    #[test]
    fn gpu_stages_get_the_run_gres_cpu_stages_do_not() {
        let c = cfg();
        let gpu: BTreeMap<String, u32> = [("model".to_string(), 1)].into();
        let cpu = BTreeMap::new();
        let g = StageRequest::resolve(&c, &SlurmOptions::default(), &gpu);
        let p = StageRequest::resolve(&c, &SlurmOptions::default(), &cpu);
        assert!(g.gpu && !p.gpu);
        let dir = Path::new("/c/slurm/batches/b1");
        let ga = g.sbatch_args("axb-acts", 3, dir);
        let pa = p.sbatch_args("axb-fit", 3, dir);
        assert!(ga.contains(&"--gres=gpu:1".to_string()), "{ga:?}");
        assert!(!pa.iter().any(|a| a.starts_with("--gres")), "{pa:?}");
        for a in [&ga, &pa] {
            assert!(a.contains(&"--array=0-2%100".to_string()), "{a:?}");
            assert!(a.contains(&"--partition=main".to_string()));
            assert!(a.contains(&"--time=1:00:00".to_string()));
            assert!(a.contains(&"--account=proj1".to_string()));
            assert!(a.contains(&"--output=/c/slurm/batches/b1/%a.log".to_string()));
            assert_eq!(a.last().unwrap(), "/c/slurm/batches/b1/job.sh");
        }
    }

    #[test]
    fn a_stage_table_overrides_the_run_defaults() {
        let c = cfg();
        let stage = SlurmOptions {
            gres: Some("gpu:a100:2".into()),
            time: Some("2:00:00".into()),
            array_limit: Some(4),
            cpus_per_task: Some(8),
            options: [("account".into(), "proj2".into()), ("exclusive".into(), String::new())].into(),
            ..Default::default()
        };
        // A gres set on the stage applies even though the stage holds no GPU class.
        let r = StageRequest::resolve(&c, &stage, &BTreeMap::new());
        let a = r.sbatch_args("x", 10, Path::new("/b"));
        for want in [
            "--gres=gpu:a100:2",
            "--time=2:00:00",
            "--array=0-9%4",
            "--cpus-per-task=8",
            "--account=proj2",
            "--exclusive",
            "--partition=main",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        assert!(!a.contains(&"--account=proj1".to_string()));
    }

    #[test]
    fn options_that_would_break_the_executor_are_refused() {
        let mut o = SlurmOptions::default();
        assert!(
            o.parse_opt("array=0-3")
                .unwrap_err()
                .contains("set by the Slurm executor")
        );
        assert!(o.parse_opt("--output=x").is_err());
        assert!(o.parse_opt("qos=a\nb").unwrap_err().contains("control character"));
        assert!(o.parse_opt("bad name=1").is_err());
        o.parse_opt("--qos=long").unwrap();
        assert_eq!(o.options["qos"], "long");
        let bad = SlurmOptions {
            array_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err().0, ".array_limit");
    }

    #[test]
    fn nodes_per_task_is_checked_merges_and_sizes_the_array() {
        let zero = SlurmOptions {
            nodes_per_task: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.check().unwrap_err().0, ".nodes_per_task");

        // The run-wide value applies where a stage sets none; a stage's own wins.
        let mut c = cfg();
        c.defaults.nodes_per_task = Some(3);
        let none = BTreeMap::new();
        let run_wide = StageRequest::resolve(&c, &SlurmOptions::default(), &none);
        assert_eq!(run_wide.nodes_per_task, 3);
        let stage = SlurmOptions {
            nodes_per_task: Some(2),
            ..Default::default()
        };
        let r = StageRequest::resolve(&c, &stage, &none);
        assert_eq!(r.nodes_per_task, 2);
        assert_eq!(
            StageRequest::resolve(&cfg(), &SlurmOptions::default(), &none).nodes_per_task,
            1
        );

        // ceil(n / k) tasks.
        let dir = Path::new("/b");
        for (n, want) in [(5, "--array=0-2%100"), (4, "--array=0-1%100"), (1, "--array=0-0%100")] {
            let a = r.sbatch_args("x", n, dir);
            assert!(a.contains(&want.to_string()), "{n} nodes: {a:?}");
        }
        assert_eq!((r.tasks_for(5), r.tasks_for(6), r.tasks_for(7)), (3, 3, 4));
        // The %-limit still counts tasks.
        let limited = StageRequest::resolve(
            &c,
            &SlurmOptions {
                array_limit: Some(4),
                nodes_per_task: Some(8),
                ..Default::default()
            },
            &none,
        );
        assert!(
            limited
                .sbatch_args("x", 100, dir)
                .contains(&"--array=0-12%4".to_string())
        );
    }
}
