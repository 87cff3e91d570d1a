//! `axbench-full`: AxBench as a content-addressed, cached DAG workflow. Users run `axbench`
//! (src/launcher.rs), which answers unchanged `plan`/`run` itself and execs this binary otherwise.
//!
//! This file is a thin clap dispatcher: each subcommand group lives in its own module
//! (`pipeline_cmd` for run/plan/status/show/gc/dot/verify). Adding a group is one enum variant
//! here plus a module. Exit codes: 0 success, 1 a node failed (or `verify` found damage),
//! 2 bad input (malformed pipeline, unknown key, wrong type, cycle, bad `--set`), 130 Ctrl-C.

mod exec_node_cmd;
mod model_cmd;
mod output;
mod pipeline_cmd;
mod report_cmd;
mod results_cmd;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// AxBench as a content-addressed, cached DAG workflow engine.
///
/// Pipelines are TOML files of stages with fan-out; every node is cached by a key over its
/// stage code version, the params it reads, and its inputs' content.
#[derive(Parser)]
#[command(name = "axbench", version, propagate_version = true, max_term_width = 100)]
#[command(after_long_help = "Examples:
  axbench plan tests/fixtures/engine/toy.toml              what would run, and why
  axbench run tests/fixtures/engine/toy.toml -j 4          run it (cached nodes are skipped)
  axbench run tests/fixtures/engine/toy.toml --set scale=3 change a declared param
  axbench plan pipelines/main.toml --params                list a pipeline's params")]
struct Cli {
    #[command(flatten)]
    global: pipeline_cmd::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: compute every node that is not cached.
    Run(pipeline_cmd::RunArgs),
    /// Show what a run would compute and why (which param or input changed).
    Plan(pipeline_cmd::PlanArgs),
    /// Summarize the cache: nodes, blobs, size, recent runs.
    Status,
    /// Show a node's provenance (its manifest): params, inputs, outputs, timings, host.
    Show(pipeline_cmd::ShowArgs),
    /// Delete cached nodes that recent runs did not reach.
    Gc(pipeline_cmd::GcArgs),
    /// Print a pipeline's stage graph as graphviz (pipe into `dot -Tsvg`).
    Dot(pipeline_cmd::DotArgs),
    /// Re-hash every cached artifact; quarantine damaged ones so the next run recomputes them.
    Verify,
    /// Print a pipeline's results (AUROC and steering tables, or --json) from its cached evaluate and aggregate nodes.
    Results(results_cmd::ResultsArgs),
    /// Print where the pipeline's steering report is (report.html, report.md), or --open it.
    Report(report_cmd::ReportArgs),
    /// Inspect a model: info, tokenize, logits, generate, activations.
    Model(model_cmd::ModelArgs),
    /// Serve a model (with steering vectors) over an OpenAI-compatible HTTP API.
    Serve(serve_cmd::ServeArgs),
    /// Run nodes (one, or several in order) from the job specs an executor stored in the cache (what Slurm tasks run).
    ExecNode(exec_node_cmd::ExecNodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pipeline_cmd::init_logging(&cli.global);
    let result = match cli.command {
        Command::Run(a) => pipeline_cmd::run(&cli.global, a),
        Command::Plan(a) => pipeline_cmd::plan(&cli.global, a),
        Command::Status => pipeline_cmd::status(&cli.global),
        Command::Show(a) => pipeline_cmd::show(&cli.global, a),
        Command::Gc(a) => pipeline_cmd::gc(&cli.global, a),
        Command::Dot(a) => pipeline_cmd::dot(&cli.global, a),
        Command::Verify => pipeline_cmd::verify(&cli.global),
        Command::Results(a) => return results_cmd::run(&cli.global, a),
        Command::Report(a) => return report_cmd::run(&cli.global, a),
        Command::Model(a) => return model_cmd::run(a),
        Command::Serve(a) => serve_cmd::run(a),
        Command::ExecNode(a) => return exec_node_cmd::run(&cli.global, a),
    };
    pipeline_cmd::exit(result)
}
