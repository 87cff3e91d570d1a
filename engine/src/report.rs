//! Progress bars: one indicatif bar per stage with done/total counts. Hidden automatically
//! when stderr is not a terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::expand::Node;
use crate::plan::{NodeState, Plan};
use crate::schedule::Reporter;
use crate::stage::{NoProgress, ProgressSink};

/// A [`Reporter`] that draws per-stage bars.
pub struct BarReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl BarReporter {
    pub fn new() -> Self {
        BarReporter { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), bars: Mutex::new(HashMap::new()) }
    }

    /// Whether bars are drawn (stderr is a terminal).
    pub fn is_visible(&self) -> bool {
        !self.multi.is_hidden()
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
        let style = ProgressStyle::with_template("{prefix:>24.bold} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}").unwrap().progress_chars("=> ");
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

    fn progress(&self, _node: &Node) -> Arc<dyn ProgressSink> {
        Arc::new(NoProgress)
    }
}
