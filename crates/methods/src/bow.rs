//! Bag of words (axbench/models/bow.py): `CountVectorizer()` + `LogisticRegression(penalty="l2", C=100,
//! solver="lbfgs", max_iter=1000)` on the chat-templated texts; detect = P(positive) per text (no token scores).
//!
//! * Tokenisation is CountVectorizer's default: lowercase, then the regex `(?u)\b\w\w+\b`, i.e. every maximal run
//!   of 2+ word characters; the vocabulary is the sorted set of training tokens, unseen tokens are ignored. Python's
//!   `\w` is `str.isalnum()` or `_` (letters and all numbers, `²` included, but no combining marks), which is not
//!   Rust's Unicode `\w`, so we spell it out as `[\p{L}\p{N}_]`.
//! * The fit minimises scikit-learn's objective, `(1/n) Σ logloss(y_i, x_i·w + b) + ||w||² / (2 C n)` (intercept not
//!   penalised), with argmin's L-BFGS to a tight tolerance. The objective is strictly convex, so this is the optimum
//!   sklearn's lbfgs heads for; sklearn stops at `tol = 1e-4` and can be a few 1e-2 away in probability on nearly
//!   separable data (see tests/golden/methods).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{
    BowConfig, DetectionMethod, Detector, ExampleScore, FitInput, FittedArtifact, MethodError, Needs, ScoreInput,
};

pub const NAME: &str = "BoW";

/// Maximal runs of two or more of Python's word characters: what `\b\w\w+\b` matches under Python's `\w`.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[\p{L}\p{N}_]{2,}").expect("valid regex"));

/// CountVectorizer's default analyzer: lowercase, then `(?u)\b\w\w+\b`.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    TOKEN.find_iter(&lower).map(|m| m.as_str().to_owned()).collect()
}

/// Sparse bag-of-words rows: `(feature, count)` pairs sorted by feature.
type SparseRow = Vec<(usize, f64)>;

fn count_row(text: &str, vocabulary: &BTreeMap<String, usize>) -> SparseRow {
    let mut counts: BTreeMap<usize, f64> = BTreeMap::new();
    for t in tokenize(text) {
        if let Some(&j) = vocabulary.get(&t) {
            *counts.entry(j).or_default() += 1.0;
        }
    }
    counts.into_iter().collect()
}

/// The sorted vocabulary of `texts` (CountVectorizer's `vocabulary_` / `get_feature_names_out`).
pub fn fit_vocabulary(texts: &[String]) -> Vec<String> {
    let mut set: Vec<String> = texts.iter().flat_map(|t| tokenize(t)).collect();
    set.sort();
    set.dedup();
    set
}

/// A fitted BoW classifier: vocabulary, coefficients (one per vocabulary word) and intercept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BowModel {
    pub vocabulary: Vec<String>,
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// L-BFGS iterations used.
    pub n_iter: u64,
}

impl BowModel {
    /// P(positive) for each text (`predict_proba(X)[:, 1]`).
    pub fn predict_proba(&self, texts: &[String]) -> Vec<f64> {
        let vocab: BTreeMap<String, usize> = self
            .vocabulary
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i))
            .collect();
        texts
            .iter()
            .map(|t| {
                let z = self.intercept + count_row(t, &vocab).iter().map(|(j, c)| self.coef[*j] * c).sum::<f64>();
                sigmoid(z)
            })
            .collect()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        z.exp() / (1.0 + z.exp())
    }
}

/// `log(1 + exp(z))` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// sklearn's scaled L2 logistic loss; parameters are `[w..., b]`.
struct Objective<'a> {
    rows: &'a [SparseRow],
    y: &'a [f64],
    n_features: usize,
    c: f64,
}

impl Objective<'_> {
    fn logits(&self, p: &[f64]) -> Vec<f64> {
        let b = p[self.n_features];
        self.rows
            .iter()
            .map(|r| b + r.iter().map(|(j, v)| p[*j] * v).sum::<f64>())
            .collect()
    }
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<f64, argmin::core::Error> {
        let n = self.rows.len() as f64;
        let data: f64 = self
            .logits(p)
            .iter()
            .zip(self.y)
            .map(|(z, y)| if *y > 0.5 { softplus(-z) } else { softplus(*z) })
            .sum();
        let l2: f64 = p[..self.n_features].iter().map(|w| w * w).sum();
        Ok(data / n + l2 / (2.0 * self.c * n))
    }
}

impl Gradient for Objective<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, p: &Self::Param) -> Result<Vec<f64>, argmin::core::Error> {
        let n = self.rows.len() as f64;
        let mut g = vec![0.0; self.n_features + 1];
        for (r, (z, y)) in self.rows.iter().zip(self.logits(p).iter().zip(self.y)) {
            let e = (sigmoid(*z) - y) / n;
            for (j, v) in r {
                g[*j] += e * v;
            }
            g[self.n_features] += e;
        }
        for j in 0..self.n_features {
            g[j] += p[j] / (self.c * n);
        }
        Ok(g)
    }
}

/// Fits vocabulary and logistic regression on `texts` with `labels`.
pub fn fit(texts: &[String], labels: &[bool], config: &BowConfig) -> Result<BowModel, MethodError> {
    if texts.len() != labels.len() {
        return Err(MethodError::invalid(
            NAME,
            format!("{} texts for {} labels", texts.len(), labels.len()),
        ));
    }
    let vocabulary = fit_vocabulary(texts);
    let index: BTreeMap<String, usize> = vocabulary.iter().enumerate().map(|(i, w)| (w.clone(), i)).collect();
    let rows: Vec<SparseRow> = texts.iter().map(|t| count_row(t, &index)).collect();
    let y: Vec<f64> = labels.iter().map(|l| if *l { 1.0 } else { 0.0 }).collect();
    let n_features = vocabulary.len();
    let problem = Objective {
        rows: &rows,
        y: &y,
        n_features,
        c: config.c,
    };
    let opt = |e: argmin::core::Error| MethodError::invalid(NAME, format!("L-BFGS: {e}"));
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(config.tol)
        .map_err(opt)?
        .with_tolerance_cost(0.0)
        .map_err(opt)?;
    let result = Executor::new(problem, solver)
        .configure(|s| s.param(vec![0.0; n_features + 1]).max_iters(config.max_iter))
        .run()
        .map_err(opt)?;
    let state = result.state();
    let p = state
        .get_best_param()
        .ok_or_else(|| MethodError::invalid(NAME, "L-BFGS returned no parameters"))?;
    Ok(BowModel {
        vocabulary,
        coef: p[..n_features].to_vec(),
        intercept: p[n_features],
        n_iter: state.get_iter(),
    })
}

pub struct Bow {
    config: BowConfig,
}

impl Bow {
    pub fn new(config: BowConfig) -> Self {
        Self { config }
    }
}

impl DetectionMethod for Bow {
    fn name(&self) -> &'static str {
        NAME
    }

    fn needs(&self) -> Needs {
        Needs {
            texts: true,
            ..Needs::default()
        }
    }

    fn fit(&self, input: &FitInput<'_>) -> Result<Box<dyn Detector>, MethodError> {
        let texts = input.texts.ok_or(MethodError::MissingInput {
            method: NAME,
            what: "texts",
        })?;
        Ok(Box::new(fit(texts, input.labels, &self.config)?))
    }
}

impl Detector for BowModel {
    fn method(&self) -> &'static str {
        NAME
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Vec<ExampleScore>, MethodError> {
        let texts = input.texts.ok_or(MethodError::MissingInput {
            method: NAME,
            what: "texts",
        })?;
        Ok(self
            .predict_proba(texts)
            .into_iter()
            .map(|p| ExampleScore {
                max_act: p,
                max_act_idx: None,
                acts: Vec::new(),
            })
            .collect())
    }

    fn detection_direction(&self) -> Option<tch::Tensor> {
        None
    }

    fn artifact(&self) -> FittedArtifact {
        FittedArtifact::Bow(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_count_vectorizers() {
        assert_eq!(
            tokenize("Hello, WORLD! a b2 don't e-mail snake_case"),
            ["hello", "world", "b2", "don", "mail", "snake_case"]
        );
        assert_eq!(tokenize("Équipement naïve über"), ["équipement", "naïve", "über"]);
        // Checked against sklearn 1.9's CountVectorizer().build_analyzer().
        assert_eq!(
            tokenize("x² cafe\u{301}s Ⅻab ٣٤ 一二"),
            ["x²", "cafe", "ⅻab", "٣٤", "一二"]
        );
    }
}
