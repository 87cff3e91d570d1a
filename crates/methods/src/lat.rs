//! LAT, linear artificial tomography (axbench/models/mean.py `LAT.train`): shuffle the positive examples' token
//! activations, pair the first half with the second (`a[:n/2] - a[n/2:2*(n/2)]`), normalise each difference to unit
//! length (zero stays zero), and take the first principal component of the differences (sklearn sign), unit norm.
//! Detect with `h·w`.
//!
//! The shuffle is numpy's: AxBench calls `np.random.shuffle` on the global RNG that `set_seed(seed)` seeded, and we
//! replay it with [`axbench_data::dataset::np_random::RandomState`]. A fit starts from a fresh `RandomState(seed)`, which is
//! AxBench's state for the first concept of a run; later concepts in AxBench continue the global stream instead.

use tch::{Kind, Tensor};

use super::{DetectionMethod, Detector, FitInput, LatConfig, LinearDetector, MethodError, Needs, pca, unit_norm};

pub const NAME: &str = "LAT";

/// LAT's direction for positive-token activations `x` (`[n, d]`) shuffled by `permutation` (`x[permutation]`, as
/// `np.random.shuffle` would leave them).
pub fn fit_direction(x: &Tensor, permutation: &[i64]) -> Result<Tensor, MethodError> {
    let n = x.size()[0];
    if permutation.len() as i64 != n {
        return Err(MethodError::invalid(
            NAME,
            format!("permutation of {} rows for {n} activations", permutation.len()),
        ));
    }
    let shuffled = x.to_kind(Kind::Float).index_select(0, &Tensor::from_slice(permutation));
    let half = n / 2;
    let diffs = shuffled.narrow(0, 0, half) - shuffled.narrow(0, half, half);
    let norms = diffs.norm_scalaropt_dim(2.0, [1i64], true);
    // np.where(norms == 0, 0, diffs / norms)
    let normed = (&diffs / &norms).where_self(&norms.ne(0.0), &Tensor::zeros_like(&diffs));
    Ok(unit_norm(&pca::first_component(&normed, NAME)?))
}

pub struct Lat {
    config: LatConfig,
}

impl Lat {
    pub fn new(config: LatConfig) -> Self {
        Self { config }
    }
}

impl DetectionMethod for Lat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        Needs {
            activations: true,
            ..Needs::default()
        }
    }

    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError> {
        let acts = input.require_activations(NAME)?;
        let positives = acts.tokens_with_label(input.labels, true);
        let seed = u32::try_from(self.config.seed).map_err(|_| {
            MethodError::invalid(NAME, format!("seed {} does not fit numpy's 32 bits", self.config.seed))
        })?;
        let n = positives.size()[0] as usize;
        let perm: Vec<i64> = axbench_data::dataset::np_random::RandomState::new(seed)
            .permutation(n)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Ok(Box::new(LinearDetector::new(
            NAME,
            fit_direction(&positives, &perm)?,
            0.0,
        )))
    }
}
