//! PCA (axbench/models/mean.py `PCA.train`): `sklearn.decomposition.PCA(n_components=2)` fitted on the positive
//! examples' token activations; `w` = the first component, unit norm. Detect with `h·w`.
//!
//! We compute the exact first component (eigenvector of the centred covariance with the largest eigenvalue, in f64,
//! by subspace iteration to a 1e-12 residual, else a full `eigh`);
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
    let v = match top_eigenvector_by_subspace_iteration(&cov) {
        Some(v) => v,
        None => {
            let (_, vecs) = cov
                .f_linalg_eigh("L")
                .map_err(|source| MethodError::Torch { method, source })?;
            // Eigenvalues ascend: the last column is the first component.
            vecs.select(1, -1)
        }
    };
    let i = v.abs().argmax(0i64, false).int64_value(&[]);
    let sign = if v.double_value(&[i]) < 0.0 { -1.0 } else { 1.0 };
    Ok((v * sign).to_kind(Kind::Float))
}

/// The top eigenvector of a symmetric PSD matrix by block power iteration with Rayleigh-Ritz, when it converges to
/// a relative residual `||C u - λ u|| / λ < 1e-12` within 30 steps; `None` otherwise (no clear eigengap,
/// or a zero matrix), and the caller falls back to a full `eigh`. Residual streams have a dominant direction, where
/// this takes well under a second at d = 2304 against ~10 s for the full decomposition.
fn top_eigenvector_by_subspace_iteration(cov: &Tensor) -> Option<Tensor> {
    use rand::{Rng, SeedableRng};
    let d = cov.size()[0];
    let k = d.min(8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let start: Vec<f64> = (0..d * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (mut q, _) = Tensor::linalg_qr(&Tensor::from_slice(&start).reshape([d, k]), "reduced");
    for step in 1..=30 {
        let (next, _) = Tensor::linalg_qr(&cov.matmul(&q), "reduced");
        q = next;
        if step % 5 != 0 {
            continue;
        }
        let h = q.tr().matmul(cov).matmul(&q);
        let (vals, vecs) = h.linalg_eigh("L");
        let lambda = vals.double_value(&[k - 1]);
        if lambda.is_nan() || lambda <= 0.0 {
            return None;
        }
        let u = q.matmul(&vecs.select(1, k - 1));
        let residual = (cov.matmul(&u) - &u * lambda).norm().double_value(&[]) / lambda;
        if residual < 1e-12 {
            return Some(&u / u.norm());
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn subspace_iteration_agrees_with_eigh_on_outlier_data() {
        tch::manual_seed(3);
        let x = Tensor::randn([2000, 64], (Kind::Double, Device::Cpu));
        // A residual-stream-like outlier coordinate gives a clear eigengap.
        let _ = x
            .select(1, 7)
            .g_add_(&(Tensor::rand([2000], (Kind::Double, Device::Cpu)) * 300.0));
        let c = &x - x.mean_dim(0i64, true, Kind::Double);
        let cov = c.tr().matmul(&c);
        let fast = top_eigenvector_by_subspace_iteration(&cov).expect("converges with an eigengap");
        let (_, vecs) = cov.linalg_eigh("L");
        let cos = (fast * vecs.select(1, -1)).sum(Kind::Double).double_value(&[]).abs();
        assert!((cos - 1.0).abs() < 1e-12, "cos = {cos}");
        assert!(top_eigenvector_by_subspace_iteration(&Tensor::zeros([4, 4], (Kind::Double, Device::Cpu))).is_none());
    }
}
