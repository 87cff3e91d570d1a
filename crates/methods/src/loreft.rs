//! LoReFT (pyreft's `LoreftIntervention`, AxBench's `LoReFT` baseline, `axbench/models/reft.py`):
//! `h + Rᵀ(Wh + b − Rh)` with `R` a rank-`r` map with orthonormal rows, at several layers, on the first and last 5
//! prompt positions (`f5+l5`, weights not shared across layers), trained with the LM loss on the positives.
//!
//! Orthonormality: pyreft parametrises `R` with `torch.nn.utils.parametrizations.orthogonal`; we parametrise it the
//! same way in spirit: the trained tensor is an unconstrained `A: [d, r]` and `R = Q` of `A = QR` (signs fixed so
//! `diag(R) > 0`), computed differentiably at every forward pass, so `R` is orthonormal by construction whatever
//! the optimizer does; the checkpoint stores `R` itself. Initialisation as pyreft: `A` orthogonal
//! (`nn.init.orthogonal_`), `W`, `b` as `nn.Linear(d, r)` (`U(-1/√d, 1/√d)`).
//!
//! No detection; steering applies the trained intervention on the prompt's `f5+l5` positions (pyreft generates with
//! the prompt intervened, generated tokens not), with no factor.

use axbench_models::hooks::{Hooks, Intervention, InterventionCtx};
use axbench_models::train::Trainable;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// AxBench's class name.
pub const NAME: &str = "LoReFT";

/// Hyperparameters (`configs/methods.toml` `[LoReFT]`): AxBench's 2B production values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoreftConfig {
    pub low_rank_dimension: i64,
    /// Layers to intervene at; empty = `L/4, L/2, 3L/4, L` for the pipeline's layer `L` (AxBench's `[5, 10, 15, 20]`
    /// at L = 20 on Gemma-2-2B).
    pub reft_layers: Vec<usize>,
    /// Prompt positions: the first `first_n` and the last `last_n` (`f5+l5`).
    pub first_n: usize,
    pub last_n: usize,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub n_epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

impl Default for LoreftConfig {
    fn default() -> Self {
        Self {
            low_rank_dimension: 4,
            reft_layers: vec![],
            first_n: 5,
            last_n: 5,
            batch_size: 18,
            gradient_accumulation_steps: 2,
            n_epochs: 24,
            lr: 9e-4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
        }
    }
}

super::impl_train_config!(LoreftConfig);

/// `L/4, L/2, 3L/4, L` (deduplicated), or `explicit` when given.
pub fn default_layers(explicit: &[usize], layer: usize) -> Vec<usize> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let mut v: Vec<usize> = (1..=4).map(|k| layer * k / 4).collect();
    v.dedup();
    v
}

/// `f5+l5`: the first `first_n` and last `last_n` of the `prompt_len` prompt positions, as a mask over `len` tokens.
pub fn prompt_positions(prompt_len: usize, len: usize, first_n: usize, last_n: usize) -> Vec<bool> {
    (0..len)
        .map(|i| i < prompt_len && (i < first_n || i + last_n >= prompt_len))
        .collect()
}

/// `Q` of `a = QR` with the signs fixed so `diag(R) ≥ 0` (the unique QR with a positive diagonal).
pub fn orthonormal_columns(a: &Tensor) -> Tensor {
    let (q, r) = Tensor::linalg_qr(a, "reduced");
    let s = r.diagonal(0, -2, -1).sign();
    let s = s.where_self(&s.ne(0), &s.ones_like());
    q * s.unsqueeze(0)
}

/// One layer's LoReFT.
pub struct LoreftLayer {
    pub layer: usize,
    /// `[d, r]`: unconstrained while training; `R = orthonormal_columns(a)` (`Rh` = `h @ R`).
    pub a: Tensor,
    /// `[r, d]`, `[r]`: the learned source `Wh + b`.
    pub w: Tensor,
    pub b: Tensor,
    pub strength: f64,
}

impl LoreftLayer {
    /// `R` with orthonormal columns `[d, r]` (so `RᵀR = I`); rows of pyreft's `R` are its columns.
    pub fn rotation(&self) -> Tensor {
        orthonormal_columns(&self.a)
    }
}

impl Intervention for LoreftLayer {
    fn apply(&self, h: &Tensor, ctx: &InterventionCtx) -> Tensor {
        let r = self.rotation().to_kind(h.kind());
        let src = h.linear(&self.w.to_kind(h.kind()), Some(&self.b.to_kind(h.kind())));
        let delta = (src - h.matmul(&r)).matmul(&r.tr());
        let m = ctx.mask.logical_and(ctx.real).unsqueeze(-1).to_kind(h.kind());
        h + m * delta * self.strength
    }
}

/// LoReFT at several layers.
pub struct Loreft {
    pub layers: Vec<LoreftLayer>,
}

impl Loreft {
    /// Fresh parameters (torch's global RNG: seed with `tch::manual_seed`).
    pub fn new(layers: &[usize], d: i64, rank: i64, device: Device) -> Self {
        let bound = 1.0 / (d as f64).sqrt();
        let layers = layers
            .iter()
            .map(|&layer| {
                // nn.init.orthogonal_: Q of a Gaussian matrix.
                let a = orthonormal_columns(&Tensor::randn([d, rank], (Kind::Float, device))).set_requires_grad(true);
                let w =
                    (Tensor::rand([rank, d], (Kind::Float, device)) * (2.0 * bound) - bound).set_requires_grad(true);
                let b = (Tensor::rand([rank], (Kind::Float, device)) * (2.0 * bound) - bound).set_requires_grad(true);
                LoreftLayer {
                    layer,
                    a,
                    w,
                    b,
                    strength: 1.0,
                }
            })
            .collect();
        Self { layers }
    }

    pub fn set_strength(&mut self, s: f64) {
        for l in &mut self.layers {
            l.strength = s;
        }
    }

    /// Largest `|RᵀR − I|` entry over the layers.
    pub fn orthonormality_error(&self) -> f64 {
        let _g = tch::no_grad_guard();
        self.layers
            .iter()
            .map(|l| {
                let r = l.rotation().to_kind(Kind::Double);
                let k = r.size()[1];
                (r.tr().matmul(&r) - Tensor::eye(k, (Kind::Double, r.device())))
                    .abs()
                    .max()
                    .double_value(&[])
            })
            .fold(0.0, f64::max)
    }

    /// `layers.{l}.R` (`[d, r]`, orthonormal columns), `layers.{l}.W`, `layers.{l}.b`, on the CPU.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let _g = tch::no_grad_guard();
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    (
                        format!("layers.{}.R", l.layer),
                        l.rotation().detach().to_device(Device::Cpu).contiguous(),
                    ),
                    (format!("layers.{}.W", l.layer), l.w.detach().to_device(Device::Cpu)),
                    (format!("layers.{}.b", l.layer), l.b.detach().to_device(Device::Cpu)),
                ]
            })
            .collect()
    }

    /// Rebuilds from [`Loreft::named_tensors`] (`R` is stored orthonormal, so it is its own parametrisation).
    pub fn from_named(named: &[(String, Tensor)], layers: &[usize], device: Device) -> Result<Self, String> {
        let get = |n: String| {
            named
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, t)| t.to_kind(Kind::Float).to_device(device))
                .ok_or(format!("missing tensor `{n}`"))
        };
        let layers = layers
            .iter()
            .map(|&layer| {
                Ok(LoreftLayer {
                    layer,
                    a: get(format!("layers.{layer}.R"))?,
                    w: get(format!("layers.{layer}.W"))?,
                    b: get(format!("layers.{layer}.b"))?,
                    strength: 1.0,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { layers })
    }
}

impl Trainable for Loreft {
    fn parameters(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(|l| [l.a.shallow_clone(), l.w.shallow_clone(), l.b.shallow_clone()])
            .collect()
    }
    fn attach<'a>(&'a self, mut hooks: Hooks<'a>) -> Hooks<'a> {
        for l in &self.layers {
            hooks = hooks.intervene(l.layer, l);
        }
        hooks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f5_l5_positions_and_default_layers() {
        let m = prompt_positions(14, 20, 5, 5);
        let on: Vec<usize> = (0..20).filter(|&i| m[i]).collect();
        assert_eq!(on, vec![0, 1, 2, 3, 4, 9, 10, 11, 12, 13]);
        assert_eq!(prompt_positions(4, 6, 5, 5), vec![true, true, true, true, false, false]);
        assert_eq!(default_layers(&[], 20), vec![5, 10, 15, 20]);
        assert_eq!(default_layers(&[], 9), vec![2, 4, 6, 9]);
        assert_eq!(default_layers(&[3], 9), vec![3]);
    }

    #[test]
    fn formula_orthonormality_and_identity_at_zero_strength() {
        tch::manual_seed(1);
        let mut lo = Loreft::new(&[0], 6, 2, Device::Cpu);
        assert!(lo.orthonormality_error() < 1e-6);
        let h = Tensor::randn([1, 3, 6], (Kind::Float, Device::Cpu));
        let mask = Tensor::ones([1, 3], (Kind::Bool, Device::Cpu));
        let ctx = InterventionCtx {
            mask: &mask,
            real: &mask,
            past_len: 0,
        };
        let out = lo.layers[0].apply(&h, &ctx);
        let l = &lo.layers[0];
        let r = l.rotation();
        // Reference: h + (W h + b - R h) R^T written out with explicit transposes.
        let want = &h + (h.matmul(&l.w.tr()) + &l.b - h.matmul(&r)).matmul(&r.tr());
        assert!((&out - want).abs().max().double_value(&[]) < 1e-5);
        // In the subspace, the output's coordinates equal W h + b (the edit LoReFT defines).
        let proj = out.matmul(&r) - (h.matmul(&l.w.tr()) + &l.b);
        assert!(proj.abs().max().double_value(&[]) < 1e-5);
        lo.set_strength(0.0);
        assert!(lo.layers[0].apply(&h, &ctx).equal(&h));
    }
}
