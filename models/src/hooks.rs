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

/// What to read, where to stop and what to change during a forward pass or a generation.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(crate) capture: Vec<usize>,
    pub(crate) stop_after: Option<usize>,
    pub(crate) interventions: Vec<(usize, &'a dyn Intervention)>,
    pub(crate) prompt_positions: Option<Tensor>,
    pub(crate) skip_generated: bool,
}

impl std::fmt::Debug for Hooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("capture", &self.capture)
            .field("stop_after", &self.stop_after)
            .field("interventions_at", &self.interventions.iter().map(|(l, _)| *l).collect::<Vec<_>>())
            .field("prompt_positions", &self.prompt_positions.as_ref().map(|t| t.size()))
            .field("skip_generated", &self.skip_generated)
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
        }
    }

    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.stop_after.is_none() && self.interventions.is_empty()
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
