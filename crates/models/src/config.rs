//! Configuration pieces shared by the architectures, and the architecture-independent summary
//! ([`ModelInfo`]) that callers (stages, the server) read.
//!
//! Each architecture file owns a serde `Config` that mirrors its HF `config.json`, with HF's
//! defaults; the helpers here cover the fields whose JSON shape varies between checkpoints
//! (`eos_token_id` as an int or a list, `rope_scaling` dicts, `layer_types`).

use serde::{Deserialize, Serialize};

/// The architectures this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gemma2,
    Gemma3,
    Llama,
}

impl Arch {
    /// Maps HF `model_type` (or GGUF `general.architecture`) to an architecture.
    pub fn from_model_type(t: &str) -> Option<Arch> {
        match t {
            "gemma2" => Some(Arch::Gemma2),
            "gemma3" | "gemma3_text" => Some(Arch::Gemma3),
            "llama" | "mistral" => Some(Arch::Llama),
            _ => None,
        }
    }
}

/// Attention kind of one layer, spelled as HF's `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    SlidingAttention,
    FullAttention,
}

/// `eos_token_id` is an int in some configs and a list in others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// HF `rope_scaling`. `type` is the pre-2024 spelling of `rope_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// Architecture-independent facts about a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub arch: Arch,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

pub(crate) fn default_rms_eps() -> f64 {
    1e-6
}
pub(crate) fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_accept_int_or_list() {
        let one: TokenIds = serde_json::from_str("1").unwrap();
        let many: TokenIds = serde_json::from_str("[1, 106]").unwrap();
        assert_eq!(one.to_vec(), vec![1]);
        assert_eq!(many.to_vec(), vec![1, 106]);
    }
}
