//! What every command shares: the global flags, logging, the stage registry of this binary, the
//! project directory and the cache it opens. Commands import this module, never each other's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use axbench_cache::Store;
use axbench_engine::Registry;
use clap::{Args, ValueEnum};

/// Flags every subcommand takes.
#[derive(Args)]
pub struct GlobalArgs {
    /// Cache directory [default: <project dir>/.axbench]
    #[arg(long, global = true, env = "AXBENCH_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Project directory: relative param paths resolve against it [default: current dir]
    #[arg(short = 'C', long, global = true, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=axbench_engine=debug)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(g: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The stage registry of this binary: the toy stages (tests, benchmarks) and AxBench's.
pub fn registry() -> Registry {
    axbench_stages::register(axbench_engine::toy::register(Registry::new()))
}

pub fn project_dir(g: &GlobalArgs) -> Result<PathBuf> {
    let p = match &g.project_dir {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    std::fs::canonicalize(&p).with_context(|| format!("project dir {}", p.display()))
}

pub fn open_store(g: &GlobalArgs) -> Result<Store> {
    let dir = match &g.cache_dir {
        Some(d) => d.clone(),
        None => project_dir(g)?.join(".axbench"),
    };
    Store::open(&dir).with_context(|| format!("opening cache {}", dir.display()))
}
