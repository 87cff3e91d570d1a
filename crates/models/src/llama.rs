//! Llama (and SmolLM2, which is a Llama), following HF `modeling_llama.py`: pre-norm blocks with
//! plain RMSNorm, SwiGLU MLP, grouped-query attention scaled by `head_dim^-0.5`, RoPE with
//! optional `rope_scaling`, embeddings tied to the LM head when `tie_word_embeddings` says so.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{LayerType, ModelInfo, RopeScaling, TokenIds};
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::hooks::LinearAdapter;
use crate::layers::{Activation, Attention, LayerCache, Linear, Mlp, NormStyle, RmsNorm, Rotary, project_vocab};
use crate::model::check_divisible;
use crate::weights::Weights;

/// HF `LlamaConfig`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouping).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "d::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d::bos")]
    pub bos_token_id: Option<i64>,
    #[serde(default = "d::eos")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

mod d {
    use crate::config::TokenIds;
    pub fn vocab_size() -> usize {
        32000
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn intermediate_size() -> usize {
        11008
    }
    pub fn num_hidden_layers() -> usize {
        32
    }
    pub fn num_attention_heads() -> usize {
        32
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn bos() -> Option<i64> {
        Some(1)
    }
    pub fn eos() -> Option<TokenIds> {
        Some(TokenIds::One(2))
    }
}

impl Config {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// Llama causal LM.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    info: ModelInfo,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    kind: Kind,
    device: Device,
}

impl Model {
    pub fn new(config: Config, w: &Weights) -> Result<Self, ModelError> {
        let path = w.path();
        let cfg_err = |msg: String| ModelError::Config {
            path: path.to_path_buf(),
            msg,
        };
        let (hidden, inter) = (config.hidden_size as i64, config.intermediate_size as i64);
        let (heads, kv, hd) = (
            config.num_attention_heads as i64,
            config.num_kv_heads() as i64,
            config.head_dim() as i64,
        );
        check_divisible(path, "num_attention_heads / num_key_value_heads", heads, kv)?;
        let act = Activation::from_hf(&config.hidden_act)
            .ok_or_else(|| cfg_err(format!("unsupported hidden_act `{}`", config.hidden_act)))?;
        let eps = config.rms_norm_eps;
        let vocab = config.vocab_size as i64;
        let embed = w.get("model.embed_tokens.weight", &[vocab, hidden])?;
        let lm_head = if !config.tie_word_embeddings || w.contains("lm_head.weight") {
            w.get("lm_head.weight", &[vocab, hidden])?
        } else {
            embed.shallow_clone()
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, out: i64, inp: i64, bias: bool| -> Result<Linear, ModelError> {
                let weight = w.get(&format!("{p}.{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(w.get(&format!("{p}.{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok(Linear::new(weight, b))
            };
            let norm = |name: &str| -> Result<RmsNorm, ModelError> {
                Ok(RmsNorm::new(
                    w.get(&format!("{p}.{name}.weight"), &[hidden])?,
                    eps,
                    NormStyle::Plain,
                ))
            };
            let ab = config.attention_bias;
            layers.push(DecoderLayer {
                attn: Attention {
                    q: lin("self_attn.q_proj", heads * hd, hidden, ab)?,
                    k: lin("self_attn.k_proj", kv * hd, hidden, ab)?,
                    v: lin("self_attn.v_proj", kv * hd, hidden, ab)?,
                    o: lin("self_attn.o_proj", hidden, heads * hd, ab)?,
                    q_norm: None,
                    k_norm: None,
                    num_heads: heads,
                    num_kv_heads: kv,
                    head_dim: hd,
                    scale: (hd as f64).powf(-0.5),
                    softcap: None,
                },
                mlp: Mlp {
                    gate: lin("mlp.gate_proj", inter, hidden, config.mlp_bias)?,
                    up: lin("mlp.up_proj", inter, hidden, config.mlp_bias)?,
                    down: lin("mlp.down_proj", hidden, inter, config.mlp_bias)?,
                    act,
                },
                input_layernorm: norm("input_layernorm")?,
                post_attention_layernorm: norm("post_attention_layernorm")?,
            });
        }
        let norm = RmsNorm::new(w.get("model.norm.weight", &[hidden])?, eps, NormStyle::Plain);
        let rotary =
            Rotary::new(config.rope_theta, hd as usize, config.rope_scaling.as_ref(), w.device()).map_err(cfg_err)?;
        let info = ModelInfo {
            arch: crate::config::Arch::Llama,
            num_layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            vocab_size: config.vocab_size,
            bos_token_id: config.bos_token_id,
            eos_token_ids: config.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: config.pad_token_id,
        };
        Ok(Self {
            info,
            embed,
            layers,
            norm,
            lm_head,
            rotary,
            kind: w.kind(),
            device: w.device(),
            config,
        })
    }
}

impl Decoder for Model {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn device(&self) -> Device {
        self.device
    }
    fn kv_shape(&self) -> (i64, i64) {
        (self.config.num_kv_heads() as i64, self.config.head_dim() as i64)
    }
    fn layer_type(&self, _: usize) -> LayerType {
        LayerType::FullAttention
    }
    fn sliding_window(&self) -> Option<i64> {
        None
    }
    fn rotary(&self, _: LayerType) -> &Rotary {
        &self.rotary
    }
    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed, ids, -1, false, false)
    }
    fn layer(
        &self,
        i: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        past: i64,
        o_adapter: Option<&dyn LinearAdapter>,
    ) -> Tensor {
        let l = &self.layers[i];
        let a = l
            .attn
            .forward(&l.input_layernorm.forward(h), cos, sin, mask, cache, past, o_adapter);
        let h = h + a;
        let m = l.mlp.forward(&l.post_attention_layernorm.forward(&h));
        h + m
    }
    fn head(&self, h: &Tensor) -> Tensor {
        project_vocab(&self.norm.forward(h), &self.lm_head)
    }
}

// --- training support (crate::train) ---
impl Model {
    /// Every weight by HF name (norms as `.scale`, see [`RmsNorm`]), sharing storage with the
    /// model: full finetuning sets `requires_grad` on these and updates them in place.
    pub(crate) fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        out.push(("model.embed_tokens.weight".into(), self.embed.shallow_clone()));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            l.attn.push_named(&format!("{p}.self_attn"), &mut out);
            l.mlp.push_named(&format!("{p}.mlp"), &mut out);
            l.input_layernorm.push_named(&format!("{p}.input_layernorm"), &mut out);
            l.post_attention_layernorm
                .push_named(&format!("{p}.post_attention_layernorm"), &mut out);
        }
        self.norm.push_named("model.norm", &mut out);
        // Tied embeddings share one tensor: list it once so it is updated once.
        if self.lm_head.data_ptr() != self.embed.data_ptr() {
            out.push(("lm_head.weight".into(), self.lm_head.shallow_clone()));
        }
        out
    }
}
// --- end training support ---

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_defaults_fill_missing_fields() {
        let cfg: Config = serde_json::from_str(r#"{"hidden_size": 576, "num_attention_heads": 9}"#).unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.num_kv_heads(), 9);
        assert!(!cfg.tie_word_embeddings);
    }
}
