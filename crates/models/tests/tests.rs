//! The runtime's integration tests, one module per file, in one test binary: each binary links
//! libtorch, so one instead of five saves link time and disk.
//! `cargo test -p axbench-models --test tests gguf_errors::` runs one module's tests.

mod common;

mod gguf_errors;
mod gguf_golden;
mod golden;
mod runtime;
mod tokenizer_golden;
