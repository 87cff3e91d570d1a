//! The paper-style AxBench report: what `axbench.aggregate` computed ([`Summary`]), rendered as Markdown tables
//! ([`markdown`]), SVG plots ([`plots`]) and one self-contained HTML file ([`html`]). Imports `axbench-data`
//! (result rows, metrics) only, so a report renders without libtorch.
//!
//! The tables follow the paper (Wu et al. 2025): Table 1 is the mean detection AUROC by method × model/layer,
//! Table 2 the mean steering score (held-out half, each concept at its selected factor), Table 3 the win rate
//! against a baseline method (ties count half). The plots follow AxBench's `plot_steering`: the factor-selection
//! half's mean score and the three judge ratings against the steering factor, one line per method.
//!
//! Rendering reads only a [`Summary`], which is also what `summary.json` holds, so the CLI can re-render any part
//! of a cached report without recomputing it.

pub mod html;
pub mod markdown;
pub mod plots;

use serde::{Deserialize, Serialize};

use axbench_data::results::ResultRow;

/// One model/layer setting: a column of the paper's tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Setting {
    pub model: String,
    pub layer: i64,
    /// Column header, e.g. `gemma-3-270m L9` (the `model_label` param when given).
    pub label: String,
}

/// One (setting, concept, method): the factor chosen on the selection half and the held-out half's means there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringResult {
    pub model: String,
    pub layer: i64,
    pub method: String,
    pub concept_id: i64,
    /// The concept's description (from the judge node), empty when unknown.
    pub description: String,
    /// The factor with the best mean score on the selection half (smallest among ties).
    pub factor: f64,
    /// Mean score at `factor` on the selection half.
    pub selection_score: f64,
    /// Held-out half at `factor`: mean harmonic-mean score and mean ratings; `None` when that half is empty.
    pub score: Option<f64>,
    pub concept_rating: Option<f64>,
    pub instruction_rating: Option<f64>,
    pub fluency_rating: Option<f64>,
    /// Mean perplexity of the held-out generations at `factor`, when the judged table carries perplexity.
    pub perplexity: Option<f64>,
    /// Held-out generations behind the means.
    pub n_test: usize,
}

/// Which instructions a per-factor mean is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    /// `input_id < n - round(n * split_ratio)`: the factor is chosen here.
    Selection,
    /// The rest: reported at the chosen factor.
    Test,
}

impl Half {
    pub fn as_str(self) -> &'static str {
        match self {
            Half::Selection => "selection",
            Half::Test => "test",
        }
    }
}

/// Mean over concepts of each concept's per-factor mean (AxBench's `plot_metrics` averages the per-concept
/// `lm_judge_rating[]` lists), for one (setting, method, factor, half).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorMeans {
    pub model: String,
    pub layer: i64,
    pub method: String,
    pub factor: f64,
    pub half: Half,
    pub score: f64,
    pub concept_rating: f64,
    pub instruction_rating: f64,
    pub fluency_rating: f64,
    pub perplexity: Option<f64>,
    /// Concepts averaged over.
    pub n_concepts: usize,
    /// Generations behind the means.
    pub n_samples: usize,
}

/// A method against the baseline on the held-out half, both at their chosen factors, paired by
/// (concept, instruction), over every concept of the setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRateResult {
    pub model: String,
    pub layer: i64,
    pub method: String,
    pub baseline: String,
    pub wins: u64,
    pub losses: u64,
    pub ties: u64,
    /// `(wins + ties / 2) / pairs`, the paper's Table 3.
    pub win_rate: f64,
}

/// How the judge fared over all judged generations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeCounts {
    pub generations: u64,
    /// Ratings (three per generation) that were missing, unparsable, out of range or had no reply: each counted as 0.
    pub unreadable_ratings: u64,
}

/// Everything the report shows; `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub settings: Vec<Setting>,
    /// The method win rates are computed against; `None` when there are no steering results.
    pub baseline: Option<String>,
    /// Share of each concept's instructions held out for testing (AxBench's `winrate_split_ratio`).
    pub split_ratio: f64,
    pub steering: Vec<SteeringResult>,
    pub by_factor: Vec<FactorMeans>,
    pub win_rates: Vec<WinRateResult>,
    /// The evaluate node's per-concept detection results, when the aggregate read one.
    pub detection: Vec<ResultRow>,
    pub judge: JudgeCounts,
}

impl Summary {
    /// The column header of `(model, layer)`.
    pub fn label(&self, model: &str, layer: i64) -> String {
        self.settings
            .iter()
            .find(|s| s.model == model && s.layer == layer)
            .map(|s| s.label.clone())
            .unwrap_or_else(|| default_label(model, layer))
    }
}

/// `gemma-3-270m L9`.
pub fn default_label(model: &str, layer: i64) -> String {
    format!("{model} L{layer}")
}

/// One plot of the report: a file name (an output of the aggregate node) and its SVG text.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub svg: String,
}
