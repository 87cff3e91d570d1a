//! The model worker: one OS thread owns the model and runs batches; HTTP handlers talk to it
//! through a channel.
//!
//! Batching is static (not continuous): the worker blocks for a request, then keeps collecting
//! requests for `batch_window` (or until `max_batch`), and requests that arrive while a batch
//! runs queue up for the next one. A batch is split into groups that can share one
//! [`generate_with`] call, i.e. the same sampling rule and seed (all greedy requests form one
//! group); within a group every row has its own prompt, token budget, steering vector and factor.
//! A row whose `max_tokens` is reached stops being reported while the rest of its group finishes.
//!
//! Tokens are sent to the request's channel as they are picked, which is what streaming reads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use axbench_models::generate::{FinishReason, GenerateConfig, Prompt, Sampling, Step, generate_with};
use axbench_models::hooks::{AddVectors, Hooks};
use axbench_models::model::{LoadOptions, Model};
use axbench_models::vectors::NamedSteer;
use tch::{Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

/// Counters the tests and `/health` read.
#[derive(Debug, Default)]
pub struct Stats {
    /// `generate` calls made.
    pub batches: AtomicU64,
    /// Rows generated (one per choice).
    pub rows: AtomicU64,
    /// Largest number of rows in one `generate` call.
    pub max_batch_rows: AtomicU64,
    /// Tokens generated and reported.
    pub tokens: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "batches": self.batches.load(Ordering::Relaxed),
            "rows": self.rows.load(Ordering::Relaxed),
            "max_batch_rows": self.max_batch_rows.load(Ordering::Relaxed),
            "tokens": self.tokens.load(Ordering::Relaxed),
        })
    }
}

/// A steer ready to apply: unit-norm directions by layer.
#[derive(Debug, Clone)]
pub struct UnitSteer {
    pub layers: BTreeMap<usize, Vec<f32>>,
    pub source: PathBuf,
}

impl UnitSteer {
    /// Normalizes every layer's direction to unit L2 norm (a zero direction is an error).
    pub fn from_named(s: NamedSteer) -> Result<UnitSteer, String> {
        let mut layers = BTreeMap::new();
        for (l, d) in s.layers {
            let norm = d.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return Err(format!(
                    "{}: vector `{}` at layer {l} has norm {norm}",
                    s.source.display(),
                    s.name
                ));
            }
            layers.insert(l, d.iter().map(|x| (*x as f64 / norm) as f32).collect());
        }
        Ok(UnitSteer {
            layers,
            source: s.source,
        })
    }
}

/// What a handler asks the worker for: one row.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<i64>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Steer name (validated by the handler) and factor.
    pub steering: Option<(String, f64)>,
    /// `Some(k)`: report the chosen token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
}

/// Log-probabilities at one position (natural log of the model's softmax over the raw logits,
/// before temperature / top-p).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionLogprobs {
    pub chosen: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(i64, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token {
        id: i64,
        logprobs: Option<PositionLogprobs>,
    },
    /// The row is finished: `stop` (a stop token, not reported) or `length`.
    Done {
        finish: &'static str,
    },
    Error(String),
}

/// Handle to the worker thread. Dropping every clone ends the worker after its current batch.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<GenRequest>,
    pub stats: Arc<Stats>,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub batch_window: Duration,
    pub max_batch: usize,
    pub threads: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch_window: Duration::from_millis(5),
            max_batch: 32,
            threads: None,
        }
    }
}

/// Facts about the loaded model the handlers need.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub stop_tokens: Vec<i64>,
    pub pad_token_id: i64,
}

impl Engine {
    /// Loads the model on a new thread (libtorch state stays on that thread) and starts the
    /// batching loop. Returns once the model is loaded, or with the load error.
    pub fn start(
        path: PathBuf,
        load: LoadOptions,
        steers: HashMap<String, UnitSteer>,
        extra_stop_tokens: Vec<i64>,
        opts: EngineOptions,
    ) -> Result<(Engine, ModelFacts), String> {
        let (tx, rx) = mpsc::channel::<GenRequest>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelFacts, String>>();
        let stats = Arc::new(Stats::default());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("axbench-serve-model".into())
            .spawn(move || {
                if let Some(n) = opts.threads {
                    axbench_models::device::set_threads(n);
                }
                let model = match Model::load(&path, &load) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let info = model.info().clone();
                let mut stop_tokens = info.eos_token_ids.clone();
                for t in extra_stop_tokens {
                    if !stop_tokens.contains(&t) {
                        stop_tokens.push(t);
                    }
                }
                let facts = ModelFacts {
                    num_layers: info.num_layers,
                    hidden_size: info.hidden_size,
                    stop_tokens,
                    pad_token_id: info.pad_token_id.unwrap_or(0),
                };
                for (name, s) in &steers {
                    for (&l, d) in &s.layers {
                        if l >= facts.num_layers || d.len() != facts.hidden_size {
                            let _ = ready_tx.send(Err(format!(
                                "{}: vector `{name}` is for layer {l} with {} elements; the model has layers 0..{} of width {}",
                                s.source.display(),
                                d.len(),
                                facts.num_layers - 1,
                                facts.hidden_size
                            )));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(facts.clone()));
                let worker = Worker { model, steers, facts, stats: worker_stats, opts };
                worker.run(rx);
            })
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let facts = ready_rx
            .recv()
            .map_err(|_| "the model thread ended while loading".to_string())??;
        Ok((Engine { tx, stats }, facts))
    }

    /// Queues one row; its events arrive on `req.events`.
    pub fn submit(&self, req: GenRequest) -> Result<(), String> {
        self.tx
            .send(req)
            .map_err(|_| "the model worker has stopped".to_string())
    }
}

struct Worker {
    model: Model,
    steers: HashMap<String, UnitSteer>,
    facts: ModelFacts,
    stats: Arc<Stats>,
    opts: EngineOptions,
}

/// Requests that can share one `generate` call.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupKey {
    sampling: Sampling,
    seed: u64,
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<GenRequest>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.opts.batch_window;
            while batch.len() < self.opts.max_batch {
                // Whatever queued up while the last batch ran is taken without waiting.
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut groups: Vec<(GroupKey, Vec<GenRequest>)> = Vec::new();
            for r in batch {
                let key = match r.sampling {
                    Sampling::Greedy => GroupKey {
                        sampling: Sampling::Greedy,
                        seed: 0,
                    },
                    s => GroupKey {
                        sampling: s,
                        seed: r.seed,
                    },
                };
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, g)) => g.push(r),
                    None => groups.push((key, vec![r])),
                }
            }
            for (key, rows) in groups {
                self.run_group(key, rows);
            }
        }
    }

    fn run_group(&self, key: GroupKey, rows: Vec<GenRequest>) {
        let n = rows.len();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.max_batch_rows.fetch_max(n as u64, Ordering::Relaxed);
        let prompts: Vec<Prompt> = rows.iter().map(|r| Prompt::from(r.prompt.clone())).collect();
        let cfg = GenerateConfig {
            max_new_tokens: rows.iter().map(|r| r.max_tokens).max().unwrap_or(0),
            sampling: key.sampling,
            seed: key.seed,
            stop_tokens: self.facts.stop_tokens.clone(),
            pad_token_id: self.facts.pad_token_id,
        };
        // One AddVectors per steered layer: row r gets `factor_r * unit_r` there, other rows 0.
        let d = self.facts.hidden_size;
        let mut per_layer: BTreeMap<usize, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
        for (r, row) in rows.iter().enumerate() {
            if let Some((name, factor)) = &row.steering
                && let Some(s) = self.steers.get(name)
            {
                for (&l, dir) in &s.layers {
                    let (vecs, scales) = per_layer.entry(l).or_insert_with(|| (vec![0.0; n * d], vec![0.0; n]));
                    vecs[r * d..(r + 1) * d].copy_from_slice(dir);
                    scales[r] = *factor as f32;
                }
            }
        }
        // Built once per batch on the model's device, so no step copies them again.
        let (dev, kind) = (self.model.device(), self.model.kind());
        let adds: Vec<(usize, AddVectors)> = per_layer
            .into_iter()
            .map(|(l, (v, s))| {
                let vectors = Tensor::from_slice(&v)
                    .view([n as i64, d as i64])
                    .to_device(dev)
                    .to_kind(kind);
                (
                    l,
                    AddVectors::new(vectors, Tensor::from_slice(&s).to_device(dev).to_kind(kind)),
                )
            })
            .collect();
        let mut hooks = Hooks::none();
        for (l, a) in &adds {
            hooks = hooks.intervene(*l, a);
        }
        let top_k = rows.iter().filter_map(|r| r.logprobs).max();
        let stop = &self.facts.stop_tokens;
        let mut emitted = vec![0usize; n];
        let mut on_step = |step: &Step| {
            let lp = top_k.map(|k| StepLogprobs::of(step, k));
            for (r, row) in rows.iter().enumerate() {
                let tok = step.tokens[r];
                if !step.active[r] || emitted[r] >= row.max_tokens || stop.contains(&tok) {
                    continue;
                }
                let logprobs = match (row.logprobs, &lp) {
                    (Some(k), Some(lp)) => Some(lp.row(r, k)),
                    _ => None,
                };
                emitted[r] += 1;
                let _ = row.events.send(Event::Token { id: tok, logprobs });
            }
        };
        match generate_with(&self.model, &prompts, &cfg, &hooks, &mut on_step) {
            Ok(gens) => {
                for ((row, g), &count) in rows.iter().zip(&gens).zip(&emitted) {
                    self.stats.tokens.fetch_add(count as u64, Ordering::Relaxed);
                    let finish = match g.finish {
                        FinishReason::Stop(_) if g.tokens.len() <= row.max_tokens => "stop",
                        _ => "length",
                    };
                    let _ = row.events.send(Event::Done { finish });
                }
            }
            Err(e) => {
                tracing::error!("generation failed: {e}");
                for row in &rows {
                    let _ = row.events.send(Event::Error(e.to_string()));
                }
            }
        }
    }
}

/// One step's log-probabilities, reduced on the model's device to what the API returns: the chosen
/// token's and the `k` highest per row (copying `[B, V]` to the host every token was the cost).
struct StepLogprobs {
    k: usize,
    chosen: Vec<f32>,
    top_values: Vec<f32>,
    top_ids: Vec<i64>,
}

impl StepLogprobs {
    fn of(step: &Step, k: usize) -> Self {
        let lp = step.logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let picked = Tensor::from_slice(step.tokens).to_device(lp.device()).view([-1, 1]);
        let chosen = Vec::<f32>::try_from(lp.gather(1, &picked, false).view([-1]).to_device(tch::Device::Cpu));
        let (top_values, top_ids) = if k == 0 {
            (vec![], vec![])
        } else {
            let (vals, idx) = lp.topk(k as i64, -1, true, true);
            (
                Vec::<f32>::try_from(vals.reshape([-1]).to_device(tch::Device::Cpu)).unwrap_or_default(),
                Vec::<i64>::try_from(idx.reshape([-1]).to_device(tch::Device::Cpu)).unwrap_or_default(),
            )
        };
        StepLogprobs {
            k,
            chosen: chosen.unwrap_or_default(),
            top_values,
            top_ids,
        }
    }

    /// Row `r`'s chosen-token log-probability and its `k` (at most the batch's) most likely tokens.
    fn row(&self, r: usize, k: usize) -> PositionLogprobs {
        let k = k.min(self.k);
        let at = r * self.k;
        let top = match (self.top_ids.get(at..at + k), self.top_values.get(at..at + k)) {
            (Some(ids), Some(vals)) => ids.iter().copied().zip(vals.iter().copied()).collect(),
            _ => vec![],
        };
        PositionLogprobs {
            chosen: self.chosen.get(r).copied().unwrap_or(f32::NAN),
            top,
        }
    }
}
