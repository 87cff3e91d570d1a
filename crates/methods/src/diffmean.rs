//! DiffMean (axbench/models/mean.py `DiffMean.train`): the mean of every token activation of the positive examples
//! minus the mean over the negative examples' tokens (token-weighted, so long examples weigh more), set to unit norm.
//! Detect with `h·w` (bias 0, no ReLU); steer by adding `w`.

use tch::Kind;

use super::{DetectionMethod, Detector, FitInput, LinearDetector, MethodError, Needs, unit_norm};

pub const NAME: &str = "DiffMean";

/// The unit-norm difference of token means.
pub fn fit_direction(acts: &super::TokenActivations, labels: &[bool]) -> tch::Tensor {
    // Means in f64: residual streams reach thousands, and there are ~10^4 tokens per class.
    let mean = |label| {
        acts.tokens_with_label(labels, label)
            .to_kind(Kind::Double)
            .mean_dim(0i64, false, Kind::Double)
    };
    unit_norm(&(mean(true) - mean(false)))
}

pub struct DiffMean;

impl DetectionMethod for DiffMean {
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
        Ok(Box::new(LinearDetector::new(
            NAME,
            fit_direction(acts, input.labels),
            0.0,
        )))
    }
}
