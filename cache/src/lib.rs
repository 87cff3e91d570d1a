//! axbench-cache
