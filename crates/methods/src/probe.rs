//! Linear probe (axbench/models/probe.py `LinearProbe.train`), trained with tch autograd.
//!
//! Every token of an example carries the example's label. Per step, over the batch's tokens:
//! `loss = BCE(sigmoid(h·w), y) + coeff_l1 · Σ|w|`, then, between `backward` and the optimizer step, AxBench
//! renormalises `w` to unit norm and removes the gradient's component parallel to `w` (Gao et al. 2024); AdamW with
//! a linear decay to 0 and no warmup. The last step leaves `w` slightly off unit norm; AxBench saves it as is, and so
//! do we. Detect with `h·w`.
//!
//! Two losses:
//! * [`ProbeLoss::SigmoidBce`] (`LinearProbe`, faithful): `torch.nn.BCELoss` on `sigmoid(h·w)`; its logs are clamped
//!   at -100, so once `|h·w|` is large (residual norms of small Gemma-3 models are in the thousands) the gradient
//!   vanishes and the probe can stay near its random start.
//! * [`ProbeLoss::BceWithLogits`] (`LinearProbeStable`): the same objective computed from logits, which keeps its
//!   gradient. Reported beside the faithful one.
//!
//! Not replicated: AxBench trains the probe in bf16 when `use_bf16` is set, and its `proj.bias` (unused by the
//! latent) also sits in the optimizer and the L1 term; neither changes `w`'s computation here beyond precision.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Reduction, Tensor, nn};

use super::{DetectionMethod, Detector, FitInput, LinearDetector, MethodError, Needs, ProbeConfig, TokenActivations};

pub const NAME: &str = "LinearProbe";
pub const STABLE_NAME: &str = "LinearProbeStable";

/// Which BCE the probe minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeLoss {
    /// `BCELoss(sigmoid(z), y)`: AxBench's code.
    SigmoidBce,
    /// `BCEWithLogitsLoss(z, y)`: numerically stable.
    BceWithLogits,
}

/// Initial weights like `torch.nn.Linear` (kaiming-uniform with a = √5 gives U(-1/√d, 1/√d)), from a seeded RNG.
pub fn default_init(d: usize, rng: &mut impl Rng) -> Tensor {
    let bound = 1.0 / (d as f64).sqrt();
    let w: Vec<f32> = (0..d).map(|_| rng.random_range(-bound..bound) as f32).collect();
    Tensor::from_slice(&w)
}

/// One shuffled order of example indices per epoch.
pub fn default_orders(n_examples: usize, n_epochs: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    (0..n_epochs)
        .map(|_| {
            let mut o: Vec<usize> = (0..n_examples).collect();
            o.shuffle(rng);
            o
        })
        .collect()
}

/// Trains the probe from `init` (`[d]`) visiting examples in `orders` (one permutation per epoch, cut into batches of
/// `config.batch_size`); `config.n_epochs` is `orders.len()`. Returns the final `w` (`[d]`, f32).
pub fn train(
    acts: &TokenActivations,
    labels: &[bool],
    init: &Tensor,
    orders: &[Vec<usize>],
    config: &ProbeConfig,
    loss_kind: ProbeLoss,
) -> Result<Tensor, MethodError> {
    let method = match loss_kind {
        ProbeLoss::SigmoidBce => NAME,
        ProbeLoss::BceWithLogits => STABLE_NAME,
    };
    let torch = |source| MethodError::Torch { method, source };
    let d = acts.dim();
    if init.size() != [d] {
        return Err(MethodError::invalid(
            method,
            format!("init has shape {:?}, activations d = {d}", init.size()),
        ));
    }
    if config.batch_size == 0 {
        return Err(MethodError::invalid(method, "batch_size must be positive"));
    }
    let x = acts.acts.to_kind(Kind::Float);
    let token_y: Vec<f32> = acts
        .token_labels(labels)
        .iter()
        .map(|l| if *l { 1.0 } else { 0.0 })
        .collect();
    let token_y = Tensor::from_slice(&token_y);

    let vs = nn::VarStore::new(Device::Cpu);
    let mut w = vs.root().var_copy("w", &init.to_kind(Kind::Float).reshape([1, d]));
    let mut opt = nn::OptimizerConfig::build(
        nn::AdamW {
            wd: config.weight_decay,
            ..Default::default()
        },
        &vs,
        config.lr,
    )
    .map_err(torch)?;

    let batches_per_epoch = labels.len().div_ceil(config.batch_size);
    let total = (orders.len() * batches_per_epoch) as f64;
    let mut step = 0usize;
    for order in orders {
        if order.len() != labels.len() {
            return Err(MethodError::invalid(
                method,
                format!("order of {} for {} examples", order.len(), labels.len()),
            ));
        }
        for batch in order.chunks(config.batch_size) {
            let rows: Vec<i64> = batch
                .iter()
                .flat_map(|&i| (acts.offsets[i] as i64)..(acts.offsets[i + 1] as i64))
                .collect();
            let rows = Tensor::from_slice(&rows);
            let h = x.index_select(0, &rows);
            let y = token_y.index_select(0, &rows);
            // transformers' linear schedule: lr_t = lr * (T - t) / T.
            opt.set_lr(config.lr * (total - step as f64).max(0.0) / total.max(1.0));
            opt.zero_grad();
            let latent = h.matmul(&w.tr()).squeeze_dim(1);
            let loss = match loss_kind {
                ProbeLoss::SigmoidBce => latent
                    .sigmoid()
                    .binary_cross_entropy::<Tensor>(&y, None, Reduction::Mean),
                ProbeLoss::BceWithLogits => {
                    latent.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::Mean)
                }
            };
            let loss = if config.coeff_l1_loss != 0.0 {
                loss + w.abs().sum(Kind::Float) * config.coeff_l1_loss
            } else {
                loss
            };
            loss.backward();
            tch::no_grad(|| {
                // set_decoder_norm_to_unit_norm, then remove_gradient_parallel_to_decoder_directions.
                let norm = w.norm_scalaropt_dim(2.0, [1i64], true);
                let _ = w.g_div_(&(norm + f32::EPSILON as f64));
                let mut grad = w.grad();
                let parallel = (&grad * &w).sum_dim_intlist(&[1i64][..], true, Kind::Float);
                let _ = grad.g_sub_(&(parallel * &w));
            });
            opt.step();
            step += 1;
        }
    }
    Ok(w.detach().reshape([d]))
}

/// The probe as a [`DetectionMethod`]: init and batch orders drawn from `config.seed`.
pub struct LinearProbe {
    config: ProbeConfig,
    loss: ProbeLoss,
}

impl LinearProbe {
    /// AxBench's sigmoid-then-BCE probe.
    pub fn faithful(config: ProbeConfig) -> Self {
        Self {
            config,
            loss: ProbeLoss::SigmoidBce,
        }
    }

    /// BCE-with-logits probe.
    pub fn stable(config: ProbeConfig) -> Self {
        Self {
            config,
            loss: ProbeLoss::BceWithLogits,
        }
    }
}

impl DetectionMethod for LinearProbe {
    fn name(&self) -> &'static str {
        match self.loss {
            ProbeLoss::SigmoidBce => NAME,
            ProbeLoss::BceWithLogits => STABLE_NAME,
        }
    }

    fn needs(&self) -> Needs {
        Needs {
            activations: true,
            ..Needs::default()
        }
    }

    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError> {
        let name = self.name();
        let acts = input.require_activations(name)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.config.seed);
        let init = default_init(acts.dim() as usize, &mut rng);
        let orders = default_orders(input.labels.len(), self.config.n_epochs, &mut rng);
        let w = train(acts, input.labels, &init, &orders, &self.config, self.loss)?;
        Ok(Box::new(LinearDetector::new(name, w, 0.0)))
    }
}
