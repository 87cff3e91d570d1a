//! `axbench-full`: AxBench as a content-addressed, cached DAG workflow. Users run `axbench`
//! (src/launcher.rs), which answers unchanged `plan`/`run` itself and execs this binary otherwise.
//!
//! This file is a thin clap dispatcher: each subcommand group lives in its own module
//! (`pipeline_cmd` for run/plan/status/show/gc/dot/verify). Adding a group is one enum variant
//! here plus a module. Exit codes are decided in one place, `error.rs`: 0 success, 1 a node
//! failed (or `verify` found damage), 2 bad input, 130 interrupted.

mod context;
mod error;
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
  axbench plan pipelines/detection.toml --params           list a pipeline's params")]
struct Cli {
    #[command(flatten)]
    global: context::GlobalArgs,
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
    // libtorch caches its first answer about CUDA, so its CUDA library must be loaded before any
    // query: every query goes through axbench_models::device, which loads it first. The commands
    // that open a model at once load it here; the pipeline commands wait until a stage resolves a
    // device, because with the CUDA libraries installed the load costs ~0.15 s and ~350 MB of
    // mapped libraries, which a `plan` or a CPU-only run should not pay.
    if matches!(cli.command, Command::Model(_) | Command::Serve(_)) {
        axbench_models::device::init();
    }
    context::init_logging(&cli.global);
    let result = match cli.command {
        Command::Run(a) => pipeline_cmd::run(&cli.global, a),
        Command::Plan(a) => pipeline_cmd::plan(&cli.global, a),
        Command::Status => pipeline_cmd::status(&cli.global),
        Command::Show(a) => pipeline_cmd::show(&cli.global, a),
        Command::Gc(a) => pipeline_cmd::gc(&cli.global, a),
        Command::Dot(a) => pipeline_cmd::dot(&cli.global, a),
        Command::Verify => pipeline_cmd::verify(&cli.global),
        Command::Results(a) => results_cmd::run(&cli.global, a),
        Command::Report(a) => report_cmd::run(&cli.global, a),
        Command::Model(a) => model_cmd::run(a),
        Command::Serve(a) => serve_cmd::run(a),
        // Slurm tasks also write the code into an exit file, so exec-node maps it itself (same codes).
        Command::ExecNode(a) => return exec_node_cmd::run(&cli.global, a),
    };
    error::exit(result)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every repository file an example in any `--help` names exists, so no example sends a user to a
    /// file that is not there.
    #[test]
    fn help_examples_name_files_that_exist() {
        fn walk(cmd: &mut clap::Command, out: &mut Vec<(String, String)>) {
            let help = cmd.render_long_help().to_string();
            out.push((cmd.get_name().to_string(), help));
            for sub in cmd.get_subcommands_mut() {
                walk(sub, out);
            }
        }
        let mut helps = Vec::new();
        walk(&mut super::Cli::command(), &mut helps);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut named = 0;
        for (cmd, help) in &helps {
            for word in help.split(|c: char| c.is_whitespace() || c == '`' || c == '(' || c == ')') {
                let word = word.trim_end_matches([',', '.', ':', ';']);
                let repo_path = ["pipelines/", "configs/", "tests/fixtures/", "docs/", "scripts/"]
                    .iter()
                    .any(|dir| word.starts_with(dir));
                if repo_path {
                    named += 1;
                    assert!(
                        root.join(word).exists(),
                        "`axbench {cmd} --help` names {word}, which does not exist"
                    );
                }
            }
        }
        assert!(
            named >= 8,
            "the help texts name only {named} repository files; did the parser break?"
        );
    }
}
