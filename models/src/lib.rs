//! axbench-models
