//! SVG plots of the steering results against the steering factor, drawn with `plotters` (SVG backend; text is
//! laid out with plotters' estimated font metrics, so no system font is read and the output is byte-for-byte
//! deterministic).
//!
//! Per setting (model, layer): `score_vs_factor.svg` (the overall score) and `ratings_vs_factor.svg` (concept,
//! instruction and fluency ratings, one panel each), plus `perplexity_vs_factor.svg` when the judged tables carry
//! perplexity. With several settings the file names get a `_<model>_L<layer>` suffix. Each line is one method's
//! selection-half means ([`Half::Selection`]), the data AxBench's `plot_steering` draws; a method with a single
//! factor (prompting) is a horizontal dashed line, since its one generation per instruction does not depend on it.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::{FactorMeans, Half, Plot, Setting, Summary};

/// A plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot {file}: {message}")]
pub struct PlotError {
    pub file: String,
    pub message: String,
}

/// Tableau 10: distinguishable lines for up to ten methods (then repeated).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One method's line: `(factor, value)` ascending.
struct Line {
    method: String,
    points: Vec<(f64, f64)>,
}

/// The value a panel shows.
type Metric = fn(&FactorMeans) -> Option<f64>;

fn lines(rows: &[&FactorMeans], metric: Metric) -> Vec<Line> {
    let mut by_method: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = metric(r).filter(|v| v.is_finite()) {
            by_method.entry(&r.method).or_default().push((r.factor, v));
        }
    }
    by_method
        .into_iter()
        .map(|(m, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Line {
                method: m.to_string(),
                points,
            }
        })
        .collect()
}

/// File-name suffix for a setting when a summary has several.
fn suffix(s: &Setting, several: bool) -> String {
    if !several {
        return String::new();
    }
    let clean: String = format!("_{}_L{}", s.model, s.layer)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean
}

/// Every plot of the report, in the order the report shows them.
pub fn factor_plots(summary: &Summary) -> Result<Vec<Plot>, PlotError> {
    let several = summary.settings.len() > 1;
    let mut out = Vec::new();
    for s in &summary.settings {
        let rows: Vec<&FactorMeans> = summary
            .by_factor
            .iter()
            .filter(|r| r.model == s.model && r.layer == s.layer && r.half == Half::Selection)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let sfx = suffix(s, several);
        let title = |what: &str| {
            if several {
                format!("{what} vs steering factor ({})", s.label)
            } else {
                format!("{what} vs steering factor")
            }
        };
        let file = format!("score_vs_factor{sfx}.svg");
        let svg = draw(
            &file,
            (720, 440),
            &[Panel {
                title: title("Overall score"),
                y_desc: "score (0–2)",
                y_max: Some(2.0),
                lines: lines(&rows, |r| Some(r.score)),
            }],
        )?;
        out.push(Plot {
            file,
            title: title("Overall score"),
            svg,
        });

        let file = format!("ratings_vs_factor{sfx}.svg");
        let panels = [
            Panel {
                title: "Concept".into(),
                y_desc: "rating (0–2)",
                y_max: Some(2.0),
                lines: lines(&rows, |r| Some(r.concept_rating)),
            },
            Panel {
                title: "Instruction".into(),
                y_desc: "rating (0–2)",
                y_max: Some(2.0),
                lines: lines(&rows, |r| Some(r.instruction_rating)),
            },
            Panel {
                title: "Fluency".into(),
                y_desc: "rating (0–2)",
                y_max: Some(2.0),
                lines: lines(&rows, |r| Some(r.fluency_rating)),
            },
        ];
        let svg = draw(&file, (1260, 420), &panels)?;
        out.push(Plot {
            file,
            title: title("Judge ratings"),
            svg,
        });

        if rows.iter().any(|r| r.perplexity.is_some()) {
            let file = format!("perplexity_vs_factor{sfx}.svg");
            let svg = draw(
                &file,
                (720, 440),
                &[Panel {
                    title: title("Perplexity"),
                    y_desc: "perplexity",
                    y_max: None,
                    lines: lines(&rows, |r| r.perplexity),
                }],
            )?;
            out.push(Plot {
                file,
                title: title("Perplexity"),
                svg,
            });
        }
    }
    Ok(out)
}

struct Panel {
    title: String,
    y_desc: &'static str,
    /// Fixed upper bound (ratings); `None`: from the data.
    y_max: Option<f64>,
    lines: Vec<Line>,
}

/// Draws `panels` side by side into one SVG. Every panel colours a method the same way (by its rank among all
/// methods of the plot), so one legend, on the first panel, serves them all.
fn draw(file: &str, size: (u32, u32), panels: &[Panel]) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        file: file.to_string(),
        message: e.to_string(),
    };
    let mut methods: Vec<&str> = panels
        .iter()
        .flat_map(|p| p.lines.iter().map(|l| l.method.as_str()))
        .collect();
    methods.sort();
    methods.dedup();
    let color = |m: &str| COLORS[methods.iter().position(|x| *x == m).unwrap_or(0) % COLORS.len()];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((1, panels.len()));
        for (k, (panel, area)) in panels.iter().zip(&areas).enumerate() {
            let xs = panel.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
            let (x_min, x_max) = xs.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
            let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
            let x_pad = 0.03 * (x_max - x_min);
            let y_top = panel.y_max.unwrap_or_else(|| {
                panel
                    .lines
                    .iter()
                    .flat_map(|l| l.points.iter().map(|p| p.1))
                    .fold(0.0f64, f64::max)
                    .max(1.0)
                    * 1.1
            });
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(50)
                // Headroom above the data for the legend (upper right of the first panel); the same on every panel
                // so that side-by-side panels share one y scale.
                .build_cartesian_2d((x_min - x_pad)..(x_max + x_pad), 0.0..y_top * 1.3)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("steering factor")
                .y_desc(panel.y_desc)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| err(&e))?;
            for line in &panel.lines {
                let c = color(&line.method);
                let style = c.stroke_width(2);
                if let [(_, y)] = line.points[..] {
                    // One factor: the method does not depend on it; draw its level across the axis.
                    chart
                        .draw_series(DashedLineSeries::new([(x_min, y), (x_max, y)], 6, 4, style))
                        .map_err(|e| err(&e))?
                        .label(&line.method)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
                } else {
                    chart
                        .draw_series(LineSeries::new(line.points.iter().copied(), style))
                        .map_err(|e| err(&e))?
                        .label(&line.method)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
                    chart
                        .draw_series(line.points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                        .map_err(|e| err(&e))?;
                }
            }
            if k == 0 && !panel.lines.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
