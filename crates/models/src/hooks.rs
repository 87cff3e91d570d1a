//! Reading and editing the residual stream.
//!
//! Layer `L`'s *output* is the residual stream after decoder layer `L` (0-based), i.e. HF's
//! `hidden_states[L + 1]` and pyvene's `model.layers[L].output`: the component AxBench reads
//! concepts from and steers. A [`Hooks`] value says, for one forward pass or one whole generation:
//! - which layer outputs to return ([`Hooks::capture`]),
//! - where to stop when only activations are wanted ([`Hooks::stop_after`]; also implied when
//!   no logits are requested),
//! - which [`Intervention`]s to apply at which layer, and at which positions.
//!
//! Interventions run at every forward call that sees the hooks: the prompt (prefill) and every
//! generated token. Model weights never require grad, so an intervention whose parameters do
//! (ReFT-style training) gets gradients through the frozen model by an ordinary backward pass.

use tch::{Kind, Tensor};

/// What an intervention sees besides the hidden states.
#[derive(Debug)]
pub struct InterventionCtx<'a> {
    /// `[B, T]` bool: positions of this chunk the intervention applies to.
    pub mask: &'a Tensor,
    /// `[B, T]` bool: real (non-padding) tokens of this chunk.
    pub real: &'a Tensor,
    /// Positions already in the KV cache before this chunk (0 for a prompt / plain forward).
    pub past_len: i64,
}

/// A function of the residual stream at one layer, `h: [B, T, D] -> [B, T, D]`.
///
/// Implementations must leave unmasked positions unchanged. Parameters that should be trained
/// are ordinary tensors with `requires_grad`; the model contributes no trainable parameters of its
/// own.
pub trait Intervention {
    fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor;
}

/// Adds `scale[b] * vector[b]` to every selected position of row `b`: AxBench's "addition"
/// steering intervention, batched so each prompt can use a different concept and factor.
#[derive(Debug)]
pub struct AddVectors {
    /// `[B, D]`, or `[1, D]` / `[D]` to share one vector.
    pub vectors: Tensor,
    /// `[B]`, or `[1]` to share one scale.
    pub scales: Tensor,
}

impl AddVectors {
    pub fn new(vectors: Tensor, scales: Tensor) -> Self {
        Self { vectors, scales }
    }
}

impl Intervention for AddVectors {
    fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor {
        let d = *h.size().last().unwrap();
        let v = self.vectors.reshape([-1, 1, d]).to_kind(h.kind()).to_device(h.device());
        let s = self.scales.reshape([-1, 1, 1]).to_kind(h.kind()).to_device(h.device());
        let m = ctx.mask.unsqueeze(-1).to_kind(h.kind());
        h + m * s * v
    }
}

// --- trainable adapters (LoRA); see crate::lora and crate::train ---
/// A low-rank (or any) additive change to a linear map inside a layer: the layer computes
/// `linear(x) + adapter.delta(x)`. LoRA on the attention output projection is the one user; the
/// adapter's tensors may require grad, the base weight never does.
pub trait LinearAdapter {
    /// `x: [B, T, in] -> [B, T, out]`, added to the base projection's output.
    fn delta(&self, x: &Tensor) -> Tensor;
}
// --- end trainable adapters ---

/// What to read, where to stop and what to change during a forward pass or a generation.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(crate) capture: Vec<usize>,
    pub(crate) stop_after: Option<usize>,
    pub(crate) interventions: Vec<(usize, &'a dyn Intervention)>,
    pub(crate) prompt_positions: Option<Tensor>,
    pub(crate) skip_generated: bool,
    /// Adapters on the attention output projection (`self_attn.o_proj`), by layer.
    pub(crate) o_proj: Vec<(usize, &'a dyn LinearAdapter)>,
}

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("capture", &self.capture)
            .field("stop_after", &self.stop_after)
            .field(
                "interventions_at",
                &self.interventions.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            )
            .field("prompt_positions", &self.prompt_positions.as_ref().map(|t| t.size()))
            .field("skip_generated", &self.skip_generated)
            .field(
                "o_proj_adapters_at",
                &self.o_proj.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'a> Hooks<'a> {
    /// No hooks: a plain forward pass.
    pub fn none() -> Self {
        Self::default()
    }

    /// Returns the output of layer `layer` (HF `hidden_states[layer + 1]`) in the forward output.
    pub fn capture(mut self, layer: usize) -> Self {
        if !self.capture.contains(&layer) {
            self.capture.push(layer);
        }
        self
    }

    /// Ends the forward pass after layer `layer`: no later layers, no final norm, no logits.
    pub fn stop_after(mut self, layer: usize) -> Self {
        self.stop_after = Some(layer);
        self
    }

    /// Applies `iv` to the output of layer `layer` (before any later layer or capture sees it).
    pub fn intervene(mut self, layer: usize, iv: &'a dyn Intervention) -> Self {
        self.interventions.push((layer, iv));
        self
    }

    /// Adds `adapter.delta(x)` to the attention output projection of layer `layer` (LoRA on
    /// `o_proj`), for every position of every forward call that sees these hooks.
    pub fn adapt_o_proj(mut self, layer: usize, adapter: &'a dyn LinearAdapter) -> Self {
        self.o_proj.push((layer, adapter));
        self
    }

    /// The `o_proj` adapter of `layer`, if any (the first one given).
    pub(crate) fn o_proj_adapter(&self, layer: usize) -> Option<&'a dyn LinearAdapter> {
        self.o_proj.iter().find(|(l, _)| *l == layer).map(|(_, a)| *a)
    }

    /// Restricts interventions in the prompt chunk to `mask` (`[B, T]`, nonzero = intervene), laid
    /// out like the padded `input_ids`. Without it, every position is intervened on (pyvene's
    /// `unit_locations=None`).
    pub fn positions(mut self, mask: Tensor) -> Self {
        self.prompt_positions = Some(mask);
        self
    }

    /// Leaves generated tokens alone (interventions only on the prompt). The default, like
    /// AxBench, intervenes on every generated token too.
    pub fn prompt_only(mut self) -> Self {
        self.skip_generated = true;
        self
    }

    /// The same hooks with another prompt position mask (used by generation after padding).
    pub(crate) fn with_positions(&self, mask: Option<Tensor>) -> Hooks<'a> {
        Hooks {
            capture: self.capture.clone(),
            stop_after: self.stop_after,
            interventions: self.interventions.clone(),
            prompt_positions: mask,
            skip_generated: self.skip_generated,
            o_proj: self.o_proj.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.stop_after.is_none() && self.interventions.is_empty() && self.o_proj.is_empty()
    }

    /// The `[B, T]` bool mask of positions to intervene on for a chunk of `t` tokens after `past`.
    pub(crate) fn intervention_mask(&self, b: i64, t: i64, past: i64, device: tch::Device) -> Result<Tensor, String> {
        if past == 0 {
            if let Some(m) = &self.prompt_positions {
                if m.size() != [b, t] {
                    return Err(format!("position mask has shape {:?}, input is [{b}, {t}]", m.size()));
                }
                return Ok(m.ne(0).to_device(device));
            }
            return Ok(Tensor::ones([b, t], (Kind::Bool, device)));
        }
        Ok(if self.skip_generated {
            Tensor::zeros([b, t], (Kind::Bool, device))
        } else {
            Tensor::ones([b, t], (Kind::Bool, device))
        })
    }
}

/// The output of one forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[B, T, V]` (or `[B, 1, V]` for [`Logits::Last`]), f32 or the model dtype; `None` when not
    /// requested or when the pass stopped early.
    pub logits: Option<Tensor>,
    /// `(layer, [B, T, D])` for each captured layer, in layer order.
    pub hidden: Vec<(usize, Tensor)>,
}

impl ForwardOutput {
    /// The captured output of `layer`, if it was captured.
    pub fn hidden(&self, layer: usize) -> Option<&Tensor> {
        self.hidden.iter().find(|(l, _)| *l == layer).map(|(_, t)| t)
    }
}

/// Which logits a forward pass computes. Generation only needs the last position, which saves
/// the vocabulary projection (262k rows for Gemma) on every prompt token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, Model};

    fn tiny(name: &str) -> Model {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/golden/models")
            .join(name);
        Model::load(
            &dir,
            &LoadOptions {
                device: crate::device::DeviceSpec::Cpu,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn batch() -> (Tensor, Tensor) {
        let ids = Tensor::from_slice(&[0i64, 0, 2, 17, 33, 2, 45, 46, 47, 48]).view([2, 5]);
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 5]);
        (ids, mask)
    }

    #[test]
    fn a_hook_at_scale_zero_changes_nothing() {
        let _g = tch::no_grad_guard();
        let m = tiny("tiny-gemma2");
        let (ids, mask) = batch();
        let plain = m
            .forward(&ids, Some(&mask), &Hooks::none().capture(2), Logits::All, None)
            .unwrap();
        let zero = AddVectors::new(
            Tensor::randn([2, 64], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        );
        let hooked = m
            .forward(
                &ids,
                Some(&mask),
                &Hooks::none().capture(2).intervene(1, &zero),
                Logits::All,
                None,
            )
            .unwrap();
        assert!(plain.logits.as_ref().unwrap().equal(hooked.logits.as_ref().unwrap()));
        assert!(plain.hidden(2).unwrap().equal(hooked.hidden(2).unwrap()));
    }

    #[test]
    fn interventions_respect_rows_and_position_masks() {
        let _g = tch::no_grad_guard();
        let m = tiny("tiny-llama");
        let (ids, mask) = batch();
        let base = m
            .forward(&ids, Some(&mask), &Hooks::none().capture(1), Logits::None, None)
            .unwrap();
        let v = Tensor::ones([1, 64], (Kind::Float, tch::Device::Cpu));
        // Row 0 scale 0, row 1 scale 3; only the last two positions.
        let add = AddVectors::new(v, Tensor::from_slice(&[0.0f32, 3.0]));
        let pos = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 0, 0, 0, 1, 1]).view([2, 5]);
        let hooks = Hooks::none().capture(1).intervene(1, &add).positions(pos);
        let out = m.forward(&ids, Some(&mask), &hooks, Logits::None, None).unwrap();
        let delta = out.hidden(1).unwrap() - base.hidden(1).unwrap();
        assert_eq!(delta.get(0).abs().max().double_value(&[]), 0.0);
        let row1 = delta.get(1);
        assert_eq!(row1.narrow(0, 0, 3).abs().max().double_value(&[]), 0.0);
        assert!((row1.narrow(0, 3, 2) - 3.0).abs().max().double_value(&[]) < 1e-6);
    }

    /// A ReFT-style trainable intervention: `h + w` with `w` requiring grad.
    struct Learned {
        w: Tensor,
    }
    impl Intervention for Learned {
        fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor {
            h + ctx.mask.unsqueeze(-1).to_kind(h.kind()) * &self.w
        }
    }

    #[test]
    fn trainable_interventions_get_gradients_through_a_frozen_model() {
        let m = tiny("tiny-gemma3");
        let (ids, mask) = batch();
        let iv = Learned {
            w: Tensor::zeros([64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
        };
        let out = m
            .forward(&ids, Some(&mask), &Hooks::none().intervene(2, &iv), Logits::All, None)
            .unwrap();
        let logits = out.logits.unwrap();
        assert!(logits.requires_grad());
        let loss = logits.log_softmax(-1, Kind::Float).select(-1, 5).mean(Kind::Float);
        loss.backward();
        let g = iv.w.grad();
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Nothing of the model's own requires grad, so only the intervention is trained.
        let plain = m.forward(&ids, Some(&mask), &Hooks::none(), Logits::All, None).unwrap();
        assert!(!plain.logits.unwrap().requires_grad());
    }

    #[test]
    fn layer_out_of_range_is_an_error() {
        let m = tiny("tiny-llama");
        let (ids, mask) = batch();
        let err = m
            .forward(&ids, Some(&mask), &Hooks::none().capture(3), Logits::None, None)
            .unwrap_err();
        assert!(err.to_string().contains("layer 3 out of range"), "{err}");
    }
}
