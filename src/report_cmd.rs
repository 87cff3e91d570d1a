//! `axbench report PIPELINE [--set …] [--open]`: where the pipeline's latest report is. The `axbench.aggregate`
//! node is found by planning the pipeline with the same `--set` flags (as `axbench results` does); its outputs
//! live in the cache under their digests, so they are copied, under their own names, to
//! `<cache>/reports/<pipeline>/` (one subfolder per aggregate node when a pipeline has several), where
//! `report.md`'s plot links resolve. Prints the paths of `report.html` (self-contained) and `report.md`;
//! `--open` opens the HTML with `xdg-open`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::context::{GlobalArgs, registry};
use crate::error::bad;
use crate::results_cmd::{AGGREGATE_KIND, NodeFiles, Opened, open_pipeline, run_hint, stage_outputs};

/// `axbench report`
#[derive(Args)]
#[command(after_long_help = "Examples:
  axbench report pipelines/demo.toml
  axbench report pipelines/axbench.toml --set concepts.limit=10 --open

Prints two lines: the path of report.html, then of report.md (per aggregate node).")]
pub struct ReportArgs {
    /// Pipeline TOML, or a sweep file
    pub pipeline: PathBuf,
    /// The same --set flags the run used (repeatable): --set model.layer=12
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Open report.html in the desktop's browser (xdg-open)
    #[arg(long)]
    pub open: bool,
}

pub fn run(g: &GlobalArgs, a: ReportArgs) -> Result<()> {
    report(g, &a)
}

/// A node id as a folder name: `aggregate[layer=9]` → `aggregate_layer_9_`.
fn folder_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Copies an aggregate node's outputs (read-only blobs) to `dir` under their names, replacing an earlier copy.
fn export(files: &NodeFiles, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, blob) in files {
        let bytes = std::fs::read(blob).with_context(|| format!("reading {name} ({})", blob.display()))?;
        std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

fn report(g: &GlobalArgs, a: &ReportArgs) -> Result<()> {
    let Opened {
        spec,
        project,
        cache,
        store,
    } = open_pipeline(g, &a.pipeline, &a.sets)?;
    let found = stage_outputs(&spec, &registry(), &store, &project, &[AGGREGATE_KIND])?.remove(0);
    if found.is_empty() {
        return Err(bad(format!(
            "{} has no `{AGGREGATE_KIND}` stage: nothing makes a report",
            a.pipeline.display()
        )));
    }
    let stem = a
        .pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    let base = cache.join("reports").join(folder_name(&stem));
    let several = found.len() > 1;
    let mut htmls = Vec::new();
    for (id, outputs) in &found {
        let files = outputs.as_ref().ok_or_else(|| {
            bad(format!(
                "`{id}` is not computed for these params: {}",
                run_hint(&a.pipeline, &a.sets)
            ))
        })?;
        for name in ["report.html", "report.md"] {
            if !files.contains_key(name) {
                return Err(anyhow::anyhow!("`{id}` has no output {name}"));
            }
        }
        let dir = if several {
            base.join(folder_name(id))
        } else {
            base.clone()
        };
        export(files, &dir)?;
        println!("{}", dir.join("report.html").display());
        println!("{}", dir.join("report.md").display());
        htmls.push(dir.join("report.html"));
    }
    if a.open {
        for html in &htmls {
            match std::process::Command::new("xdg-open").arg(html).status() {
                Ok(s) if s.success() => {}
                Ok(s) => eprintln!("xdg-open {} exited with {s}: open it in a browser", html.display()),
                Err(_) => eprintln!("no xdg-open here: open {} in a browser", html.display()),
            }
        }
    }
    Ok(())
}
