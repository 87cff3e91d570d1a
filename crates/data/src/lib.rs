//! AxBench's data, without a tensor in sight: the released dataset layout ([`dataset`]: concepts,
//! rows, categories, numpy's generator for AxBench's draws), the Arrow tables and schemas stages
//! exchange as Parquet ([`tables`]), the prompt templates ([`prompts`]), the metrics ([`metrics`]:
//! ROC AUC, F1, the hard-negative evaluators) and the detection result rows ([`results`]).
//!
//! Sits beside `axbench-models` at the bottom of the house: imports neither it, nor the engine, nor
//! libtorch.

pub mod dataset;
pub mod metrics;
pub mod prompts;
pub mod results;
pub mod tables;
