//! Chat templates as code: the two prompt formats our models use, written out in Rust instead of
//! running the Jinja templates HF ships, with the same output byte for byte (golden-tested against
//! `apply_chat_template` in `models/tests/tokenizer_golden.rs`).
//!
//! - [`ChatTemplate::Gemma`]: Gemma 3's template. `<bos>` first; a leading system message is not a
//!   turn of its own but is prefixed (plus a blank line) to the first user turn; `assistant` turns
//!   are called `model`; contents are trimmed; roles must alternate user/assistant.
//! - [`ChatTemplate::ChatMl`]: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, untrimmed,
//!   with an optional default system message when the first message is not a system one
//!   (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
//!
//! [`ChatTemplate::from_gguf`] recognizes the family from `tokenizer.chat_template` when the file
//! has one and otherwise from the architecture (the Gemma 3 base GGUF has no template: it gets
//! Gemma's turn format).
//!
//! The rendered text already contains the special tokens it needs (Gemma's `<bos>` included), so
//! tokenize it with `add_special_tokens = false`, as HF's `apply_chat_template(tokenize=True)` does;
//! [`ChatTemplate::encode`] does exactly that.

use crate::gguf::{GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name HF chat messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// SmolLM2-Instruct's default system prompt (its HF `chat_template`).
pub const SMOLLM2_DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{source_name}: `tokenizer.chat_template` is not a Gemma or ChatML template (starts {start:?})")]
    UnknownTemplate { source_name: String, start: String },
    #[error("{source_name}: no `tokenizer.chat_template` and no known chat format for architecture `{arch}`")]
    NoTemplate { source_name: String, arch: String },
    #[error("conversation roles must alternate user/assistant/user/assistant/... (message {index} is {role})")]
    RolesNotAlternating { index: usize, role: &'static str },
}

/// A chat prompt format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Gemma 2/3 `<start_of_turn>` format, system message folded into the first user turn.
    Gemma,
    /// ChatML; `default_system` is inserted when the conversation does not start with a system
    /// message.
    ChatMl { default_system: Option<String> },
}

impl ChatTemplate {
    /// SmolLM2-Instruct's template.
    pub fn smollm2() -> ChatTemplate {
        ChatTemplate::ChatMl {
            default_system: Some(SMOLLM2_DEFAULT_SYSTEM.to_string()),
        }
    }

    /// The template of a GGUF model: from `tokenizer.chat_template` when present, else from
    /// `general.architecture`.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate, ChatError> {
        let template = file.opt_str("tokenizer.chat_template")?;
        let arch = file.architecture()?;
        let source_name = file.path().display().to_string();
        match template {
            Some(t) => Self::detect(t).ok_or_else(|| ChatError::UnknownTemplate {
                source_name,
                start: t.chars().take(80).collect(),
            }),
            None if arch.starts_with("gemma") => Ok(ChatTemplate::Gemma),
            None => Err(ChatError::NoTemplate {
                source_name,
                arch: arch.to_string(),
            }),
        }
    }

    /// Recognizes the family of a Jinja chat template; `None` if it is neither.
    pub fn detect(jinja: &str) -> Option<ChatTemplate> {
        if jinja.contains("<start_of_turn>") {
            return Some(ChatTemplate::Gemma);
        }
        if !jinja.contains("<|im_start|>") {
            return None;
        }
        // A default system message is a literal `<|im_start|>system\n...<|im_end|>` in the
        // template (inside a Jinja string, so the newline may be written `\n`).
        let default_system = ["<|im_start|>system\\n", "<|im_start|>system\n"]
            .iter()
            .find_map(|open| {
                let start = jinja.find(open)? + open.len();
                let len = jinja[start..].find("<|im_end|>")?;
                let text = &jinja[start..start + len];
                // `'<|im_start|>system\n' + message['content']` is the per-message form, not a default.
                (!text.contains('\'') && !text.contains('{')).then(|| text.replace("\\n", "\n"))
            });
        Some(ChatTemplate::ChatMl { default_system })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ends with the opening of the
    /// assistant's turn so the model continues as the assistant.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let mut out = String::new();
        match self {
            ChatTemplate::Gemma => {
                out.push_str("<bos>");
                let (prefix, rest) = match messages.first() {
                    Some(m) if m.role == Role::System => (format!("{}\n\n", m.content), &messages[1..]),
                    _ => (String::new(), messages),
                };
                for (i, m) in rest.iter().enumerate() {
                    if (m.role == Role::User) != (i % 2 == 0) {
                        return Err(ChatError::RolesNotAlternating {
                            index: i,
                            role: m.role.as_str(),
                        });
                    }
                    let role = if m.role == Role::Assistant {
                        "model"
                    } else {
                        m.role.as_str()
                    };
                    out.push_str("<start_of_turn>");
                    out.push_str(role);
                    out.push('\n');
                    if i == 0 {
                        out.push_str(&prefix);
                    }
                    out.push_str(py_strip(&m.content));
                    out.push_str("<end_of_turn>\n");
                }
                if add_generation_prompt {
                    out.push_str("<start_of_turn>model\n");
                }
            }
            ChatTemplate::ChatMl { default_system } => {
                if let (Some(sys), Some(first)) = (default_system, messages.first())
                    && first.role != Role::System
                {
                    out.push_str("<|im_start|>system\n");
                    out.push_str(sys);
                    out.push_str("<|im_end|>\n");
                }
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(m.role.as_str());
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
        }
        Ok(out)
    }

    /// Token ids of the rendered conversation (no extra BOS: the text carries its own).
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        Ok(tokenizer.encode(&self.render(messages, add_generation_prompt)?, false)?)
    }
}

/// Jinja's `trim` filter is Python's `str.strip()`: Unicode whitespace plus U+001C..U+001F.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_folds_system_and_trims() {
        let msgs = [
            Message::system("Be brief."),
            Message::user("  Hi \n"),
            Message::assistant("Hello!"),
            Message::user("Bye"),
        ];
        let s = ChatTemplate::Gemma.render(&msgs, true).unwrap();
        assert_eq!(
            s,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(matches!(
            ChatTemplate::Gemma.render(&[Message::assistant("x")], false),
            Err(ChatError::RolesNotAlternating { index: 0, .. })
        ));
    }

    #[test]
    fn chatml_default_system() {
        let s = ChatTemplate::smollm2().render(&[Message::user("Hi")], true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = ChatTemplate::smollm2()
            .render(&[Message::system("S"), Message::user("Hi")], false)
            .unwrap();
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn detects_smollm2_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        assert_eq!(ChatTemplate::detect(t), Some(ChatTemplate::smollm2()));
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(
            ChatTemplate::detect(plain),
            Some(ChatTemplate::ChatMl { default_system: None })
        );
        assert_eq!(ChatTemplate::detect("{{ messages }}"), None);
    }
}
