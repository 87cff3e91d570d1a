//! Prompt templates for data synthesis and judging, loaded from `configs/prompts/*.txt`.
//!
//! Templates are plain text with `{placeholder}` slots (`{{` and `}}` for literal braces). They
//! live in files, not code, so wording can change without a rebuild — and since the rendered
//! prompt is part of every LM cache key, a wording change correctly invalidates cached answers.
//! Each template has a fixed set of placeholders; loading checks the file uses exactly that set,
//! so a typo in a template fails at load time with the file and placeholder named, not as a
//! half-filled prompt sent to a paid API.
//!
//! The intent of each template follows AxBench's (`axbench/templates/prompt_templates.py` and
//! `evaluators/prompt_templates.py`); the wording is our own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The templates AxBench's procedure needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Template {
    /// Concept → which genres (text/code/math) it lives in.
    Genre,
    /// Instruction + concept → a response that carries the concept (positives).
    ResponseWithConcept,
    /// Instruction + concept → a response that avoids the concept (latent-eval negatives).
    ResponseWithoutConcept,
    /// Concept → related words that have other meanings.
    ConceptWords,
    /// Word + concept → another meaning of the word (polysemy).
    WordOtherMeaning,
    /// Concept + (word, meaning) → is the meaning really a different concept? ("Answer: yes/no")
    ContrastFilter,
    /// Instruction + (word, meaning) → a response using the word in that meaning (hard negatives).
    ResponseWithContrastConcept,
    /// Concept → a steering instruction (the prompting baseline).
    SteeringPrompt,
    /// Judge: how present is the concept? ("Rating: [[n]]")
    JudgeConcept,
    /// Judge: does the response address the instruction?
    JudgeInstruction,
    /// Judge: is the response fluent?
    JudgeFluency,
}

impl Template {
    pub const ALL: [Template; 11] = [
        Template::Genre,
        Template::ResponseWithConcept,
        Template::ResponseWithoutConcept,
        Template::ConceptWords,
        Template::WordOtherMeaning,
        Template::ContrastFilter,
        Template::ResponseWithContrastConcept,
        Template::SteeringPrompt,
        Template::JudgeConcept,
        Template::JudgeInstruction,
        Template::JudgeFluency,
    ];

    /// The file name under the prompts directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Template::Genre => "genre.txt",
            Template::ResponseWithConcept => "response_with_concept.txt",
            Template::ResponseWithoutConcept => "response_without_concept.txt",
            Template::ConceptWords => "concept_words.txt",
            Template::WordOtherMeaning => "word_other_meaning.txt",
            Template::ContrastFilter => "contrast_filter.txt",
            Template::ResponseWithContrastConcept => "response_with_contrast_concept.txt",
            Template::SteeringPrompt => "steering_prompt.txt",
            Template::JudgeConcept => "judge_concept.txt",
            Template::JudgeInstruction => "judge_instruction.txt",
            Template::JudgeFluency => "judge_fluency.txt",
        }
    }

    /// The placeholders the template must use, no more, no fewer.
    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            Template::Genre | Template::ConceptWords | Template::SteeringPrompt => &["concept"],
            Template::ResponseWithConcept | Template::ResponseWithoutConcept => &["concept", "instruction"],
            Template::WordOtherMeaning => &["concept", "word"],
            Template::ContrastFilter => &["concept", "meaning", "word"],
            Template::ResponseWithContrastConcept => &["concept", "instruction", "meaning", "word"],
            Template::JudgeConcept => &["concept", "sentence"],
            Template::JudgeInstruction => &["instruction", "sentence"],
            Template::JudgeFluency => &["sentence"],
        }
    }
}

/// Errors loading or rendering templates; each names the file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromptError {
    #[error("prompt template {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("prompt template {path}: line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("prompt template {path}: uses unknown placeholder {{{name}}} (allowed: {allowed})")]
    UnknownPlaceholder {
        path: PathBuf,
        name: String,
        allowed: String,
    },
    #[error("prompt template {path}: never uses placeholder {{{name}}}")]
    UnusedPlaceholder { path: PathBuf, name: String },
    #[error("prompt template {path}: no value given for placeholder {{{name}}}")]
    MissingValue { path: PathBuf, name: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Slot(String),
}

/// One parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    path: PathBuf,
    pieces: Vec<Piece>,
}

impl PromptTemplate {
    /// Parse template text; `path` names it in errors.
    pub fn parse(text: &str, path: impl Into<PathBuf>) -> Result<Self, PromptError> {
        let path = path.into();
        let mut pieces = Vec::new();
        let mut buf = String::new();
        let mut chars = text.char_indices().peekable();
        let line_of = |at: usize| text[..at].matches('\n').count() + 1;
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    buf.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    buf.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, n) in chars.by_ref() {
                        if n == '}' {
                            closed = true;
                            break;
                        }
                        name.push(n);
                    }
                    if !closed {
                        return Err(PromptError::Syntax {
                            path,
                            line: line_of(at),
                            message: "unclosed `{`".into(),
                        });
                    }
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(PromptError::Syntax {
                            path,
                            line: line_of(at),
                            message: format!("bad placeholder name {name:?} (write `{{{{` for a literal brace)"),
                        });
                    }
                    if !buf.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut buf)));
                    }
                    pieces.push(Piece::Slot(name));
                }
                '}' => {
                    return Err(PromptError::Syntax {
                        path,
                        line: line_of(at),
                        message: "stray `}` (write `}}` for a literal brace)".into(),
                    });
                }
                c => buf.push(c),
            }
        }
        if !buf.is_empty() {
            pieces.push(Piece::Text(buf));
        }
        Ok(Self { path, pieces })
    }

    /// The placeholder names the template uses.
    pub fn placeholders(&self) -> BTreeSet<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Slot(n) => Some(n.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// Fill every slot; values are inserted verbatim (braces in values are not interpreted).
    pub fn render(&self, values: &[(&str, &str)]) -> Result<String, PromptError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(name) => {
                    let value = values.iter().find(|(k, _)| k == name).map(|(_, v)| *v).ok_or_else(|| {
                        PromptError::MissingValue {
                            path: self.path.clone(),
                            name: name.clone(),
                        }
                    })?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

/// All templates, loaded and checked.
#[derive(Debug, Clone)]
pub struct PromptSet {
    templates: BTreeMap<Template, PromptTemplate>,
    digest: String,
}

impl PromptSet {
    /// The repository's own templates (`configs/prompts/`), for tests and defaults.
    pub fn default_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts")
    }

    /// Load every template from `dir`, checking each uses exactly its placeholders.
    pub fn load(dir: &Path) -> Result<Self, PromptError> {
        let mut templates = BTreeMap::new();
        let mut hasher = blake3::Hasher::new();
        for t in Template::ALL {
            let path = dir.join(t.file_name());
            let text = std::fs::read_to_string(&path).map_err(|e| PromptError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let parsed = PromptTemplate::parse(&text, &path)?;
            check_placeholders(t, &parsed)?;
            // Length-prefixed name and text, so no two sets hash alike by concatenation.
            for part in [t.file_name().as_bytes(), text.as_bytes()] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            templates.insert(t, parsed);
        }
        Ok(Self {
            templates,
            digest: hasher.finalize().to_hex().to_string(),
        })
    }

    /// blake3 of every template's name and text: a stage that renders these prompts puts this in
    /// its key, so editing a template re-runs exactly the stages that use it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Render one template.
    pub fn render(&self, template: Template, values: &[(&str, &str)]) -> Result<String, PromptError> {
        self.templates[&template].render(values)
    }

    pub fn get(&self, template: Template) -> &PromptTemplate {
        &self.templates[&template]
    }
}

fn check_placeholders(t: Template, parsed: &PromptTemplate) -> Result<(), PromptError> {
    let used = parsed.placeholders();
    let allowed: BTreeSet<&str> = t.placeholders().iter().copied().collect();
    if let Some(extra) = used.difference(&allowed).next() {
        return Err(PromptError::UnknownPlaceholder {
            path: parsed.path.clone(),
            name: extra.to_string(),
            allowed: t
                .placeholders()
                .iter()
                .map(|p| format!("{{{p}}}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if let Some(missing) = allowed.difference(&used).next() {
        return Err(PromptError::UnusedPlaceholder {
            path: parsed.path.clone(),
            name: missing.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slots_and_escapes() {
        let t = PromptTemplate::parse("a {x} {{lit}} b}} {y_2}", "t.txt").unwrap();
        assert_eq!(t.placeholders(), BTreeSet::from(["x", "y_2"]));
        assert_eq!(t.render(&[("x", "{1}"), ("y_2", "2")]).unwrap(), "a {1} {lit} b} 2");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = PromptTemplate::parse("ok\n{open", "p.txt").unwrap_err();
        assert_eq!(e.to_string(), "prompt template p.txt: line 2: unclosed `{`");
        let e = PromptTemplate::parse("x }", "p.txt").unwrap_err();
        assert!(e.to_string().contains("stray `}`"), "{e}");
        let e = PromptTemplate::parse("{not ok}", "p.txt").unwrap_err();
        assert!(e.to_string().contains("bad placeholder name"), "{e}");
    }

    #[test]
    fn missing_value_is_an_error() {
        let t = PromptTemplate::parse("{concept} and {word}", "w.txt").unwrap();
        assert_eq!(
            t.render(&[("concept", "c")]).unwrap_err().to_string(),
            "prompt template w.txt: no value given for placeholder {word}"
        );
    }

    #[test]
    fn load_rejects_wrong_placeholder_sets() {
        let dir = tempfile::tempdir().unwrap();
        for t in Template::ALL {
            std::fs::copy(
                PromptSet::default_dir().join(t.file_name()),
                dir.path().join(t.file_name()),
            )
            .unwrap();
        }
        let a = PromptSet::load(dir.path()).unwrap();
        assert_eq!(a.digest(), PromptSet::load(&PromptSet::default_dir()).unwrap().digest());
        let judge = dir.path().join("judge_fluency.txt");
        let original = std::fs::read_to_string(&judge).unwrap();
        std::fs::write(&judge, original.replace("fluent", "fluent,")).unwrap();
        assert_ne!(
            PromptSet::load(dir.path()).unwrap().digest(),
            a.digest(),
            "an edit changes the digest"
        );
        std::fs::write(&judge, "Rate {sentense}").unwrap();
        let e = PromptSet::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("judge_fluency.txt") && e.contains("{sentense}") && e.contains("{sentence}"),
            "{e}"
        );
        std::fs::write(&judge, "Rate nothing").unwrap();
        let e = PromptSet::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("never uses placeholder {sentence}"), "{e}");
        std::fs::remove_file(&judge).unwrap();
        let e = PromptSet::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("judge_fluency.txt"), "{e}");
    }

    #[test]
    fn shipped_templates_render() {
        let set = PromptSet::load(&PromptSet::default_dir()).unwrap();
        let concept = "terms related to employment and employees";
        let instruction = "Explain how a bicycle gear works.";
        let sentence = "Gears let a rider trade speed for force, much like a worker trading hours for pay.";
        let word = "union";
        let meaning = "the act of joining two things together";
        for t in Template::ALL {
            let values: Vec<(&str, &str)> = t
                .placeholders()
                .iter()
                .map(|p| {
                    let v = match *p {
                        "concept" => concept,
                        "instruction" => instruction,
                        "sentence" => sentence,
                        "word" => word,
                        "meaning" => meaning,
                        other => panic!("unexpected placeholder {other}"),
                    };
                    (*p, v)
                })
                .collect();
            let rendered = set.render(t, &values).unwrap();
            insta::assert_snapshot!(t.file_name().trim_end_matches(".txt"), rendered);
        }
    }
}
