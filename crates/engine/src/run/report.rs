//! Progress display: one indicatif bar per stage with done/total node counts and, under it,
//! one bar per running node that reports progress (`ctx.progress()`: rows done of total).
//!
//! When stderr is not a terminal (CI logs, `nohup`, a pipe) no bars are drawn; running nodes
//! that report progress print a plain line instead, once per interval after they start
//! (`node: 120/450 (26%) message`), so a long model stage still shows that it is moving
//! without flooding a log file, and short nodes print nothing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::compile::expand::Node;
use crate::compile::plan::{NodeState, Plan};
use crate::run::schedule::Reporter;
use crate::stage::ProgressSink;

/// How often a node's progress is printed as a plain line when stderr is not a terminal.
pub const DEFAULT_PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// A [`Reporter`] that draws per-stage bars and per-node progress.
pub struct BarReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Progress of nodes that are running (by node id), to clear their bar when they end.
    nodes: Mutex<HashMap<String, Arc<NodeProgress>>>,
    /// Draw bars (stderr is a terminal) or print plain lines.
    tty: bool,
    plain_interval: Duration,
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl BarReporter {
    /// Bars if stderr is a terminal, plain progress lines every [`DEFAULT_PLAIN_INTERVAL`]
    /// otherwise.
    pub fn new() -> Self {
        Self::with_mode(std::io::stderr().is_terminal(), DEFAULT_PLAIN_INTERVAL)
    }

    /// `tty = false` prints plain lines (at most one per node per `plain_interval`) instead of
    /// drawing bars.
    pub fn with_mode(tty: bool, plain_interval: Duration) -> Self {
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        BarReporter {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            tty,
            plain_interval,
        }
    }

    /// Whether bars are drawn (stderr is a terminal).
    pub fn is_visible(&self) -> bool {
        self.tty && !self.multi.is_hidden()
    }
}

impl Reporter for BarReporter {
    fn wave(&self, plan: &Plan) {
        let mut counts: Vec<(String, u64)> = Vec::new();
        for (n, p) in plan.graph.nodes.iter().zip(&plan.nodes) {
            if p.state != NodeState::Fresh {
                match counts.iter_mut().find(|(s, _)| s.as_str() == &*n.stage) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((n.stage.to_string(), 1)),
                }
            }
        }
        let mut bars = self.bars.lock().unwrap();
        let style = ProgressStyle::with_template("{prefix:>24.bold} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}")
            .unwrap()
            .progress_chars("=> ");
        for (stage, c) in counts {
            let bar = bars.entry(stage.clone()).or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(stage.clone());
                b
            });
            bar.inc_length(c);
        }
    }

    fn started(&self, node: &Node) {
        if let Some(b) = self.bars.lock().unwrap().get(&*node.stage) {
            b.set_message(node.id.clone());
        }
    }

    fn finished(&self, node: &Node, outcome: &str) {
        if let Some(p) = self.nodes.lock().unwrap().remove(&node.id) {
            p.close();
        }
        if let Some(b) = self.bars.lock().unwrap().get(&*node.stage) {
            b.inc(1);
            if outcome == "failed" {
                b.set_message(format!("{} failed", node.id));
            }
            if b.position() >= b.length().unwrap_or(0) {
                b.finish();
            }
        }
    }

    fn progress(&self, node: &Node) -> Arc<dyn ProgressSink> {
        let stage_bar = self.bars.lock().unwrap().get(&*node.stage).cloned();
        let p = Arc::new(NodeProgress {
            node: node.id.clone(),
            multi: self.multi.clone(),
            stage_bar,
            tty: self.tty,
            interval: self.plain_interval,
            state: Mutex::new(State {
                bar: None,
                len: 0,
                pos: 0,
                msg: String::new(),
                last_line: Instant::now(),
                closed: false,
            }),
        });
        self.nodes.lock().unwrap().insert(node.id.clone(), p.clone());
        p
    }
}

/// One running node's progress: a bar inserted under its stage's bar (created on the first
/// report, so nodes waiting for a slot draw nothing), or plain lines.
struct NodeProgress {
    node: String,
    multi: MultiProgress,
    stage_bar: Option<ProgressBar>,
    tty: bool,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    len: u64,
    pos: u64,
    msg: String,
    /// When the last plain line was printed (at first: when the node was handed out), so a
    /// node shorter than the interval prints nothing.
    last_line: Instant,
    /// The node ended: later reports (a stage thread still finishing) are ignored.
    closed: bool,
}

impl NodeProgress {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return;
        }
        f(&mut s);
        let s = &mut *s;
        if self.tty {
            let bar = s.bar.get_or_insert_with(|| {
                let b = ProgressBar::new(0);
                let b = match &self.stage_bar {
                    Some(stage) => self.multi.insert_after(stage, b),
                    None => self.multi.add(b),
                };
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>24.dim} [{bar:30.green/white}] {pos}/{len} {per_sec} eta {eta} {wide_msg}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                b.set_prefix(format!("└ {}", short(&self.node, 22)));
                b
            });
            bar.set_length(s.len);
            bar.set_position(s.pos);
            bar.set_message(s.msg.clone());
        } else if s.last_line.elapsed() >= self.interval && (s.pos > 0 || !s.msg.is_empty()) {
            s.last_line = Instant::now();
            eprintln!("{}", plain_line(&self.node, s.pos, s.len, &s.msg));
        }
    }

    fn close(&self) {
        let mut s = self.state.lock().unwrap();
        s.closed = true;
        if let Some(b) = s.bar.take() {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
    }
}

impl ProgressSink for NodeProgress {
    fn set_length(&self, len: u64) {
        self.update(|s| s.len = len);
    }
    fn inc(&self, n: u64) {
        self.update(|s| s.pos += n);
    }
    fn set_message(&self, msg: String) {
        self.update(|s| s.msg = msg);
    }
}

/// `node: 120/450 (26%) message` — what a node's progress looks like in a log.
pub fn plain_line(node: &str, pos: u64, len: u64, msg: &str) -> String {
    let mut line = format!("{node}: {pos}");
    if let Some(pct) = pos.saturating_mul(100).checked_div(len) {
        line.push_str(&format!("/{len} ({pct}%)"));
    }
    if !msg.is_empty() {
        line.push(' ');
        line.push_str(msg);
    }
    line
}

/// The last `max` characters of a node id, with `…` in front when cut.
fn short(id: &str, max: usize) -> String {
    let n = id.chars().count();
    if n <= max {
        id.to_string()
    } else {
        format!("…{}", id.chars().skip(n - max + 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_show_done_total_and_percent() {
        assert_eq!(
            plain_line("activations[concept=3]", 120, 450, "145 rows, layer 9"),
            "activations[concept=3]: 120/450 (26%) 145 rows, layer 9"
        );
        assert_eq!(plain_line("n", 5, 0, ""), "n: 5");
    }

    #[test]
    fn long_ids_keep_their_end() {
        assert_eq!(short("abc", 5), "abc");
        assert_eq!(short("fit[concept=12,method=pca]", 10), "…thod=pca]");
    }
}
