//! Detection result rows as `results.json` holds them: what `axbench.evaluate` writes and the report,
//! `axbench results` and the aggregate stage read.

use serde::{Deserialize, Serialize};

use crate::tables::DetectionResultRow;

/// One row of `results.json`: one (model, layer, method, concept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub model: String,
    pub layer: i64,
    pub method: String,
    pub concept_id: i64,
    pub auroc: Option<f64>,
    pub f1: Option<f64>,
    /// Max F1 of the positives against the imbalanced negative pool (null when no pool was scored).
    #[serde(default)]
    pub f1_imbalanced: Option<f64>,
    pub optimal_threshold: Option<f64>,
    pub positive_accuracy: Option<f64>,
    pub hard_negative_accuracy: Option<f64>,
    pub macro_avg_accuracy: Option<f64>,
    pub n_positive: i64,
    pub n_negative: i64,
    pub n_hard_negative: i64,
}

/// `results.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub detection: Vec<ResultRow>,
}

impl From<DetectionResultRow> for ResultRow {
    fn from(r: DetectionResultRow) -> Self {
        ResultRow {
            model: r.model,
            layer: r.layer,
            method: r.method,
            concept_id: r.concept_id,
            auroc: r.auroc,
            f1: r.f1,
            f1_imbalanced: r.f1_imbalanced,
            optimal_threshold: r.optimal_threshold,
            positive_accuracy: r.positive_accuracy,
            hard_negative_accuracy: r.hard_negative_accuracy,
            macro_avg_accuracy: r.macro_avg_accuracy,
            n_positive: r.n_positive,
            n_negative: r.n_negative,
            n_hard_negative: r.n_hard_negative,
        }
    }
}
