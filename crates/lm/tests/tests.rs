//! The LM client and the judge and synthesis procedures against the scripted test server, one
//! module per file, in one test binary: each binary links libtorch, so one instead of five saves
//! link time and disk. `cargo test -p axbench-lm --test tests lm_client::` runs one module's tests.

mod judge_rating;
mod lm_client;
mod lm_throughput;
mod synth_layout;
mod synth_procedure;
