//! PCA (axbench/models/mean.py `PCA.train`): `sklearn.decomposition.PCA(n_components=2)` fitted on the positive
//! examples' token activations; `w` = the first component, unit norm. Detect with `h·w`.
//!
//! We compute the exact first component (eigenvector of the centred covariance with the largest eigenvalue, in f64);
//! sklearn gets the same vector from its `covariance_eigh`/`full` solvers, and approximately from `randomized`, which
//! its `auto` policy picks for wide data (e.g. d = 2304 with fewer than 10·d tokens). The sign follows sklearn ≥ 1.5
//! (`svd_flip(u_based_decision=False)`): the coordinate of largest magnitude is positive. On models with outlier
//! dimensions that coordinate is the outlier, so the sign says nothing about the concept: AUROC can come out below 0.5.

use tch::{Kind, Tensor};

use super::{DetectionMethod, Detector, FitInput, LinearDetector, MethodError, Needs, unit_norm};

pub const NAME: &str = "PCA";

/// First principal component of the rows of `x` (`[n, d]`), unit length, sklearn's sign convention.
pub fn first_component(x: &Tensor, method: &'static str) -> Result<Tensor, MethodError> {
    let n = x.size()[0];
    if n < 2 {
        return Err(MethodError::invalid(
            method,
            format!("PCA needs at least 2 rows, got {n}"),
        ));
    }
    let x = x.to_kind(Kind::Double);
    let centred = &x - x.mean_dim(0i64, true, Kind::Double);
    let cov = centred.tr().matmul(&centred);
    let (_, vecs) = cov
        .f_linalg_eigh("L")
        .map_err(|source| MethodError::Torch { method, source })?;
    // Eigenvalues ascend: the last column is the first component.
    let v = vecs.select(1, -1);
    let i = v.abs().argmax(0i64, false).int64_value(&[]);
    let sign = if v.double_value(&[i]) < 0.0 { -1.0 } else { 1.0 };
    Ok((v * sign).to_kind(Kind::Float))
}

pub struct Pca;

impl DetectionMethod for Pca {
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
        let w = unit_norm(&first_component(&positives, NAME)?);
        Ok(Box::new(LinearDetector::new(NAME, w, 0.0)))
    }
}
