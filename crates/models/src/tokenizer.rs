//! Tokenizers: HF `tokenizers` pipelines built from an HF `tokenizer.json` or from the vocabulary
//! embedded in a GGUF file.
//!
//! A GGUF file does not carry a tokenizer pipeline, only its parts (`tokenizer.ggml.model`,
//! `.tokens`, `.scores`, `.token_type`, `.merges`, `.pre`, special ids and flags). Which pipeline
//! those parts mean is decided by a reference implementation. We follow **llama.cpp** for both
//! vocabulary types, because llama.cpp reproduces the tokenizer the models were trained with:
//!
//! - `tokenizer.ggml.model = "llama"` (SentencePiece): llama.cpp's `llm_tokenizer_spm`, i.e.
//!   SentencePiece BPE (the adjacent pair whose merge is the highest-scoring piece merges first),
//!   with byte fallback, spaces as `▁`, and every control and user-defined token (whitespace runs
//!   like `▁▁`, `<start_of_turn>`, ...) cut out of the text first (`parse_special = true`).
//! - `tokenizer.ggml.model = "gpt2"` (byte-level BPE): llama.cpp's pre-tokenizer selected by
//!   `tokenizer.ggml.pre` (for SmolLM2, `smollm`: every digit is its own pre-token, as in the
//!   original SmolLM2 `tokenizer.json`); BOS/EOS are added only as `add_bos_token`/`add_eos_token`
//!   say.
//!
//! Why not HF transformers for Gemma: its GGUF conversion (`GGUFGemmaConverter`) runs Gemma's
//! SentencePiece *BPE* vocabulary as a *Unigram* model, which splits ordinary words differently
//! (`"The quick brown fox jumps over the lazy dog."` is 20 tokens there and 11 under llama.cpp).
//! On the golden texts SentencePiece itself, run by the golden script over the same vocabulary,
//! agrees with llama.cpp everywhere except whitespace runs and special tokens written in text,
//! which SentencePiece alone does not parse; it agrees with transformers on few texts. That
//! pipeline stays selectable as [`SpmFlavor::Transformers`] for comparisons against a Python
//! reference that loads the GGUF through transformers.
//!
//! Tests in `models/tests/tokenizer_golden.rs` compare both flavors against ids produced by their
//! references (llama-cpp-python, transformers) on `tests/golden/tokenizer/texts.jsonl`.

use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile};

/// llama.cpp `llama_token_type` values stored in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const UNDEFINED: i64 = 0;
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// Token texts llama.cpp treats as end-of-generation when present in a vocabulary, in addition to
/// the `eos`/`eot`/`eom` ids (`llama_vocab::impl::load`). llama.cpp also marks them as control
/// tokens whatever the GGUF says (Gemma stores `</s>` as user-defined), so decoding with
/// `skip_special` drops them.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{source_name}: cannot build tokenizer: {reason}")]
    Build { source_name: String, reason: String },
    #[error("{source_name}: {op} failed: {reason}")]
    Run {
        source_name: String,
        op: &'static str,
        reason: String,
    },
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A text tokenizer with the model's special-token conventions.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from, for error messages.
    source_name: String,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// One past the largest id (see [`Tokenizer::vocab_size`]).
    n_ids: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source_name)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Which implementation a SentencePiece (`tokenizer.ggml.model = "llama"`) GGUF vocabulary is
/// made to agree with (byte-level BPE vocabularies always follow llama.cpp). They differ on most texts: transformers' GGUF conversion runs a Unigram
/// model over the scores, while the vocabulary comes from a SentencePiece *BPE* model, which
/// llama.cpp (like SentencePiece itself) runs by merging the highest-scoring adjacent pair first;
/// llama.cpp also cuts every control and user-defined token (whitespace runs, `<start_of_turn>`,
/// ...) out of the text first. Example, Gemma 3: `"trailing spaces   "` is 7 tokens under
/// `Transformers` and 3 (`trailing`, `▁spaces`, `▁▁▁`) under `LlamaCpp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpmFlavor {
    /// llama.cpp's `llm_tokenizer_spm` (SentencePiece BPE), as a HF BPE model whose merges are
    /// ranked by the merged piece's score. The default: it is the model's own tokenization.
    #[default]
    LlamaCpp,
    /// HF transformers `AutoTokenizer.from_pretrained(dir, gguf_file=...)` (`GGUFGemmaConverter`):
    /// only for comparing against Python code that loads the GGUF through transformers.
    Transformers,
}

/// Options for [`Tokenizer::from_gguf_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GgufTokenizerOptions {
    pub spm: SpmFlavor,
}

impl Tokenizer {
    /// Builds the tokenizer embedded in a GGUF file with the default options (see the module docs
    /// for which reference each vocabulary type follows).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        Self::from_gguf_with(file, GgufTokenizerOptions::default())
    }

    /// [`Tokenizer::from_gguf`] with a choice of reference for SentencePiece vocabularies.
    pub fn from_gguf_with(file: &GgufFile, options: GgufTokenizerOptions) -> Result<Tokenizer> {
        GgufVocab::read(file)?.build(options)
    }

    /// Opens `path` and builds its embedded tokenizer (metadata only; tensors are not read).
    pub fn from_gguf_path(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Loads an HF `tokenizer.json`. BOS/EOS come from `tokenizer_config.json` and
    /// `generation_config.json` next to it when present (HF keeps them there, not in
    /// `tokenizer.json`); whether BOS is added is whatever the file's post-processor does.
    pub fn from_hf_file(tokenizer_json: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = tokenizer_json.as_ref();
        let source_name = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Build {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| TokenizerError::Build {
                    source_name: p.display().to_string(),
                    reason: e.to_string(),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenizerError::Io { path: p, source }),
            }
        };
        // `"bos_token": "<bos>"` or `{"content": "<bos>", ...}`.
        let token_of = |v: Option<&serde_json::Value>| -> Option<u32> {
            let v = v?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let config = read_json("tokenizer_config.json")?;
        let generation = read_json("generation_config.json")?;
        let bos_id = token_of(config.as_ref().and_then(|c| c.get("bos_token")));
        let mut eos_ids: Vec<u32> = token_of(config.as_ref().and_then(|c| c.get("eos_token")))
            .into_iter()
            .collect();
        if let Some(g) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            let ids: Vec<u32> = match g {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                x => x.as_u64().map(|x| x as u32).into_iter().collect(),
            };
            for id in ids {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        add_eog_texts(&inner, &mut eos_ids);
        // Whether encode(.., true) adds BOS: ask the post-processor.
        let add_bos = match (bos_id, inner.encode_fast("", true)) {
            (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
            _ => false,
        };
        let n_ids = count_ids(&inner);
        Ok(Tokenizer {
            inner,
            source_name,
            bos_id,
            eos_ids,
            add_bos,
            n_ids,
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, BOS (and EOS) are added as the model's
    /// reference does (Gemma: `<bos>` first; SmolLM2: nothing). Special-token texts in `text`
    /// (`<start_of_turn>`, `<|im_start|>`, `<bos>`) are parsed as those tokens either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.run_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] over many texts, in parallel where the `tokenizers` crate does so.
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), add_special_tokens)
            .map_err(|e| self.run_err("encode", e))?;
        Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`. `skip_special` drops the tokens registered as special (for GGUF byte-level
    /// vocabularies: control tokens; for Gemma: `<pad> <eos> <bos> <unk>`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.run_err("decode", e))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(text, true)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Every token that ends generation: EOS first, then end-of-turn tokens (`<end_of_turn>` for
    /// Gemma, `<|im_end|>`/`<|endoftext|>` for SmolLM2).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Number of ids (one past the largest, added tokens included): the row count the embedding
    /// matrix needs. Can exceed the number of distinct token strings: HF's Gemma conversion maps
    /// two GGUF pieces to the same string (262,144 ids, 262,143 strings).
    pub fn vocab_size(&self) -> usize {
        self.n_ids
    }

    /// The underlying HF tokenizer (offsets, batch padding, ...).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn run_err(&self, op: &'static str, e: impl std::fmt::Display) -> TokenizerError {
        TokenizerError::Run {
            source_name: self.source_name.clone(),
            op,
            reason: e.to_string(),
        }
    }
}

fn count_ids(inner: &tokenizers::Tokenizer) -> usize {
    let max_added = inner
        .get_added_tokens_decoder()
        .keys()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    inner.get_vocab_size(false).max(max_added)
}

fn add_eog_texts(inner: &tokenizers::Tokenizer, eos_ids: &mut Vec<u32>) {
    for text in EOG_TEXTS {
        if let Some(id) = inner.token_to_id(text)
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
    }
}

/// Python's `str.isspace` for one char: Unicode White_Space plus the four ASCII information
/// separators (U+001C..U+001F), which Rust's `char::is_whitespace` does not count.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
struct GgufVocab<'a> {
    source_name: String,
    arch: String,
    model: &'a str,
    pre: Option<&'a str>,
    tokens: &'a [String],
    scores: Option<&'a [f32]>,
    types: Option<Vec<i64>>,
    merges: Option<&'a [String]>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eot_id: Option<u32>,
    eom_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: Option<bool>,
    add_eos: bool,
    add_space_prefix: Option<bool>,
}

impl<'a> GgufVocab<'a> {
    fn read(f: &'a GgufFile) -> Result<GgufVocab<'a>> {
        let source_name = f.path().display().to_string();
        let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let id = |key: &str| -> Result<Option<u32>> {
            match f.opt_u32(key)? {
                Some(id) if id as usize >= n => Err(TokenizerError::Build {
                    source_name: source_name.clone(),
                    reason: format!("`{key}` = {id} is outside the vocabulary of {n} tokens"),
                }),
                other => Ok(other),
            }
        };
        let scores = f.opt_f32_array("tokenizer.ggml.scores")?;
        let types = f.opt_i64_array("tokenizer.ggml.token_type")?;
        for (key, len) in [
            ("tokenizer.ggml.scores", scores.map(|s| s.len())),
            ("tokenizer.ggml.token_type", types.as_ref().map(|t| t.len())),
        ] {
            if let Some(len) = len
                && len != n
            {
                return Err(TokenizerError::Build {
                    source_name: source_name.clone(),
                    reason: format!("`{key}` has {len} entries but `tokenizer.ggml.tokens` has {n}"),
                });
            }
        }
        Ok(GgufVocab {
            arch: f.architecture()?.to_string(),
            model: f.get_str("tokenizer.ggml.model")?,
            pre: f.opt_str("tokenizer.ggml.pre")?,
            tokens,
            scores,
            types,
            merges: f.opt_str_array("tokenizer.ggml.merges")?,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            eot_id: id("tokenizer.ggml.eot_token_id")?,
            eom_id: id("tokenizer.ggml.eom_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: f.opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: f.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: f.opt_bool("tokenizer.ggml.add_space_prefix")?,
            source_name,
        })
    }

    fn err(&self, reason: impl Into<String>) -> TokenizerError {
        TokenizerError::Build {
            source_name: self.source_name.clone(),
            reason: reason.into(),
        }
    }

    fn token_type(&self, id: usize) -> i64 {
        self.types.as_ref().map_or(token_type::NORMAL, |t| t[id])
    }

    fn build(self, options: GgufTokenizerOptions) -> Result<Tokenizer> {
        let (mut inner, add_bos) = match (self.model, options.spm) {
            ("llama", SpmFlavor::Transformers) => self.build_spm()?,
            ("llama", SpmFlavor::LlamaCpp) => self.build_spm_bpe()?,
            ("gpt2", _) => self.build_bpe()?,
            (other, _) => {
                return Err(self.err(format!(
                    "tokenizer.ggml.model `{other}` is not supported (supported: `llama` = SentencePiece, `gpt2` = byte-level BPE)"
                )));
            }
        };
        let token = |id: Option<u32>| id.map(|i| self.tokens[i as usize].clone());
        let mut template_single = Vec::new();
        let mut template_pair = Vec::new();
        let mut specials = Vec::new();
        if add_bos {
            let bos = token(self.bos_id).ok_or_else(|| self.err("add_bos_token is set but bos_token_id is missing"))?;
            template_single.push(bos.clone());
            template_pair.push(bos.clone());
            specials.push((bos, self.bos_id.expect("checked")));
        }
        template_single.push("$A".to_string());
        template_pair.push("$A".to_string());
        if self.add_eos {
            let eos = token(self.eos_id).ok_or_else(|| self.err("add_eos_token is set but eos_token_id is missing"))?;
            template_single.push(eos.clone());
            template_pair.push(eos.clone());
            specials.push((eos, self.eos_id.expect("checked")));
        }
        if add_bos {
            template_pair.push(format!("{}:1", token(self.bos_id).expect("checked")));
        }
        template_pair.push("$B:1".to_string());
        if self.add_eos {
            template_pair.push(format!("{}:1", token(self.eos_id).expect("checked")));
        }
        if !specials.is_empty() {
            specials.dedup();
            let processor = TemplateProcessing::builder()
                .try_single(template_single.join(" "))
                .and_then(|b| b.try_pair(template_pair.join(" ")))
                .map_err(|e| self.err(format!("post-processor template: {e}")))?
                .special_tokens(specials)
                .build()
                .map_err(|e| self.err(format!("post-processor: {e}")))?;
            inner.with_post_processor(Some(processor));
        }

        let mut eos_ids: Vec<u32> = Vec::new();
        for id in [self.eos_id, self.eot_id, self.eom_id].into_iter().flatten() {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        add_eog_texts(&inner, &mut eos_ids);
        let n_ids = count_ids(&inner).max(self.tokens.len());
        Ok(Tokenizer {
            inner,
            source_name: self.source_name,
            bos_id: self.bos_id,
            eos_ids,
            add_bos,
            n_ids,
        })
    }

    /// SentencePiece vocabularies. For Gemma this is exactly transformers' `GGUFGemmaConverter`;
    /// other SentencePiece models (Llama-2 style, `add_space_prefix` true) get the same Unigram
    /// model with a `▁` prefix, which is SentencePiece's own behaviour but not reference-tested here.
    fn build_spm(&self) -> Result<(tokenizers::Tokenizer, bool)> {
        let scores = self
            .scores
            .ok_or_else(|| self.err("SentencePiece vocabulary without tokenizer.ggml.scores"))?;
        let gemma = self.arch.starts_with("gemma");
        let vocab: Vec<(String, f64)> = self
            .tokens
            .iter()
            .zip(scores)
            .map(|(t, &s)| {
                // GGUFGemmaConverter.vocab: the tab byte token becomes a literal tab, and pieces made
                // only of whitespace that contain a plain space become that many `▁`.
                let t = if t == "<0x09>" {
                    "\t".to_string()
                } else if t.contains(' ') && t.chars().all(py_isspace) {
                    "▁".repeat(t.chars().count())
                } else {
                    t.clone()
                };
                (t, s as f64)
            })
            .collect();
        let model = Unigram::from(vocab, self.unk_id.map(|u| u as usize), true)
            .map_err(|e| self.err(format!("Unigram model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(model);

        let add_prefix = self.add_space_prefix.unwrap_or(!gemma);
        let replace = Replace::new(" ", "▁").map_err(|e| self.err(e.to_string()))?;
        let normalizer: NormalizerWrapper = if add_prefix {
            tokenizers::normalizers::Sequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
        } else {
            replace.into()
        };
        inner.with_normalizer(Some(normalizer));
        // GemmaConverter's pre-tokenizer; after the normalizer there are no spaces left, so this
        // splits nothing, but it is kept to mirror the reference pipeline exactly.
        let split = Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| self.err(e.to_string()))?;
        inner.with_pre_tokenizer(Some(split));
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ").map_err(|e| self.err(e.to_string()))?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if add_prefix {
            decoders.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(DecoderSequence::new(decoders)));

        // Gemma: transformers registers only <pad>, <eos>, <bos>, <unk> as added (special) tokens.
        // Other SentencePiece models: every control token, as llama.cpp parses them.
        let mut added = Vec::new();
        if gemma {
            for name in ["<pad>", "<eos>", "<bos>", "<unk>"] {
                if self.tokens.iter().any(|t| t == name) {
                    added.push(AddedToken::from(name, true).normalized(false));
                }
            }
            inner.add_special_tokens(&added);
        } else {
            self.add_typed_tokens(&mut inner);
        }
        Ok((inner, self.add_bos.unwrap_or(true)))
    }

    /// SentencePiece BPE as llama.cpp runs it: symbols start as characters; the adjacent pair whose
    /// concatenation is the highest-scoring token merges first. That is a BPE model whose merges
    /// are every split `(l, r)` of every token with both halves in the vocabulary, ranked by the
    /// token's score (HF's `GGUFLlamaConverter` builds merges the same way).
    fn build_spm_bpe(&self) -> Result<(tokenizers::Tokenizer, bool)> {
        let scores = self
            .scores
            .ok_or_else(|| self.err("SentencePiece vocabulary without tokenizer.ggml.scores"))?;
        let vocab: Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut ranked: Vec<(f32, usize, usize)> = Vec::new(); // (score, token id, split byte offset)
        for (id, t) in self.tokens.iter().enumerate() {
            // llama.cpp does not look at the token type here: whitespace runs like `▁▁` are
            // user-defined tokens, and they do come out of merges.
            for (k, _) in t.char_indices().skip(1) {
                if vocab.contains_key(&t[..k]) && vocab.contains_key(&t[k..]) {
                    ranked.push((scores[id], id, k));
                }
            }
        }
        // Highest score first; among equal scores, lower id, then the earlier split.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges: Vec<(String, String)> = ranked
            .iter()
            .map(|&(_, id, k)| (self.tokens[id][..k].to_string(), self.tokens[id][k..].to_string()))
            .collect();
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
        if let Some(unk) = self.unk_id {
            builder = builder.unk_token(self.tokens[unk as usize].clone());
        }
        let model = builder.build().map_err(|e| self.err(format!("BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        let add_prefix = self.add_space_prefix.unwrap_or(true);
        let replace = Replace::new(" ", "▁").map_err(|e| self.err(e.to_string()))?;
        let normalizer: NormalizerWrapper = if add_prefix {
            tokenizers::normalizers::Sequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
        } else {
            replace.into()
        };
        inner.with_normalizer(Some(normalizer));
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("▁", " ").map_err(|e| self.err(e.to_string()))?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if add_prefix {
            decoders.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(DecoderSequence::new(decoders)));
        self.add_typed_tokens(&mut inner);
        Ok((inner, self.add_bos.unwrap_or(true)))
    }

    /// llama.cpp's `tokenizer_st_partition`: control and unknown tokens are cut out of the text
    /// before the model runs (with `parse_special`, which our references use) and count as
    /// special; user-defined tokens are always cut out and decode as text.
    fn add_typed_tokens(&self, inner: &mut tokenizers::Tokenizer) {
        let (mut special, mut user) = (Vec::new(), Vec::new());
        for (i, t) in self.tokens.iter().enumerate() {
            let ty = if EOG_TEXTS.contains(&t.as_str()) {
                token_type::CONTROL
            } else {
                self.token_type(i)
            };
            match ty {
                token_type::CONTROL | token_type::UNKNOWN => {
                    special.push(AddedToken::from(t.clone(), true).normalized(false))
                }
                token_type::USER_DEFINED => user.push(AddedToken::from(t.clone(), false).normalized(false)),
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);
    }

    /// Byte-level BPE as llama.cpp runs it.
    fn build_bpe(&self) -> Result<(tokenizers::Tokenizer, bool)> {
        let merges_raw = self
            .merges
            .ok_or_else(|| self.err("byte-level BPE vocabulary without tokenizer.ggml.merges"))?;
        let vocab: Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            // llama.cpp splits at the first space after position 0.
            let pos = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p);
            let Some(pos) = pos else {
                return Err(self.err(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                )));
            };
            merges.push((m[..pos].to_string(), m[pos + 1..].to_string()));
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| self.err(format!("BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(model);

        let pre = self.pre.unwrap_or("default");
        let byte_level = |use_regex: bool| -> PreTokenizerWrapper { ByteLevel::new(false, false, use_regex).into() };
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // llama.cpp: "\p{N}" then the GPT-2 regex.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                PreSequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "default" => {
                byte_level(true)
            }
            "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" | "falcon3" | "pixtral" => {
                let split = Split::new(
                    SplitPattern::Regex(
                        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+".into(),
                    ),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| self.err(e.to_string()))?;
                PreSequence::new(vec![split.into(), byte_level(false)]).into()
            }
            other => {
                tracing::warn!(
                    source = %self.source_name,
                    "tokenizer.ggml.pre `{other}` is not known here; using the GPT-2 pre-tokenizer, ids may differ from llama.cpp"
                );
                byte_level(true)
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        self.add_typed_tokens(&mut inner);
        // Without the key, llama.cpp adds no BOS for byte-level BPE (except a few `pre` types).
        Ok((inner, self.add_bos.unwrap_or(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_isspace() {
        for c in [' ', '\t', '\n', '\u{1c}', '\u{1f}', '\u{3000}', '\u{a0}'] {
            assert!(py_isspace(c), "{c:?}");
        }
        for c in ['a', '▁', '\u{200b}'] {
            assert!(!py_isspace(c), "{c:?}");
        }
    }
}
