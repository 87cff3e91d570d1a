//! axbench-serve
