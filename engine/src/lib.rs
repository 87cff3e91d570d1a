//! axbench-engine
