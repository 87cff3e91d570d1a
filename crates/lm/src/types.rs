//! The request and reply shapes every LM backend speaks.
//!
//! They are deliberately smaller than the OpenAI schema: only what AxBench's prompts need and what
//! enters the cache key. A local backend (our own model runtime) answers the same [`ChatRequest`]
//! with the same [`Completion`], so one cache serves both.

use serde::{Deserialize, Serialize};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Decoding parameters. Every field enters the cache key, so two calls that could differ in output
/// never share an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    /// Replica index of an otherwise identical request. Never sent to the backend; it only makes
    /// the cache key distinct when the same prompt is deliberately sampled more than once
    /// (AxBench's api-level cache keys on `prompt_____count` for the same reason).
    #[serde(default)]
    pub replica: u32,
}

/// One chat-completion request: the complete input of a call, and (with a schema version) the
/// content its cache key is computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub params: SamplingParams,
    /// Constrained answer: instead of generating, pick one of a closed set of replies. Absent for
    /// ordinary requests, and then left out of the serialized request (and of its cache key), so
    /// every request made before this field existed keeps its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<ChoiceConstraint>,
}

/// A closed-set reply: the backend continues the assistant turn after `prefix`, scores every choice
/// by its total log-probability there, and replies `prefix + best choice + suffix`.
///
/// Why: a small local judge (SmolLM2-135M-Instruct) rarely ends its answer with AxBench's
/// `Rating: [[n]]`, so almost every generated rating is unreadable. With `prefix = "Rating: [["`,
/// `choices = ["0", "1", "2"]`, `suffix = "]]"` the reply is always in that format and
/// [`crate::judge::parse_rating`] reads it unchanged. Only [`LocalBackend`](super::LocalBackend)
/// answers such requests (it needs the model's log-probabilities); the OpenAI backend rejects them.
/// Decoding params other than the model are ignored: the choice is the argmax, deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChoiceConstraint {
    /// Text the assistant turn starts with before the choice (e.g. `Rating: [[`).
    pub prefix: String,
    /// The candidate continuations (e.g. `0`, `1`, `2`); at least one, none empty.
    pub choices: Vec<String>,
    /// Text appended after the chosen continuation in the reply (e.g. `]]`); not scored.
    pub suffix: String,
}

impl ChoiceConstraint {
    /// AxBench's rating format, `Rating: [[n]]` with n in 0..=2.
    pub fn rating() -> Self {
        Self {
            prefix: "Rating: [[".into(),
            choices: vec!["0".into(), "1".into(), "2".into()],
            suffix: "]]".into(),
        }
    }
}

impl ChatRequest {
    /// A single user turn, the shape of every AxBench prompt.
    pub fn user(model: impl Into<String>, prompt: impl Into<String>, params: SamplingParams) -> Self {
        Self {
            model: model.into(),
            messages: vec![Message::user(prompt)],
            params,
            constraint: None,
        }
    }

    /// The same request answered by picking from `constraint` (see [`ChoiceConstraint`]).
    pub fn constrained(mut self, constraint: ChoiceConstraint) -> Self {
        self.constraint = Some(constraint);
        self
    }
}

/// Why generation stopped, as the backend reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    /// The backend did not say (some OpenAI-compatible servers omit the field).
    Unknown,
}

/// Token counts the backend reported for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// A successful reply. A refusal is a reply too (the model answered, it just declined), so it is
/// recorded here with `refusal` set, and cached like any other answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The assistant text; empty when the model refused.
    pub text: String,
    pub finish_reason: FinishReason,
    /// The model's refusal message (`message.refusal`), or a note when `finish_reason` is
    /// `content_filter` without one.
    pub refusal: Option<String>,
    pub usage: Usage,
    /// The model name the backend reports having used (may carry a dated suffix).
    pub model: String,
}

impl Completion {
    /// True when the backend declined to answer: an explicit `refusal` or a content filter stop.
    pub fn is_refusal(&self) -> bool {
        self.refusal.is_some() || self.finish_reason == FinishReason::ContentFilter
    }
}
