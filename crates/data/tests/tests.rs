//! The package's integration tests, one module per file, in one test binary (the layout every
//! package of the workspace follows). `cargo test -p axbench-data --test tests metrics_golden::`.

mod metrics_golden;
