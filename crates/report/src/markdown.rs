//! The Markdown report: the paper's three tables by method × model/layer, a per-concept table and the plots as
//! image links to sibling SVG files. Everything is computed from a [`Summary`]; nothing here reads files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::{Plot, Summary};
use axbench_data::metrics::mean_over_concepts;

/// Per-concept rows are listed when there are at most this many (the tables stay readable).
const MAX_CONCEPT_ROWS: usize = 200;

fn fmt3(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "–".into(),
    }
}

fn fmt_pct(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
        _ => "–".into(),
    }
}

/// Markdown table cells must not contain `|` or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A method × setting table with an `Avg` column when there are several settings, rows sorted by the row mean
/// (best first, as the paper orders its tables), then by name.
fn method_table(
    labels: &[String],
    values: &BTreeMap<(String, usize), f64>,
    higher_is_better: bool,
    fmt: fn(Option<f64>) -> String,
) -> String {
    let methods: BTreeSet<&String> = values.keys().map(|(m, _)| m).collect();
    let avg = |m: &str| {
        let (mean, n) = mean_over_concepts((0..labels.len()).filter_map(|i| values.get(&(m.to_string(), i)).copied()));
        (n > 0).then_some(mean)
    };
    let mut rows: Vec<(&String, Option<f64>)> = methods.into_iter().map(|m| (m, avg(m))).collect();
    rows.sort_by(|a, b| {
        let key = |x: Option<f64>| x.unwrap_or(f64::NEG_INFINITY) * if higher_is_better { 1.0 } else { -1.0 };
        key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(b.0))
    });
    let several = labels.len() > 1;
    let mut out = String::from("| method |");
    for l in labels {
        let _ = write!(out, " {} |", cell(l));
    }
    if several {
        out.push_str(" Avg |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(labels.len() + several as usize));
    out.push('\n');
    for (m, a) in rows {
        let _ = write!(out, "| {} |", cell(m));
        for i in 0..labels.len() {
            let _ = write!(out, " {} |", fmt(values.get(&(m.clone(), i)).copied()));
        }
        if several {
            let _ = write!(out, " {} |", fmt(a));
        }
        out.push('\n');
    }
    out
}

fn setting_index(summary: &Summary, model: &str, layer: i64) -> usize {
    summary
        .settings
        .iter()
        .position(|s| s.model == model && s.layer == layer)
        .unwrap_or(usize::MAX)
}

fn labels(summary: &Summary) -> Vec<String> {
    summary.settings.iter().map(|s| s.label.clone()).collect()
}

/// Mean over concepts per (method, setting column) of `value`, NaN (missing) values dropped; cells with no value
/// are left out. Also returns the number of distinct concepts.
fn method_means<'a, R: 'a>(
    summary: &Summary,
    rows: impl IntoIterator<Item = &'a R>,
    key: impl Fn(&R) -> (&str, &str, i64, i64),
    value: impl Fn(&R) -> Option<f64>,
) -> (BTreeMap<(String, usize), f64>, usize) {
    let mut per: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut concepts = BTreeSet::new();
    for r in rows {
        let (method, model, layer, concept) = key(r);
        concepts.insert(concept);
        per.entry((method.to_string(), setting_index(summary, model, layer)))
            .or_default()
            .push(value(r).unwrap_or(f64::NAN));
    }
    let values = per
        .into_iter()
        .filter_map(|(k, v)| {
            let (m, n) = mean_over_concepts(v);
            (n > 0).then_some((k, m))
        })
        .collect();
    (values, concepts.len())
}

/// Table 1: mean ROC AUC over concepts, by method × setting. `None` without detection results.
pub fn detection_table(summary: &Summary) -> Option<String> {
    if summary.detection.is_empty() {
        return None;
    }
    let (values, n) = method_means(
        summary,
        &summary.detection,
        |r| (&r.method, &r.model, r.layer, r.concept_id),
        |r| r.auroc,
    );
    Some(format!(
        "### Table 1: concept detection\n\nMean ROC AUC over {n} concept(s), positives vs negatives (hard negatives excluded, as AxBench's AUCROCEvaluator).\n\n{}",
        method_table(&labels(summary), &values, true, fmt3)
    ))
}

/// Table 2: mean steering score over concepts (held-out half, each concept at the factor its selection half
/// chose), by method × setting. `None` without steering results.
pub fn steering_table(summary: &Summary) -> Option<String> {
    if summary.steering.is_empty() {
        return None;
    }
    let (values, n) = method_means(
        summary,
        &summary.steering,
        |r| (&r.method, &r.model, r.layer, r.concept_id),
        |r| r.score,
    );
    Some(format!(
        "### Table 2: steering\n\nMean overall score (0–2: harmonic mean of the concept, instruction and fluency ratings, 0 if any is 0) over {n} concept(s). \
         Each concept's factor is the one with the best mean score on the first {:.0}% of its instructions; the score is the mean over the rest at that factor.\n\n{}",
        100.0 * (1.0 - summary.split_ratio),
        method_table(&labels(summary), &values, true, fmt3)
    ))
}

/// Table 3: win rate against the baseline (ties count half). `None` when there is nothing to compare.
pub fn win_rate_table(summary: &Summary) -> Option<String> {
    let baseline = summary.baseline.as_ref()?;
    if summary.win_rates.is_empty() {
        return None;
    }
    let mut values = BTreeMap::new();
    let mut counts = String::new();
    for w in &summary.win_rates {
        let pairs = w.wins + w.losses + w.ties;
        if pairs > 0 {
            values.insert(
                (w.method.clone(), setting_index(summary, &w.model, w.layer)),
                w.win_rate,
            );
        }
        let _ = writeln!(
            counts,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&summary.label(&w.model, w.layer)),
            cell(&w.method),
            w.wins,
            w.losses,
            w.ties,
            pairs
        );
    }
    Some(format!(
        "### Table 3: win rate against {b}\n\nPer held-out instruction, each method at its selected factor against {b} at its own; a win scores 1, a tie (|Δ| < 1e-6) ½.\n\n{}\n| setting | method | wins | losses | ties | pairs |\n|---|---|---:|---:|---:|---:|\n{counts}",
        method_table(&labels(summary), &values, true, fmt_pct),
        b = cell(baseline),
    ))
}

/// One row per (setting, method, concept): the chosen factor, the selection mean there and the held-out means.
pub fn per_concept_table(summary: &Summary) -> Option<String> {
    if summary.steering.is_empty() {
        return None;
    }
    let mut rows: Vec<_> = summary.steering.iter().collect();
    rows.sort_by(|a, b| {
        (&a.model, a.layer, a.concept_id, &a.method).cmp(&(&b.model, b.layer, b.concept_id, &b.method))
    });
    let with_ppl = rows.iter().any(|r| r.perplexity.is_some());
    let several = summary.settings.len() > 1;
    let mut out = String::from("### Per concept\n\n");
    out.push_str(if several {
        "| setting | concept | method | factor | selection score | score | concept | instruction | fluency |"
    } else {
        "| concept | method | factor | selection score | score | concept | instruction | fluency |"
    });
    if with_ppl {
        out.push_str(" perplexity |");
    }
    out.push_str(if several {
        "\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    } else {
        "\n|---|---|---:|---:|---:|---:|---:|---:|"
    });
    if with_ppl {
        out.push_str("---:|");
    }
    out.push('\n');
    for r in rows.iter().take(MAX_CONCEPT_ROWS) {
        if several {
            let _ = write!(out, "| {} ", cell(&summary.label(&r.model, r.layer)));
        }
        let concept = if r.description.is_empty() {
            r.concept_id.to_string()
        } else {
            format!("{}: {}", r.concept_id, cell(&r.description))
        };
        let _ = write!(
            out,
            "| {concept} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.method),
            r.factor,
            fmt3(Some(r.selection_score)),
            fmt3(r.score),
            fmt3(r.concept_rating),
            fmt3(r.instruction_rating),
            fmt3(r.fluency_rating)
        );
        if with_ppl {
            let _ = write!(out, " {} |", fmt3(r.perplexity));
        }
        out.push('\n');
    }
    if rows.len() > MAX_CONCEPT_ROWS {
        let _ = writeln!(
            out,
            "\n… and {} more rows in `steering.parquet`.",
            rows.len() - MAX_CONCEPT_ROWS
        );
    }
    Some(out)
}

/// Tables 2 and 3, for `axbench results`.
pub fn steering_tables(summary: &Summary) -> String {
    [steering_table(summary), win_rate_table(summary)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole report. Plots are linked by file name: they are outputs of the same node, next to `report.md` once
/// `axbench report` copies the node's outputs out of the cache.
pub fn render(summary: &Summary, plots: &[Plot]) -> String {
    let mut out = String::from("# AxBench report\n\n");
    let settings: Vec<String> = summary
        .settings
        .iter()
        .map(|s| format!("`{}` (model `{}`, layer {})", cell(&s.label), cell(&s.model), s.layer))
        .collect();
    if !settings.is_empty() {
        let _ = writeln!(out, "Settings: {}.", settings.join(", "));
    }
    if summary.judge.generations > 0 {
        let _ = writeln!(
            out,
            "\n{} steered generations judged; {} of {} ratings were unreadable and counted as 0.",
            summary.judge.generations,
            summary.judge.unreadable_ratings,
            3 * summary.judge.generations
        );
    }
    out.push('\n');
    let sections = [
        detection_table(summary),
        steering_table(summary),
        win_rate_table(summary),
    ];
    for s in sections.into_iter().flatten() {
        out.push_str(&s);
        out.push('\n');
    }
    if !plots.is_empty() {
        out.push_str("### Plots\n\nThe factor-selection half: mean over concepts of each concept's mean at each factor. Methods with one factor (prompting) are drawn as horizontal dashed lines.\n\n");
        for p in plots {
            let _ = writeln!(out, "![{}]({})\n", cell(&p.title), p.file);
        }
    }
    if let Some(t) = per_concept_table(summary) {
        out.push_str(&t);
    }
    out
}
