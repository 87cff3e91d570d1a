//! [`LocalBackend`]: an [`LmBackend`] that answers chat requests with our own model runtime instead of an HTTP API,
//! so judging and synthesis run offline (by default on the embedded SmolLM2-135M-Instruct GGUF).
//!
//! It speaks the same [`ChatRequest`] → [`Completion`] shapes as the remote backend, so [`LmClient`](super::LmClient)
//! gives it the same cache, retries and accounting. The model's identity in requests — and therefore in cache keys
//! — is `local:<file stem>@<blake3 of the file>/r<N>` ([`LocalBackend::model_id`]): replacing the file with different
//! bytes under the same name never reuses a stale answer, and a copy elsewhere reuses every answer. `N` is
//! [`RUNTIME_REVISION`]: the answers also depend on our tokenizer, chat templates and numerics, so a release that
//! changes what the runtime replies bumps it and cached replies of the old runtime are not reused.
//!
//! Decoding: `temperature` 0 is greedy, anything else samples with `temperature` and `top_p` (defaults 1.0, as
//! OpenAI's); `seed` (default 0) seeds the sampler, so a request is answered identically every time; `max_tokens`
//! defaults to [`DEFAULT_MAX_TOKENS`]. One request runs at a time (a blocking thread holds the model); concurrency
//! comes from the cache, not from parallel decoding.
//!
//! Constrained requests ([`ChoiceConstraint`], `request.constraint`): no decoding; the chat is rendered with the
//! generation prompt, the constraint's prefix appended, and every choice scored by the sum of its tokens'
//! log-probabilities in one batched forward pass ([`choice_logprobs`]); the reply is `prefix + best + suffix`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The revision of what the local runtime replies for a given model file (tokenization, chat templates,
/// decoding, numerics). Part of every local model id, so LM-cache entries of an older runtime are not reused.
/// Bump it with any change that alters replies. 2: GGUF SentencePiece vocabularies tokenize like llama.cpp.
pub const RUNTIME_REVISION: u32 = 2;

use axbench_models::chat::{ChatTemplate, Message as ChatMessage};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{FinishReason as GenFinish, GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::{Hooks, Logits};
use axbench_models::model::{Padding, pad};
use axbench_models::open::open_model;
use axbench_models::tokenizer::Tokenizer;
use axbench_models::{LoadOptions, Model};

use super::backend::{BackendError, BoxFuture, LmBackend};
use super::types::{ChatRequest, ChoiceConstraint, Completion, FinishReason, Role, Usage};

/// `max_tokens` when a request does not set one.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Why a local model could not be set up. Errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum LocalSetupError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{0}")]
    Resolve(String),
}

struct Loaded {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stops: Vec<i64>,
}

/// A GGUF chat model answering [`ChatRequest`]s in process.
pub struct LocalBackend {
    id: String,
    path: PathBuf,
    inner: Arc<Mutex<Loaded>>,
}

impl LocalBackend {
    /// Loads a GGUF chat model (its chat template comes from the file, or Gemma's turn format for Gemma files).
    pub fn load(path: &Path, device: DeviceSpec) -> Result<Self, LocalSetupError> {
        let err = |m: String| LocalSetupError::Load {
            path: path.to_path_buf(),
            message: m,
        };
        if path.is_dir() {
            return Err(err(
                "the local LM backend reads .gguf files (HF directories are not supported here yet)".into(),
            ));
        }
        let digest = axbench_cache::hash_file(path).map_err(|e| err(e.to_string()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let opened = open_model(
            path,
            &LoadOptions {
                device,
                dtype: DType::F32,
            },
        )
        .map_err(|e| err(e.to_string()))?;
        let template = opened.vocab.require_template(path).map_err(|e| err(e.to_string()))?;
        let stops = opened.vocab.stop_tokens();
        let (model, tokenizer) = (opened.model, opened.vocab.tokenizer);
        Ok(LocalBackend {
            id: format!("local:{stem}@{}/r{RUNTIME_REVISION}", digest.to_hex()),
            path: path.to_path_buf(),
            inner: Arc::new(Mutex::new(Loaded {
                model,
                tokenizer,
                template,
                stops,
            })),
        })
    }

    /// `spec`: `default-instruct` (SmolLM2-135M-Instruct), `default` (gemma-3-270m base) or a path, resolved like
    /// `--model` (see [`axbench_models::open::resolve_model`]).
    pub fn from_spec(spec: &str, device: DeviceSpec) -> Result<Self, LocalSetupError> {
        let path = axbench_models::open::resolve_model(spec).map_err(LocalSetupError::Resolve)?;
        Self::load(&path, device)
    }

    /// The model name requests must carry, and the cache keys hold: `local:<stem>@<blake3 hex>/r<revision>`.
    pub fn model_id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Answers one request on the loaded model (blocking).
fn answer(m: &Loaded, id: &str, request: &ChatRequest) -> Result<Completion, BackendError> {
    let reject = |message: String| BackendError::Rejected { status: 400, message };
    let messages: Vec<ChatMessage> = request
        .messages
        .iter()
        .map(|msg| match msg.role {
            Role::System => ChatMessage::system(msg.content.clone()),
            Role::User => ChatMessage::user(msg.content.clone()),
            Role::Assistant => ChatMessage::assistant(msg.content.clone()),
        })
        .collect();
    if let Some(constraint) = &request.constraint {
        let rendered = m.template.render(&messages, true).map_err(|e| reject(e.to_string()))?;
        let scored = choice_logprobs(&m.model, &m.tokenizer, &rendered, constraint)?;
        let best = argmax(&scored.logprobs);
        let text = format!("{}{}{}", constraint.prefix, constraint.choices[best], constraint.suffix);
        return Ok(Completion {
            text,
            finish_reason: FinishReason::Stop,
            refusal: None,
            usage: Usage {
                prompt_tokens: scored.prompt_tokens as u64,
                completion_tokens: scored.choice_tokens[best] as u64,
            },
            model: id.to_owned(),
        });
    }
    let ids = m
        .template
        .encode(&m.tokenizer, &messages, true)
        .map_err(|e| reject(e.to_string()))?;
    let p = &request.params;
    let temperature = p.temperature.unwrap_or(1.0) as f64;
    let top_p = p.top_p.unwrap_or(1.0) as f64;
    let sampling = if temperature <= 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_k: 0,
            top_p,
        }
    };
    let max_new_tokens = p.max_tokens.map(|t| t as usize).unwrap_or(DEFAULT_MAX_TOKENS);
    let cfg = GenerateConfig {
        max_new_tokens,
        sampling,
        seed: p.seed.unwrap_or(0) as u64,
        stop_tokens: m.stops.clone(),
        pad_token_id: 0,
    };
    let prompt_tokens = ids.len() as u64;
    let prompt = Prompt::from(ids.into_iter().map(i64::from).collect::<Vec<_>>());
    let g = generate(&m.model, &[prompt], &cfg, &Hooks::none()).map_err(|e| BackendError::Other {
        message: e.to_string(),
        retryable: false,
    })?;
    let g = g.into_iter().next().ok_or(BackendError::EmptyChoices)?;
    let (finish_reason, body): (FinishReason, &[i64]) = match g.finish {
        GenFinish::Stop(_) => (FinishReason::Stop, &g.tokens[..g.tokens.len().saturating_sub(1)]),
        GenFinish::Length => (FinishReason::Length, &g.tokens[..]),
    };
    let body: Vec<u32> = body.iter().map(|&t| t as u32).collect();
    let text = m.tokenizer.decode(&body, true).map_err(|e| BackendError::Other {
        message: e.to_string(),
        retryable: false,
    })?;
    Ok(Completion {
        text,
        finish_reason,
        refusal: None,
        usage: Usage {
            prompt_tokens,
            completion_tokens: g.tokens.len() as u64,
        },
        model: id.to_owned(),
    })
}

/// The choices of a [`ChoiceConstraint`] scored after `rendered + prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScores {
    /// Total log-probability of each choice's tokens (natural log), in `choices` order.
    pub logprobs: Vec<f64>,
    /// Tokens of `rendered + prefix`.
    pub prompt_tokens: usize,
    /// Tokens each choice adds.
    pub choice_tokens: Vec<usize>,
}

/// Index of the largest value (the first on ties, so equal scores pick the earlier choice).
fn argmax(xs: &[f64]) -> usize {
    xs.iter()
        .enumerate()
        .fold(0, |best, (k, &x)| if x > xs[best] { k } else { best })
}

/// A choice's tokens: those of `context + choice` (`full`) past the context's (`ctx`) when `full` extends `ctx`,
/// else the choice tokenized alone (`alone`), e.g. when a prefix ending in a space merges with the choice.
fn continuation_ids<E>(ctx: &[i64], full: &[i64], alone: impl FnOnce() -> Result<Vec<i64>, E>) -> Result<Vec<i64>, E> {
    if full.len() > ctx.len() && full.starts_with(ctx) {
        Ok(full[ctx.len()..].to_vec())
    } else {
        alone()
    }
}

/// Scores every choice of `constraint` as a continuation of `rendered + prefix` (`rendered`: the chat text with the
/// generation prompt, as the template renders it) by the sum of its tokens' log-probabilities, all choices in one
/// right-padded forward pass.
///
/// A choice's tokens are those of `rendered + prefix + choice` past the tokens of `rendered + prefix`, so a choice
/// is tokenized in context (a BPE merge across the boundary would otherwise score a sequence the model never
/// sees); when the context's tokenization does not extend that of the prefix, the choice is tokenized alone.
pub fn choice_logprobs(
    model: &Model,
    tokenizer: &Tokenizer,
    rendered: &str,
    constraint: &ChoiceConstraint,
) -> Result<ChoiceScores, BackendError> {
    let reject = |message: String| BackendError::Rejected { status: 400, message };
    let other = |e: String| BackendError::Other {
        message: e,
        retryable: false,
    };
    if constraint.choices.is_empty() || constraint.choices.iter().any(String::is_empty) {
        return Err(reject(format!(
            "constraint.choices must be non-empty strings, got {:?}",
            constraint.choices
        )));
    }
    let context = format!("{rendered}{}", constraint.prefix);
    let encode = |t: &str| -> Result<Vec<i64>, BackendError> {
        Ok(tokenizer
            .encode(t, false)
            .map_err(|e| other(e.to_string()))?
            .into_iter()
            .map(i64::from)
            .collect())
    };
    let ctx_ids = encode(&context)?;
    if ctx_ids.is_empty() {
        return Err(reject("constrained request: the rendered prompt has no tokens".into()));
    }
    let mut rows = Vec::with_capacity(constraint.choices.len());
    let mut conts = Vec::with_capacity(constraint.choices.len());
    for choice in &constraint.choices {
        let cont = continuation_ids(&ctx_ids, &encode(&format!("{context}{choice}"))?, || encode(choice))?;
        let mut row = ctx_ids.clone();
        row.extend_from_slice(&cont);
        conts.push(cont);
        rows.push(row);
    }
    let _guard = tch::no_grad_guard();
    let (input, mask) = pad(&rows, 0, Padding::Right);
    let out = model
        .forward(&input, Some(&mask), &Hooks::none(), Logits::All, None)
        .map_err(|e| other(e.to_string()))?;
    let logits = out
        .logits
        .ok_or_else(|| other("the forward pass returned no logits".into()))?;
    let logp = logits.to_kind(tch::Kind::Float).log_softmax(-1, tch::Kind::Float);
    let n = ctx_ids.len() as i64;
    let logprobs = conts
        .iter()
        .enumerate()
        .map(|(r, cont)| {
            // The token at position n + j is predicted by the logits at n + j - 1.
            let c = cont.len() as i64;
            let rows = logp.get(r as i64).narrow(0, n - 1, c);
            let targets = tch::Tensor::from_slice(cont).to_device(rows.device()).view([c, 1]);
            rows.gather(1, &targets, false).sum(tch::Kind::Double).double_value(&[])
        })
        .collect();
    Ok(ChoiceScores {
        logprobs,
        prompt_tokens: ctx_ids.len(),
        choice_tokens: conts.iter().map(Vec::len).collect(),
    })
}

impl LmBackend for LocalBackend {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, BackendError>> {
        Box::pin(async move {
            if request.model != self.id {
                return Err(BackendError::Rejected {
                    status: 404,
                    message: format!(
                        "model {:?} is not served here (this backend serves {:?})",
                        request.model, self.id
                    ),
                });
            }
            let inner = self.inner.clone();
            let id = self.id.clone();
            let request = request.clone();
            tokio::task::spawn_blocking(move || {
                let m = inner.lock().unwrap_or_else(|e| e.into_inner());
                answer(&m, &id, &request)
            })
            .await
            .map_err(|e| BackendError::Other {
                message: format!("generation task failed: {e}"),
                retryable: false,
            })?
        })
    }

    fn describe(&self) -> String {
        format!("local model {} ({})", self.path.display(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallOutcome, ClientOptions, LmCache, LmClient, LmSettings, PriceTable, SamplingParams, Source};

    fn smollm() -> Option<LocalBackend> {
        match LocalBackend::from_spec("default-instruct", DeviceSpec::Cpu) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    /// Log-probability of `cont` after `ctx`, from a forward pass over that one sequence alone (no batch, no padding).
    fn alone(m: &Loaded, ctx: &[i64], cont: &[i64]) -> f64 {
        let _guard = tch::no_grad_guard();
        let ids: Vec<i64> = ctx.iter().chain(cont).copied().collect();
        let input = tch::Tensor::from_slice(&ids).view([1, ids.len() as i64]);
        let logits = m
            .model
            .forward(&input, None, &Hooks::none(), Logits::All, None)
            .unwrap()
            .logits
            .unwrap();
        let logp = logits.get(0).log_softmax(-1, tch::Kind::Double);
        cont.iter()
            .enumerate()
            .map(|(j, &t)| logp.double_value(&[(ctx.len() + j - 1) as i64, t]))
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn constrained_rating_is_the_argmax_of_choice_logprobs() {
        let Some(backend) = smollm() else { return };
        let prompt = "Rate how fluent this sentence is, 0 (not at all) to 2 (fully fluent). End with Rating: [[n]].\n\nSentence: The cat sat quietly on the warm windowsill.";
        // Multi-token choices too, so the batch is padded and the sums run over more than one token.
        for constraint in [
            ChoiceConstraint::rating(),
            ChoiceConstraint {
                prefix: "Answer: ".into(),
                choices: vec!["yes".into(), "no, not at all".into(), "maybe".into()],
                suffix: ".".into(),
            },
        ] {
            let req = ChatRequest::user(
                backend.model_id(),
                prompt,
                SamplingParams {
                    temperature: Some(0.7),
                    max_tokens: Some(48),
                    ..Default::default()
                },
            )
            .constrained(constraint.clone());
            let reply = backend.chat(&req).await.unwrap();
            let chosen = constraint
                .choices
                .iter()
                .position(|c| reply.text == format!("{}{c}{}", constraint.prefix, constraint.suffix));
            let Some(chosen) = chosen else {
                panic!("{:?} is not prefix + a choice + suffix", reply.text)
            };

            // The same scores computed separately, one sequence per choice.
            let m = backend.inner.lock().unwrap();
            let rendered = m.template.render(&[ChatMessage::user(prompt)], true).unwrap();
            let context = format!("{rendered}{}", constraint.prefix);
            let enc = |t: &str| -> Vec<i64> {
                m.tokenizer
                    .encode(t, false)
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect()
            };
            let ctx = enc(&context);
            let separate: Vec<f64> = constraint
                .choices
                .iter()
                .map(|c| {
                    alone(
                        &m,
                        &ctx,
                        &continuation_ids(&ctx, &enc(&format!("{context}{c}")), || Ok::<_, ()>(enc(c))).unwrap(),
                    )
                })
                .collect();
            let batched = choice_logprobs(&m.model, &m.tokenizer, &rendered, &constraint).unwrap();
            for (a, b) in batched.logprobs.iter().zip(&separate) {
                assert!(
                    (a - b).abs() < 1e-3,
                    "batched {:?} vs separate {separate:?}",
                    batched.logprobs
                );
            }
            assert_eq!(
                chosen,
                argmax(&separate),
                "reply {:?}, log-probs {separate:?}",
                reply.text
            );
            assert!(separate.iter().all(|l| l.is_finite() && *l < 0.0), "{separate:?}");
        }
        // The rating reply reads as a rating.
        let req = ChatRequest::user(backend.model_id(), prompt, SamplingParams::default())
            .constrained(ChoiceConstraint::rating());
        let r = crate::judge::parse_rating(&backend.chat(&req).await.unwrap().text);
        assert!(r.is_parsed(), "{r:?}");

        // Bad constraints are rejected, naming the field.
        let bad =
            ChatRequest::user(backend.model_id(), prompt, SamplingParams::default()).constrained(ChoiceConstraint {
                prefix: String::new(),
                choices: vec![],
                suffix: String::new(),
            });
        let e = backend.chat(&bad).await.unwrap_err();
        assert!(e.to_string().contains("constraint.choices"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smollm2_answers_deterministically_through_the_cached_client() {
        let Some(backend) = smollm() else { return };
        let digest = axbench_cache::hash_file(backend.path()).unwrap().to_hex();
        assert!(
            backend.model_id().starts_with("local:smollm2-135m-instruct-q4_1@")
                && backend.model_id().ends_with(&format!("{digest}/r{RUNTIME_REVISION}")),
            "{}",
            backend.model_id()
        );
        let params = SamplingParams {
            temperature: Some(0.7),
            max_tokens: Some(6),
            seed: Some(3),
            ..Default::default()
        };
        let req = ChatRequest::user(backend.model_id(), "Name a color.", params.clone());
        let a = backend.chat(&req).await.unwrap();
        let b = backend.chat(&req).await.unwrap();
        assert_eq!(a, b, "same seed, same answer");
        assert!(
            a.usage.completion_tokens >= 1 && a.usage.completion_tokens <= 6,
            "{a:?}"
        );
        assert!(!a.text.is_empty());
        assert_eq!(a.model, backend.model_id());

        // Another model name is rejected without retrying.
        let other = ChatRequest::user("gpt-4o-mini", "Name a color.", params);
        let e = backend.chat(&other).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");

        // Through the client: the second call is a cache hit with the same text.
        let dir = tempfile::tempdir().unwrap();
        let cache = LmCache::open(dir.path()).unwrap();
        let options = ClientOptions::from_settings(&LmSettings::default(), PriceTable::default(), Some(cache));
        let client = LmClient::new(Arc::new(backend), options);
        let first = client.call(&req).await;
        let second = client.call(&req).await;
        assert_eq!((first.source, second.source), (Source::Backend, Source::Cache));
        assert_eq!(first.text(), Some(a.text.as_str()));
        assert!(matches!(second.outcome, CallOutcome::Completed(ref c) if c.text == a.text));
    }
}
