//! Settings of the LM client, as a pipeline config spells them (`[lm]` table).
//!
//! Defaults follow AxBench: gpt-4o-mini at temperature 1.0 for data generation, a 60 s time limit,
//! 3 retries, and about 32 calls in flight.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::types::SamplingParams;

/// Everything the LM client needs except the API key, which is read from the environment
/// variable `api_key_env` names and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmSettings {
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    /// Name of the environment variable holding the API key.
    pub api_key_env: String,
    /// Per-attempt time limit in seconds.
    pub timeout_s: f64,
    /// Most calls in flight at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
}

impl Default for LmSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            temperature: Some(1.0),
            max_tokens: None,
            top_p: None,
            seed: None,
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_s: 60.0,
            concurrency: 32,
            retry: RetryPolicy::default(),
        }
    }
}

impl LmSettings {
    /// The decoding parameters these settings ask for.
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            top_p: self.top_p,
            seed: self.seed,
            replica: 0,
        }
    }
}

/// Bounded retries with exponential backoff and jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (AxBench: 1 + 3 retries).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay_ms: u64,
    /// Cap on the exponential backoff.
    pub max_delay_ms: u64,
    /// Cap on a server's `Retry-After` hint, so a bad header cannot stall a run for hours.
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay_ms: 500,
            max_delay_ms: 20_000,
            max_retry_after_ms: 120_000,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `failed_attempts + 1`, after `failed_attempts` failures.
    ///
    /// "Equal jitter": half the exponential step fixed, half random, so concurrent callers that
    /// failed together spread out but still back off. A server hint is honoured as a floor.
    pub fn delay(&self, failed_attempts: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let step = self.base_delay_ms.saturating_mul(1u64 << exp).min(self.max_delay_ms);
        let half = step / 2;
        let jittered = half
            + if step > half {
                rng.random_range(0..=step - half)
            } else {
                0
            };
        let backoff = Duration::from_millis(jittered);
        match retry_after {
            Some(hint) => hint.min(Duration::from_millis(self.max_retry_after_ms)).max(backoff),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            max_retry_after_ms: 5000,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            for (n, step) in [(1u32, 100u64), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
                let d = p.delay(n, None, &mut rng).as_millis() as u64;
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {n}: {d} not in [{}, {step}]",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn retry_after_is_a_capped_floor() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 10,
            max_delay_ms: 100,
            max_retry_after_ms: 2000,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700)), &mut rng),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), &mut rng),
            Duration::from_millis(2000)
        );
        assert!(p.delay(1, Some(Duration::ZERO), &mut rng) >= Duration::from_millis(5));
    }

    #[test]
    fn settings_parse_from_toml_and_reject_typos() {
        let s: LmSettings =
            toml::from_str("model = \"gpt-4o-mini\"\ntemperature = 0.7\n[retry]\nmax_attempts = 2\n").unwrap();
        assert_eq!(s.temperature, Some(0.7));
        assert_eq!(s.retry.max_attempts, 2);
        assert_eq!(s.concurrency, 32);
        let err = toml::from_str::<LmSettings>("modle = \"x\"").unwrap_err().to_string();
        assert!(err.contains("modle"), "{err}");
    }
}
