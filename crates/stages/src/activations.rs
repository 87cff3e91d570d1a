//! `axbench.activations`: runs the model once over a set of (instruction, response) pairs and stores every token's
//! residual stream after layer L, so every method fits and scores from the same file.
//!
//! The data comes from the `dataset` param (a directory in AxBench's layout) or, when bound, the `dataset` input (an
//! `axbench.synthesize` node; see [`super::concepts::open_dataset`]).
//!
//! Which rows (param `concept`):
//! * `concept = -1`: the shared negatives of `train_data.parquet` (`output_concept == "EEEEE"`, all genres). Every
//!   concept's fit picks the ones of its genre, so they are computed once, not per concept.
//! * `concept = c`: concept c's training positives (train.py `prepare_df`), then its latent eval rows (positives,
//!   negatives, hard negatives, in file order).
//!
//! The text of a row is the chat turn AxBench builds (Gemma: `<bos><start_of_turn>user\n{instruction}<end_of_turn>\n
//! <start_of_turn>model\n{response}`), in two forms that differ only at the end:
//! * **train form** (binarized training text): train.py renders the turn *with* the generation prompt and then
//!   strips the template's suffix length (2 tokens for Gemma), so it ends in `<end_of_turn>\n<start_of_turn>`;
//! * **eval form** (inference.py latent): rendered without it and stripped the same way, so it ends at the response.
//!
//! The eval form is a prefix of the train form (checked per row), and the model is causal, so one pass over the
//! train form gives both: we store the train form and each row's `eval_len`. The first `prefix_length` tokens (the
//! chat-template prefix, `<bos><start_of_turn>user\n` = 4 for Gemma, found as AxBench does by comparing two rendered
//! prompts) are stored too; consumers cut them (the probe keeps all but BOS, as AxBench's probe data module does).
//!
//! Outputs:
//! * `activations.safetensors`: `acts` `[n_tokens, d]` f32 (rows of all examples, concatenated), `offsets` `[n + 1]`,
//!   `eval_len` `[n]`, `prompt_len` `[n]` (tokens up to and including `<start_of_turn>model\n`), `token_ids`
//!   `[n_tokens]`, all i64 except `acts`;
//! * `rows.json`: the examples in stored order (split, category, texts, ...);
//! * `activations.json`: model, layer, prefix length, sizes and the measured throughput.
//!
//! Rows are batched by length (longest first, at most `batch_tokens` padded tokens a batch) and the pass stops after
//! layer L. The model is loaded once per process and reused by the next node that asks for the same file, device and
//! dtype; the stage holds the `model` resource class so two model stages never run at once.

use std::time::Instant;

use axbench_engine::{ParamSpec, ParamType, Stage, StageContext, StageError};
use axbench_models::chat::Message;
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::model::{Padding, pad};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::concepts::open_dataset;
use super::model_cache::{LoadedModel, with_model};
use super::{fail, read_json, write_json};
use axbench_data::dataset::{AxBenchData, Category, EMPTY_CONCEPT, Example, eval_set, training_set};
use axbench_methods::{MethodError, TokenActivations};

pub struct Activations;

/// `concept` value that selects the shared negatives.
pub const SHARED_NEGATIVES: i64 = -1;

/// `concept` value that selects the imbalanced negative pool: `pool_size` negatives drawn from every concept's latent
/// eval rows as pandas `sample(pool_size, random_state=pool_seed)` draws them (inference.py `latent_imbalance`;
/// AxBench: 36 × 100 = 3600), capped at the negatives there are. Every concept's detector scores them
/// (`axbench.infer`'s `pool` input) for the 1:100 max-F1 of `axbench.evaluate`.
pub const IMBALANCE_POOL: i64 = -2;

/// Which AxBench table a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

/// One stored example (`rows.json`), in stored order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub split: Split,
    pub concept_id: i64,
    pub category: Category,
    pub concept_genre: String,
    pub output_concept: String,
    pub input: String,
    pub output: String,
    /// The train form as text, BOS stripped (what BoW fits on).
    pub train_text: String,
    /// The eval form as text, BOS stripped (what BoW scores).
    pub eval_text: String,
}

/// `activations.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Model name: the file stem of `model.path` (or the directory name of an HF model).
    pub model: String,
    pub layer: i64,
    /// `-1` for the shared negatives.
    pub concept_id: i64,
    pub concept: Option<String>,
    /// The concept's `ref` (Neuronpedia feature URL; the SAE method reads its feature from it). Absent in files
    /// written before it was recorded.
    #[serde(default)]
    pub reference: Option<String>,
    /// `concept_genres_map[concept][0]`: picks the training negatives.
    pub genre: Option<String>,
    /// Leading chat-template tokens AxBench excludes from statistics and scores.
    pub prefix_length: usize,
    pub hidden_size: usize,
    pub n_examples: usize,
    pub n_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// A loaded `activations.safetensors` plus its rows and meta.
pub struct ActivationSet {
    pub meta: Meta,
    pub rows: Vec<Row>,
    /// `[n_tokens, d]` f32 on the CPU.
    pub acts: Tensor,
    pub offsets: Vec<usize>,
    pub eval_len: Vec<usize>,
    pub prompt_len: Vec<usize>,
    pub token_ids: Vec<i64>,
}

/// Where a row's slice ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The whole stored (train-form) sequence.
    Train,
    /// The eval form: up to the end of the response.
    Eval,
}

impl ActivationSet {
    /// Reads the outputs of an `axbench.activations` node.
    pub fn load(art: &axbench_engine::InputArtifact) -> Result<Self, StageError> {
        let meta: Meta = read_json(art.file("activations.json")?)?;
        let rows: Vec<Row> = read_json(art.file("rows.json")?)?;
        let p = art.file("activations.safetensors")?;
        let tensors = Tensor::read_safetensors(p).map_err(|e| fail(p.display(), e))?;
        let get = |name: &str| -> Result<Tensor, StageError> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| fail(p.display(), format!("no tensor `{name}`")))
        };
        let ints = |name: &str| -> Result<Vec<i64>, StageError> {
            Vec::<i64>::try_from(&get(name)?).map_err(|e| fail(p.display(), e))
        };
        let usizes = |name: &str| -> Result<Vec<usize>, StageError> {
            Ok(ints(name)?.into_iter().map(|x| x as usize).collect())
        };
        let set = ActivationSet {
            acts: get("acts")?,
            offsets: usizes("offsets")?,
            eval_len: usizes("eval_len")?,
            prompt_len: usizes("prompt_len")?,
            token_ids: ints("token_ids")?,
            meta,
            rows,
        };
        let n = set.rows.len();
        if set.offsets.len() != n + 1
            || set.eval_len.len() != n
            || set.offsets.last().copied() != Some(set.acts.size()[0] as usize)
        {
            return Err(fail(
                p.display(),
                format!(
                    "inconsistent sizes: {n} rows, {} offsets, {} token rows",
                    set.offsets.len(),
                    set.acts.size()[0]
                ),
            ));
        }
        Ok(set)
    }

    pub fn len(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// Token activations of `rows`, each from position `start` to its `end`, concatenated in the given order.
    pub fn slice(&self, rows: &[usize], start: usize, end: End) -> Result<TokenActivations, MethodError> {
        let mut idx = Vec::new();
        let mut offsets = vec![0usize];
        for &i in rows {
            let stop = match end {
                End::Train => self.len(i),
                End::Eval => self.eval_len[i],
            };
            let from = start.min(stop);
            idx.extend((self.offsets[i] + from..self.offsets[i] + stop).map(|x| x as i64));
            offsets.push(idx.len());
        }
        let acts = self.acts.index_select(0, &Tensor::from_slice(&idx));
        TokenActivations::new(acts, offsets)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u32], b: &[u32]) -> usize {
    a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

/// AxBench's template geometry: `(prefix_length, suffix_length)`. The prefix is what two prompts with different user
/// messages share (train.py `get_prefix_length`); the suffix is what two turns with different responses share at
/// their end (`get_suffix_length`: `<end_of_turn>\n` for Gemma).
pub fn template_lengths(m: &LoadedModel) -> Result<(usize, usize), StageError> {
    let enc = |msgs: &[Message], generation: bool| {
        m.template
            .encode(&m.tokenizer, msgs, generation)
            .map_err(|e| fail("chat template", e))
    };
    let a = enc(&[Message::user("apple")], true)?;
    let b = enc(&[Message::user("zebra quartz")], true)?;
    let c = enc(&[Message::user("q"), Message::assistant("apple")], false)?;
    let d = enc(&[Message::user("q"), Message::assistant("zebra quartz")], false)?;
    Ok((common_prefix(&a, &b), common_suffix(&c, &d)))
}

/// Token ids of one row: `(train_form, eval_len, prompt_len)`.
pub fn encode_row(
    m: &LoadedModel,
    suffix: usize,
    instruction: &str,
    response: &str,
) -> Result<(Vec<u32>, usize, usize), StageError> {
    let msgs = [Message::user(instruction), Message::assistant(response)];
    let enc = |msgs: &[Message], generation: bool| {
        m.template
            .encode(&m.tokenizer, msgs, generation)
            .map_err(|e| fail("chat template", e))
    };
    let mut train = enc(&msgs, true)?;
    let mut eval = enc(&msgs, false)?;
    let prompt = enc(&msgs[..1], true)?;
    train.truncate(train.len().saturating_sub(suffix));
    eval.truncate(eval.len().saturating_sub(suffix));
    if !train.starts_with(&eval) {
        return Err(StageError::msg(format!(
            "the eval form of a row is not a prefix of its train form (tokenizer merges across the template's end); instruction starts {:?}",
            instruction.chars().take(60).collect::<String>()
        )));
    }
    let prompt_len = common_prefix(&prompt, &eval);
    Ok((train, eval.len(), prompt_len))
}

impl Stage for Activations {
    fn kind(&self) -> &str {
        "axbench.activations"
    }
    fn version(&self) -> u32 {
        2
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "dataset",
                ParamType::Path,
                "",
                "AxBench data directory (unset when the `dataset` input is bound)",
            ),
            ParamSpec::optional(
                "concept",
                ParamType::Int,
                SHARED_NEGATIVES,
                "concept id, -1 for the shared negatives, -2 for the imbalanced negative pool",
            ),
            ParamSpec::optional(
                "pool_size",
                ParamType::Int,
                3600,
                "concept -2: negatives in the imbalanced pool (AxBench: 36 x 100), capped at those in the eval data",
            ),
            ParamSpec::optional(
                "pool_seed",
                ParamType::Int,
                42,
                "concept -2: the pool's sampling seed (pandas random_state)",
            ),
            ParamSpec::required(
                "model",
                ParamType::Path,
                "model: a .gguf file or an HF directory (hashed by content)",
            ),
            ParamSpec::required(
                "layer",
                ParamType::Int,
                "layer whose output (residual stream) is stored",
            ),
            ParamSpec::optional("device", ParamType::Str, "cpu", "cpu, cuda, cuda:N or auto"),
            ParamSpec::optional(
                "dtype",
                ParamType::Str,
                "f32",
                "f32 or bf16 (activations are stored as f32 either way)",
            ),
            ParamSpec::optional("batch_tokens", ParamType::Int, 8192, "padded tokens per forward batch"),
        ]
    }
    fn resources(&self) -> Vec<(&'static str, u32)> {
        vec![("model", 1)]
    }
    fn doc(&self) -> &str {
        "Layer-L residual-stream activations of every token of a concept's rows (or the shared negatives)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let data = open_dataset(ctx)?;
        let dir = data.dir.clone();
        let concept_id = ctx.param_i64("concept")?;
        let model_path = ctx.param_path("model")?;
        if !model_path.exists() {
            return Err(StageError::Param {
                name: "model".into(),
                message: format!(
                    "{} does not exist (a .gguf file or an HF model directory)",
                    model_path.display()
                ),
            });
        }
        let layer = ctx.param_i64("layer")?;
        let device: DeviceSpec = ctx.param_str("device")?.parse().map_err(|e| StageError::Param {
            name: "device".into(),
            message: format!("{e}"),
        })?;
        let dtype: DType = ctx.param_str("dtype")?.parse().map_err(|e| StageError::Param {
            name: "dtype".into(),
            message: format!("{e}"),
        })?;
        let batch_tokens = ctx.param_i64("batch_tokens")?.max(1) as usize;

        let (examples, concept): (Vec<(&Example, Split)>, Option<&axbench_data::dataset::Concept>) =
            if concept_id == SHARED_NEGATIVES {
                let neg = data
                    .train
                    .iter()
                    .filter(|e| e.output_concept == EMPTY_CONCEPT && e.category == Category::Negative)
                    .map(|e| (e, Split::Train))
                    .collect();
                (neg, None)
            } else if concept_id == IMBALANCE_POOL {
                let eval = data.eval.as_deref().unwrap_or_default();
                let available = eval.iter().filter(|e| e.category == Category::Negative).count();
                let want = ctx.param_i64("pool_size")?.max(0) as usize;
                if want > available {
                    ctx.log(format!(
                        "imbalanced pool: {want} negatives asked, {available} in the eval data: using {available}"
                    ));
                }
                let seed = ctx.param_i64("pool_seed")? as u32;
                let pool = axbench_data::dataset::imbalance_negative_pool(eval, want.min(available), seed)
                    .map_err(|e| fail("dataset", e))?;
                (pool.into_iter().map(|e| (e, Split::Eval)).collect(), None)
            } else {
                let c = data
                    .concepts
                    .iter()
                    .find(|c| c.id == concept_id)
                    .ok_or_else(|| StageError::Param {
                        name: "concept".into(),
                        message: format!(
                            "no concept {concept_id} in {}",
                            dir.join(AxBenchData::METADATA).display()
                        ),
                    })?;
                let ts = training_set(&data.train, c, None).map_err(|e| fail("dataset", e))?;
                let eval = data.eval.as_deref().unwrap_or_default();
                let mut rows: Vec<(&Example, Split)> = ts.positives.iter().map(|e| (*e, Split::Train)).collect();
                rows.extend(eval_set(eval, concept_id).into_iter().map(|e| (e, Split::Eval)));
                (rows, Some(c))
            };
        if examples.is_empty() {
            return Err(StageError::msg(format!(
                "{}: no rows for concept {concept_id}",
                dir.display()
            )));
        }

        let model_path2 = model_path.clone();
        let out = with_model(&model_path2, device, dtype, |m| {
            let n_layers = m.model.info().num_layers as i64;
            if layer < 0 || layer >= n_layers {
                return Err(StageError::Param {
                    name: "layer".into(),
                    message: format!("{layer} is out of range: {} has layers 0..={}", m.name, n_layers - 1),
                });
            }
            extract(ctx, m, layer as usize, &examples, batch_tokens)
        })?;
        let (acts, offsets, eval_len, prompt_len, token_ids, texts, prefix_length, hidden, name, secs) = out;

        let n_tokens = *offsets.last().unwrap();
        let rows: Vec<Row> = examples
            .iter()
            .zip(texts)
            .map(|((e, split), (train_text, eval_text))| Row {
                split: *split,
                concept_id: e.concept_id,
                category: e.category,
                concept_genre: e.concept_genre.clone(),
                output_concept: e.output_concept.clone(),
                input: e.input.clone(),
                output: e.output.clone(),
                train_text,
                eval_text,
            })
            .collect();
        let meta = Meta {
            model: name,
            layer,
            concept_id,
            concept: concept.map(|c| c.concept.clone()),
            reference: concept.map(|c| c.reference.clone()),
            genre: concept.map(|c| c.genre().to_owned()),
            prefix_length,
            hidden_size: hidden,
            n_examples: rows.len(),
            n_tokens,
            seconds: secs,
            tokens_per_s: n_tokens as f64 / secs.max(1e-9),
        };
        ctx.log(format!(
            "{} rows, {} tokens in {:.1}s ({:.0} tokens/s)",
            meta.n_examples, n_tokens, secs, meta.tokens_per_s
        ));
        let as_i64 = |v: &[usize]| Tensor::from_slice(&v.iter().map(|x| *x as i64).collect::<Vec<_>>());
        let tensors = [
            ("acts", acts),
            ("offsets", as_i64(&offsets)),
            ("eval_len", as_i64(&eval_len)),
            ("prompt_len", as_i64(&prompt_len)),
            ("token_ids", Tensor::from_slice(&token_ids)),
        ];
        let p = ctx.output_path("activations.safetensors")?;
        Tensor::write_safetensors(&tensors, &p).map_err(|e| fail(p.display(), e))?;
        write_json(ctx, "rows.json", &rows)?;
        write_json(ctx, "activations.json", &meta)
    }
}

type Extracted = (
    Tensor,
    Vec<usize>,
    Vec<usize>,
    Vec<usize>,
    Vec<i64>,
    Vec<(String, String)>,
    usize,
    usize,
    String,
    f64,
);

/// Tokenizes, batches by length, runs the model to layer L and gathers each row's token activations in row order.
fn extract(
    ctx: &StageContext,
    m: &LoadedModel,
    layer: usize,
    examples: &[(&Example, Split)],
    batch_tokens: usize,
) -> Result<Extracted, StageError> {
    let (prefix_length, suffix) = template_lengths(m)?;
    let bos = m.tokenizer.bos_id();
    let mut ids = Vec::with_capacity(examples.len());
    let mut eval_len = Vec::with_capacity(examples.len());
    let mut prompt_len = Vec::with_capacity(examples.len());
    let mut texts = Vec::with_capacity(examples.len());
    for (e, _) in examples {
        let (train, el, pl) = encode_row(m, suffix, &e.input, &e.output)?;
        let skip = usize::from(bos.is_some() && train.first().copied() == bos);
        let dec = |t: &[u32]| m.tokenizer.decode(t, false).map_err(|e| fail("decode", e));
        texts.push((dec(&train[skip..])?, dec(&train[skip..el])?));
        ids.push(train.into_iter().map(i64::from).collect::<Vec<i64>>());
        eval_len.push(el);
        prompt_len.push(pl);
    }
    let total: usize = ids.iter().map(Vec::len).sum();
    ctx.progress().set_length(total as u64);
    ctx.progress().set_message(format!("{} rows, layer {layer}", ids.len()));

    // Longest first, so a batch's padding is small and the first batch shows the worst memory use.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut per_row: Vec<Option<Tensor>> = (0..ids.len()).map(|_| None).collect();
    let t0 = Instant::now();
    let _guard = tch::no_grad_guard();
    let mut start = 0;
    while start < order.len() {
        ctx.check_cancelled()?;
        let longest = ids[order[start]].len();
        let n = (batch_tokens / longest.max(1)).clamp(1, 64).min(order.len() - start);
        let batch: Vec<usize> = order[start..start + n].to_vec();
        let rows: Vec<Vec<i64>> = batch.iter().map(|&i| ids[i].clone()).collect();
        let (input, mask) = pad(&rows, 0, Padding::Right);
        let h = m
            .model
            .activations(&input, Some(&mask), layer)
            .map_err(|e| fail("forward", e))?;
        let h = h.to_device(Device::Cpu).to_kind(Kind::Float);
        for (b, &i) in batch.iter().enumerate() {
            per_row[i] = Some(h.get(b as i64).narrow(0, 0, ids[i].len() as i64).copy());
        }
        ctx.progress().inc(rows.iter().map(Vec::len).sum::<usize>() as u64);
        start += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let per_row: Vec<Tensor> = per_row.into_iter().map(|t| t.expect("every row ran")).collect();
    let acts = Tensor::cat(&per_row, 0);
    let mut offsets = vec![0usize];
    for r in &ids {
        offsets.push(offsets.last().unwrap() + r.len());
    }
    let token_ids: Vec<i64> = ids.into_iter().flatten().collect();
    let hidden = m.model.info().hidden_size;
    Ok((
        acts,
        offsets,
        eval_len,
        prompt_len,
        token_ids,
        texts,
        prefix_length,
        hidden,
        m.name.clone(),
        secs,
    ))
}
