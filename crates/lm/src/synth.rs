//! AxBench's data synthesis (stage 1 `generate` and 1b latent-eval data) over any LM backend.
//!
//! What it does, as AxBench's `generate.py`, `utils/dataset.py` and `utils/prompt_utils.py` do at
//! commit e9b8cd4:
//!
//! - **Concepts** come from a Neuronpedia explanations export (`.json`, deduplicated by feature
//!   index), a `concept,url` `.csv`, or a `.txt` with one concept per line; with `max_concepts`
//!   they are shuffled with the run seed and the first N kept.
//! - **Genre** per concept: the LM names one of Text/Code/Math; a reply containing "none" means
//!   text, otherwise every genre named in it, default text. The first genre drives sampling.
//! - **Training positives**: `n` seed instructions of the concept's genre (train split) are
//!   sampled and the first `n/2` answered by the LM with the concept woven in.
//! - **Training negatives** are shared by all concepts: `n/2` train instructions per genre,
//!   answered by the model we will steer (a [`ResponseGenerator`]), tagged `EEEEE`, concept id -1.
//! - **Contrast concepts** (for hard negatives): related words → another meaning of each word →
//!   drop `<NONE>`/empty/one-word meanings → keep those the LM says are unrelated ("yes" after the
//!   last "Answer").
//! - **Latent eval set** per concept: 36 positives from the genre's test split; 36 negatives
//!   answered while avoiding the concept, genre-balanced 26/5/5 (text/math/code, 70/15/15%); one
//!   hard negative per contrast concept on further test instructions.
//!
//! Randomness is a seeded `StdRng`: runs are reproducible, though the draws differ from Python's
//! `random` (so the instructions picked differ from AxBench's for the same seed). LM calls that fail
//! after retries drop their row and are counted in [`SynthReport`]; the run goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{BoxFuture, CallOutcome, CallRecord, ChatRequest, LmClient, SamplingParams};
use axbench_data::prompts::{PromptError, PromptSet, Template};

/// AxBench's marker concept for the shared negatives (`EMPTY_CONCEPT`).
pub const EMPTY_CONCEPT: &str = "EEEEE";

/// Errors of the synthesis procedure (LM call failures are not errors: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error("response generator failed: {0}")]
    Generator(String),
}

fn input_err(path: &Path, message: impl Into<String>) -> SynthError {
    SynthError::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Concepts

/// One concept: its description and where it came from (a Neuronpedia feature URL, or "null").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concept {
    pub description: String,
    pub reference: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NeuronpediaExplanation {
    model_id: String,
    layer: String,
    index: serde_json::Value,
    description: String,
}

/// Split one CSV record into fields (RFC 4180 quoting, as Python's `csv.reader`).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Load concepts from `.json` (Neuronpedia export), `.csv` (`concept,url`) or `.txt`.
pub fn load_concepts(path: &Path) -> Result<Vec<Concept>, SynthError> {
    let text = std::fs::read_to_string(path).map_err(|e| input_err(path, e.to_string()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let concepts = match ext {
        "json" => {
            let items: Vec<serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| input_err(path, format!("not a JSON list: {e}")))?;
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let e: NeuronpediaExplanation = serde_json::from_value(item).map_err(|e| {
                    input_err(
                        path,
                        format!("entry {i}: {e} (need modelId, layer, index, description)"),
                    )
                })?;
                let index = match &e.index {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(input_err(path, format!("entry {i}: field `index` is {other}")));
                    }
                };
                // Several descriptions of one feature: the first wins.
                if !seen.insert(index.clone()) {
                    continue;
                }
                out.push(Concept {
                    description: e.description.trim().to_string(),
                    reference: format!("https://www.neuronpedia.org/{}/{}/{}", e.model_id, e.layer, index),
                });
            }
            out
        }
        "csv" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let f = csv_fields(l.trim_end_matches('\r'));
                if f.len() < 2 {
                    return Err(input_err(
                        path,
                        format!("line {}: expected `concept,url`, got {l:?}", i + 1),
                    ));
                }
                Ok(Concept {
                    description: f[0].clone(),
                    reference: f[1].clone(),
                })
            })
            .collect::<Result<_, _>>()?,
        "txt" => {
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if let Some(url) = lines
                .iter()
                .find(|l| l.starts_with("http://") || l.starts_with("https://"))
            {
                return Err(input_err(
                    path,
                    format!(
                        "{url}: concept URLs need a Neuronpedia lookup, which this offline build does not do; use a .json export or a concept,url .csv"
                    ),
                ));
            }
            lines
                .into_iter()
                .map(|l| Concept {
                    description: l.to_string(),
                    reference: "null".into(),
                })
                .collect()
        }
        other => {
            return Err(input_err(
                path,
                format!("unsupported concept file type {other:?} (use .json, .csv or .txt)"),
            ));
        }
    };
    if concepts.is_empty() {
        return Err(input_err(path, "no concepts"));
    }
    Ok(concepts)
}

/// AxBench's `max_concepts`: shuffle with the seed, keep the first `max` (all when `None`).
pub fn select_concepts(mut concepts: Vec<Concept>, max: Option<usize>, seed: u64) -> Vec<Concept> {
    if let Some(max) = max {
        use rand::seq::SliceRandom;
        concepts.shuffle(&mut StdRng::seed_from_u64(seed));
        concepts.truncate(max);
    }
    concepts
}

// ---------------------------------------------------------------------------------------------
// Genres and seed instructions

/// The three instruction genres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Genre {
    Text,
    Code,
    Math,
}

impl Genre {
    pub fn as_str(self) -> &'static str {
        match self {
            Genre::Text => "text",
            Genre::Code => "code",
            Genre::Math => "math",
        }
    }
}

/// AxBench's reading of a genre reply: "none" anywhere → text; else every genre named (in the
/// order text, code, math); nothing named → text.
pub fn parse_genres(reply: &str) -> Vec<Genre> {
    let r = reply.to_lowercase();
    if r.contains("none") {
        return vec![Genre::Text];
    }
    let g: Vec<Genre> = [Genre::Text, Genre::Code, Genre::Math]
        .into_iter()
        .filter(|g| r.contains(g.as_str()))
        .collect();
    if g.is_empty() { vec![Genre::Text] } else { g }
}

/// Dataset split of the seed instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedLine {
    genre: Genre,
    split: Split,
    instruction: String,
}

/// Seed instructions by genre and split (`configs/seed_instructions.jsonl`: one
/// `{"genre", "split", "instruction"}` object per line).
#[derive(Debug, Clone, Default)]
pub struct SeedInstructions {
    pools: BTreeMap<(Genre, Split), Vec<String>>,
}

impl SeedInstructions {
    /// The set shipped with the repository.
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/seed_instructions.jsonl")
    }

    pub fn load(path: &Path) -> Result<Self, SynthError> {
        let text = std::fs::read_to_string(path).map_err(|e| input_err(path, e.to_string()))?;
        let mut pools: BTreeMap<(Genre, Split), Vec<String>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let s: SeedLine =
                serde_json::from_str(line).map_err(|e| input_err(path, format!("line {}: {e}", i + 1)))?;
            if s.instruction.trim().is_empty() {
                return Err(input_err(path, format!("line {}: field `instruction` is empty", i + 1)));
            }
            pools.entry((s.genre, s.split)).or_default().push(s.instruction);
        }
        Ok(Self { pools })
    }

    pub fn pool(&self, genre: Genre, split: Split) -> &[String] {
        self.pools.get(&(genre, split)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `count` distinct instructions drawn at random (fewer if the pool is smaller), cleaned as
    /// AxBench does (`strip(" .'").strip('"')`).
    pub fn sample(&self, genre: Genre, split: Split, count: usize, rng: &mut StdRng) -> Vec<String> {
        let pool = self.pool(genre, split);
        let n = count.min(pool.len());
        rand::seq::index::sample(rng, pool.len(), n)
            .into_iter()
            .map(|i| pool[i].trim_matches([' ', '.', '\'']).trim_matches('"').to_string())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Output rows

/// One synthesized example, with AxBench's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub input: String,
    pub output: String,
    pub output_concept: String,
    pub concept_genre: String,
    /// `positive`, `negative` or `hard negative`.
    pub category: String,
    /// Always `instruction` (AxBench's `continuation` variant is not used by the paper).
    pub dataset_category: String,
    pub concept_id: i64,
}

/// Per-concept metadata, as a line of AxBench's `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptMetadata {
    pub concept_id: i64,
    pub concept: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub concept_genres_map: BTreeMap<String, Vec<Genre>>,
}

/// What went wrong along the way, without stopping the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynthReport {
    /// LM calls that failed after retries (their rows were dropped).
    pub failed_calls: u64,
    /// LM calls the model refused (their rows were dropped).
    pub refused_calls: u64,
    /// Rows asked for but not made because a seed pool was too small.
    pub missing_seed_instructions: u64,
}

impl SynthReport {
    pub fn merge(&mut self, other: &SynthReport) {
        self.failed_calls += other.failed_calls;
        self.refused_calls += other.refused_calls;
        self.missing_seed_instructions += other.missing_seed_instructions;
    }
}

/// How a response is cut to `output_length` tokens. AxBench uses the steered model's tokenizer
/// (`convert_tokens_to_string(tokenize(text)[:n])`); the tokenizer lives in the models crate, so
/// the caller supplies it.
pub type Truncate = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// No truncation.
pub fn no_truncation() -> Truncate {
    Arc::new(|s: &str| s.to_string())
}

/// Keep the first `n` whitespace-separated words (a tokenizer-free stand-in for tests and demos).
pub fn truncate_words(n: usize) -> Truncate {
    Arc::new(move |s: &str| s.split_whitespace().take(n).collect::<Vec<_>>().join(" "))
}

/// The model we plan to steer, answering instructions (for the shared negatives: AxBench samples
/// them greedily from the local chat model with `max_new_tokens = 1.5 * output_length`).
pub trait ResponseGenerator: Send + Sync {
    fn generate<'a>(&'a self, instructions: &'a [String]) -> BoxFuture<'a, Result<Vec<String>, String>>;
}

// ---------------------------------------------------------------------------------------------
// The procedure

/// The synthesis procedure, bound to an LM client, templates and seed instructions.
pub struct Synthesizer<'a> {
    pub client: &'a LmClient,
    pub prompts: &'a PromptSet,
    pub seeds: &'a SeedInstructions,
    /// The data-generation model (AxBench: gpt-4o-mini) and its decoding parameters.
    pub model: String,
    pub params: SamplingParams,
    pub truncate: Truncate,
}

/// Leading `<TAG>` markers (AxBench removes `^(<[^>]*>\s*)+` from hard-negative replies).
fn strip_leading_tags(s: &str) -> &str {
    let mut rest = s;
    loop {
        if !rest.starts_with('<') {
            return rest;
        }
        match rest.find('>') {
            Some(end) => rest = rest[end + 1..].trim_start(),
            None => return rest,
        }
    }
}

impl<'a> Synthesizer<'a> {
    fn request(&self, prompt: String) -> ChatRequest {
        ChatRequest::user(self.model.clone(), prompt, self.params.clone())
    }

    async fn ask_all(&self, prompts: Vec<String>) -> Vec<CallRecord> {
        let requests: Vec<ChatRequest> = prompts.into_iter().map(|p| self.request(p)).collect();
        self.client.call_many(&requests).await
    }

    /// The reply text, or `None` (counted) when the call failed or was refused.
    fn text_of(record: &CallRecord, report: &mut SynthReport) -> Option<String> {
        match &record.outcome {
            CallOutcome::Completed(c) => Some(c.text.clone()),
            CallOutcome::Refused(_) => {
                report.refused_calls += 1;
                None
            }
            CallOutcome::Failed(_) => {
                report.failed_calls += 1;
                None
            }
        }
    }

    /// Genres of each concept (a failed call counts and falls back to text, as an unusable reply
    /// would).
    pub async fn genres(&self, concepts: &[String], report: &mut SynthReport) -> Result<Vec<Vec<Genre>>, SynthError> {
        let prompts = concepts
            .iter()
            .map(|c| self.prompts.render(Template::Genre, &[("concept", c)]))
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        Ok(records
            .iter()
            .map(|r| {
                Self::text_of(r, report)
                    .map(|t| parse_genres(&t))
                    .unwrap_or_else(|| vec![Genre::Text])
            })
            .collect())
    }

    /// Contrast concepts `(word, other meaning)` of one concept, in the order the LM listed them.
    pub async fn contrast_concepts(
        &self,
        concept: &str,
        report: &mut SynthReport,
    ) -> Result<Vec<(String, String)>, SynthError> {
        // 1. related words, one per line.
        let words_prompt = self.prompts.render(Template::ConceptWords, &[("concept", concept)])?;
        let records = self.ask_all(vec![words_prompt]).await;
        let Some(reply) = Self::text_of(&records[0], report) else {
            return Ok(vec![]);
        };
        // Empty lines would be dropped after step 2 anyway; not asking about them saves calls.
        let words: Vec<String> = reply
            .split('\n')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();

        // 2. another meaning of each word.
        let prompts = words
            .iter()
            .map(|w| {
                self.prompts
                    .render(Template::WordOtherMeaning, &[("word", w), ("concept", concept)])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        let mut candidates = Vec::new();
        for (w, r) in words.iter().zip(&records) {
            let Some(meaning) = Self::text_of(r, report) else {
                continue;
            };
            // AxBench: drop "<NONE>" (any "none"), empty, and one-word meanings.
            if meaning.to_lowercase().contains("none") || meaning.is_empty() || meaning.split_whitespace().count() <= 1
            {
                continue;
            }
            candidates.push((w.clone(), meaning));
        }

        // 3. keep meanings the LM finds unrelated to the concept.
        let prompts = candidates
            .iter()
            .map(|(w, m)| {
                self.prompts.render(
                    Template::ContrastFilter,
                    &[("word", w), ("meaning", m), ("concept", concept)],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        let mut kept = Vec::new();
        for (c, r) in candidates.into_iter().zip(&records) {
            let Some(check) = Self::text_of(r, report) else {
                continue;
            };
            let last = check.rsplit("Answer").next().unwrap_or("").to_lowercase();
            if last.contains("yes") {
                kept.push(c);
            }
        }
        Ok(kept)
    }

    /// Answer `instructions` with `template` (concept/with-or-without), cleaned and truncated;
    /// rows of failed calls are dropped.
    async fn respond(
        &self,
        template: Template,
        concept: &str,
        instructions: &[String],
        report: &mut SynthReport,
    ) -> Result<Vec<(String, String)>, SynthError> {
        let prompts = instructions
            .iter()
            .map(|i| {
                self.prompts
                    .render(template, &[("instruction", i), ("concept", concept)])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        Ok(instructions
            .iter()
            .zip(&records)
            .filter_map(|(i, r)| {
                Self::text_of(r, report).map(|t| {
                    (
                        i.clone(),
                        (self.truncate)(t.trim_matches([' ', '\'']).trim_matches('"')),
                    )
                })
            })
            .collect())
    }

    /// Training positives of one concept: sample `n` train instructions of `genre`, answer the
    /// first `n / 2` with the concept (AxBench `create_train_df`).
    pub async fn train_positives(
        &self,
        concept: &str,
        concept_id: i64,
        genre: Genre,
        n: usize,
        rng: &mut StdRng,
        report: &mut SynthReport,
    ) -> Result<Vec<Row>, SynthError> {
        let sampled = self.seeds.sample(genre, Split::Train, n, rng);
        let want = n / 2;
        let take = sampled.len().min(want);
        report.missing_seed_instructions += (want - take) as u64;
        let pairs = self
            .respond(Template::ResponseWithConcept, concept, &sampled[..take], report)
            .await?;
        Ok(pairs
            .into_iter()
            .map(|(input, output)| Row {
                input,
                output,
                output_concept: concept.to_string(),
                concept_genre: genre.as_str().into(),
                category: "positive".into(),
                dataset_category: "instruction".into(),
                concept_id,
            })
            .collect())
    }

    /// The latent evaluation rows of one concept (AxBench `create_eval_df`, `subset_n` = 36):
    /// positives, genre-balanced negatives, then one hard negative per contrast concept.
    #[allow(clippy::too_many_arguments)] // mirrors create_eval_df's inputs one to one
    pub async fn latent_eval(
        &self,
        concept: &str,
        concept_id: i64,
        genre: Genre,
        subset_n: usize,
        contrasts: &[(String, String)],
        rng: &mut StdRng,
        report: &mut SynthReport,
    ) -> Result<Vec<Row>, SynthError> {
        let row = |input: String, output: String, output_concept: String, g: &str, category: &str| Row {
            input,
            output,
            output_concept,
            concept_genre: g.to_string(),
            category: category.to_string(),
            dataset_category: "instruction".into(),
            concept_id,
        };
        // 2 * subset_n test instructions of the concept's genre: the first half for positives,
        // the rest for hard negatives.
        let content = self.seeds.sample(genre, Split::Test, subset_n * 2, rng);
        let n_pos = content.len().min(subset_n);
        report.missing_seed_instructions += (subset_n - n_pos) as u64;
        let mut rows = Vec::new();
        for (i, o) in self
            .respond(Template::ResponseWithConcept, concept, &content[..n_pos], report)
            .await?
        {
            rows.push(row(i, o, concept.to_string(), genre.as_str(), "positive"));
        }

        // Negatives, genre-balanced: 15% math, 15% code, the rest text (36 -> 26/5/5).
        let n_math = (subset_n as f64 * 0.15) as usize;
        let n_code = n_math;
        let n_text = subset_n - n_math - n_code;
        for (g, n) in [(Genre::Text, n_text), (Genre::Math, n_math), (Genre::Code, n_code)] {
            let instr = self.seeds.sample(g, Split::Test, n, rng);
            report.missing_seed_instructions += (n - instr.len()) as u64;
            for (i, o) in self
                .respond(Template::ResponseWithoutConcept, concept, &instr, report)
                .await?
            {
                rows.push(row(i, o, concept.to_string(), g.as_str(), "negative"));
            }
        }

        // Hard negatives on the instructions after the positives'.
        let spare = &content[n_pos..];
        let n_hard = contrasts.len().min(spare.len());
        report.missing_seed_instructions += (contrasts.len() - n_hard) as u64;
        let prompts = contrasts[..n_hard]
            .iter()
            .zip(spare)
            .map(|((w, m), instr)| {
                self.prompts.render(
                    Template::ResponseWithContrastConcept,
                    &[
                        ("instruction", instr),
                        ("concept", concept),
                        ("word", w),
                        ("meaning", m),
                    ],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        for (((w, m), instr), r) in contrasts.iter().zip(spare).zip(&records) {
            let Some(t) = Self::text_of(r, report) else {
                continue;
            };
            let cleaned = strip_leading_tags(&t).trim_matches([' ', '.', '\'']).trim_matches('"');
            rows.push(row(
                instr.clone(),
                (self.truncate)(cleaned),
                format!("{w}//{m}"),
                genre.as_str(),
                "hard negative",
            ));
        }
        Ok(rows)
    }

    /// Steering prompts for the prompting baseline, one per concept (a failed or empty reply
    /// falls back to a fixed instruction, as AxBench does).
    pub async fn steering_prompts(
        &self,
        concepts: &[String],
        report: &mut SynthReport,
    ) -> Result<Vec<String>, SynthError> {
        let prompts = concepts
            .iter()
            .map(|c| self.prompts.render(Template::SteeringPrompt, &[("concept", c)]))
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.ask_all(prompts).await;
        Ok(concepts
            .iter()
            .zip(&records)
            .map(|(c, r)| {
                Self::text_of(r, report)
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| fallback_steering_prompt(c))
            })
            .collect())
    }
}

/// The steering instruction used when none could be generated.
pub fn fallback_steering_prompt(concept: &str) -> String {
    format!(
        "Whatever the question, make your answer about {concept}, even where that does not fit the question or makes little sense."
    )
}

/// The shared negative pool: `num_of_examples / 2` train instructions per genre (text, math,
/// code, in AxBench's order), answered by the model to be steered.
pub async fn negative_pool(
    seeds: &SeedInstructions,
    generator: &dyn ResponseGenerator,
    num_of_examples: usize,
    rng: &mut StdRng,
) -> Result<Vec<Row>, SynthError> {
    let mut rows = Vec::new();
    for genre in [Genre::Text, Genre::Math, Genre::Code] {
        let instructions = seeds.sample(genre, Split::Train, num_of_examples / 2, rng);
        let outputs = generator.generate(&instructions).await.map_err(SynthError::Generator)?;
        if outputs.len() != instructions.len() {
            return Err(SynthError::Generator(format!(
                "asked for {} responses, got {}",
                instructions.len(),
                outputs.len()
            )));
        }
        for (input, output) in instructions.into_iter().zip(outputs) {
            rows.push(Row {
                input,
                output,
                output_concept: EMPTY_CONCEPT.into(),
                concept_genre: genre.as_str().into(),
                category: "negative".into(),
                dataset_category: "instruction".into(),
                concept_id: -1,
            });
        }
    }
    Ok(rows)
}

/// Everything stage 1 + 1b produce for a concept list.
#[derive(Debug, Clone, Default)]
pub struct SynthOutput {
    /// Shared negatives first, then each concept's positives (AxBench's `train_data.parquet`).
    pub train: Vec<Row>,
    /// AxBench's `latent_eval_data.parquet` rows.
    pub latent_eval: Vec<Row>,
    pub metadata: Vec<ConceptMetadata>,
    pub report: SynthReport,
}

/// Sizes of a synthesis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Training examples per concept (AxBench `num_of_examples`; positives are half of it).
    pub num_of_examples: usize,
    /// Latent eval positives (and negatives) per concept (AxBench `latent_num_of_examples`).
    pub latent_num_of_examples: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            num_of_examples: 144,
            latent_num_of_examples: 36,
            seed: 42,
        }
    }
}

/// Run the whole procedure: negatives, then per concept genre, positives, contrast concepts and
/// the latent eval set.
pub async fn synthesize(
    synth: &Synthesizer<'_>,
    generator: &dyn ResponseGenerator,
    concepts: &[Concept],
    config: &SynthConfig,
) -> Result<SynthOutput, SynthError> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut out = SynthOutput {
        train: negative_pool(synth.seeds, generator, config.num_of_examples, &mut rng).await?,
        ..Default::default()
    };
    let descriptions: Vec<String> = concepts.iter().map(|c| c.description.clone()).collect();
    let genres = synth.genres(&descriptions, &mut out.report).await?;
    for (id, (concept, genres)) in concepts.iter().zip(genres).enumerate() {
        let id = id as i64;
        let genre = genres[0];
        let mut report = SynthReport::default();
        let positives = synth
            .train_positives(
                &concept.description,
                id,
                genre,
                config.num_of_examples,
                &mut rng,
                &mut report,
            )
            .await?;
        let contrasts = synth.contrast_concepts(&concept.description, &mut report).await?;
        let eval = synth
            .latent_eval(
                &concept.description,
                id,
                genre,
                config.latent_num_of_examples,
                &contrasts,
                &mut rng,
                &mut report,
            )
            .await?;
        out.train.extend(positives);
        out.latent_eval.extend(eval);
        out.metadata.push(ConceptMetadata {
            concept_id: id,
            concept: concept.description.clone(),
            reference: concept.reference.clone(),
            concept_genres_map: BTreeMap::from([(concept.description.clone(), genres)]),
        });
        out.report.merge(&report);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genre_rule_matches_axbench() {
        assert_eq!(parse_genres("Text"), vec![Genre::Text]);
        assert_eq!(parse_genres("Code"), vec![Genre::Code]);
        assert_eq!(parse_genres("MATH"), vec![Genre::Math]);
        assert_eq!(parse_genres("<NONE>"), vec![Genre::Text]);
        // "none" wins even when a genre is also named.
        assert_eq!(parse_genres("Code (none of the others)"), vec![Genre::Text]);
        assert_eq!(parse_genres("code, math"), vec![Genre::Code, Genre::Math]);
        assert_eq!(parse_genres("math and text"), vec![Genre::Text, Genre::Math]);
        assert_eq!(parse_genres("poetry"), vec![Genre::Text]);
        assert_eq!(parse_genres(""), vec![Genre::Text]);
    }

    #[test]
    fn csv_fields_follow_rfc4180() {
        assert_eq!(csv_fields("a,b"), vec!["a", "b"]);
        assert_eq!(
            csv_fields("\"a, with comma\",https://x/1"),
            vec!["a, with comma", "https://x/1"]
        );
        assert_eq!(csv_fields("\"say \"\"hi\"\"\",u"), vec!["say \"hi\"", "u"]);
        assert_eq!(csv_fields("only"), vec!["only"]);
    }

    #[test]
    fn leading_tags_are_stripped() {
        assert_eq!(strip_leading_tags("<FINAL> <B>text <i>x"), "text <i>x");
        assert_eq!(strip_leading_tags("plain"), "plain");
        assert_eq!(strip_leading_tags("<unclosed"), "<unclosed");
    }

    #[test]
    fn max_concepts_shuffles_reproducibly() {
        let cs: Vec<Concept> = (0..10)
            .map(|i| Concept {
                description: format!("c{i}"),
                reference: "null".into(),
            })
            .collect();
        let a = select_concepts(cs.clone(), Some(4), 42);
        let b = select_concepts(cs.clone(), Some(4), 42);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        assert_eq!(select_concepts(cs.clone(), None, 42), cs);
    }

    #[test]
    fn word_truncation() {
        assert_eq!(truncate_words(2)("a  b c"), "a b");
        assert_eq!(no_truncation()("a  b"), "a  b");
    }
}
