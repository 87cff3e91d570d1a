//! Gemma-2 (google/gemma-2-*), following HF `modeling_gemma2.py`.
//!
//! Differences from Llama: RMSNorm scales by `1 + w`; GeGLU MLP with tanh GELU; norms both before
//! and after attention and the MLP; layers alternate sliding-window (even indices) and global
//! attention; attention scores are soft-capped (`tanh(x/50)·50`) and so are the final logits
//! (`/30`); queries are scaled by `query_pre_attn_scalar^-0.5`; embeddings are multiplied by
//! `sqrt(hidden_size)` rounded to the embedding dtype; the LM head is tied to the embeddings.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{LayerType, ModelInfo, TokenIds, default_rms_eps, default_true};
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::hooks::LinearAdapter;
use crate::layers::{Activation, Attention, LayerCache, Linear, Mlp, NormStyle, RmsNorm, Rotary, project_vocab};
use crate::model::check_divisible;
use crate::weights::Weights;

/// HF `Gemma2Config`, with its defaults.
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
    #[serde(default = "d::num_key_value_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d::head_dim")]
    pub head_dim: usize,
    #[serde(default = "d::hidden_activation")]
    pub hidden_activation: String,
    /// Older spelling, present alongside `hidden_activation` in e.g. gemma-2-2b's config; HF
    /// uses `hidden_activation`, and so do we.
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d::query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default = "d::sliding_window")]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    #[serde(default = "d::final_logit_softcapping")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default = "d::attn_logit_softcapping")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_true")]
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
        256000
    }
    pub fn hidden_size() -> usize {
        2304
    }
    pub fn intermediate_size() -> usize {
        9216
    }
    pub fn num_hidden_layers() -> usize {
        26
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn num_key_value_heads() -> usize {
        4
    }
    pub fn head_dim() -> usize {
        256
    }
    pub fn hidden_activation() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn query_pre_attn_scalar() -> f64 {
        256.0
    }
    pub fn sliding_window() -> Option<i64> {
        Some(4096)
    }
    pub fn final_logit_softcapping() -> Option<f64> {
        Some(30.0)
    }
    pub fn attn_logit_softcapping() -> Option<f64> {
        Some(50.0)
    }
    pub fn bos() -> Option<i64> {
        Some(2)
    }
    pub fn eos() -> Option<TokenIds> {
        Some(TokenIds::One(1))
    }
}

impl Config {
    /// HF's rule when `layer_types` is absent: `sliding` when `(i + 1) % 2 != 0`, i.e. even layers
    /// slide and odd layers are global.
    pub fn layer_types(&self) -> Vec<LayerType> {
        match &self.layer_types {
            Some(t) => t.clone(),
            None => (0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % 2 != 0 {
                        LayerType::SlidingAttention
                    } else {
                        LayerType::FullAttention
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

/// Gemma-2 causal LM.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    info: ModelInfo,
    embed: Tensor,
    embed_scale: Tensor,
    layers: Vec<DecoderLayer>,
    layer_types: Vec<LayerType>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    kind: Kind,
    device: Device,
}

/// Loads the per-layer weights common to Gemma-2 and Gemma-3 (`q_norm`/`k_norm` only when asked).
/// The arguments are the config numbers both architectures name identically.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_gemma_layer(
    w: &Weights,
    i: usize,
    hidden: i64,
    inter: i64,
    heads: i64,
    kv: i64,
    hd: i64,
    eps: f64,
    bias: bool,
    act: Activation,
    qk_norm: bool,
) -> Result<(Attention, Mlp, [RmsNorm; 4]), ModelError> {
    let p = format!("model.layers.{i}");
    let lin = |name: &str, out: i64, inp: i64, with_bias: bool| -> Result<Linear, ModelError> {
        let weight = w.get(&format!("{p}.{name}.weight"), &[out, inp])?;
        let b = if with_bias {
            Some(w.get(&format!("{p}.{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(weight, b))
    };
    let norm = |name: &str, dim: i64| -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm::new(
            w.get(&format!("{p}.{name}.weight"), &[dim])?,
            eps,
            NormStyle::OnePlus,
        ))
    };
    let (q_norm, k_norm) = if qk_norm {
        (Some(norm("self_attn.q_norm", hd)?), Some(norm("self_attn.k_norm", hd)?))
    } else {
        (None, None)
    };
    let attn = Attention {
        q: lin("self_attn.q_proj", heads * hd, hidden, bias)?,
        k: lin("self_attn.k_proj", kv * hd, hidden, bias)?,
        v: lin("self_attn.v_proj", kv * hd, hidden, bias)?,
        o: lin("self_attn.o_proj", hidden, heads * hd, bias)?,
        q_norm,
        k_norm,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hd,
        scale: 1.0,
        softcap: None,
    };
    let mlp = Mlp {
        gate: lin("mlp.gate_proj", inter, hidden, false)?,
        up: lin("mlp.up_proj", inter, hidden, false)?,
        down: lin("mlp.down_proj", hidden, inter, false)?,
        act,
    };
    let norms = [
        norm("input_layernorm", hidden)?,
        norm("post_attention_layernorm", hidden)?,
        norm("pre_feedforward_layernorm", hidden)?,
        norm("post_feedforward_layernorm", hidden)?,
    ];
    Ok((attn, mlp, norms))
}

/// The Gemma sandwich: `h + post_attn(attn(pre(h)))`, then `h + post_ffw(mlp(pre_ffw(h)))`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemma_layer_forward(
    attn: &Attention,
    mlp: &Mlp,
    norms: [&RmsNorm; 4],
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
    cache: Option<&mut LayerCache>,
    past: i64,
    o_adapter: Option<&dyn LinearAdapter>,
) -> Tensor {
    let a = attn.forward(&norms[0].forward(h), cos, sin, mask, cache, past, o_adapter);
    let h = h + norms[1].forward(&a);
    let m = mlp.forward(&norms[2].forward(&h));
    &h + norms[3].forward(&m)
}

/// `sqrt(hidden)` as a 0-dim tensor of the embedding dtype: HF multiplies by a tensor of that
/// dtype, so in bf16 the factor is rounded (sqrt(2304) = 48 exactly, sqrt(640) → 25.25).
pub(crate) fn embed_scale(hidden: usize, kind: Kind, device: Device) -> Tensor {
    Tensor::from((hidden as f64).sqrt() as f32)
        .to_kind(kind)
        .to_device(device)
}

impl Model {
    pub fn new(config: Config, w: &Weights) -> Result<Self, ModelError> {
        let path = w.path();
        let (hidden, inter) = (config.hidden_size as i64, config.intermediate_size as i64);
        let (heads, kv, hd) = (
            config.num_attention_heads as i64,
            config.num_key_value_heads as i64,
            config.head_dim as i64,
        );
        check_divisible(path, "num_attention_heads / num_key_value_heads", heads, kv)?;
        let act = Activation::from_hf(&config.hidden_activation).ok_or_else(|| ModelError::Config {
            path: path.to_path_buf(),
            msg: format!("unsupported hidden_activation `{}`", config.hidden_activation),
        })?;
        let layer_types = config.layer_types();
        if layer_types.len() != config.num_hidden_layers {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                msg: format!(
                    "layer_types has {} entries, num_hidden_layers is {}",
                    layer_types.len(),
                    config.num_hidden_layers
                ),
            });
        }
        let vocab = config.vocab_size as i64;
        let embed = w.get("model.embed_tokens.weight", &[vocab, hidden])?;
        let lm_head = if !config.tie_word_embeddings || w.contains("lm_head.weight") {
            w.get("lm_head.weight", &[vocab, hidden])?
        } else {
            embed.shallow_clone()
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let (mut attn, mlp, [a, b, c, d]) = load_gemma_layer(
                w,
                i,
                hidden,
                inter,
                heads,
                kv,
                hd,
                config.rms_norm_eps,
                config.attention_bias,
                act,
                false,
            )?;
            attn.scale = config.query_pre_attn_scalar.powf(-0.5);
            attn.softcap = config.attn_logit_softcapping;
            layers.push(DecoderLayer {
                attn,
                mlp,
                input_layernorm: a,
                post_attention_layernorm: b,
                pre_feedforward_layernorm: c,
                post_feedforward_layernorm: d,
            });
        }
        let norm = RmsNorm::new(
            w.get("model.norm.weight", &[hidden])?,
            config.rms_norm_eps,
            NormStyle::OnePlus,
        );
        let rotary =
            Rotary::new(config.rope_theta, config.head_dim, None, w.device()).map_err(|msg| ModelError::Config {
                path: path.to_path_buf(),
                msg,
            })?;
        let info = ModelInfo {
            arch: crate::config::Arch::Gemma2,
            num_layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            vocab_size: config.vocab_size,
            bos_token_id: config.bos_token_id,
            eos_token_ids: config.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
            pad_token_id: config.pad_token_id,
        };
        Ok(Self {
            embed_scale: embed_scale(config.hidden_size, w.kind(), w.device()),
            info,
            embed,
            layers,
            layer_types,
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
        (self.config.num_key_value_heads as i64, self.config.head_dim as i64)
    }
    fn layer_type(&self, layer: usize) -> LayerType {
        self.layer_types[layer]
    }
    fn sliding_window(&self) -> Option<i64> {
        self.config.sliding_window
    }
    fn rotary(&self, _: LayerType) -> &Rotary {
        &self.rotary
    }
    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed, ids, -1, false, false) * &self.embed_scale
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
        let norms = [
            &l.input_layernorm,
            &l.post_attention_layernorm,
            &l.pre_feedforward_layernorm,
            &l.post_feedforward_layernorm,
        ];
        gemma_layer_forward(&l.attn, &l.mlp, norms, h, cos, sin, mask, cache, past, o_adapter)
    }
    fn head(&self, h: &Tensor) -> Tensor {
        let logits = project_vocab(&self.norm.forward(h), &self.lm_head);
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
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
            l.pre_feedforward_layernorm
                .push_named(&format!("{p}.pre_feedforward_layernorm"), &mut out);
            l.post_feedforward_layernorm
                .push_named(&format!("{p}.post_feedforward_layernorm"), &mut out);
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
    fn even_layers_slide_odd_layers_are_global() {
        let cfg: Config = serde_json::from_str(r#"{"num_hidden_layers": 6}"#).unwrap();
        let t = cfg.layer_types();
        for (i, lt) in t.iter().enumerate() {
            let expect = if i % 2 == 0 {
                LayerType::SlidingAttention
            } else {
                LayerType::FullAttention
            };
            assert_eq!(*lt, expect, "layer {i}");
        }
        // HF defaults.
        assert_eq!(cfg.attn_logit_softcapping, Some(50.0));
        assert_eq!(cfg.final_logit_softcapping, Some(30.0));
        assert_eq!(cfg.query_pre_attn_scalar, 256.0);
    }

    #[test]
    fn parses_gemma_2_2b_config() {
        // google/gemma-2-2b config.json (abridged): both activation spellings, eos as a list.
        let cfg: Config = serde_json::from_str(
            r#"{"architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attn_logit_softcapping": 50.0,
                "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
                "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
                "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "intermediate_size": 9216,
                "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
                "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
                "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
                "vocab_size": 256000}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_id.as_ref().unwrap().to_vec(), vec![1, 107]);
        assert_eq!(cfg.layer_types()[20], LayerType::SlidingAttention);
    }

    #[test]
    fn explicit_layer_types_win() {
        let cfg: Config =
            serde_json::from_str(r#"{"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]}"#)
                .unwrap();
        assert_eq!(
            cfg.layer_types(),
            vec![LayerType::FullAttention, LayerType::SlidingAttention]
        );
    }
}
