//! The weight-training baselines: LoRA (AxBench's `LoRA`, `axbench/models/lora.py` on peft) and SFT (`SFT`,
//! `axbench/models/sft.py`, full finetuning). Both train with the LM loss on the concept's positives and steer by
//! generating with the changed model (no factor, no detection).
//!
//! * LoRA: rank 4 on `o_proj` of the LoReFT layers, alpha 32, rsLoRA (`alpha/√r`), dropout 0.05
//!   ([`axbench_models::lora`]).
//! * SFT: every weight of the model trains (embeddings, tied head, norms). AxBench runs it for the first 20 concepts
//!   only ("max_concepts 20"): a checkpoint is a full copy of the model (about 1 GB in f32 for gemma-3-270m), and on
//!   CPU one concept takes minutes per epoch. Our stage writes the full copy too; keep `concepts.limit` small.

use axbench_models::hooks::Hooks;
use axbench_models::lora::{Lora, LoraConfig};
use axbench_models::train::Trainable;
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub const LORA_NAME: &str = "LoRA";
pub const SFT_NAME: &str = "SFT";

/// `[LoRA]` in `configs/methods.toml`: AxBench's 2B production values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraMethodConfig {
    pub low_rank_dimension: i64,
    pub lora_alpha: f64,
    pub rslora: bool,
    pub dropout: f64,
    /// Layers whose `o_proj` is adapted; empty = `L/4, L/2, 3L/4, L` as LoReFT.
    pub lora_layers: Vec<usize>,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub n_epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

impl Default for LoraMethodConfig {
    fn default() -> Self {
        Self {
            low_rank_dimension: 4,
            lora_alpha: 32.0,
            rslora: true,
            dropout: 0.05,
            lora_layers: vec![],
            batch_size: 18,
            gradient_accumulation_steps: 2,
            n_epochs: 24,
            lr: 9e-4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
        }
    }
}

super::impl_train_config!(LoraMethodConfig);

impl LoraMethodConfig {
    pub fn lora_config(&self, layers: Vec<usize>) -> LoraConfig {
        LoraConfig {
            rank: self.low_rank_dimension,
            alpha: self.lora_alpha,
            rslora: self.rslora,
            dropout: self.dropout,
            layers,
        }
    }
}

/// `[SFT]` in `configs/methods.toml`: AxBench's 2B production values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub n_epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            batch_size: 18,
            gradient_accumulation_steps: 4,
            n_epochs: 8,
            lr: 4e-5,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
        }
    }
}

super::impl_train_config!(SftConfig);

/// LoRA as a [`Trainable`]: dropout on while training.
pub struct LoraTrainable(pub Lora);

impl Trainable for LoraTrainable {
    fn parameters(&self) -> Vec<Tensor> {
        self.0.set_training(true);
        self.0.parameters()
    }
    fn attach<'a>(&'a self, hooks: Hooks<'a>) -> Hooks<'a> {
        self.0.set_training(true);
        self.0.attach(hooks)
    }
}

/// Full finetuning: the model's own weights (shared storage) made trainable. Build it on a private copy of the model.
pub struct Sft {
    pub params: Vec<(String, Tensor)>,
}

impl Sft {
    /// Sets `requires_grad` on every weight of `model`.
    pub fn new(model: &axbench_models::Model) -> Self {
        let params = model
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(true)))
            .collect();
        Self { params }
    }
}

impl Trainable for Sft {
    fn parameters(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, t)| t.shallow_clone()).collect()
    }
    fn attach<'a>(&'a self, hooks: Hooks<'a>) -> Hooks<'a> {
        hooks
    }
}
