//! Batched autoregressive generation with a KV cache, shared by the steer stage and the HTTP
//! server.
//!
//! Prompts are left-padded into one batch (so every row's next token is at the last column),
//! prefilled once, then decoded one token per step against the cache. Hooks given to
//! [`generate`] stay active for the prompt and every generated token. Sampling is greedy or
//! temperature, then top-k, then top-p (HF's warpers, in HF's order), drawn from one seeded RNG per
//! row, so a row's continuation depends only on its prompt, the seed and its row index.
//!
//! Everything per token stays on the model's device: the warpers, the softmax and the inverse-CDF
//! draw run there, and only `B` uniforms go up and `B` token ids come back each step (on a GPU,
//! copying the `[B, V]` probabilities to the host and scanning them on one core took about as long
//! as the decode step itself).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::hooks::{Hooks, Logits};
use crate::model::{Model, ModelError};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the `top_k` most likely tokens (0 = no
    /// restriction), then to the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1.0 = no restriction). HF `generate`'s defaults are top-k 50, top-p 1.0.
    Sample {
        temperature: f64,
        top_k: usize,
        top_p: f64,
    },
}

impl Sampling {
    /// Softmax sampling at `temperature` over the whole vocabulary.
    pub fn full(temperature: f64) -> Self {
        Sampling::Sample {
            temperature,
            top_k: 0,
            top_p: 1.0,
        }
    }
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
    if let Sampling::Sample { temperature, top_p, .. } = cfg.sampling
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

/// Next token per row from `[B, V]` logits, computed on the logits' device; one uniform per row is
/// drawn from that row's generator on the host (so the stream is the same on every device), and
/// only the chosen ids are copied back.
fn pick(logits: &Tensor, sampling: Sampling, rngs: &mut [StdRng]) -> Result<Vec<i64>, ModelError> {
    let dev = logits.device();
    let ids = match sampling {
        Sampling::Greedy => logits.argmax(-1, false),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let probs = warped_probs(logits, temperature, top_k, top_p);
            let uniforms: Vec<f64> = rngs.iter_mut().map(|r| r.random::<f64>()).collect();
            draw(&probs, &Tensor::from_slice(&uniforms).to_device(dev))
        }
    };
    Ok(Vec::<i64>::try_from(ids.to_device(tch::Device::Cpu))?)
}

/// `[B, V]` f32 probabilities after temperature, top-k and top-p, as HF's `TemperatureLogitsWarper`,
/// `TopKLogitsWarper` and `TopPLogitsWarper` compute them (in that order).
fn warped_probs(logits: &Tensor, temperature: f64, top_k: usize, top_p: f64) -> Tensor {
    let mut scaled = logits.to_kind(Kind::Float) / temperature;
    let v = scaled.size()[1];
    if top_k > 0 && (top_k as i64) < v {
        // Keep every token at least as likely as the k-th (ties at the threshold survive, as in HF).
        let (top, _) = scaled.topk(top_k as i64, -1, true, true);
        let kth = top.narrow(1, top_k as i64 - 1, 1);
        scaled = scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if top_p < 1.0 {
        // Sort ascending, drop the tail whose cumulative probability is <= 1 - top_p, always
        // keeping the most likely token.
        let (sorted, idx) = scaled.sort(-1, false);
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove = cum.le(1.0 - top_p);
        let _ = remove.narrow(1, v - 1, 1).fill_(0);
        let remove = remove.scatter(1, &idx, &remove);
        scaled = scaled.masked_fill(&remove, f64::NEG_INFINITY);
    }
    scaled.softmax(-1, Kind::Float)
}

/// Inverse-CDF draw per row: the first token whose cumulative probability (summed in f64, left to
/// right) exceeds `u × total`, never a token of probability 0. `uniforms` is `[B]` in [0, 1).
fn draw(probs: &Tensor, uniforms: &Tensor) -> Tensor {
    let cum = probs.cumsum(-1, Kind::Double);
    let v = cum.size()[1];
    let total = cum.narrow(1, v - 1, 1);
    let threshold = uniforms.view([-1, 1]) * &total;
    let first_above = cum.le_tensor(&threshold).sum_dim_intlist(-1, false, Kind::Int64);
    // Rounding can put u × total at the very top; the last token with mass is then the answer.
    let positions = Tensor::arange(v, (Kind::Int64, probs.device())).view([1, v]);
    let last_with_mass = positions.where_self(&probs.gt(0.0), &Tensor::from(-1i64).to_device(probs.device()));
    let last_with_mass = last_with_mass.amax(-1, false);
    first_above.minimum(&last_with_mass)
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
                    top_k: 0,
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
                top_k: 0,
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
                .map(|_| pick(&logits, Sampling::full(1.0), &mut rngs).unwrap()[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    /// The device draw against the host scan it replaced (f64 running sum, first index past u ×
    /// total with mass): the same ids for the same uniforms, including zero-probability tokens
    /// and a uniform at the very top.
    #[test]
    fn device_draw_equals_the_host_scan() {
        fn host(row: &[f32], u: f64) -> i64 {
            let total: f64 = row.iter().map(|&p| p as f64).sum();
            let u = u * total;
            let mut acc = 0.0;
            for (i, &p) in row.iter().enumerate() {
                acc += p as f64;
                if acc > u && p > 0.0 {
                    return i as i64;
                }
            }
            row.iter().rposition(|&p| p > 0.0).unwrap() as i64
        }
        let rows: Vec<Vec<f32>> = vec![
            vec![0.1, 0.0, 0.2, 0.3, 0.4, 0.0],
            vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
            vec![0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
        ];
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let mut us: Vec<f64> = (0..rows.len()).map(|_| rng.random::<f64>()).collect();
            us[2] = 1.0 - f64::EPSILON / 2.0;
            let flat: Vec<f32> = rows.concat();
            let probs = Tensor::from_slice(&flat).view([rows.len() as i64, 6]);
            let got = Vec::<i64>::try_from(draw(&probs, &Tensor::from_slice(&us))).unwrap();
            let want: Vec<i64> = rows.iter().zip(&us).map(|(r, &u)| host(r, u)).collect();
            assert_eq!(got, want, "uniforms {us:?}");
        }
    }

    /// Top-k keeps the k most likely tokens (ties at the threshold included), before top-p.
    #[test]
    fn top_k_then_top_p_as_hf_orders_them() {
        let logits = Tensor::from_slice(&[0.0f32, 3.0, 1.0, 2.0, 2.0]).view([1, 5]);
        let p = Vec::<f32>::try_from(warped_probs(&logits, 1.0, 2, 1.0).view([-1])).unwrap();
        assert_eq!(p[0], 0.0);
        assert_eq!(p[2], 0.0);
        assert!(
            p[1] > 0.0 && p[3] > 0.0 && p[4] > 0.0,
            "the tie with the 2nd survives: {p:?}"
        );
        // k = 3 → {1, 3, 4}; top-p 0.5 then keeps only token 1 (e^3 / (e^3 + 2e^2) ≈ 0.58).
        let p = Vec::<f32>::try_from(warped_probs(&logits, 1.0, 3, 0.5).view([-1])).unwrap();
        assert_eq!(p, vec![0.0, 1.0, 0.0, 0.0, 0.0]);
        // Temperature divides before top-k (a no-op for the set, not for the probabilities).
        let hot = Vec::<f32>::try_from(warped_probs(&logits, 2.0, 0, 1.0).view([-1])).unwrap();
        let want = (1.5f32).exp() / [0.0f32, 1.5, 0.5, 1.0, 1.0].iter().map(|x| x.exp()).sum::<f32>();
        assert!((hot[1] - want).abs() < 1e-6);
    }
}
