//! ReFT-r1 (AxBench's `LsReFT`, `axbench/models/lsreft.py` with `TopKReLUIntervention`): one direction `w` that is
//! both a concept detector and a steering vector, trained through the frozen model with the language-model loss.
//!
//! * latent per intervened position: `ReLU(h·w)`;
//! * during training, the mean of the sequence's top-`k` latents times `w` is added to `h` at every intervened
//!   position (`h + mean(TopK(ReLU(h·w)))·w`);
//! * loss = LM cross-entropy on the response + `progress · coeff_latent_l1_loss ·` the batch mean of each sequence's
//!   mean non-top-k latent over its intervened positions (`calculate_l1_losses`), so the latent is pushed to fire on
//!   few tokens; the weight ramps from 0 to the coefficient over training;
//! * before each step (after clipping): `w` renormalised to unit norm, then the gradient component parallel to `w`
//!   removed (`set_decoder_norm_to_unit_norm`, `remove_gradient_parallel_to_decoder_directions`);
//! * `w` starts at 0.01 everywhere; trained on the concept's positives and the genre's negatives (`train_on_negative`).
//!
//! Detection: `ReLU(h·w)` per token, max-pooled ([`FittedArtifact::ReluLinear`](super::FittedArtifact)); steering:
//! `h + factor·max_act·w` like every direction.

use std::cell::RefCell;

use axbench_models::hooks::{Hooks, Intervention, InterventionCtx};
use axbench_models::train::{Trainable, topk_mask};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// AxBench's class name.
pub const NAME: &str = "LsReFT";

/// Hyperparameters (`configs/methods.toml` `[LsReFT]`): AxBench's 2B production values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReftR1Config {
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub n_epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Top-k latents per sequence whose mean scales the added direction.
    pub topk: i64,
    pub coeff_latent_l1_loss: f64,
    pub max_grad_norm: f64,
    /// Negatives of the concept's genre join the positives as LM targets.
    pub train_on_negative: bool,
    pub seed: u64,
}

impl Default for ReftR1Config {
    fn default() -> Self {
        Self {
            batch_size: 6,
            gradient_accumulation_steps: 1,
            n_epochs: 3,
            lr: 0.01,
            weight_decay: 0.0,
            topk: 8,
            coeff_latent_l1_loss: 0.005,
            max_grad_norm: 1.0,
            train_on_negative: true,
            seed: 42,
        }
    }
}

super::impl_train_config!(ReftR1Config);

/// What the last forward pass recorded for the L1 term: `(non_topk_latents, mask)`, both `[B, T]`.
type Recorded = (Tensor, Tensor);

/// The trainable intervention at one layer.
pub struct ReftR1 {
    pub layer: usize,
    /// `[d]`, f32, requires grad.
    pub w: Tensor,
    pub topk: i64,
    pub coeff_l1: f64,
    /// Multiplies the added vector: 1 while training; 0 makes the intervention the identity.
    pub strength: f64,
    recorded: RefCell<Option<Recorded>>,
}

impl ReftR1 {
    /// A fresh direction (all entries 0.01, as AxBench initialises `proj.weight`).
    pub fn new(layer: usize, d: i64, cfg: &ReftR1Config, device: Device) -> Self {
        Self {
            layer,
            w: Tensor::full([d], 0.01, (Kind::Float, device)).set_requires_grad(true),
            topk: cfg.topk,
            coeff_l1: cfg.coeff_latent_l1_loss,
            strength: 1.0,
            recorded: RefCell::new(None),
        }
    }

    /// The trained direction at unit norm (AxBench renormalises before every step; we also do it after the last).
    pub fn unit_w(&self) -> Tensor {
        super::unit_norm(&self.w.detach().to_device(Device::Cpu))
    }
}

impl Intervention for ReftR1 {
    fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor {
        let w = self.w.to_kind(h.kind());
        let mask = ctx.mask.logical_and(ctx.real);
        let maskf = mask.to_kind(h.kind());
        let latent = h.matmul(&w).relu() * &maskf; // [B, T]
        // Positions outside the mask can never be in the top k (latents are ≥ 0).
        let ranked = latent.where_self(&mask, &(latent.zeros_like() - 1.0));
        let top = topk_mask(&ranked, self.topk).logical_and(&mask);
        let topf = top.to_kind(h.kind());
        let k = topf.sum_dim_intlist(-1, true, h.kind()).clamp_min(1.0); // [B, 1]
        let a = (&latent * &topf).sum_dim_intlist(-1, true, h.kind()) / k; // [B, 1]
        *self.recorded.borrow_mut() = Some((&latent * (1.0 - &topf), maskf.shallow_clone()));
        h + (a * &maskf).unsqueeze(-1) * w * self.strength
    }
}

impl Trainable for ReftR1 {
    fn parameters(&self) -> Vec<Tensor> {
        vec![self.w.shallow_clone()]
    }
    fn attach<'a>(&'a self, hooks: Hooks<'a>) -> Hooks<'a> {
        hooks.intervene(self.layer, self)
    }
    fn aux_loss(&self, progress: f64) -> Option<Tensor> {
        let (non_topk, mask) = self.recorded.borrow_mut().take()?;
        let valid = mask.sum_dim_intlist(-1, false, Kind::Float) + f32::EPSILON as f64;
        let per_seq = non_topk.to_kind(Kind::Float).sum_dim_intlist(-1, false, Kind::Float) / valid;
        Some(per_seq.mean(Kind::Float) * (progress * self.coeff_l1))
    }
    fn before_step(&self) {
        let _g = tch::no_grad_guard();
        // set_decoder_norm_to_unit_norm, then remove_gradient_parallel_to_decoder_directions.
        let norm = self.w.norm().double_value(&[]);
        let _ = self.w.shallow_clone().g_div_scalar_(norm + f32::EPSILON as f64);
        let mut g = self.w.grad();
        if g.defined() {
            let par = g.dot(&self.w);
            let _ = g.g_sub_(&(&self.w * par));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_parts(mask: &[bool], b: i64, t: i64) -> (Tensor, Tensor) {
        (
            Tensor::from_slice(mask).view([b, t]),
            Tensor::ones([b, t], (Kind::Bool, Device::Cpu)),
        )
    }

    #[test]
    fn adds_mean_of_topk_latents_times_w_on_masked_positions() {
        let cfg = ReftR1Config {
            topk: 2,
            ..Default::default()
        };
        let iv = ReftR1::new(0, 2, &cfg, Device::Cpu);
        iv.w.detach().copy_(&Tensor::from_slice(&[1.0f32, 0.0]));
        // One sequence, 4 positions; latents h·w = [5, 3, -1, 4]; the first position is masked out.
        let h = Tensor::from_slice(&[5.0f32, 0., 3., 0., -1., 0., 4., 0.]).view([1, 4, 2]);
        let (mask, real) = ctx_parts(&[false, true, true, true], 1, 4);
        let out = iv.apply(
            &h,
            &InterventionCtx {
                mask: &mask,
                real: &real,
                past_len: 0,
            },
        );
        // Top-2 of the masked latents [3, 0, 4] -> mean 3.5, added along w at masked positions only.
        let delta: Vec<f32> = Vec::try_from((&out - &h).select(2, 0).view([-1])).unwrap();
        assert_eq!(delta, vec![0.0, 3.5, 3.5, 3.5]);
        // The L1 term sees the non-top-k latents (only the ReLU'd -1 -> 0 is left): zero here.
        let l1 = iv.aux_loss(1.0).unwrap().double_value(&[]);
        assert_eq!(l1, 0.0);
    }

    #[test]
    fn strength_zero_is_the_identity_and_grad_projection_is_orthogonal() {
        let cfg = ReftR1Config::default();
        let mut iv = ReftR1::new(0, 8, &cfg, Device::Cpu);
        iv.strength = 0.0;
        let h = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu));
        let mask = Tensor::ones([2, 5], (Kind::Bool, Device::Cpu));
        let out = iv.apply(
            &h,
            &InterventionCtx {
                mask: &mask,
                real: &mask,
                past_len: 0,
            },
        );
        assert!(out.equal(&h));
        iv.strength = 1.0;
        let out = iv.apply(
            &h,
            &InterventionCtx {
                mask: &mask,
                real: &mask,
                past_len: 0,
            },
        );
        (out.square().sum(Kind::Float) + iv.aux_loss(0.5).unwrap()).backward();
        iv.before_step();
        let n = iv.w.norm().double_value(&[]);
        // AxBench divides by `norm + eps` (f32 eps), so a small w lands a few 1e-6 short of 1.
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
        assert!(iv.w.grad().dot(&iv.w).double_value(&[]).abs() < 1e-5);
    }
}
