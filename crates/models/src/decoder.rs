//! The decoder every architecture implements (`gemma2.rs`, `gemma3.rs`, `llama.rs`) and the one
//! forward pass they share: embeddings, masks and rotary tables, the layers with hooks and
//! interventions, the head. [`crate::Model`] dispatches to an architecture and calls [`forward`].

use tch::{Device, Kind, Tensor};

use crate::config::{LayerType, ModelInfo};
use crate::error::ModelError;
use crate::hooks::{ForwardOutput, Hooks, InterventionCtx, Logits};
use crate::layers::{KvCache, LayerCache, Rotary, attention_bias, position_ids};

/// What each architecture provides to the shared forward pass.
pub(crate) trait Decoder {
    fn info(&self) -> &ModelInfo;
    fn kind(&self) -> Kind;
    fn device(&self) -> Device;
    /// `(num_key_value_heads, head_dim)`, for preallocating caches.
    fn kv_shape(&self) -> (i64, i64);
    fn layer_type(&self, layer: usize) -> LayerType;
    fn sliding_window(&self) -> Option<i64>;
    fn rotary(&self, t: LayerType) -> &Rotary;
    /// Token embeddings, already scaled where the architecture scales them.
    fn embed(&self, ids: &Tensor) -> Tensor;
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        past: i64,
        o_adapter: Option<&dyn crate::hooks::LinearAdapter>,
    ) -> Tensor;
    /// Final norm, vocabulary projection and any logit soft-cap.
    fn head(&self, h: &Tensor) -> Tensor;
}

/// One forward pass over `input_ids: [B, T]` (int64).
///
/// `attention_mask: [B, past + T]` marks real tokens (nonzero) versus padding, left or right;
/// `None` means no padding. With a `cache`, the `past` positions already stored are attended
/// to and the new keys/values are appended. Position ids count real tokens, so a left-padded
/// row gets the same positions as the unpadded sequence (as HF `generate` does).
///
/// Runs with or without grad: wrap it in `tch::no_grad` for inference.
pub(crate) fn forward(
    d: &dyn Decoder,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    hooks: &Hooks,
    logits: Logits,
    mut cache: Option<&mut KvCache>,
) -> Result<ForwardOutput, ModelError> {
    let info = d.info();
    let dev = d.device();
    let (b, t) = input_ids
        .size2()
        .map_err(|_| ModelError::Input(format!("input_ids must be [B, T], got {:?}", input_ids.size())))?;
    if t == 0 {
        return Err(ModelError::Input("input_ids has no positions".into()));
    }
    let past = cache.as_ref().map_or(0, |c| c.len);
    if let Some(cb) = cache.as_ref().and_then(|c| c.batch())
        && cb != b
    {
        return Err(ModelError::Input(format!(
            "the KV cache holds {cb} rows, input_ids has {b}"
        )));
    }
    let mask = match attention_mask {
        Some(m) => {
            if m.size() != [b, past + t] {
                return Err(ModelError::Input(format!(
                    "attention_mask is {:?}, expected [{b}, {}] (cached {past} + new {t})",
                    m.size(),
                    past + t
                )));
            }
            m.to_device(dev)
        }
        None => Tensor::ones([b, past + t], (Kind::Int64, dev)),
    };
    let n = info.num_layers;
    for &l in hooks
        .capture
        .iter()
        .chain(hooks.stop_after.iter())
        .chain(hooks.interventions.iter().map(|(l, _)| l))
        .chain(hooks.o_proj.iter().map(|(l, _)| l))
    {
        if l >= n {
            return Err(ModelError::Input(format!(
                "layer {l} out of range: the model has {n} layers (0..{})",
                n - 1
            )));
        }
    }
    // Last layer to run: everything for logits; otherwise up to the deepest layer asked for.
    let last = match (logits, hooks.stop_after) {
        (_, Some(s)) => s,
        (Logits::None, None) => hooks.capture.iter().copied().max().unwrap_or(n - 1),
        _ => n - 1,
    };
    if let Some(&l) = hooks
        .capture
        .iter()
        .chain(hooks.interventions.iter().map(|(l, _)| l))
        .find(|&&l| l > last)
    {
        return Err(ModelError::Input(format!(
            "layer {l} is hooked but the pass stops after layer {last}"
        )));
    }
    if cache.is_some() && last + 1 < n {
        return Err(ModelError::Input(
            "a forward pass with a KV cache must run every layer".into(),
        ));
    }
    let kind = d.kind();
    let ids = input_ids.to_device(dev);
    let pos = position_ids(&mask, t);
    let types: Vec<LayerType> = (0..=last).map(|i| d.layer_type(i)).collect();
    let need = |lt: LayerType| types.contains(&lt);
    let full_mask = need(LayerType::FullAttention).then(|| attention_bias(&mask, past, t, None, kind));
    let window = d.sliding_window();
    let sliding_mask = need(LayerType::SlidingAttention).then(|| attention_bias(&mask, past, t, window, kind));
    let rope_full = d.rotary(LayerType::FullAttention);
    let rope_sliding = d.rotary(LayerType::SlidingAttention);
    let cs_full = need(LayerType::FullAttention).then(|| rope_full.cos_sin(&pos, kind));
    let cs_sliding = if std::ptr::eq(rope_full, rope_sliding) && cs_full.is_some() {
        None
    } else {
        need(LayerType::SlidingAttention).then(|| rope_sliding.cos_sin(&pos, kind))
    };
    let iv_mask = if hooks.interventions.is_empty() {
        None
    } else {
        Some(hooks.intervention_mask(b, t, past, dev).map_err(ModelError::Input)?)
    };
    let real = mask.narrow(1, past, t).ne(0);

    let mut h = d.embed(&ids);
    let mut hidden = Vec::new();
    for (i, &lt) in types.iter().enumerate() {
        let (cos, sin) = match lt {
            LayerType::FullAttention => cs_full.as_ref().unwrap(),
            LayerType::SlidingAttention => cs_sliding.as_ref().or(cs_full.as_ref()).unwrap(),
        };
        let m = match lt {
            LayerType::FullAttention => full_mask.as_ref().unwrap(),
            LayerType::SlidingAttention => sliding_mask.as_ref().unwrap(),
        };
        let lc = cache.as_deref_mut().map(|c| &mut c.layers[i]);
        h = d.layer(i, &h, cos, sin, m, lc, past, hooks.o_proj_adapter(i));
        for (l, iv) in &hooks.interventions {
            if *l == i {
                let ctx = InterventionCtx {
                    mask: iv_mask.as_ref().unwrap(),
                    real: &real,
                    past_len: past,
                };
                h = iv.apply(&h, &ctx);
            }
        }
        if hooks.capture.contains(&i) {
            hidden.push((i, h.shallow_clone()));
        }
    }
    if let Some(c) = cache {
        c.len += t;
    }
    let logits = match logits {
        _ if last + 1 < n => None,
        Logits::None => None,
        Logits::Last => Some(d.head(&h.narrow(1, t - 1, 1))),
        Logits::All => Some(d.head(&h)),
    };
    Ok(ForwardOutput { logits, hidden })
}
