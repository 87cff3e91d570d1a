//! The HTML report: the Markdown report rendered by `pulldown-cmark` (tables extension), with every image that
//! names one of the report's plots replaced by that plot's SVG inline, so `report.html` is one self-contained file
//! that opens anywhere (no sibling files, no network).

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd, html};

use super::Plot;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}th{background:#f3f3f3}\
td{font-variant-numeric:tabular-nums}figure{margin:1.5em 0}svg{max-width:100%;height:auto}code{background:#f3f3f3;padding:0 .2em}";

/// Text or attribute value escaped for HTML (pulldown-cmark escapes what it renders, not our wrapper).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The SVG as an inline element: any XML prolog dropped (it is not allowed inside HTML).
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// Renders `markdown` to a whole HTML page titled `title`, inlining `plots` where the Markdown links them.
pub fn render(title: &str, markdown: &str, plots: &[Plot]) -> String {
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES);
    let mut events = Vec::new();
    // Inside an image that we replaced: drop its alt-text events up to the matching end.
    let mut skipping = false;
    for ev in parser {
        match ev {
            Event::Start(Tag::Image { ref dest_url, .. }) => match plots.iter().find(|p| p.file == dest_url.as_ref()) {
                Some(p) => {
                    events.push(Event::Html(
                        format!(
                            "<figure id=\"{}\">{}<figcaption>{}</figcaption></figure>",
                            escape(&p.file),
                            inline_svg(&p.svg),
                            escape(&p.title)
                        )
                        .into(),
                    ));
                    skipping = true;
                }
                None => events.push(ev),
            },
            Event::End(TagEnd::Image) if skipping => skipping = false,
            _ if skipping => {}
            _ => events.push(ev),
        }
    }
    // A plot's image is a paragraph of its own in the Markdown; a <figure> may not sit inside a <p>.
    let is_figure = |e: &Event| matches!(e, Event::Html(h) if h.starts_with("<figure"));
    let mut kept = Vec::with_capacity(events.len());
    for i in 0..events.len() {
        let wraps_figure = match &events[i] {
            Event::Start(Tag::Paragraph) => {
                events.get(i + 1).is_some_and(is_figure)
                    && matches!(events.get(i + 2), Some(Event::End(TagEnd::Paragraph)))
            }
            Event::End(TagEnd::Paragraph) => {
                i >= 2 && is_figure(&events[i - 1]) && matches!(events[i - 2], Event::Start(Tag::Paragraph))
            }
            _ => false,
        };
        if !wraps_figure {
            kept.push(events[i].clone());
        }
    }
    let mut body = String::new();
    html::push_html(&mut body, kept.into_iter());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}
