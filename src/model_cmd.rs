//! `axbench model`: look inside a model from the shell: `info`, `tokenize`, `logits`,
//! `generate`, `activations`. Each loads MODEL (an HF directory, a `.gguf` file, or the embedded
//! `default` / `default-instruct`) with the `axbench-models` runtime and prints for a person, or
//! with `--json` one JSON object on stdout (the shapes are a contract: tests/model_cli.rs
//! snapshots them).
//!
//! Exit codes: 0 success, 2 bad input (no such model, unreadable file, layer out of range, bad
//! flag value, empty input), 1 anything else (a libtorch failure).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use axbench_models::chat::{ChatTemplate, Message};
use axbench_models::device::{DType, DeviceSpec};
use axbench_models::generate::{FinishReason, GenerateConfig, Prompt, Sampling, generate};
use axbench_models::hooks::{Hooks, Logits};
use axbench_models::open::{ModelVocab, is_gguf};
use axbench_models::tokenizer::Tokenizer;
use axbench_models::{LoadOptions, Model, ModelError};
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;

use crate::error::bad;
use serde_json::json;

/// Name of the tensor `activations --out` writes.
pub const ACTIVATIONS_TENSOR: &str = "activations";

/// `axbench model`
#[derive(Args, Debug)]
#[command(
    after_long_help = "MODEL is an HF model directory (config.json, *.safetensors, tokenizer.json), a .gguf file,
`default` (Gemma 3 270M base, GGUF Q4_K_M) or `default-instruct` (SmolLM2-135M-Instruct, GGUF Q4_1).

Examples:
  axbench model info default
  axbench model tokenize default-instruct 'Hello, world! 123' --json
  axbench model logits default 'The capital of France is' --top-k 5
  axbench model generate default-instruct 'Name three colors.' --chat --max-new-tokens 30
  axbench model activations default 'The quick brown fox' --layer 6 --out acts.safetensors"
)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Architecture, layer count, hidden size, vocabulary, chat template and file digest
    #[command(
        after_long_help = "The digest is BLAKE3 over the file's bytes (for an HF directory: over every file in it,
in name order, each as its relative path, a NUL, its length as 8 little-endian bytes, then its
bytes). The weights are not loaded, so this is quick.

Examples:
  axbench model info default
  axbench model info ./gemma-2-2b --json"
    )]
    Info(InfoArgs),
    /// Token ids and token strings of a text, as the model's reference tokenizer produces them
    #[command(
        after_long_help = "Special tokens written in the text (`<start_of_turn>`, `<|im_start|>`, `<bos>`) are parsed as
those tokens. BOS is added where the model's tokenizer adds it by default (Gemma: yes; SmolLM2:
no); --no-bos leaves it out. Only the tokenizer is loaded, not the weights.

JSON: {\"ids\":[…],\"tokens\":[…]}

Examples:
  axbench model tokenize default 'Hello <start_of_turn>user'
  axbench model tokenize default-instruct --file prompt.txt --json"
    )]
    Tokenize(TokenizeArgs),
    /// The next-token distribution after a text: the K highest logits
    #[command(
        after_long_help = "Logits are the model's raw outputs for the last position (after Gemma-2's final soft-cap
where the model has one), not probabilities.

JSON: {\"top\":[{\"id\":…,\"token\":\"…\",\"logit\":…},…]} (highest first)

Examples:
  axbench model logits default 'The capital of France is'
  axbench model logits default-instruct '1, 2, 3,' --top-k 10 --json"
    )]
    Logits(LogitsArgs),
    /// Continue a text: greedy, or sampled with --temperature
    #[command(
        after_long_help = "Greedy unless --temperature is given (then softmax sampling, optionally restricted to the
--top-k most likely tokens and then the --top-p nucleus, from a generator seeded by --seed: the same seed gives the same text). Stops at
the tokenizer's end-of-generation tokens (EOS, <end_of_turn>, <|im_end|>) unless --ignore-eos.
`ids` are the generated ids only (a stop token included); `text` is their decoding without
special tokens.

JSON: {\"ids\":[…],\"text\":\"…\",\"finish_reason\":\"stop\"|\"length\"}

Examples:
  axbench model generate default 'Once upon a time' --max-new-tokens 40
  axbench model generate default-instruct 'Write a haiku about rust.' --chat --temperature 0.7 --seed 1
  axbench model generate default-instruct 'Name a fruit.' --chat --temperature 1 --top-k 50"
    )]
    Generate(GenerateArgs),
    /// The residual stream at the output of one layer, for every token
    #[command(
        after_long_help = "Layer L is 0-based: the output of decoder layer L, which is HF transformers'
`hidden_states[L+1]` (HF applies the final norm to its last entry; these values never are).

JSON: {\"layer\":L,\"tokens\":[…],\"shape\":[T,D],\"values\":[[…D floats…],…T rows]}
With --out FILE.safetensors the values are written there instead, as one float32 tensor named
`activations` of shape [T, D], with metadata `layer`, `model`, `ids` (JSON list) and `tokens`
(JSON list); stdout then gets a summary.

Examples:
  axbench model activations default 'The quick brown fox' --layer 6 --json
  axbench model activations default-instruct --file essay.txt --layer 20 --out acts.safetensors"
    )]
    Activations(ActivationsArgs),
    /// Whether CUDA is usable here, and if not, why (libtorch's CUDA libraries, driver, devices)
    #[command(
        after_long_help = "Loads libtorch's CUDA library and, when libtorch sees no GPU, asks the NVIDIA driver
directly, then prints what it found and the verdict `--device cuda` and `--device auto` act on.
Exit code 0 when CUDA is usable, 1 when it is not (the message names the cause; docs/gpu.md
says how to fix each).

JSON: {\"usable\":bool,\"devices\":N,\"gpus_present\":bool,\"problem\":\"…\"|null,
       \"torch_cuda\":\"loaded\"|\"<loader error>\",\"cuda_runtime\":\"13.0\"|null,
       \"driver\":{\"cuda\":\"13.0\"|null,\"release\":\"580.65.06\"|null,\"devices\":N|null}|\"<loader error>\"}

Examples:
  axbench model devices
  axbench model devices --json"
    )]
    Devices(DevicesArgs),
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print one JSON object instead of text for a person
    #[arg(long)]
    pub json: bool,
}

/// Flags every `axbench model` subcommand takes.
#[derive(Args, Debug)]
pub struct ModelFlags {
    /// HF model directory, .gguf file, `default` or `default-instruct`
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// cpu, cuda, cuda:N or auto (CUDA when available)
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision of weights and activations: f32 or bf16
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Print one JSON object instead of text for a person
    #[arg(long)]
    pub json: bool,
}

/// The text to work on: an argument, or a file with `--file`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["text", "file"])))]
pub struct TextInput {
    /// The text (special-token texts such as `<start_of_turn>` are parsed as those tokens)
    #[arg(value_name = "TEXT")]
    pub text: Option<String>,
    /// Read the text from this file instead (UTF-8, used as is, trailing newline included)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Do not add the BOS token the tokenizer adds by default
    #[arg(long)]
    pub no_bos: bool,
}

#[derive(Args, Debug)]
#[command(override_usage = "axbench model info [OPTIONS] <MODEL>")]
pub struct InfoArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
}

#[derive(Args, Debug)]
#[command(override_usage = "axbench model tokenize [OPTIONS] <MODEL> <TEXT | --file FILE>")]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    #[command(flatten)]
    pub input: TextInput,
}

#[derive(Args, Debug)]
#[command(override_usage = "axbench model logits [OPTIONS] <MODEL> <TEXT | --file FILE> [--top-k K]")]
pub struct LogitsArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    #[command(flatten)]
    pub input: TextInput,
    /// How many of the highest logits to print
    #[arg(long, short = 'k', default_value_t = 10)]
    pub top_k: usize,
}

#[derive(Args, Debug)]
#[command(
    override_usage = "axbench model generate [OPTIONS] <MODEL> <TEXT | --file FILE> [--max-new-tokens N] [--chat]"
)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    #[command(flatten)]
    pub input: TextInput,
    /// Most tokens to generate
    #[arg(long, short = 'n', default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample with this temperature (> 0) instead of decoding greedily
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample only from the smallest set of tokens whose probability reaches P (0 < P <= 1)
    #[arg(long, requires = "temperature", value_name = "P")]
    pub top_p: Option<f64>,
    /// Sample only from the K most likely tokens (0 = all; applied before --top-p, as HF does)
    #[arg(long, requires = "temperature", value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler
    #[arg(long, requires = "temperature", default_value_t = 0)]
    pub seed: u64,
    /// Wrap TEXT as one user turn in the model's chat template, with the assistant's turn opened
    #[arg(long)]
    pub chat: bool,
    /// Generate all --max-new-tokens even past an end-of-generation token
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Args, Debug)]
#[command(override_usage = "axbench model activations [OPTIONS] <MODEL> <TEXT | --file FILE> --layer L [--out FILE]")]
pub struct ActivationsArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    #[command(flatten)]
    pub input: TextInput,
    /// Decoder layer, 0-based (HF `hidden_states[L+1]`)
    #[arg(long, short = 'l', value_name = "L")]
    pub layer: usize,
    /// Write a safetensors file (tensor `activations`, [T, D] float32) instead of printing values
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: Option<PathBuf>,
}

/// Runs an `axbench model` subcommand.
pub fn run(a: ModelArgs) -> Result<()> {
    match a.command {
        ModelCommand::Info(a) => info(a),
        ModelCommand::Tokenize(a) => tokenize(a),
        ModelCommand::Logits(a) => logits(a),
        ModelCommand::Generate(a) => generate_cmd(a),
        ModelCommand::Activations(a) => activations(a),
        ModelCommand::Devices(a) => devices(a),
    }
}

fn devices(a: DevicesArgs) -> Result<()> {
    use axbench_models::device::{cuda_version_str as version, diagnose, probe};
    let facts = probe();
    let status = diagnose(&facts);
    let torch_cuda = match &facts.torch_cuda {
        Ok(()) => "loaded".to_string(),
        Err(e) => e.clone(),
    };
    let runtime = facts.runtime_version.map(version);
    if a.json {
        let driver = match &facts.driver {
            Ok(d) => json!({"cuda": d.cuda_version.map(version), "release": d.release, "devices": d.devices}),
            Err(e) => json!(e),
        };
        let out = json!({
            "usable": status.problem.is_none() && status.devices > 0,
            "devices": status.devices,
            "gpus_present": status.gpus_present,
            "problem": status.problem.as_ref().map(|p| p.to_string()),
            "torch_cuda": torch_cuda,
            "cuda_runtime": runtime,
            "driver": driver,
        });
        println!("{out}");
    } else {
        println!("libtorch CUDA library: {torch_cuda}");
        println!("CUDA runtime:          {}", runtime.as_deref().unwrap_or("-"));
        match &facts.driver {
            Ok(d) => println!(
                "NVIDIA driver:         {} (CUDA {}), {} device(s)",
                d.release.as_deref().unwrap_or("loaded"),
                d.cuda_version.map(version).as_deref().unwrap_or("?"),
                d.devices.map(|n| n.to_string()).as_deref().unwrap_or("?")
            ),
            Err(e) => println!("NVIDIA driver:         {e}"),
        }
        println!("GPU device files:      {}", facts.gpu_device_files);
        match &status.problem {
            None => println!(
                "CUDA: usable, {} device(s) (`--device cuda`, `--device cuda:N`)",
                status.devices
            ),
            Some(p) => println!("CUDA: not usable: {p}"),
        }
    }
    match status.problem {
        None => Ok(()),
        // Already printed above.
        Some(_) => Err(crate::error::CliError::reported(crate::error::FAILED)),
    }
}

/// MODEL as a path: the embedded models by name (found where `scripts/setup.sh` put them, via
/// the server's resolver), anything else as a path that must exist.
fn resolve(spec: &str) -> Result<PathBuf> {
    match spec {
        "default" | "default-instruct" => {
            axbench_models::open::resolve_model(spec).map_err(|e| bad(e.replace("--model ", "MODEL ")))
        }
        path => {
            let p = PathBuf::from(path);
            if !p.exists() {
                return Err(bad(format!(
                    "MODEL {path}: no such file or directory (give an HF model directory, a .gguf file, `default` or `default-instruct`)"
                )));
            }
            if !p.is_dir() && !is_gguf(&p) {
                return Err(bad(format!(
                    "MODEL {path}: expected an HF model directory or a .gguf file"
                )));
            }
            Ok(p)
        }
    }
}

/// Errors from loading: every one but a libtorch failure means the model path or file is bad.
fn load_err(e: ModelError) -> anyhow::Error {
    match e {
        ModelError::Torch(_) => anyhow::Error::new(e),
        e => bad(e.to_string()),
    }
}

/// The tokenizer, chat format and context length of a model, read without loading its weights
/// (the same reading `axbench serve` and the stages use: [`ModelVocab::open`]).
fn load_vocab(path: &Path) -> Result<ModelVocab> {
    ModelVocab::open(path).map_err(|e| bad(e.to_string()))
}

fn load_model(path: &Path, flags: &ModelFlags) -> Result<Model> {
    Model::load(
        path,
        &LoadOptions {
            device: flags.device,
            dtype: flags.dtype,
        },
    )
    .map_err(load_err)
}

impl TextInput {
    fn read(&self) -> Result<String> {
        match (&self.text, &self.file) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| bad(format!("--file {}: {e}", f.display()))),
            (None, None) => Err(bad("give TEXT or --file")),
        }
    }
}

/// Token ids as the tokenizer produces them by default, minus the BOS it added with `--no-bos`.
fn encode(tok: &Tokenizer, text: &str, no_bos: bool) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, true)?;
    if no_bos && tok.adds_bos() && !ids.is_empty() && Some(ids[0]) == tok.bos_id() {
        ids.remove(0);
    }
    Ok(ids)
}

fn tokens_of(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| tok.id_to_token(i).unwrap_or_default()).collect()
}

fn need_tokens(ids: &[u32]) -> Result<()> {
    if ids.is_empty() {
        return Err(bad(
            "the text has no tokens (empty text with --no-bos, or a tokenizer that adds nothing)",
        ));
    }
    Ok(())
}

fn print_json(v: &impl Serialize) -> Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer(&mut w, v)?;
    writeln!(w)?;
    w.flush()?;
    Ok(())
}

/// A token string for a person: quoted with escapes, so spaces, newlines and `▁`/`Ġ` show.
fn show_token(t: &str) -> String {
    format!("{t:?}")
}

// ---------------------------------------------------------------------------------------------
// info

#[derive(Serialize)]
struct Info {
    path: String,
    format: &'static str,
    architecture: String,
    num_layers: u64,
    hidden_size: u64,
    vocab_size: u64,
    /// The precision the model would run in (`--dtype`).
    dtype: String,
    /// How the weights are stored: GGUF tensor types with counts, or `safetensors`.
    storage: String,
    chat_template: ChatInfo,
    digest: Digest,
}

#[derive(Serialize)]
struct ChatInfo {
    /// Whether the file carries a chat template.
    in_file: bool,
    /// The chat format `generate --chat` uses: `gemma`, `chatml`, or null when there is none.
    format: Option<&'static str>,
}

#[derive(Serialize)]
struct Digest {
    algorithm: &'static str,
    hex: String,
}

fn info(a: InfoArgs) -> Result<()> {
    let path = resolve(&a.flags.model)?;
    // An HF directory without tokenizer.json still has an architecture worth describing.
    let vocab = if path.is_dir() && !path.join("tokenizer.json").is_file() {
        None
    } else {
        Some(load_vocab(&path)?)
    };
    let (format, config, storage) = if is_gguf(&path) {
        let (file, config) = axbench_models::weights::open_gguf(&path).map_err(load_err)?;
        let mut counts: Vec<(String, usize)> = Vec::new();
        for t in file.tensor_infos() {
            let name = t.ggml_type.to_string();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let storage = counts
            .iter()
            .map(|(n, c)| format!("{n}×{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        ("gguf", config, storage)
    } else {
        let p = path.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("{}: invalid JSON: {e}", p.display())))?;
        // Gemma-3 multimodal checkpoints keep the language model's config under `text_config`.
        if let Some(tc) = config.get("text_config").cloned() {
            config = tc;
        }
        ("hf", config, "safetensors".to_string())
    };
    let field = |k: &str| -> Result<u64> {
        config
            .get(k)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(format!("{}: config has no `{k}`", path.display())))
    };
    let architecture = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .or_else(|| {
            config
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
        })
        .unwrap_or("unknown")
        .to_string();
    let info = Info {
        path: path.display().to_string(),
        format,
        architecture,
        num_layers: field("num_hidden_layers")?,
        hidden_size: field("hidden_size")?,
        vocab_size: match (field("vocab_size"), &vocab) {
            (Ok(v), _) => v,
            (Err(_), Some(v)) => v.tokenizer.vocab_size() as u64,
            (Err(e), None) => return Err(e),
        },
        dtype: a.flags.dtype.to_string(),
        storage,
        chat_template: ChatInfo {
            in_file: vocab.as_ref().is_some_and(|v| v.template_in_file),
            format: vocab.as_ref().and_then(|v| v.template.as_ref()).map(|t| match t {
                ChatTemplate::Gemma => "gemma",
                ChatTemplate::ChatMl { .. } => "chatml",
            }),
        },
        digest: Digest {
            algorithm: "blake3",
            hex: digest(&path)?,
        },
    };
    if a.flags.json {
        return print_json(&info);
    }
    let chat = match (info.chat_template.in_file, info.chat_template.format) {
        (true, Some(f)) => format!("{f} (from the file)"),
        (true, None) => "in the file, but not a format axbench knows (no --chat)".into(),
        (false, Some(f)) => format!("none in the file; {f} turn format from the architecture"),
        (false, None) => "none".into(),
    };
    let rows = [
        ("model", info.path.clone()),
        ("format", info.format.to_string()),
        ("architecture", info.architecture.clone()),
        ("layers", info.num_layers.to_string()),
        ("hidden size", info.hidden_size.to_string()),
        ("vocabulary", info.vocab_size.to_string()),
        ("dtype", format!("{} (stored as {})", info.dtype, info.storage)),
        ("chat template", chat),
        ("digest", format!("blake3:{}", info.digest.hex)),
    ];
    for (k, v) in rows {
        println!("{k:<14} {v}");
    }
    Ok(())
}

/// BLAKE3 of a file, or of a directory's files (see `info --help`).
fn digest(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    if path.is_dir() {
        let mut files = Vec::new();
        collect_files(path, path, &mut files)?;
        files.sort();
        for rel in files {
            let p = path.join(&rel);
            let len = std::fs::metadata(&p).with_context(|| p.display().to_string())?.len();
            h.update(rel.as_bytes());
            h.update(&[0]);
            h.update(&len.to_le_bytes());
            let f = std::fs::File::open(&p).with_context(|| p.display().to_string())?;
            h.update_reader(f).with_context(|| p.display().to_string())?;
        }
    } else {
        let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
        h.update_reader(f).with_context(|| path.display().to_string())?;
    }
    Ok(h.finalize().to_hex().to_string())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let p = entry?.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else if p.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tokenize

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = resolve(&a.flags.model)?;
    let text = a.input.read()?;
    let vocab = load_vocab(&path)?;
    let ids = encode(&vocab.tokenizer, &text, a.input.no_bos)?;
    let tokens = tokens_of(&vocab.tokenizer, &ids);
    if a.flags.json {
        return print_json(&json!({ "ids": ids, "tokens": tokens }));
    }
    let mut out = String::new();
    let w = ids.len().saturating_sub(1).to_string().len().max(1);
    let wid = ids.iter().map(|i| i.to_string().len()).max().unwrap_or(2).max(2);
    writeln!(out, "{:>w$}  {:>wid$}  token", "#", "id")?;
    for (i, (id, t)) in ids.iter().zip(&tokens).enumerate() {
        writeln!(out, "{i:>w$}  {id:>wid$}  {}", show_token(t))?;
    }
    writeln!(out, "{} tokens", ids.len())?;
    print!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// logits

#[derive(Serialize)]
struct TopEntry {
    id: i64,
    token: String,
    logit: f32,
}

fn logits(a: LogitsArgs) -> Result<()> {
    let path = resolve(&a.flags.model)?;
    let text = a.input.read()?;
    if a.top_k == 0 {
        return Err(bad("--top-k must be at least 1"));
    }
    let vocab = load_vocab(&path)?;
    let ids = encode(&vocab.tokenizer, &text, a.input.no_bos)?;
    need_tokens(&ids)?;
    let model = load_model(&path, &a.flags)?;
    let _guard = tch::no_grad_guard();
    let input = tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let out = model
        .forward(&input, None, &Hooks::none(), Logits::Last, None)
        .map_err(load_err)?;
    let last = out
        .logits
        .ok_or_else(|| anyhow!("the forward pass returned no logits"))?;
    let last = last.view([-1]).to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    let k = a.top_k.min(last.size()[0] as usize) as i64;
    let (values, indices) = last.topk(k, -1, true, true);
    let values = Vec::<f32>::try_from(values)?;
    let indices = Vec::<i64>::try_from(indices)?;
    let top: Vec<TopEntry> = indices
        .iter()
        .zip(&values)
        .map(|(&id, &logit)| TopEntry {
            id,
            token: vocab.tokenizer.id_to_token(id as u32).unwrap_or_default(),
            logit,
        })
        .collect();
    if a.flags.json {
        // Serialized as a struct, not through `json!`, so f32 logits print at f32 precision.
        #[derive(Serialize)]
        struct Top {
            top: Vec<TopEntry>,
        }
        return print_json(&Top { top });
    }
    let wid = top.iter().map(|e| e.id.to_string().len()).max().unwrap_or(2).max(2);
    println!(
        "next token after {} prompt tokens ({} of {}):",
        ids.len(),
        top.len(),
        last.size()[0]
    );
    println!("{:>4}  {:>wid$}  {:>10}  token", "rank", "id", "logit");
    for (r, e) in top.iter().enumerate() {
        println!(
            "{:>4}  {:>wid$}  {:>10.4}  {}",
            r + 1,
            e.id,
            e.logit,
            show_token(&e.token)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// generate

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let path = resolve(&a.flags.model)?;
    let text = a.input.read()?;
    let sampling = match a.temperature {
        None => Sampling::Greedy,
        Some(t) if !(t > 0.0 && t.is_finite()) => return Err(bad(format!("--temperature must be > 0, got {t}"))),
        Some(t) => {
            let p = a.top_p.unwrap_or(1.0);
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad(format!("--top-p must be in (0, 1], got {p}")));
            }
            Sampling::Sample {
                temperature: t,
                top_k: a.top_k,
                top_p: p,
            }
        }
    };
    let vocab = load_vocab(&path)?;
    let tok = &vocab.tokenizer;
    let ids = if a.chat {
        let template = vocab.template.as_ref().ok_or_else(|| {
            bad(format!(
                "--chat: {} has no chat template axbench knows (Gemma or ChatML)",
                path.display()
            ))
        })?;
        // The rendered conversation carries its own BOS where the format has one.
        template
            .encode(tok, &[Message::user(text)], true)
            .map_err(|e| bad(e.to_string()))?
    } else {
        encode(tok, &text, a.input.no_bos)?
    };
    need_tokens(&ids)?;
    let model = load_model(&path, &a.flags)?;
    let cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        sampling,
        seed: a.seed,
        stop_tokens: if a.ignore_eos {
            vec![]
        } else {
            tok.eos_ids().iter().map(|&i| i as i64).collect()
        },
        pad_token_id: model.info().pad_token_id.unwrap_or(0),
    };
    let prompt = Prompt::from(ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let out = generate(&model, &[prompt], &cfg, &Hooks::none()).map_err(load_err)?;
    let g = out
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("generation returned no rows"))?;
    let gen_ids: Vec<u32> = g.tokens.iter().map(|&i| i as u32).collect();
    let text_out = tok.decode(&gen_ids, true)?;
    let finish = match g.finish {
        FinishReason::Stop(_) => "stop",
        FinishReason::Length => "length",
    };
    if a.flags.json {
        return print_json(&json!({ "ids": g.tokens, "text": text_out, "finish_reason": finish }));
    }
    println!("{text_out}");
    eprintln!(
        "[{} prompt tokens, {} generated, finish: {finish}]",
        ids.len(),
        g.tokens.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// activations

fn activations(a: ActivationsArgs) -> Result<()> {
    let path = resolve(&a.flags.model)?;
    let text = a.input.read()?;
    if let Some(out) = &a.out
        && out.extension().is_none_or(|e| !e.eq_ignore_ascii_case("safetensors"))
    {
        return Err(bad(format!(
            "--out {}: the file name must end in .safetensors",
            out.display()
        )));
    }
    let vocab = load_vocab(&path)?;
    let ids = encode(&vocab.tokenizer, &text, a.input.no_bos)?;
    need_tokens(&ids)?;
    let tokens = tokens_of(&vocab.tokenizer, &ids);
    let model = load_model(&path, &a.flags)?;
    let n = model.info().num_layers;
    if a.layer >= n {
        return Err(bad(format!(
            "--layer {}: out of range, {} has {n} layers (0..={})",
            a.layer,
            path.display(),
            n - 1
        )));
    }
    let _guard = tch::no_grad_guard();
    let input = tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let out = model
        .forward(&input, None, &Hooks::none().capture(a.layer), Logits::None, None)
        .map_err(load_err)?;
    let h = out
        .hidden(a.layer)
        .ok_or_else(|| anyhow!("layer {} was not captured", a.layer))?;
    let h = h
        .squeeze_dim(0)
        .to_kind(tch::Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let (t, d) = h.size2()?;
    let (t, d) = (t as usize, d as usize);
    let flat = Vec::<f32>::try_from(h.view([-1]))?;

    if let Some(file) = &a.out {
        let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t, d], &bytes)
            .map_err(|e| anyhow!("building the safetensors view: {e}"))?;
        let meta = HashMap::from([
            ("layer".to_string(), a.layer.to_string()),
            ("model".to_string(), path.display().to_string()),
            ("ids".to_string(), serde_json::to_string(&ids)?),
            ("tokens".to_string(), serde_json::to_string(&tokens)?),
        ]);
        safetensors::serialize_to_file([(ACTIVATIONS_TENSOR, view)], Some(meta), file)
            .map_err(|e| anyhow!("{}: writing safetensors: {e}", file.display()))?;
        if a.flags.json {
            return print_json(&json!({
                "layer": a.layer, "tokens": tokens, "shape": [t, d],
                "out": file.display().to_string(), "tensor": ACTIVATIONS_TENSOR,
            }));
        }
        println!(
            "wrote {} ({ACTIVATIONS_TENSOR}: [{t}, {d}] f32, layer {})",
            file.display(),
            a.layer
        );
        return Ok(());
    }
    let rows: Vec<&[f32]> = flat.chunks(d.max(1)).collect();
    if a.flags.json {
        #[derive(Serialize)]
        struct Activations<'a> {
            layer: usize,
            tokens: &'a [String],
            shape: [usize; 2],
            values: &'a [&'a [f32]],
        }
        return print_json(&Activations {
            layer: a.layer,
            tokens: &tokens,
            shape: [t, d],
            values: &rows,
        });
    }
    println!(
        "layer {} output: {t} tokens × {d} dims (--json or --out for every value)",
        a.layer
    );
    let wt = tokens
        .iter()
        .map(|s| show_token(s).chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 24);
    println!("{:>4}  {:<wt$}  {:>10}  first values", "#", "token", "norm");
    for (i, (row, tok)) in rows.iter().zip(&tokens).enumerate() {
        let norm = row.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        let head: Vec<String> = row.iter().take(4).map(|x| format!("{x:>9.4}")).collect();
        let shown: String = show_token(tok).chars().take(wt).collect();
        println!("{i:>4}  {shown:<wt$}  {norm:>10.3}  {}", head.join(" "));
    }
    Ok(())
}
