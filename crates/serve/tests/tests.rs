//! The package's integration tests, one module per file, in one test binary (the layout every
//! package of the workspace follows). `cargo test -p axbench-serve --test tests server::`.

mod server;
