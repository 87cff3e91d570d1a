//! The methods against their reference implementations, one module per file, in one test binary:
//! each binary links libtorch, so one instead of three saves link time and disk.
//! `cargo test -p axbench-methods --test tests methods_golden::` runs one module's tests.

mod methods_concept10;
mod methods_golden;
mod methods_timing;
