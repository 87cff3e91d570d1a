//! Building blocks shared by the architectures: linear layers, RMSNorm (Gemma's `1 + w` and
//! Llama's `w` flavours), rotary embeddings, grouped-query attention with an optional logit
//! soft-cap, the gated MLP, attention masks, and the KV cache.
//!
//! Numerics follow HF transformers' eager code paths, because the golden tests compare against
//! them at 1e-4: norms and RoPE tables are computed in f32 and cast back, the Gemma embedding
//! scale is rounded to the weight dtype, and masked scores use the dtype's most negative finite
//! value (not `-inf`), so a row with nothing to attend to (a left-pad query) stays finite.

use tch::{Kind, Tensor};

use crate::config::RopeScaling;

/// A bias-optional linear map with an HF-layout weight `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `h @ w.T` for the vocabulary projection (`w: [V, D]`, `h: [..., D]`).
///
/// For a few rows (decoding) this computes `(w @ h.T).T` instead: BLAS then streams the huge
/// weight once as the left operand rather than packing it as a transposed right operand, which
/// on CPU makes an 8-row projection onto Gemma's 262k vocabulary about 2.5x faster. Same
/// products, summed in a possibly different order.
pub fn project_vocab(h: &Tensor, w: &Tensor) -> Tensor {
    let mut shape = h.size();
    let d = *shape.last().expect("hidden states have a feature dimension");
    let rows = h.numel() as i64 / d.max(1);
    if rows > 64 {
        return h.linear::<&Tensor>(w, None);
    }
    let out = w.matmul(&h.reshape([rows, d]).tr()).tr();
    *shape.last_mut().unwrap() = w.size()[0];
    out.reshape(shape.as_slice())
}

/// Which RMSNorm formula a checkpoint was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStyle {
    /// Gemma: `(x̂ · (1 + w))` computed in f32, then cast to the input dtype.
    OnePlus,
    /// Llama: `w · x̂.to(input dtype)`.
    Plain,
}

#[derive(Debug)]
pub struct RmsNorm {
    /// For [`NormStyle::OnePlus`] this already holds `1 + w` in f32; for `Plain`, `w` in the model
    /// dtype.
    scale: Tensor,
    eps: f64,
    style: NormStyle,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64, style: NormStyle) -> Self {
        let scale = match style {
            NormStyle::OnePlus => weight.to_kind(Kind::Float) + 1.0,
            NormStyle::Plain => weight,
        };
        Self { scale, eps, style }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = xf * (var + self.eps).rsqrt();
        match self.style {
            NormStyle::OnePlus => (normed * &self.scale).to_kind(kind),
            NormStyle::Plain => &self.scale * normed.to_kind(kind),
        }
    }
}

/// Rotary position embedding tables for one base frequency.
#[derive(Debug)]
pub struct Rotary {
    /// `[head_dim / 2]`, f32, on the model device.
    inv_freq: Tensor,
}

impl Rotary {
    /// Mirrors HF's `_compute_default_rope_parameters` (computed with torch in f32 so results are
    /// bit-identical) plus the `linear` and `llama3` scalings.
    pub fn new(base: f64, head_dim: usize, scaling: Option<&RopeScaling>, device: tch::Device) -> Result<Self, String> {
        let exps = Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Int64, tch::Device::Cpu))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let mut inv = Tensor::from(base as f32).pow(&exps).reciprocal();
        if let Some(s) = scaling {
            match s.rope_type.as_deref().unwrap_or("default") {
                "default" => {}
                "linear" => {
                    let f = s.factor.ok_or("rope_scaling `linear` needs `factor`")?;
                    inv /= f;
                }
                "llama3" => {
                    let f = s.factor.ok_or("rope_scaling `llama3` needs `factor`")?;
                    let lo = s.low_freq_factor.unwrap_or(1.0);
                    let hi = s.high_freq_factor.unwrap_or(4.0);
                    let old = s.original_max_position_embeddings.unwrap_or(8192.0);
                    let (lo_wl, hi_wl) = (old / lo, old / hi);
                    let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
                    let scaled = wavelen.gt(lo_wl).where_self(&(&inv / f), &inv);
                    let smooth = ((wavelen.reciprocal() * old) - lo) / (hi - lo);
                    let smoothed = (-&smooth + 1.0) * (&scaled / f) + &smooth * &scaled;
                    let medium = wavelen.ge(hi_wl).logical_and(&wavelen.le(lo_wl));
                    inv = medium.where_self(&smoothed, &scaled);
                }
                other => {
                    return Err(format!(
                        "unsupported rope_scaling type `{other}` (supported: default, linear, llama3)"
                    ));
                }
            }
        }
        Ok(Self {
            inv_freq: inv.to_device(device),
        })
    }

    /// `(cos, sin)`, each `[B, 1, T, head_dim]` in `kind`, for integer positions `[B, T]`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(kind).unsqueeze(1),
            emb.sin().to_kind(kind).unsqueeze(1),
        )
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[x.dim() - 1];
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// HF `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
    /// HF `silu` (Llama).
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" | "gelu_fast" => Some(Activation::GeluTanh),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Silu => x.silu(),
        }
    }
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down
            .forward(&(self.act.apply(&self.gate.forward(x)) * self.up.forward(x)))
    }
}

/// Grouped-query self-attention with RoPE, optional per-head q/k RMSNorm (Gemma-3) and optional
/// tanh soft-capping of the scores (Gemma-2).
#[derive(Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Multiplies `q·k` (`query_pre_attn_scalar^-0.5` for Gemma, `head_dim^-0.5` for Llama).
    pub scale: f64,
    pub softcap: Option<f64>,
}

impl Attention {
    /// `x: [B, T, hidden]`; `mask`: additive `[B, 1, T, S]` where `S` = cached + new positions.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        past_len: i64,
        o_adapter: Option<&dyn crate::hooks::LinearAdapter>,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input must be [B, T, hidden]");
        let q = self
            .q
            .forward(x)
            .view([b, t, self.num_heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k
            .forward(x)
            .view([b, t, self.num_kv_heads, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v
            .forward(x)
            .view([b, t, self.num_kv_heads, self.head_dim])
            .transpose(1, 2);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q), kn.forward(&k)),
            _ => (q, k),
        };
        let q = apply_rotary(&q, cos, sin);
        let k = apply_rotary(&k, cos, sin);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v, past_len),
            None => (k, v),
        };
        let out = match self.softcap {
            None => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, self.scale, true),
            Some(cap) => self.eager_softcapped(&q, &k, &v, mask, cap),
        };
        let out = out.transpose(1, 2).reshape([b, t, self.num_heads * self.head_dim]);
        match o_adapter {
            // LoRA on o_proj (crate::lora): base projection plus the adapter's delta.
            Some(a) => self.o.forward(&out) + a.delta(&out),
            None => self.o.forward(&out),
        }
    }

    /// Scores, soft-cap, mask, f32 softmax, weighted sum: HF's eager path. Query heads sharing a KV
    /// head are folded into the row dimension instead of copying K and V per head.
    fn eager_softcapped(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, cap: f64) -> Tensor {
        let (b, h, t, d) = q.size4().expect("q is [B, H, T, D]");
        let s = k.size()[2];
        let rep = h / self.num_kv_heads;
        let qg = q.reshape([b, self.num_kv_heads, rep * t, d]);
        let scores = qg.matmul(&k.transpose(-2, -1)).view([b, h, t, s]) * self.scale;
        let scores = (scores / cap).tanh() * cap + mask;
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        probs
            .view([b, self.num_kv_heads, rep * t, s])
            .matmul(v)
            .view([b, h, t, d])
    }
}

// --- training support (crate::train): the tensors each block holds, by name ---
/// Appends `(name, tensor)` pairs sharing storage with the block (for full finetuning).
pub(crate) type Named = Vec<(String, Tensor)>;

impl Linear {
    pub(crate) fn push_named(&self, prefix: &str, out: &mut Named) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b.shallow_clone()));
        }
    }
}

impl RmsNorm {
    /// Named `{prefix}.scale`: the multiplier this norm applies (`1 + w` in f32 for Gemma, `w`
    /// for Llama), which is what training changes.
    pub(crate) fn push_named(&self, prefix: &str, out: &mut Named) {
        out.push((format!("{prefix}.scale"), self.scale.shallow_clone()));
    }
}

impl Attention {
    pub(crate) fn push_named(&self, prefix: &str, out: &mut Named) {
        self.q.push_named(&format!("{prefix}.q_proj"), out);
        self.k.push_named(&format!("{prefix}.k_proj"), out);
        self.v.push_named(&format!("{prefix}.v_proj"), out);
        self.o.push_named(&format!("{prefix}.o_proj"), out);
        if let Some(n) = &self.q_norm {
            n.push_named(&format!("{prefix}.q_norm"), out);
        }
        if let Some(n) = &self.k_norm {
            n.push_named(&format!("{prefix}.k_norm"), out);
        }
    }
}

impl Mlp {
    pub(crate) fn push_named(&self, prefix: &str, out: &mut Named) {
        self.gate.push_named(&format!("{prefix}.gate_proj"), out);
        self.up.push_named(&format!("{prefix}.up_proj"), out);
        self.down.push_named(&format!("{prefix}.down_proj"), out);
    }
}
// --- end training support ---

/// Keys and values of one layer, preallocated along the sequence axis so decoding appends in place
/// instead of re-concatenating the whole history every step.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerCache {
    /// Writes `k, v: [B, Hkv, T, D]` at `past_len..past_len+T` and returns views of everything
    /// cached so far. Grows the buffers (doubling) when they are full.
    fn append(&mut self, k: &Tensor, v: &Tensor, past_len: i64) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let need = past_len + t;
        for (slot, new) in [(&mut self.k, k), (&mut self.v, v)] {
            let cap = slot.as_ref().map_or(0, |b| b.size()[2]);
            if need > cap {
                let mut shape = new.size();
                shape[2] = need.max(cap * 2).max(16);
                let buf = Tensor::zeros(&shape, (new.kind(), new.device()));
                if let Some(old) = slot.as_ref() {
                    buf.narrow(2, 0, past_len).copy_(&old.narrow(2, 0, past_len));
                }
                *slot = Some(buf);
            }
            slot.as_ref().unwrap().narrow(2, past_len, t).copy_(new);
        }
        (
            self.k.as_ref().unwrap().narrow(2, 0, need),
            self.v.as_ref().unwrap().narrow(2, 0, need),
        )
    }

    /// Keeps only the batch rows in `index` (used when finished sequences leave a batch).
    fn select_rows(&mut self, index: &Tensor) {
        for slot in [&mut self.k, &mut self.v] {
            if let Some(b) = slot.take() {
                *slot = Some(b.index_select(0, index));
            }
        }
    }
}

/// The KV cache of a whole model for one batch. `len` counts the positions already stored; the
/// attention mask passed with the next chunk must cover `len + new` positions.
#[derive(Debug, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) len: i64,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
            len: 0,
        }
    }

    /// Preallocates room for `capacity` positions of a `[batch, kv_heads, ·, head_dim]` cache,
    /// so generation of a known length never reallocates.
    pub fn with_capacity(
        num_layers: usize,
        batch: i64,
        kv_heads: i64,
        head_dim: i64,
        capacity: i64,
        kind: Kind,
        device: tch::Device,
    ) -> Self {
        let layers = (0..num_layers)
            .map(|_| LayerCache {
                k: Some(Tensor::zeros([batch, kv_heads, capacity, head_dim], (kind, device))),
                v: Some(Tensor::zeros([batch, kv_heads, capacity, head_dim], (kind, device))),
            })
            .collect();
        Self { layers, len: 0 }
    }

    /// Batch size the buffers were allocated for, if any are allocated yet.
    pub fn batch(&self) -> Option<i64> {
        self.layers.iter().find_map(|l| l.k.as_ref().map(|k| k.size()[0]))
    }

    /// Number of positions stored.
    pub fn len(&self) -> i64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the batch rows listed in `index` (`[n]`, int64).
    pub fn select_rows(&mut self, index: &Tensor) {
        for l in &mut self.layers {
            l.select_rows(index);
        }
    }
}

/// Additive attention bias `[B, 1, T, S]` for `T` new queries after `past` cached positions.
///
/// Key `j` is visible to query `i` (absolute index `past + i`) when the key is a real token
/// (`attention_mask[b, j] != 0`), `j <= past + i` (causal) and, for sliding-window layers,
/// `j > past + i - window` (HF's `sliding_window_overlay`). Indices count slots, padding included,
/// exactly like HF's `cache_position`.
pub fn attention_bias(attention_mask: &Tensor, past: i64, t: i64, window: Option<i64>, kind: Kind) -> Tensor {
    let device = attention_mask.device();
    let s = attention_mask.size()[1];
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, device)).view([t, 1]);
    let k = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let mut allowed = k.le_tensor(&q);
    if let Some(w) = window {
        allowed = allowed.logical_and(&k.gt_tensor(&(&q - w)));
    }
    let real = attention_mask.ne(0).view([-1, 1, 1, s]);
    let allowed = allowed.view([1, 1, t, s]).logical_and(&real);
    let min = match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    };
    let blocked = allowed.logical_not();
    Tensor::zeros(blocked.size(), (kind, device)).masked_fill(&blocked, min)
}

/// Position ids `[B, T]` of the last `t` slots: the number of real tokens before each slot
/// (`cumsum(mask) - 1`, clamped at 0), so a left-padded row sees the same positions as the
/// unpadded sequence. This is what HF `generate` passes to the model.
pub fn position_ids(attention_mask: &Tensor, t: i64) -> Tensor {
    let s = attention_mask.size()[1];
    let pos = attention_mask.ne(0).to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1;
    pos.clamp_min(0).narrow(1, s - t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(mask: &[i64], b: i64, past: i64, t: i64, window: Option<i64>) -> Vec<Vec<Vec<bool>>> {
        let s = mask.len() as i64 / b;
        let m = Tensor::from_slice(mask).view([b, s]);
        let bias = attention_bias(&m, past, t, window, Kind::Float);
        assert_eq!(bias.size(), vec![b, 1, t, s]);
        (0..b)
            .map(|bi| {
                (0..t)
                    .map(|i| (0..s).map(|j| bias.double_value(&[bi, 0, i, j]) == 0.0).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // indices are the point of a mask test
    fn causal_mask_sees_only_the_past_and_real_tokens() {
        // Row 0 left-padded by two, row 1 full.
        let a = allowed(&[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], 2, 0, 5, None);
        for b in 0..2 {
            for i in 0..5 {
                for j in 0..5 {
                    let real = !(b == 0 && j < 2);
                    assert_eq!(a[b][i][j], j <= i && real, "b={b} i={i} j={j}");
                }
            }
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn sliding_window_limits_lookback() {
        let a = allowed(&[1; 6], 1, 0, 6, Some(3));
        for i in 0..6 {
            for j in 0..6 {
                assert_eq!(a[0][i][j], j <= i && i - j < 3, "i={i} j={j}");
            }
        }
        // Decoding one token after 5 cached ones sees the last 3 positions.
        let a = allowed(&[1; 6], 1, 5, 1, Some(3));
        assert_eq!(a[0][0], vec![false, false, false, true, true, true]);
    }

    #[test]
    fn positions_skip_left_padding() {
        let m = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1]).view([2, 4]);
        let p = position_ids(&m, 4);
        assert_eq!(
            Vec::<i64>::try_from(p.view([-1])).unwrap(),
            vec![0, 0, 0, 1, 0, 1, 2, 3]
        );
        let last = position_ids(&m, 1);
        assert_eq!(Vec::<i64>::try_from(last.view([-1])).unwrap(), vec![1, 3]);
    }

    #[test]
    fn kv_cache_appends_and_grows() {
        let mut c = LayerCache::default();
        let k1 = Tensor::ones([1, 1, 10, 2], (Kind::Float, tch::Device::Cpu));
        let (k, _) = c.append(&k1, &k1, 0);
        assert_eq!(k.size(), vec![1, 1, 10, 2]);
        let k2 = Tensor::full([1, 1, 10, 2], 2.0, (Kind::Float, tch::Device::Cpu));
        let (k, v) = c.append(&k2, &k2, 10);
        assert_eq!(k.size(), vec![1, 1, 20, 2]);
        assert_eq!(v.double_value(&[0, 0, 9, 0]), 1.0);
        assert_eq!(k.double_value(&[0, 0, 19, 1]), 2.0);
    }
}
