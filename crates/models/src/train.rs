//! Training through a frozen model: the language-model loss on response tokens, AdamW with
//! HF's linear schedule, gradient clipping, and a seeded epoch loop.
//!
//! What is trained is a [`Trainable`]: a set of tensors that require grad plus the hooks that put
//! them into the forward pass (an [`Intervention`](crate::hooks::Intervention) at some layers, a
//! [`LinearAdapter`](crate::hooks::LinearAdapter) on `o_proj`, or, for full finetuning, the
//! model's own weights made trainable with [`Model::parameters`]). The model's weights never
//! require grad otherwise, so an ordinary backward pass reaches only the trainable tensors; layers
//! below the first hook run without building a graph at all.
//!
//! The loop follows what AxBench's trainers do (pyreft / HF Trainer conventions):
//! * loss: mean cross-entropy over the target tokens of the batch (HF's `labels = -100` on the
//!   prompt), plus the trainable's own [`Trainable::aux_loss`];
//! * `gradient_accumulation_steps` micro-batches per optimizer step, each loss divided by it;
//! * `clip_grad_norm_(max_grad_norm)` over all parameters, then [`Trainable::before_step`]
//!   (ReFT-r1 renormalises `w` and projects its gradient, in AxBench's order), then AdamW
//!   (`torch.optim.AdamW`'s update, reproduced term by term) with
//!   `get_linear_schedule_with_warmup(0 warmup)`, then [`Trainable::after_step`].
//!
//! Examples are shuffled each epoch by a `StdRng` seeded from [`TrainConfig::seed`]; parameter
//! initialisation is the trainable's business (seed torch with `tch::manual_seed` first).

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tch::{Kind, Tensor};

use crate::hooks::{Hooks, Logits};
use crate::model::{Model, ModelError, Padding, pad};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid training input: {0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    #[error("the loss became {loss} at step {step}: training diverged (lower the learning rate?)")]
    Diverged { step: usize, loss: f64 },
}

/// One training sequence: prompt and response token ids in the chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainExample {
    /// Prompt then response, as one row.
    pub ids: Vec<i64>,
    /// Tokens `ids[response_start..]` are predicted (the LM loss); the prompt is not.
    pub response_start: usize,
    /// Positions an intervention applies to (same length as `ids`); `None` = every position.
    pub intervene: Option<Vec<bool>>,
}

/// A padded batch on the model's device.
#[derive(Debug)]
pub struct TrainBatch {
    /// `[B, T]` int64, right-padded.
    pub ids: Tensor,
    /// `[B, T]` int64, 1 for real tokens.
    pub attention: Tensor,
    /// `[B, T]` bool: token `t` is a target (predicted from position `t - 1`).
    pub targets: Tensor,
    /// `[B, T]` bool: positions interventions apply to (never padding).
    pub positions: Tensor,
    /// Real tokens in the batch.
    pub n_tokens: usize,
    /// Target tokens in the batch.
    pub n_targets: usize,
}

impl TrainBatch {
    /// Pads `examples` to one batch (right padding with `pad_id`).
    pub fn new(examples: &[&TrainExample], pad_id: i64, device: tch::Device) -> Result<Self, TrainError> {
        if examples.is_empty() {
            return Err(TrainError::Invalid("an empty batch".into()));
        }
        let rows: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
        let (ids, attention) = pad(&rows, pad_id, Padding::Right);
        let t = ids.size()[1] as usize;
        let mut targets = vec![false; examples.len() * t];
        let mut positions = vec![false; examples.len() * t];
        let (mut n_tokens, mut n_targets) = (0, 0);
        for (b, e) in examples.iter().enumerate() {
            let n = e.ids.len();
            if e.response_start == 0 || e.response_start >= n {
                return Err(TrainError::Invalid(format!(
                    "example {b}: response starts at token {} of {n}: needs a prompt and a non-empty response",
                    e.response_start
                )));
            }
            if let Some(iv) = &e.intervene
                && iv.len() != n
            {
                return Err(TrainError::Invalid(format!(
                    "example {b}: intervention mask has {} entries for {n} tokens",
                    iv.len()
                )));
            }
            for i in 0..n {
                targets[b * t + i] = i >= e.response_start;
                positions[b * t + i] = e.intervene.as_ref().is_none_or(|m| m[i]);
            }
            n_tokens += n;
            n_targets += n - e.response_start;
        }
        let shape = [examples.len() as i64, t as i64];
        Ok(Self {
            ids: ids.to_device(device),
            attention: attention.to_device(device),
            targets: Tensor::from_slice(&targets).view(shape).to_device(device),
            positions: Tensor::from_slice(&positions).view(shape).to_device(device),
            n_tokens,
            n_targets,
        })
    }
}

/// Parameters trained through the model, and how they enter the forward pass.
pub trait Trainable {
    /// The tensors the optimizer updates; each must require grad.
    fn parameters(&self) -> Vec<Tensor>;
    /// Adds this trainable's interventions / adapters to `hooks` (whose position mask is the
    /// batch's intervention positions).
    fn attach<'a>(&'a self, hooks: Hooks<'a>) -> Hooks<'a>;
    /// An extra loss term computed from what the last forward pass recorded; `progress` is the
    /// fraction of optimizer steps done (ReFT-r1 ramps its L1 weight with it).
    fn aux_loss(&self, _progress: f64) -> Option<Tensor> {
        None
    }
    /// Called after gradient clipping, before the update (AxBench's order for ReFT-r1).
    fn before_step(&self) {}
    /// Called after each update.
    fn after_step(&self) {}
}

/// Optimisation settings (AxBench's `TrainingArgs` names in comments).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// `n_epochs`.
    pub epochs: usize,
    /// `batch_size`: examples per micro-batch.
    pub batch_size: usize,
    /// `gradient_accumulation_steps`.
    pub grad_accum: usize,
    /// `lr`: peak learning rate, decayed linearly to 0 over all optimizer steps.
    pub lr: f64,
    /// `weight_decay` (decoupled, AdamW).
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// `clip_grad_norm_` bound; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    /// Shuffling seed.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 6,
            grad_accum: 1,
            lr: 1e-3,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Optimizer steps for `n` examples: `ceil(ceil(n / batch) / accum)` per epoch, as HF counts them.
    pub fn total_steps(&self, n: usize) -> usize {
        let batches = n.div_ceil(self.batch_size.max(1));
        batches.div_ceil(self.grad_accum.max(1)) * self.epochs
    }
}

/// `torch.optim.AdamW` with default `amsgrad=False`, reproduced step for step on a list of
/// tensors (no `VarStore`: the trained tensors belong to interventions, adapters or the model).
///
/// Parameters held in a low precision (bf16 when the model runs in bf16, as SFT trains the model's
/// own weights) get an f32 master copy, and their moments are f32: a bf16 weight has 8 significant
/// bits, so an update smaller than 1/256 of the weight would round away if applied to it directly.
/// The master is updated and the parameter is then set to its rounding.
#[derive(Debug)]
pub struct AdamW {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    step: i64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// f32 copies of the parameters that are not f32 (`None` for f32 ones, updated in place).
    master: Vec<Option<Tensor>>,
}

impl AdamW {
    pub fn new(params: &[Tensor], betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        let _g = tch::no_grad_guard();
        let master: Vec<Option<Tensor>> = params
            .iter()
            .map(|p| (p.kind() != Kind::Float).then(|| p.detach().to_kind(Kind::Float)))
            .collect();
        let zeros = |(p, m): (&Tensor, &Option<Tensor>)| Tensor::zeros_like(m.as_ref().unwrap_or(p));
        Self {
            betas,
            eps,
            weight_decay,
            step: 0,
            m: params.iter().zip(&master).map(zeros).collect(),
            v: params.iter().zip(&master).map(zeros).collect(),
            master,
        }
    }

    /// One update with learning rate `lr`; parameters without a gradient are skipped (their
    /// moments stay as they are, as in torch).
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (((p, m), v), master) in params.iter().zip(&mut self.m).zip(&mut self.v).zip(&self.master) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let mut w = master.as_ref().unwrap_or(p).shallow_clone();
            let _ = w.g_mul_scalar_(1.0 - lr * self.weight_decay);
            let _ = m.lerp_(&g, 1.0 - b1);
            let _ = v.g_mul_scalar_(b2);
            let _ = v.addcmul_(&g, &g.g_mul_scalar(1.0 - b2));
            let denom = v.sqrt() / bc2.sqrt() + self.eps;
            let _ = w.addcdiv_(&(&*m * (-lr / bc1)), &denom);
            if master.is_some() {
                p.shallow_clone().copy_(&w);
            }
        }
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient by
/// `min(1, max_norm / (total_norm + 1e-6))`. Returns the total norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _g = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let sq: f64 = grads
        .iter()
        .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]))
        .sum();
    let total = sq.sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for mut g in grads {
        let _ = g.g_mul_scalar_(coef);
    }
    total
}

/// Mean cross-entropy of the batch's target tokens under `model` with `hooks` (which should
/// already carry the trainable's interventions). Only the target rows go through the vocabulary
/// projection.
pub fn lm_loss(model: &Model, batch: &TrainBatch, hooks: Hooks) -> Result<Tensor, TrainError> {
    let last = model.info().num_layers - 1;
    // `capture(last)` without logits returns the last layer's output before the final norm; the
    // head is applied below to the target rows only.
    let captured = hooks.capture(last);
    let out = model.forward(&batch.ids, Some(&batch.attention), &captured, Logits::None, None)?;
    let h = out.hidden(last).expect("captured the last layer");
    let (b, t, d) = h.size3().map_err(|e| TrainError::Invalid(e.to_string()))?;
    // Token t is predicted from position t - 1.
    let prev = h.narrow(1, 0, t - 1).reshape([b * (t - 1), d]);
    let tgt_mask = batch.targets.narrow(1, 1, t - 1).reshape([-1]);
    let rows = tgt_mask.nonzero().squeeze_dim(1);
    let labels = batch.ids.narrow(1, 1, t - 1).reshape([-1]).index_select(0, &rows);
    let logits = model.head(&prev.index_select(0, &rows)).to_kind(Kind::Float);
    Ok(logits.cross_entropy_for_logits(&labels))
}

/// What one optimizer step reports to [`train`]'s observer.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// 1-based.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean loss over the step's micro-batches (LM + aux).
    pub loss: f64,
    pub lr: f64,
}

/// What [`train`] measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainReport {
    /// Loss of every optimizer step, in order.
    pub losses: Vec<f64>,
    pub steps: usize,
    /// Real tokens that went through forward + backward (all epochs).
    pub tokens: usize,
    pub target_tokens: usize,
    pub seconds: f64,
}

impl TrainReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
    /// Mean loss of the first and the last `n` steps (what "the loss decreased" compares).
    pub fn first_last_mean(&self, n: usize) -> (f64, f64) {
        let n = n.clamp(1, self.losses.len().max(1));
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            mean(&self.losses[..n.min(self.losses.len())]),
            mean(&self.losses[self.losses.len().saturating_sub(n)..]),
        )
    }
}

/// Trains `trainable` on `examples`. `on_step` sees each optimizer step and may stop training
/// by returning `false` (the report then ends with [`TrainError::Cancelled`]).
pub fn train(
    model: &Model,
    trainable: &dyn Trainable,
    examples: &[TrainExample],
    cfg: &TrainConfig,
    pad_id: i64,
    on_step: &mut dyn FnMut(&StepInfo) -> bool,
) -> Result<TrainReport, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::Invalid("no training examples".into()));
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 || cfg.epochs == 0 {
        return Err(TrainError::Invalid(format!(
            "batch_size ({}), gradient_accumulation_steps ({}) and n_epochs ({}) must be at least 1",
            cfg.batch_size, cfg.grad_accum, cfg.epochs
        )));
    }
    let params = trainable.parameters();
    if params.is_empty() || params.iter().any(|p| !p.requires_grad()) {
        return Err(TrainError::Invalid(
            "every trainable parameter must require grad".into(),
        ));
    }
    let mut opt = AdamW::new(&params, cfg.betas, cfg.eps, cfg.weight_decay);
    let total = cfg.total_steps(examples.len());
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut report = TrainReport::default();
    let t0 = Instant::now();
    let device = model.device();
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng);
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        for group in batches.chunks(cfg.grad_accum) {
            let progress = step as f64 / total as f64;
            let mut step_loss = 0.0;
            for idx in group {
                let ex: Vec<&TrainExample> = idx.iter().map(|&i| &examples[i]).collect();
                let batch = TrainBatch::new(&ex, pad_id, device)?;
                let hooks = trainable.attach(Hooks::none().positions(batch.positions.shallow_clone()));
                let mut loss = lm_loss(model, &batch, hooks)?;
                if let Some(aux) = trainable.aux_loss(progress) {
                    loss += aux;
                }
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    return Err(TrainError::Diverged {
                        step: step + 1,
                        loss: value,
                    });
                }
                (loss / group.len() as f64).backward();
                step_loss += value / group.len() as f64;
                report.tokens += batch.n_tokens;
                report.target_tokens += batch.n_targets;
            }
            if let Some(max) = cfg.max_grad_norm {
                clip_grad_norm(&params, max);
            }
            trainable.before_step();
            // HF linear schedule, no warmup: step k (0-based) uses lr * (total - k) / total.
            let lr = cfg.lr * (total - step) as f64 / total as f64;
            opt.step(&params, lr);
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            trainable.after_step();
            step += 1;
            report.losses.push(step_loss);
            let info = StepInfo {
                step,
                total_steps: total,
                epoch,
                loss: step_loss,
                lr,
            };
            if !on_step(&info) {
                return Err(TrainError::Cancelled);
            }
        }
    }
    report.steps = step;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Top-`k` membership along the last dimension: a bool mask of the `k` largest entries per row
/// (`k` capped at the row length).
pub fn topk_mask(x: &Tensor, k: i64) -> Tensor {
    let n = *x.size().last().expect("at least one dimension");
    let (_, idx) = x.topk(k.min(n).max(1), -1, true, false);
    x.zeros_like().to_kind(Kind::Bool).scatter_value(-1, &idx, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_steps_counts_like_hf() {
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 6,
            grad_accum: 2,
            ..Default::default()
        };
        // 144 examples: 24 micro-batches, 12 steps per epoch.
        assert_eq!(cfg.total_steps(144), 36);
        assert_eq!(cfg.total_steps(7), 3);
    }

    #[test]
    fn batch_marks_targets_and_positions() {
        let a = TrainExample {
            ids: vec![1, 2, 3, 4],
            response_start: 2,
            intervene: None,
        };
        let b = TrainExample {
            ids: vec![5, 6, 7],
            response_start: 1,
            intervene: Some(vec![false, true, true]),
        };
        let batch = TrainBatch::new(&[&a, &b], 0, tch::Device::Cpu).unwrap();
        let t: Vec<bool> = Vec::try_from(batch.targets.view([-1])).unwrap();
        assert_eq!(t, vec![false, false, true, true, false, true, true, false]);
        let p: Vec<bool> = Vec::try_from(batch.positions.view([-1])).unwrap();
        assert_eq!(p, vec![true, true, true, true, false, true, true, false]);
        assert_eq!((batch.n_tokens, batch.n_targets), (7, 4));
        let bad = TrainExample {
            ids: vec![1, 2],
            response_start: 2,
            intervene: None,
        };
        assert!(TrainBatch::new(&[&bad], 0, tch::Device::Cpu).is_err());
    }

    #[test]
    fn clipping_scales_to_the_bound() {
        let p = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let n = clip_grad_norm(std::slice::from_ref(&p), 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        let g: Vec<f32> = Vec::try_from(p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn topk_mask_picks_the_largest() {
        let x = Tensor::from_slice(&[0.1f32, 3.0, 2.0, 0.0]).view([1, 4]);
        let m: Vec<bool> = Vec::try_from(topk_mask(&x, 2).view([-1])).unwrap();
        assert_eq!(m, vec![false, true, true, false]);
    }

    /// A bf16 parameter trains through an f32 master: updates far below bf16's resolution
    /// accumulate instead of rounding away, and the moments are f32.
    #[test]
    fn adamw_keeps_f32_master_weights_for_bf16_parameters() {
        let p = Tensor::from_slice(&[1.0f32, -2.0])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let mut opt = AdamW::new(&[p.shallow_clone()], (0.9, 0.999), 1e-8, 0.0);
        assert!(opt.m.iter().chain(&opt.v).all(|t| t.kind() == Kind::Float));
        // Adam's first steps move each weight by about lr; 1e-4 is below bf16's step at 1.0 (2^-7).
        for _ in 0..100 {
            let loss = (&p * Tensor::from_slice(&[1.0f32, -1.0]).to_kind(Kind::BFloat16)).sum(Kind::Float);
            loss.backward();
            opt.step(&[p.shallow_clone()], 1e-4);
            let _ = p.grad().zero_();
        }
        let master = Vec::<f32>::try_from(opt.master[0].as_ref().unwrap()).unwrap();
        assert!((master[0] - (1.0 - 100.0 * 1e-4)).abs() < 1e-4, "{master:?}");
        assert!((master[1] - (-2.0 + 100.0 * 1e-4)).abs() < 1e-4, "{master:?}");
        let w = Vec::<f32>::try_from(p.detach().to_kind(Kind::Float)).unwrap();
        assert!(w[0] < 1.0 && w[1] > -2.0, "the bf16 weights follow their master: {w:?}");
        assert_eq!(p.kind(), Kind::BFloat16);
    }
}
