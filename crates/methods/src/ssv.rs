//! SSV, the supervised steering vector (AxBench's `SteeringVector`, `axbench/models/steering_vector.py`): `h + w`
//! at every intervened position of layer L, `w` trained with the language-model loss on the concept's positives
//! (no negatives), not normalised while training (`w` starts at 0.01 everywhere).
//!
//! Detection reads `ReLU(h·w)` per token, max-pooled; steering adds `factor·max_act·w/|w|` like the other
//! directions (the steer stage's unit direction: AxBench adds the stored row as it is, so magnitudes differ by
//! `|w|`, the factor grid absorbs it).

use axbench_models::hooks::{Hooks, Intervention, InterventionCtx};
use axbench_models::train::Trainable;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// AxBench's class name.
pub const NAME: &str = "SteeringVector";

/// Hyperparameters (`configs/methods.toml` `[SteeringVector]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsvConfig {
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub n_epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub train_on_negative: bool,
    pub seed: u64,
}

impl Default for SsvConfig {
    fn default() -> Self {
        Self {
            batch_size: 6,
            gradient_accumulation_steps: 1,
            n_epochs: 3,
            lr: 0.01,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            train_on_negative: false,
            seed: 42,
        }
    }
}

super::impl_train_config!(SsvConfig);

/// `h + strength·w` at the masked positions of one layer.
pub struct Ssv {
    pub layer: usize,
    /// `[d]`, f32, requires grad.
    pub w: Tensor,
    pub strength: f64,
}

impl Ssv {
    pub fn new(layer: usize, d: i64, device: Device) -> Self {
        Self {
            layer,
            w: Tensor::full([d], 0.01, (Kind::Float, device)).set_requires_grad(true),
            strength: 1.0,
        }
    }
}

impl Intervention for Ssv {
    fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor {
        let m = ctx.mask.logical_and(ctx.real).unsqueeze(-1).to_kind(h.kind());
        h + m * self.w.to_kind(h.kind()) * self.strength
    }
}

impl Trainable for Ssv {
    fn parameters(&self) -> Vec<Tensor> {
        vec![self.w.shallow_clone()]
    }
    fn attach<'a>(&'a self, hooks: Hooks<'a>) -> Hooks<'a> {
        hooks.intervene(self.layer, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_w_on_masked_real_positions_and_zero_strength_is_identity() {
        let mut iv = Ssv::new(0, 3, Device::Cpu);
        let h = Tensor::randn([1, 3, 3], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[true, false, true]).view([1, 3]);
        let real = Tensor::from_slice(&[true, true, false]).view([1, 3]);
        let out = iv.apply(
            &h,
            &InterventionCtx {
                mask: &mask,
                real: &real,
                past_len: 0,
            },
        );
        let d: Vec<f32> = Vec::try_from((&out - &h).sum_dim_intlist(-1, false, Kind::Float).view([-1])).unwrap();
        assert!((d[0] - 0.03).abs() < 1e-6 && d[1] == 0.0 && d[2] == 0.0, "{d:?}");
        iv.strength = 0.0;
        assert!(
            iv.apply(
                &h,
                &InterventionCtx {
                    mask: &mask,
                    real: &real,
                    past_len: 0
                }
            )
            .equal(&h)
        );
    }
}
