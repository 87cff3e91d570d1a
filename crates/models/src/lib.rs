//! Language-model runtime on libtorch, usable without AxBench: Gemma-2, Gemma-3 and Llama
//! (one file per architecture, configs mirroring HF `config.json`, HF weight names), HF and GGUF
//! loading, tokenizers, hooks at layer L, batched generation and scoring, device selection.
//!
//! Imports no other axbench crate: it knows tensors and tokens, never pipelines or AxBench data.

pub mod chat;
pub mod config;
pub(crate) mod decoder;
pub mod device;
pub mod error;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod model;
pub mod open;
pub mod quant;
pub mod score;
pub mod tokenizer;
pub mod train;
pub mod vectors;
pub mod weights;

pub use model::{LoadOptions, Model, ModelError};
