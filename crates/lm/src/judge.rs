//! The LM judge of steered generations, as AxBench's `LMJudgeEvaluator` does it.
//!
//! Each generation gets three separate ratings from the judge model — concept presence,
//! instruction relevance, fluency — each 0, 1 or 2, read from a trailing `Rating: [[n]]`. The
//! sample's score is the harmonic mean of the three (0 if any is 0). Per concept and method, the
//! steering factor is chosen on the first half of the instructions (argmax of the mean score) and
//! the held-out half is reported at that factor; methods are also compared to a baseline by
//! per-sample win rate.
//!
//! Parsing follows AxBench's code exactly (`evaluators/lm_judge.py`, `_get_rating_from_completion`
//! at commit e9b8cd4), not a stricter reading of the format: take the text after the LAST
//! `Rating:`, keep its first line, delete every `[` and `]`, strip a trailing `.`, quotes and `*`,
//! and read a number; a value outside [0, 2] or anything unreadable counts as 0. We additionally
//! count those zeros as unparsable so a run can report how often the judge broke format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CallOutcome, CallRecord, ChatRequest, ChoiceConstraint, LmClient, SamplingParams};
use axbench_data::prompts::{PromptError, PromptSet, Template};

/// How the judge LM produces a rating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatingMode {
    /// The judge writes a free reply that should end with `Rating: [[n]]` (AxBench).
    #[default]
    Generate,
    /// The judge's turn is forced to `Rating: [[` and the rating is the most likely of `0`, `1`, `2`
    /// ([`ChoiceConstraint::rating`]); for small local judges that seldom keep the format. Needs a backend that
    /// scores choices (the local one); the OpenAI backend rejects such calls, which then count as no reply.
    Constrained,
}

impl RatingMode {
    /// Reads the `rating` stage param.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "generate" => Ok(Self::Generate),
            "constrained" => Ok(Self::Constrained),
            other => Err(format!("unknown rating mode {other:?}: generate or constrained")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Constrained => "constrained",
        }
    }

    /// `request` as this mode sends it.
    pub fn apply(self, request: ChatRequest) -> ChatRequest {
        match self {
            Self::Generate => request,
            Self::Constrained => request.constrained(ChoiceConstraint::rating()),
        }
    }
}

/// How a judge reply was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatingStatus {
    /// A number in [0, 2] was read.
    Parsed,
    /// No `Rating:` in the reply.
    Missing,
    /// `Rating:` present but no number could be read after it.
    Unparsable,
    /// A number outside [0, 2] (or NaN).
    OutOfRange,
    /// The judge call itself failed or was refused: no reply to read.
    NoReply,
}

/// One rating: the value used in scores (0 unless `Parsed`) and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub value: f64,
    pub status: RatingStatus,
}

impl Rating {
    fn zero(status: RatingStatus) -> Self {
        Self { value: 0.0, status }
    }

    pub fn is_parsed(&self) -> bool {
        self.status == RatingStatus::Parsed
    }
}

/// Read `Rating: [[n]]` from a judge reply (AxBench's rule, see the module docs).
pub fn parse_rating(completion: &str) -> Rating {
    let Some(at) = completion.rfind("Rating:") else {
        return Rating::zero(RatingStatus::Missing);
    };
    let tail = completion[at + "Rating:".len()..].trim();
    let first_line = tail.split('\n').next().unwrap_or("").trim();
    let no_brackets: String = first_line.chars().filter(|c| *c != '[' && *c != ']').collect();
    // Python: .rstrip('.').strip('"').strip("'").strip("*").strip()
    let cleaned = no_brackets
        .trim_end_matches('.')
        .trim_matches('"')
        .trim_matches('\'')
        .trim_matches('*')
        .trim();
    match parse_python_float(cleaned) {
        None => Rating::zero(RatingStatus::Unparsable),
        Some(v) if (0.0..=2.0).contains(&v) => Rating {
            value: v,
            status: RatingStatus::Parsed,
        },
        Some(_) => Rating::zero(RatingStatus::OutOfRange),
    }
}

/// Python's `float(str)` on an already-stripped string, for the forms a judge can produce:
/// decimal and exponent notation, a sign, `inf`/`nan` in any case, `_` between digits.
fn parse_python_float(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if lower.len() - body.len() > 1 {
        return None;
    }
    if matches!(body, "inf" | "infinity" | "nan") {
        let v = if body == "nan" { f64::NAN } else { f64::INFINITY };
        return Some(if lower.starts_with('-') { -v } else { v });
    }
    // Underscores are allowed only between digits.
    let bytes = body.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let ok = i > 0 && i + 1 < bytes.len() && bytes[i - 1].is_ascii_digit() && bytes[i + 1].is_ascii_digit();
            if !ok {
                return None;
            }
        } else if !(b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-')) {
            return None;
        }
    }
    lower.replace('_', "").parse::<f64>().ok()
}

/// Harmonic mean of ratings, 0 if any rating is 0 (AxBench's strict aggregate).
pub fn harmonic_mean(scores: &[f64]) -> f64 {
    if scores.is_empty() || scores.contains(&0.0) {
        return 0.0;
    }
    scores.len() as f64 / scores.iter().map(|s| 1.0 / s).sum::<f64>()
}

/// The three aspects a generation is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aspect {
    Concept,
    Instruction,
    Fluency,
}

impl Aspect {
    pub const ALL: [Aspect; 3] = [Aspect::Concept, Aspect::Instruction, Aspect::Fluency];

    pub fn template(self) -> Template {
        match self {
            Aspect::Concept => Template::JudgeConcept,
            Aspect::Instruction => Template::JudgeInstruction,
            Aspect::Fluency => Template::JudgeFluency,
        }
    }
}

/// One generation to judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeItem {
    /// The concept the generation was steered toward (`input_concept`).
    pub concept: String,
    /// The raw instruction (`original_prompt`, not chat-templated).
    pub instruction: String,
    /// The steered generation.
    pub generation: String,
}

/// The three judge prompts of one item, in [`Aspect::ALL`] order.
pub fn judge_prompts(prompts: &PromptSet, item: &JudgeItem) -> Result<[String; 3], PromptError> {
    Ok([
        prompts.render(
            Template::JudgeConcept,
            &[("concept", &item.concept), ("sentence", &item.generation)],
        )?,
        prompts.render(
            Template::JudgeInstruction,
            &[("instruction", &item.instruction), ("sentence", &item.generation)],
        )?,
        prompts.render(Template::JudgeFluency, &[("sentence", &item.generation)])?,
    ])
}

/// The verdict on one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub concept: Rating,
    pub instruction: Rating,
    pub fluency: Rating,
    /// Harmonic mean of the three values.
    pub score: f64,
    /// The judge's replies (empty where the call failed), in [`Aspect::ALL`] order.
    pub completions: [String; 3],
}

impl Judged {
    /// Combine three ratings.
    pub fn from_ratings(concept: Rating, instruction: Rating, fluency: Rating, completions: [String; 3]) -> Self {
        let score = harmonic_mean(&[concept.value, instruction.value, fluency.value]);
        Self {
            concept,
            instruction,
            fluency,
            score,
            completions,
        }
    }

    pub fn ratings(&self) -> [Rating; 3] {
        [self.concept, self.instruction, self.fluency]
    }
}

/// Counts over a judged batch, for the run report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeStats {
    pub items: u64,
    /// Ratings by aspect and status.
    pub statuses: BTreeMap<String, BTreeMap<String, u64>>,
    /// Ratings that were not read cleanly (missing, unparsable, out of range), all aspects.
    pub unparsable: u64,
    /// Judge calls that failed or were refused (rated 0).
    pub no_reply: u64,
}

fn rating_of(record: &CallRecord) -> (Rating, String) {
    match &record.outcome {
        CallOutcome::Completed(c) => (parse_rating(&c.text), c.text.clone()),
        CallOutcome::Refused(_) | CallOutcome::Failed(_) => (Rating::zero(RatingStatus::NoReply), String::new()),
    }
}

/// Judge many generations: 3 calls each, all through `client` (cached, retried, bounded).
/// AxBench's judge runs gpt-4o-mini at temperature 0.7 (`evaluate.py`); pass that in `params`.
pub async fn judge_all(
    client: &LmClient,
    prompts: &PromptSet,
    model: &str,
    params: &SamplingParams,
    items: &[JudgeItem],
) -> Result<(Vec<Judged>, JudgeStats), PromptError> {
    judge_all_with(client, prompts, model, params, RatingMode::Generate, items).await
}

/// [`judge_all`] with the ratings produced in `mode`.
pub async fn judge_all_with(
    client: &LmClient,
    prompts: &PromptSet,
    model: &str,
    params: &SamplingParams,
    mode: RatingMode,
    items: &[JudgeItem],
) -> Result<(Vec<Judged>, JudgeStats), PromptError> {
    let mut requests = Vec::with_capacity(items.len() * 3);
    for item in items {
        for p in judge_prompts(prompts, item)? {
            requests.push(mode.apply(ChatRequest::user(model, p, params.clone())));
        }
    }
    let records = client.call_many(&requests).await;
    let mut stats = JudgeStats {
        items: items.len() as u64,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(items.len());
    for chunk in records.chunks(3) {
        let [(c, ct), (i, it), (f, ft)] = [rating_of(&chunk[0]), rating_of(&chunk[1]), rating_of(&chunk[2])];
        for (aspect, r) in Aspect::ALL.iter().zip([c, i, f]) {
            let status = serde_json::to_value(r.status).unwrap().as_str().unwrap().to_string();
            let aspect = serde_json::to_value(aspect).unwrap().as_str().unwrap().to_string();
            *stats.statuses.entry(aspect).or_default().entry(status).or_default() += 1;
            match r.status {
                RatingStatus::Parsed => {}
                RatingStatus::NoReply => stats.no_reply += 1,
                _ => stats.unparsable += 1,
            }
        }
        out.push(Judged::from_ratings(c, i, f, [ct, it, ft]));
    }
    Ok((out, stats))
}

/// One judged steering generation, keyed as AxBench's steering table is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredGeneration {
    pub concept_id: i64,
    pub method: String,
    pub input_id: u32,
    pub factor: f64,
    pub score: f64,
}

/// Python's `round` (half to even), which AxBench's split uses.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Number of instruction ids used for factor selection: AxBench's
/// `n - round(n * split_ratio)` with `n = max(input_id) + 1`; ids below it select, the rest test.
pub fn selection_split(n_input_ids: u32, split_ratio: f64) -> u32 {
    let held_out = round_half_even(n_input_ids as f64 * split_ratio) as u32;
    n_input_ids.saturating_sub(held_out)
}

/// The factor chosen for one (concept, method), with its selection and test means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorChoice {
    pub concept_id: i64,
    pub method: String,
    pub factor: f64,
    /// Mean score at `factor` on the selection half.
    pub selection_score: f64,
    /// Mean score at `factor` on the held-out half (`None` if that half is empty).
    pub test_score: Option<f64>,
    pub n_test: usize,
}

/// `(factor, mean score, n)` over `rows`, factors ascending (AxBench's per-factor
/// `lm_judge_rating`; pandas' groupby sorts the factors).
pub fn mean_by_factor<'a>(rows: impl Iterator<Item = &'a ScoredGeneration>) -> Vec<(f64, f64, usize)> {
    let mut acc: Vec<(f64, f64, usize)> = Vec::new();
    for r in rows {
        match acc.iter_mut().find(|(f, _, _)| *f == r.factor) {
            Some(slot) => {
                slot.1 += r.score;
                slot.2 += 1;
            }
            None => acc.push((r.factor, r.score, 1)),
        }
    }
    acc.sort_by(|a, b| a.0.total_cmp(&b.0));
    acc.into_iter().map(|(f, s, n)| (f, s / n as f64, n)).collect()
}

/// Per concept and method: pick the factor with the highest mean score on the selection half
/// (`input_id < selection_split(..)`; the first, i.e. smallest, factor among ties, as `np.argmax`),
/// then report the held-out half at that factor. `n` is taken per concept as in AxBench.
pub fn select_factors(rows: &[ScoredGeneration], split_ratio: f64) -> Vec<FactorChoice> {
    let mut groups: BTreeMap<(i64, &str), Vec<&ScoredGeneration>> = BTreeMap::new();
    let mut n_ids: BTreeMap<i64, u32> = BTreeMap::new();
    for r in rows {
        groups.entry((r.concept_id, r.method.as_str())).or_default().push(r);
        let n = n_ids.entry(r.concept_id).or_default();
        *n = (*n).max(r.input_id + 1);
    }
    let mut out = Vec::new();
    for ((concept_id, method), group) in groups {
        let cut = selection_split(n_ids[&concept_id], split_ratio);
        let selection = mean_by_factor(group.iter().copied().filter(|r| r.input_id < cut));
        let Some(best) = selection
            .iter()
            .fold(None::<(f64, f64)>, |best, &(f, m, _)| match best {
                Some((_, bm)) if bm >= m => best,
                _ => Some((f, m)),
            })
        else {
            continue;
        };
        let test: Vec<&ScoredGeneration> = group
            .iter()
            .copied()
            .filter(|r| r.input_id >= cut && r.factor == best.0)
            .collect();
        let test_score = (!test.is_empty()).then(|| test.iter().map(|r| r.score).sum::<f64>() / test.len() as f64);
        out.push(FactorChoice {
            concept_id,
            method: method.to_string(),
            factor: best.0,
            selection_score: best.1,
            test_score,
            n_test: test.len(),
        });
    }
    out
}

/// Wins, losses and ties of a method against a baseline over paired samples.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct WinRate {
    pub wins: u64,
    pub losses: u64,
    pub ties: u64,
}

impl WinRate {
    /// Compare paired scores; |a - b| < 1e-6 is a tie (AxBench's `WinRateEvaluator`).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let mut w = WinRate::default();
        for (model, baseline) in pairs {
            if (model - baseline).abs() < 1e-6 {
                w.ties += 1;
            } else if model > baseline {
                w.wins += 1;
            } else {
                w.losses += 1;
            }
        }
        w
    }

    pub fn total(&self) -> u64 {
        self.wins + self.losses + self.ties
    }

    /// The paper's win rate: ties count half (Table 3).
    pub fn rate(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            (self.wins as f64 + 0.5 * self.ties as f64) / self.total() as f64
        }
    }

    /// AxBench's code reports `win_rate = wins / total` (ties separate as `tie_rate`).
    pub fn strict_rate(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.wins as f64 / self.total() as f64
        }
    }
}

/// Win rate of `method` against `baseline` on the held-out half, each at its chosen factor,
/// pairing samples by (concept_id, input_id). Baseline rows with no partner are skipped.
pub fn win_rate(
    rows: &[ScoredGeneration],
    choices: &[FactorChoice],
    method: &str,
    baseline: &str,
    split_ratio: f64,
) -> WinRate {
    let factor_of = |cid: i64, m: &str| {
        choices
            .iter()
            .find(|c| c.concept_id == cid && c.method == m)
            .map(|c| c.factor)
    };
    let mut n_ids: BTreeMap<i64, u32> = BTreeMap::new();
    for r in rows {
        let n = n_ids.entry(r.concept_id).or_default();
        *n = (*n).max(r.input_id + 1);
    }
    let held_out = |r: &ScoredGeneration| r.input_id >= selection_split(n_ids[&r.concept_id], split_ratio);
    let pick = |m: &str| -> BTreeMap<(i64, u32), f64> {
        rows.iter()
            .filter(|r| r.method == m && held_out(r) && factor_of(r.concept_id, m) == Some(r.factor))
            .map(|r| ((r.concept_id, r.input_id), r.score))
            .collect()
    };
    let ours = pick(method);
    let theirs = pick(baseline);
    WinRate::from_pairs(ours.iter().filter_map(|(k, s)| theirs.get(k).map(|b| (*s, *b))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_mean_matches_hand_values() {
        assert_eq!(harmonic_mean(&[2.0, 2.0, 2.0]), 2.0);
        assert_eq!(harmonic_mean(&[1.0, 1.0, 1.0]), 1.0);
        // 3 / (1 + 1/2 + 1/2) = 1.5
        assert!((harmonic_mean(&[1.0, 2.0, 2.0]) - 1.5).abs() < 1e-12);
        // 3 / (1 + 1 + 1/2) = 1.2
        assert!((harmonic_mean(&[1.0, 1.0, 2.0]) - 1.2).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[0.0, 2.0, 2.0]), 0.0);
        assert_eq!(harmonic_mean(&[2.0, 2.0, 0.0]), 0.0);
        assert_eq!(harmonic_mean(&[]), 0.0);
    }

    #[test]
    fn split_uses_python_rounding() {
        assert_eq!(selection_split(10, 0.5), 5);
        // round(2.5) == 2 in Python: 5 ids -> 3 select, 2 test.
        assert_eq!(selection_split(5, 0.5), 3);
        // round(3.5) == 4: 7 ids -> 3 select.
        assert_eq!(selection_split(7, 0.5), 3);
        assert_eq!(selection_split(10, 0.3), 7);
        assert_eq!(selection_split(1, 0.5), 1);
    }

    fn row(concept_id: i64, method: &str, input_id: u32, factor: f64, score: f64) -> ScoredGeneration {
        ScoredGeneration {
            concept_id,
            method: method.into(),
            input_id,
            factor,
            score,
        }
    }

    #[test]
    fn factor_selection_uses_selection_half_and_reports_test_half() {
        let mut rows = Vec::new();
        // 4 instructions: ids 0,1 select; 2,3 test. Factor 1.0 best on selection, 2.0 best on test.
        for (id, f, s) in [
            (0, 1.0, 2.0),
            (1, 1.0, 1.0),
            (0, 2.0, 0.0),
            (1, 2.0, 1.0),
            (2, 1.0, 0.5),
            (3, 1.0, 1.5),
            (2, 2.0, 2.0),
            (3, 2.0, 2.0),
        ] {
            rows.push(row(0, "DiffMean", id, f, s));
        }
        let choices = select_factors(&rows, 0.5);
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        assert_eq!(c.factor, 1.0);
        assert!((c.selection_score - 1.5).abs() < 1e-12);
        assert_eq!(c.test_score, Some(1.0));
        assert_eq!(c.n_test, 2);
    }

    #[test]
    fn factor_ties_pick_the_smallest_factor() {
        let rows = vec![
            row(3, "M", 0, 2.0, 1.0),
            row(3, "M", 0, 0.5, 1.0),
            row(3, "M", 0, 1.0, 1.0),
            row(3, "M", 1, 2.0, 0.0),
            row(3, "M", 1, 0.5, 2.0),
            row(3, "M", 1, 1.0, 0.0),
        ];
        let c = select_factors(&rows, 0.5);
        assert_eq!(c[0].factor, 0.5);
        assert_eq!(c[0].selection_score, 1.0);
        assert_eq!(c[0].test_score, Some(2.0));
    }

    #[test]
    fn factor_selection_is_per_concept_and_method() {
        let rows = vec![
            row(0, "A", 0, 1.0, 2.0),
            row(0, "A", 0, 2.0, 1.0),
            row(0, "A", 1, 1.0, 0.0),
            row(0, "A", 1, 2.0, 0.0),
            row(0, "B", 0, 1.0, 0.0),
            row(0, "B", 0, 2.0, 1.0),
            row(0, "B", 1, 1.0, 0.0),
            row(0, "B", 1, 2.0, 0.0),
            row(1, "A", 0, 1.0, 0.0),
            row(1, "A", 0, 2.0, 2.0),
            row(1, "A", 1, 1.0, 0.0),
            row(1, "A", 1, 2.0, 0.0),
        ];
        let c = select_factors(&rows, 0.5);
        let f: Vec<(i64, &str, f64)> = c.iter().map(|c| (c.concept_id, c.method.as_str(), c.factor)).collect();
        assert_eq!(f, vec![(0, "A", 1.0), (0, "B", 2.0), (1, "A", 2.0)]);
    }

    #[test]
    fn win_rate_counts_ties_half() {
        let w = WinRate::from_pairs([(2.0, 1.0), (1.0, 1.0), (0.0, 1.5), (1.2, 1.2000001)]);
        assert_eq!((w.wins, w.losses, w.ties), (1, 1, 2));
        assert!((w.rate() - 0.5).abs() < 1e-12);
        assert!((w.strict_rate() - 0.25).abs() < 1e-12);
        assert_eq!(WinRate::default().rate(), 0.0);
    }

    #[test]
    fn win_rate_pairs_held_out_samples_at_chosen_factors() {
        let mut rows = Vec::new();
        for id in 0..4u32 {
            for f in [1.0, 2.0] {
                // Method M is best at 2.0 on selection; Prompt has a single factor 0.0.
                rows.push(row(0, "M", id, f, if f == 2.0 { 1.5 } else { 0.5 }));
            }
            rows.push(row(0, "Prompt", id, 0.0, if id == 3 { 2.0 } else { 1.0 }));
        }
        let choices = select_factors(&rows, 0.5);
        let w = win_rate(&rows, &choices, "M", "Prompt", 0.5);
        // Held-out ids 2 (1.5 vs 1.0: win) and 3 (1.5 vs 2.0: loss).
        assert_eq!((w.wins, w.losses, w.ties), (1, 1, 0));
    }
}
