//! AxBench on the engine: data tables, the LM client, synthesis, detection and steering methods,
//! metrics, and the stages that wire them into pipelines.

pub mod data;
pub mod judge;
pub mod lm;
pub mod methods;
pub mod metrics;
pub mod prompts;
pub mod report;
pub mod stages;
pub mod synth;
pub mod tables;
