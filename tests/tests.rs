//! The CLI-level integration tests, one module per file, in one test binary: each binary links
//! libtorch, arrow and the whole workspace, so one instead of nine saves link time and disk.
//! `cargo test --test tests slurm::` runs one module's tests. A new file here is compiled only
//! once it is declared below (`autotests = false`).

mod common;

mod detection;
mod engine;
mod model_cli;
mod pipeline_e2e;
mod reliability;
mod report;
mod slurm;
mod steering;
mod training;
