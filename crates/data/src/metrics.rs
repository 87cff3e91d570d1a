//! Detection metrics as AxBench computes them: scikit-learn's `roc_curve` / `roc_auc_score` /
//! `precision_recall_curve` (ties, `drop_intermediate`, the `inf` first threshold), and AxBench's latent evaluators
//! on top (axbench/evaluators/{aucroc,hard_negative,latent_stats}.py at e9b8cd4):
//!
//! * [`aucroc_evaluator`]: min-max normalise the concept's `max_act` over **all** its eval rows, then keep only
//!   `positive` (1) and `negative` (0): rows of category `hard negative` are mapped to NaN by AxBench's label dict and
//!   dropped, so the AUROC is positives vs negatives only. Youden-J picks the threshold.
//! * [`hard_negative_evaluator`]: the same threshold (in normalised units), accuracy on positives and on hard
//!   negatives, and their mean; `None` where AxBench returns `{}` (infinite threshold, or no hard negatives).
//! * [`max_f1`]: best F1 over the PR curve (LatentStatsEvaluator), used for the balanced and the 1:100
//!   imbalanced settings ([`imbalanced_max_f1`]).
//!
//! Scores are `f64` like pandas. Degenerate inputs behave like scikit-learn 1.9: a single class gives NaN rates and
//! a NaN AUROC (sklearn warns and returns NaN), constant scores give AUROC 0.5.

use crate::dataset::Category;

/// A ROC curve as `sklearn.metrics.roc_curve` returns it: `thresholds[0] == +inf` at `(0, 0)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// Cumulative true/false positive counts at each distinct score, descending (sklearn `_binary_clf_curve`).
fn binary_clf_curve(labels: &[bool], scores: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(labels.len(), scores.len(), "labels and scores differ in length");
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Descending by score; the order within ties does not matter since ties collapse to one threshold.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tps, mut fps, mut thr) = (Vec::new(), Vec::new(), Vec::new());
    let mut tp = 0.0;
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        }
        let last_of_value = k + 1 == order.len() || scores[order[k + 1]] != scores[i];
        if last_of_value {
            tps.push(tp);
            fps.push((k + 1) as f64 - tp);
            thr.push(scores[i]);
        }
    }
    (fps, tps, thr)
}

/// `sklearn.metrics.roc_curve(labels, scores, drop_intermediate=...)`.
pub fn roc_curve(labels: &[bool], scores: &[f64], drop_intermediate: bool) -> RocCurve {
    let (mut fps, mut tps, mut thr) = binary_clf_curve(labels, scores);
    if drop_intermediate && fps.len() > 2 {
        // Keep the end points and every point where the curve bends (second difference non-zero).
        let n = fps.len();
        let keep: Vec<usize> = (0..n)
            .filter(|&i| {
                i == 0
                    || i == n - 1
                    || (fps[i + 1] - 2.0 * fps[i] + fps[i - 1]) != 0.0
                    || (tps[i + 1] - 2.0 * tps[i] + tps[i - 1]) != 0.0
            })
            .collect();
        fps = keep.iter().map(|&i| fps[i]).collect();
        tps = keep.iter().map(|&i| tps[i]).collect();
        thr = keep.iter().map(|&i| thr[i]).collect();
    }
    fps.insert(0, 0.0);
    tps.insert(0, 0.0);
    thr.insert(0, f64::INFINITY);
    let rate = |v: &[f64]| -> Vec<f64> {
        let last = *v.last().unwrap();
        if last <= 0.0 {
            vec![f64::NAN; v.len()]
        } else {
            v.iter().map(|x| x / last).collect()
        }
    };
    RocCurve {
        fpr: rate(&fps),
        tpr: rate(&tps),
        thresholds: thr,
    }
}

/// `sklearn.metrics.auc`: trapezoidal area under `(x, y)`, for monotone `x` in either direction.
/// NaN when `x` is neither increasing nor decreasing (sklearn raises), or holds NaNs.
pub fn auc(x: &[f64], y: &[f64]) -> f64 {
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let direction = if dx.iter().any(|d| *d < 0.0) {
        if dx.iter().all(|d| *d <= 0.0) {
            -1.0
        } else {
            return f64::NAN;
        }
    } else {
        1.0
    };
    let area: f64 = x
        .windows(2)
        .zip(y.windows(2))
        .map(|(xw, yw)| (xw[1] - xw[0]) * (yw[0] + yw[1]) / 2.0)
        .sum();
    direction * area
}

/// `sklearn.metrics.roc_auc_score` for binary labels: NaN when only one class is present (sklearn 1.9 warns and
/// returns NaN).
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> f64 {
    let pos = labels.iter().filter(|l| **l).count();
    if pos == 0 || pos == labels.len() {
        return f64::NAN;
    }
    let c = roc_curve(labels, scores, true);
    auc(&c.fpr, &c.tpr)
}

/// `np.argmax`: index of the first maximum, where NaN counts as the maximum (numpy propagates NaN).
fn np_argmax(v: &[f64]) -> usize {
    if let Some(i) = v.iter().position(|x| x.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Youden-J optimal point of a ROC curve: `thresholds[argmax(tpr - fpr)]` (may be `+inf`).
pub fn youden_threshold(curve: &RocCurve) -> f64 {
    let j: Vec<f64> = curve.tpr.iter().zip(&curve.fpr).map(|(t, f)| t - f).collect();
    curve.thresholds[np_argmax(&j)]
}

/// A precision-recall curve as `sklearn.metrics.precision_recall_curve` returns it: precision and recall have one
/// more point than thresholds (precision 1, recall 0 at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// `sklearn.metrics.precision_recall_curve(labels, scores)` (sklearn 1.9, `drop_intermediate=False`).
pub fn precision_recall_curve(labels: &[bool], scores: &[f64]) -> PrCurve {
    let (fps, tps, thr) = binary_clf_curve(labels, scores);
    let precision: Vec<f64> = tps
        .iter()
        .zip(&fps)
        .map(|(t, f)| if t + f != 0.0 { t / (t + f) } else { 0.0 })
        .collect();
    let total = *tps.last().unwrap_or(&0.0);
    let recall: Vec<f64> = if total == 0.0 {
        vec![1.0; tps.len()]
    } else {
        tps.iter().map(|t| t / total).collect()
    };
    let mut p: Vec<f64> = precision.into_iter().rev().collect();
    let mut r: Vec<f64> = recall.into_iter().rev().collect();
    p.push(1.0);
    r.push(0.0);
    PrCurve {
        precision: p,
        recall: r,
        thresholds: thr.into_iter().rev().collect(),
    }
}

/// The best F1 over the PR curve and its threshold (LatentStatsEvaluator's `optimal_pr_threshold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxF1 {
    pub f1: f64,
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
}

/// Max F1 over the PR curve, as LatentStatsEvaluator computes it (F1 = 0 where precision + recall = 0; first
/// maximum wins). `None` for empty input.
pub fn max_f1(labels: &[bool], scores: &[f64]) -> Option<MaxF1> {
    if labels.is_empty() {
        return None;
    }
    let c = precision_recall_curve(labels, scores);
    let f1: Vec<f64> = c
        .precision
        .iter()
        .zip(&c.recall)
        .map(|(p, r)| if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 })
        .collect();
    let i = np_argmax(&f1);
    // The final (precision 1, recall 0) point has no threshold; its F1 is 0 so it only wins if all are 0.
    let threshold = c.thresholds.get(i).copied().unwrap_or(f64::INFINITY);
    Some(MaxF1 {
        f1: f1[i],
        threshold,
        precision: c.precision[i],
        recall: c.recall[i],
    })
}

/// The imbalanced setting (paper Fig. 3; inference.py `latent_imbalance`): the concept's positives scored against a
/// large shared pool of negatives (36 positives : 3600 negatives = 1:100); max F1 over the PR curve.
pub fn imbalanced_max_f1(positive_scores: &[f64], negative_pool_scores: &[f64]) -> Option<MaxF1> {
    let labels: Vec<bool> = positive_scores
        .iter()
        .map(|_| true)
        .chain(negative_pool_scores.iter().map(|_| false))
        .collect();
    let scores: Vec<f64> = positive_scores.iter().chain(negative_pool_scores).copied().collect();
    max_f1(&labels, &scores)
}

/// Min-max normalisation as pandas does it within a concept: `(x - min) / (max - min)`, NaN when all equal.
pub fn min_max_normalize(scores: &[f64]) -> Vec<f64> {
    let lo = scores
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f64::INFINITY, f64::min);
    let hi = scores
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    scores.iter().map(|x| (x - lo) / (hi - lo)).collect()
}

/// AUCROCEvaluator output for one concept and method.
#[derive(Debug, Clone, PartialEq)]
pub struct AucRocResult {
    /// The largest raw `max_act` over the concept's eval rows (AxBench's `max_act`, used as the steering scale).
    pub max_act: f64,
    pub roc_auc: f64,
    /// Youden-J threshold in min-max normalised units (`+inf` when no point beats chance).
    pub optimal_threshold: f64,
    pub roc: RocCurve,
}

fn nan_to_zero(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v }
}

/// AxBench's AUCROCEvaluator over one concept's eval rows (`max_act` per row and its category).
pub fn aucroc_evaluator(max_acts: &[f64], categories: &[Category]) -> AucRocResult {
    assert_eq!(max_acts.len(), categories.len());
    let norm = min_max_normalize(max_acts);
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
    for (s, c) in norm.iter().zip(categories) {
        match c {
            Category::Positive => labels.push(true),
            Category::Negative => labels.push(false),
            // "hard negative" is not in the evaluator's label map: NaN label, row dropped.
            Category::HardNegative => continue,
        }
        scores.push(nan_to_zero(*s));
    }
    let roc = roc_curve(&labels, &scores, true);
    let max_act = max_acts
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    AucRocResult {
        max_act,
        roc_auc: auc(&roc.fpr, &roc.tpr),
        optimal_threshold: youden_threshold(&roc),
        roc,
    }
}

/// HardNegativeEvaluator output for one concept and method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HardNegativeResult {
    pub positive_accuracy: f64,
    pub hard_negative_accuracy: f64,
    pub macro_avg_accuracy: f64,
    /// The Youden-J threshold (normalised units) both accuracies use.
    pub threshold: f64,
}

/// AxBench's HardNegativeEvaluator: `None` where it returns `{}` (infinite threshold or no hard negatives).
pub fn hard_negative_evaluator(max_acts: &[f64], categories: &[Category]) -> Option<HardNegativeResult> {
    assert_eq!(max_acts.len(), categories.len());
    let norm: Vec<f64> = min_max_normalize(max_acts).into_iter().map(nan_to_zero).collect();
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
    for (s, c) in norm.iter().zip(categories) {
        if *c != Category::HardNegative {
            labels.push(*c == Category::Positive);
            scores.push(*s);
        }
    }
    let threshold = youden_threshold(&roc_curve(&labels, &scores, true));
    if threshold.is_infinite() {
        return None;
    }
    let accuracy = |cat: Category, label: bool| -> Option<f64> {
        let sel: Vec<f64> = norm
            .iter()
            .zip(categories)
            .filter(|(_, c)| **c == cat)
            .map(|(s, _)| *s)
            .collect();
        if sel.is_empty() {
            return None;
        }
        Some(sel.iter().filter(|s| (**s >= threshold) == label).count() as f64 / sel.len() as f64)
    };
    let positive_accuracy = accuracy(Category::Positive, true)?;
    let hard_negative_accuracy = accuracy(Category::HardNegative, false)?;
    Some(HardNegativeResult {
        positive_accuracy,
        hard_negative_accuracy,
        macro_avg_accuracy: (positive_accuracy + hard_negative_accuracy) / 2.0,
        threshold,
    })
}

/// Everything the latent evaluation reports for one concept and method: AxBench's two latent evaluators plus
/// max-F1 on positives vs negatives (balanced) and, given scores on the shared negative pool, the 1:100 setting.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptDetection {
    pub aucroc: AucRocResult,
    pub hard_negative: Option<HardNegativeResult>,
    /// Max F1 over positives and negatives (hard negatives excluded), on raw scores.
    pub f1: Option<MaxF1>,
    /// Max F1 of the positives against the imbalanced negative pool, when given.
    pub f1_imbalanced: Option<MaxF1>,
    pub n_positive: usize,
    pub n_negative: usize,
    pub n_hard_negative: usize,
}

/// Evaluates one concept's eval rows (`max_acts[i]` for a row of category `categories[i]`); `negative_pool` holds the
/// detector's scores on the shared imbalanced negative pool, if that setting is run. F1 thresholds do not depend on
/// min-max normalisation, so F1 is computed on the raw scores.
pub fn evaluate_concept(max_acts: &[f64], categories: &[Category], negative_pool: Option<&[f64]>) -> ConceptDetection {
    let count = |c| categories.iter().filter(|x| **x == c).count();
    let (mut labels, mut scores, mut positives) = (Vec::new(), Vec::new(), Vec::new());
    for (s, c) in max_acts.iter().zip(categories) {
        if *c != Category::HardNegative {
            labels.push(*c == Category::Positive);
            scores.push(*s);
            if *c == Category::Positive {
                positives.push(*s);
            }
        }
    }
    ConceptDetection {
        aucroc: aucroc_evaluator(max_acts, categories),
        hard_negative: hard_negative_evaluator(max_acts, categories),
        f1: max_f1(&labels, &scores),
        f1_imbalanced: negative_pool.and_then(|pool| imbalanced_max_f1(&positives, pool)),
        n_positive: count(Category::Positive),
        n_negative: count(Category::Negative),
        n_hard_negative: count(Category::HardNegative),
    }
}

impl ConceptDetection {
    /// The [`crate::tables::detection_results_schema`] row for this result.
    pub fn to_row(&self, model: &str, layer: i64, method: &str, concept_id: i64) -> crate::tables::DetectionResultRow {
        let finite = |v: f64| (!v.is_nan()).then_some(v);
        crate::tables::DetectionResultRow {
            model: model.to_owned(),
            layer,
            method: method.to_owned(),
            concept_id,
            auroc: finite(self.aucroc.roc_auc),
            optimal_threshold: self
                .aucroc
                .optimal_threshold
                .is_finite()
                .then_some(self.aucroc.optimal_threshold),
            positive_accuracy: self.hard_negative.map(|h| h.positive_accuracy),
            hard_negative_accuracy: self.hard_negative.map(|h| h.hard_negative_accuracy),
            macro_avg_accuracy: self.hard_negative.map(|h| h.macro_avg_accuracy),
            f1: self.f1.map(|f| f.f1),
            f1_imbalanced: self.f1_imbalanced.map(|f| f.f1),
            n_positive: self.n_positive as i64,
            n_negative: self.n_negative as i64,
            n_hard_negative: self.n_hard_negative as i64,
        }
    }
}

/// Mean over concepts, skipping NaN (concepts where a metric is undefined); returns `(mean, n_used)`.
pub fn mean_over_concepts(values: impl IntoIterator<Item = f64>) -> (f64, usize) {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        if !v.is_nan() {
            sum += v;
            n += 1;
        }
    }
    (if n == 0 { f64::NAN } else { sum / n as f64 }, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_separation() {
        let y = [false, false, true, true];
        assert_eq!(roc_auc(&y, &[0.1, 0.2, 0.8, 0.9]), 1.0);
        assert_eq!(roc_auc(&y, &[0.9, 0.8, 0.2, 0.1]), 0.0);
        // One tie across classes counts half.
        assert_eq!(roc_auc(&y, &[0.1, 0.5, 0.5, 0.9]), 0.875);
    }

    #[test]
    fn one_class_is_nan_and_constant_is_half() {
        assert!(roc_auc(&[true, true], &[0.1, 0.2]).is_nan());
        assert_eq!(roc_auc(&[true, false, true], &[1.0, 1.0, 1.0]), 0.5);
        let c = roc_curve(&[true, true], &[0.1, 0.2], true);
        assert!(c.fpr.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn hard_negatives_do_not_enter_auroc() {
        use Category::*;
        let cats = [Positive, Positive, Negative, Negative, HardNegative];
        let with_hard = aucroc_evaluator(&[3.0, 2.0, 1.0, 0.0, 10.0], &cats);
        assert_eq!(with_hard.roc_auc, 1.0);
        assert_eq!(with_hard.max_act, 10.0);
        // But the normalisation includes them: threshold 0.2 = (2 - 0) / (10 - 0).
        assert_eq!(with_hard.optimal_threshold, 0.2);
        let hn = hard_negative_evaluator(&[3.0, 2.0, 1.0, 0.0, 10.0], &cats).unwrap();
        assert_eq!((hn.positive_accuracy, hn.hard_negative_accuracy), (1.0, 0.0));
        assert!(hard_negative_evaluator(&[3.0, 2.0, 1.0, 0.0], &cats[..4]).is_none());
    }

    #[test]
    fn evaluate_concept_fills_a_results_row() {
        use Category::*;
        let cats = [Positive, Positive, Negative, Negative, HardNegative];
        let acts = [3.0, 2.0, 1.0, 0.0, 10.0];
        let d = evaluate_concept(&acts, &cats, Some(&[0.5, 2.5, -1.0]));
        assert_eq!((d.n_positive, d.n_negative, d.n_hard_negative), (2, 2, 1));
        assert_eq!(d.f1.unwrap().f1, 1.0);
        // Pool score 2.5 sits between the positives: best F1 is 2/3 at threshold 3 or 4/5 at threshold 2.
        assert!((d.f1_imbalanced.unwrap().f1 - 0.8).abs() < 1e-12);
        let row = d.to_row("m", 9, "DiffMean", 4);
        assert_eq!(
            (row.auroc, row.positive_accuracy, row.hard_negative_accuracy),
            (Some(1.0), Some(1.0), Some(0.0))
        );
        let batch = crate::tables::detection_results_batch(&[row]).unwrap();
        assert_eq!(batch.num_rows(), 1);
    }

    #[test]
    fn mean_skips_nan() {
        assert_eq!(mean_over_concepts([1.0, f64::NAN, 0.5]), (0.75, 2));
    }
}
