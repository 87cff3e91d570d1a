//! Gemma-3 text model (google/gemma-3-*; `Gemma3ForCausalLM`), following HF `modeling_gemma3.py`.
//!
//! Same layer sandwich, `1 + w` RMSNorm, GeGLU and embedding scale as Gemma-2 (see
//! [`crate::gemma2`]), plus: per-head RMSNorm on queries and keys; no soft-capping by default;
//! five sliding-window layers for every global one (`sliding_window_pattern` 6, or explicit
//! `layer_types`); and two RoPE tables, `rope_local_base_freq` (10k) for sliding layers and
//! `rope_theta` (1M, with `rope_scaling` if any) for global layers.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{LayerType, ModelInfo, RopeScaling, TokenIds, default_rms_eps, default_true};
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::gemma2::{embed_scale, gemma_layer_forward, load_gemma_layer};
use crate::hooks::LinearAdapter;
use crate::layers::{Activation, Attention, LayerCache, Mlp, NormStyle, RmsNorm, Rotary, project_vocab};
use crate::model::check_divisible;
use crate::weights::Weights;

/// HF `Gemma3TextConfig`, with its defaults.
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
    #[serde(default = "d::rope_local_base_freq")]
    pub rope_local_base_freq: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d::query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default = "d::sliding_window")]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: bool,
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
        262_208
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
        1_000_000.0
    }
    pub fn rope_local_base_freq() -> f64 {
        10_000.0
    }
    pub fn query_pre_attn_scalar() -> f64 {
        256.0
    }
    pub fn sliding_window() -> Option<i64> {
        Some(4096)
    }
    pub fn bos() -> Option<i64> {
        Some(2)
    }
    pub fn eos() -> Option<TokenIds> {
        Some(TokenIds::One(1))
    }
}

impl Config {
    /// HF's rule when `layer_types` is absent: layer `i` is global when `(i + 1) % pattern == 0`
    /// (pattern 6: layers 5, 11, 17, ... are global, the rest slide).
    pub fn layer_types(&self) -> Vec<LayerType> {
        match &self.layer_types {
            Some(t) => t.clone(),
            None => {
                let p = self.sliding_window_pattern.unwrap_or(6).max(1);
                (0..self.num_hidden_layers)
                    .map(|i| {
                        if (i + 1) % p != 0 {
                            LayerType::SlidingAttention
                        } else {
                            LayerType::FullAttention
                        }
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    norms: [RmsNorm; 4],
}

/// Gemma-3 causal LM (text only).
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
    rotary_global: Rotary,
    rotary_local: Rotary,
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
        if config.use_bidirectional_attention {
            return Err(cfg_err(
                "use_bidirectional_attention (EmbeddingGemma) is not supported".into(),
            ));
        }
        let (hidden, inter) = (config.hidden_size as i64, config.intermediate_size as i64);
        let (heads, kv, hd) = (
            config.num_attention_heads as i64,
            config.num_key_value_heads as i64,
            config.head_dim as i64,
        );
        check_divisible(path, "num_attention_heads / num_key_value_heads", heads, kv)?;
        let act = Activation::from_hf(&config.hidden_activation)
            .ok_or_else(|| cfg_err(format!("unsupported hidden_activation `{}`", config.hidden_activation)))?;
        let layer_types = config.layer_types();
        if layer_types.len() != config.num_hidden_layers {
            return Err(cfg_err(format!(
                "layer_types has {} entries, num_hidden_layers is {}",
                layer_types.len(),
                config.num_hidden_layers
            )));
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
            let (mut attn, mlp, norms) = load_gemma_layer(
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
                true,
            )?;
            attn.scale = config.query_pre_attn_scalar.powf(-0.5);
            attn.softcap = config.attn_logit_softcapping;
            layers.push(DecoderLayer { attn, mlp, norms });
        }
        let norm = RmsNorm::new(
            w.get("model.norm.weight", &[hidden])?,
            config.rms_norm_eps,
            NormStyle::OnePlus,
        );
        let rotary_global = Rotary::new(
            config.rope_theta,
            config.head_dim,
            config.rope_scaling.as_ref(),
            w.device(),
        )
        .map_err(cfg_err)?;
        let rotary_local =
            Rotary::new(config.rope_local_base_freq, config.head_dim, None, w.device()).map_err(cfg_err)?;
        let info = ModelInfo {
            arch: crate::config::Arch::Gemma3,
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
            rotary_global,
            rotary_local,
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
    fn rotary(&self, t: LayerType) -> &Rotary {
        match t {
            LayerType::SlidingAttention => &self.rotary_local,
            LayerType::FullAttention => &self.rotary_global,
        }
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
        let [a, b, c, d] = &l.norms;
        gemma_layer_forward(&l.attn, &l.mlp, [a, b, c, d], h, cos, sin, mask, cache, past, o_adapter)
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
            let names = [
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ];
            for (n, norm) in names.iter().zip(&l.norms) {
                norm.push_named(&format!("{p}.{n}"), &mut out);
            }
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
    fn five_local_layers_per_global_layer() {
        let cfg: Config = serde_json::from_str(r#"{"num_hidden_layers": 18}"#).unwrap();
        let t = cfg.layer_types();
        let global: Vec<usize> = (0..18).filter(|&i| t[i] == LayerType::FullAttention).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!(cfg.rope_local_base_freq, 10_000.0);
        assert_eq!(cfg.rope_theta, 1_000_000.0);
        assert_eq!(cfg.attn_logit_softcapping, None);
    }

    #[test]
    fn sliding_window_pattern_is_honoured() {
        let cfg: Config = serde_json::from_str(r#"{"num_hidden_layers": 4, "sliding_window_pattern": 2}"#).unwrap();
        assert_eq!(
            cfg.layer_types(),
            vec![
                LayerType::SlidingAttention,
                LayerType::FullAttention,
                LayerType::SlidingAttention,
                LayerType::FullAttention
            ]
        );
    }
}
