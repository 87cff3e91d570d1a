//! Batched autoregressive generation with a KV cache, shared by the steer stage and the HTTP
//! server.
//!
//! Prompts are left-padded into one batch (so every row's next token is at the last column),
//! prefilled once, then decoded one token per step against the cache. Hooks given to
//! [`generate`] stay active for the prompt and every generated token. Sampling is greedy or
//! temperature + top-p (HF's `TopPLogitsWarper` rule), drawn from one seeded RNG per row, so a
//! row's continuation depends only on its prompt, the seed and its row index.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::hooks::{Hooks, Logits};
use crate::model::{Model, ModelError};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely tokens
    /// whose probability reaches `top_p` (1.0 = no restriction).
    Sample {
        temperature: f64,
        top_p: f64,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Tokens that end every row (typically the tokenizer's EOS and end-of-turn ids).
    pub stop_tokens: Vec<i64>,
    /// Id used for left padding (masked out, so any valid id works).
    pub pad_token_id: i64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: vec![],
            pad_token_id: 0,
        }
    }
}

/// One row of a generation batch.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub ids: Vec<i64>,
    /// Extra stop tokens for this row only.
    pub stop_tokens: Vec<i64>,
    /// Which prompt tokens interventions apply to (same length as `ids`); `None` = all.
    pub intervene_on: Option<Vec<bool>>,
}

impl From<Vec<i64>> for Prompt {
    fn from(ids: Vec<i64>) -> Self {
        Prompt {
            ids,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Produced this stop token (included at the end of `tokens`).
    Stop(i64),
    /// Reached `max_new_tokens`.
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// New tokens only (not the prompt).
    pub tokens: Vec<i64>,
    pub finish: FinishReason,
}

/// What [`generate_with`]'s observer sees after every decoding step: enough to stream tokens as
/// they are picked and to report log-probabilities (the HTTP server does both).
#[derive(Debug)]
pub struct Step<'a> {
    /// 0 for the first generated token.
    pub index: usize,
    /// `[B, V]` logits the tokens were picked from (before temperature / top-p), on the model's
    /// device and in its dtype.
    pub logits: &'a Tensor,
    /// The token picked for each row.
    pub tokens: &'a [i64],
    /// Rows still generating at this step; a finished row's pick is not part of its output.
    pub active: &'a [bool],
}

/// Generates continuations for all `prompts` in one batch.
pub fn generate(
    model: &Model,
    prompts: &[Prompt],
    cfg: &GenerateConfig,
    hooks: &Hooks,
) -> Result<Vec<Generation>, ModelError> {
    generate_with(model, prompts, cfg, hooks, &mut |_| {})
}

/// [`generate`], calling `on_step` after each token is picked (before the next forward pass).
pub fn generate_with(
    model: &Model,
    prompts: &[Prompt],
    cfg: &GenerateConfig,
    hooks: &Hooks,
    on_step: &mut dyn FnMut(&Step),
) -> Result<Vec<Generation>, ModelError> {
    let _guard = tch::no_grad_guard();
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    if let Some(i) = prompts.iter().position(|p| p.ids.is_empty()) {
        return Err(ModelError::Input(format!("prompt {i} is empty")));
    }
    if let Sampling::Sample { temperature, top_p } = cfg.sampling
        && (temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0))
    {
        return Err(ModelError::Input(format!(
            "need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
        )));
    }
    let dev = model.device();
    let b = prompts.len() as i64;
    let t = prompts.iter().map(|p| p.ids.len()).max().unwrap() as i64;
    let mut ids = vec![cfg.pad_token_id; (b * t) as usize];
    let mut mask = vec![0i64; (b * t) as usize];
    let mut iv_pos = vec![false; (b * t) as usize];
    let any_positions = prompts.iter().any(|p| p.intervene_on.is_some());
    for (r, p) in prompts.iter().enumerate() {
        let off = r * t as usize + (t as usize - p.ids.len());
        ids[off..off + p.ids.len()].copy_from_slice(&p.ids);
        mask[off..off + p.ids.len()].fill(1);
        match &p.intervene_on {
            Some(v) if v.len() != p.ids.len() => {
                return Err(ModelError::Input(format!(
                    "prompt {r}: intervene_on has {} entries for {} tokens",
                    v.len(),
                    p.ids.len()
                )));
            }
            Some(v) => iv_pos[off..off + v.len()].copy_from_slice(v),
            None => iv_pos[off..off + p.ids.len()].fill(true),
        }
    }
    let hooks = if any_positions {
        hooks.with_positions(Some(Tensor::from_slice(&iv_pos).view([b, t]).to_device(dev)))
    } else {
        hooks.with_positions(hooks.prompt_positions.as_ref().map(Tensor::shallow_clone))
    };
    let input = Tensor::from_slice(&ids).view([b, t]).to_device(dev);
    let mut attn = Tensor::from_slice(&mask).view([b, t]).to_device(dev);
    let mut cache = model.new_cache(b, t + cfg.max_new_tokens as i64);
    let mut rngs: Vec<StdRng> = (0..b as u64)
        .map(|r| StdRng::seed_from_u64(cfg.seed ^ r.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();

    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: vec![],
            finish: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b as usize];
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut logits = model
        .forward(&input, Some(&attn), &hooks, Logits::Last, Some(&mut cache))?
        .logits
        .unwrap();
    let ones = Tensor::ones([b, 1], (Kind::Int64, dev));
    for step in 0..cfg.max_new_tokens {
        let step_logits = logits.squeeze_dim(1);
        let next = pick(&step_logits, cfg.sampling, &mut rngs)?;
        let active: Vec<bool> = done.iter().map(|d| !d).collect();
        on_step(&Step {
            index: step,
            logits: &step_logits,
            tokens: &next,
            active: &active,
        });
        for (r, &tok) in next.iter().enumerate() {
            if done[r] {
                continue;
            }
            out[r].tokens.push(tok);
            if cfg.stop_tokens.contains(&tok) || prompts[r].stop_tokens.contains(&tok) {
                out[r].finish = FinishReason::Stop(tok);
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        let feed: Vec<i64> = next
            .iter()
            .zip(&done)
            .map(|(&tok, &d)| if d { cfg.pad_token_id } else { tok })
            .collect();
        let feed = Tensor::from_slice(&feed).view([b, 1]).to_device(dev);
        attn = Tensor::cat(&[&attn, &ones], 1);
        logits = model
            .forward(&feed, Some(&attn), &hooks, Logits::Last, Some(&mut cache))?
            .logits
            .unwrap();
    }
    Ok(out)
}

/// Next token per row from `[B, V]` logits.
fn pick(logits: &Tensor, sampling: Sampling, rngs: &mut [StdRng]) -> Result<Vec<i64>, ModelError> {
    match sampling {
        Sampling::Greedy => Ok(Vec::<i64>::try_from(
            logits.argmax(-1, false).to_device(tch::Device::Cpu),
        )?),
        Sampling::Sample { temperature, top_p } => {
            let scaled = logits.to_kind(Kind::Float) / temperature;
            let probs = if top_p < 1.0 {
                // HF TopPLogitsWarper: sort ascending, drop the tail whose cumulative probability
                // is <= 1 - top_p, always keeping the most likely token.
                let (sorted, idx) = scaled.sort(-1, false);
                let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
                let v = cum.size()[1];
                let remove = cum.le(1.0 - top_p);
                let _ = remove.narrow(1, v - 1, 1).fill_(0);
                let remove = remove.scatter(1, &idx, &remove);
                scaled.masked_fill(&remove, f64::NEG_INFINITY).softmax(-1, Kind::Float)
            } else {
                scaled.softmax(-1, Kind::Float)
            };
            let probs = probs.to_device(tch::Device::Cpu).contiguous();
            let (b, v) = probs.size2()?;
            let flat = Vec::<f32>::try_from(probs.view([-1]))?;
            Ok((0..b as usize)
                .map(|r| {
                    let row = &flat[r * v as usize..(r + 1) * v as usize];
                    let total: f64 = row.iter().map(|&p| p as f64).sum();
                    let u = rngs[r].random::<f64>() * total;
                    let mut acc = 0.0;
                    let mut chosen = row.iter().rposition(|&p| p > 0.0).unwrap_or(0);
                    for (i, &p) in row.iter().enumerate() {
                        acc += p as f64;
                        if acc > u && p > 0.0 {
                            chosen = i;
                            break;
                        }
                    }
                    chosen as i64
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // probs ≈ [0.643, 0.237, 0.087, 0.032]; top_p 0.7 keeps the two most likely tokens.
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 0.0]).view([1, 4]);
        let mut rngs = vec![StdRng::seed_from_u64(7)];
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let t = pick(
                &logits,
                Sampling::Sample {
                    temperature: 1.0,
                    top_p: 0.7,
                },
                &mut rngs,
            )
            .unwrap();
            seen[t[0] as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        // Tiny top_p degenerates to greedy.
        let t = pick(
            &logits,
            Sampling::Sample {
                temperature: 1.0,
                top_p: 1e-6,
            },
            &mut rngs,
        )
        .unwrap();
        assert_eq!(t, vec![0]);
    }

    #[test]
    fn sampling_is_deterministic_per_seed() {
        let logits = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6]).view([1, 6]);
        let draw = |seed| {
            let mut rngs = vec![StdRng::seed_from_u64(seed)];
            (0..20)
                .map(|_| {
                    pick(
                        &logits,
                        Sampling::Sample {
                            temperature: 1.0,
                            top_p: 1.0,
                        },
                        &mut rngs,
                    )
                    .unwrap()[0]
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
