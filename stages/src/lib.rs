//! axbench-stages
