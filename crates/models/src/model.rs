//! One type for every supported architecture: loading from an HF directory or a GGUF file, and the
//! forward pass shared by all of them (masks, positions, KV cache, hooks), so hooks mean the same
//! thing whichever model runs.
//!
//! ```no_run
//! use axbench_models::{model::{Model, LoadOptions}, hooks::{Hooks, Logits}};
//! let model = Model::load("gemma-3-270m.gguf".as_ref(), &LoadOptions::default())?;
//! let ids = tch::Tensor::from_slice(&[2i64, 651, 6037]).view([1, 3]);
//! let out = model.forward(&ids, None, &Hooks::none().capture(9), Logits::None, None)?;
//! let acts = out.hidden(9).unwrap(); // [1, 3, 640], the residual stream after layer 9
//! # Ok::<(), axbench_models::model::ModelError>(())
//! ```

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::config::{Arch, LayerType, ModelInfo};
use crate::device::{DType, DeviceSpec};
use crate::hooks::{ForwardOutput, Hooks, InterventionCtx, Logits};
use crate::layers::{KvCache, LayerCache, Rotary, attention_bias, position_ids};
use crate::weights::{TensorStore, Weights};
use crate::{gemma2, gemma3, llama};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{}: unsupported architecture `{arch}` (supported: gemma2, gemma3, llama)", path.display())]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn json(path: &Path, source: serde_json::Error) -> Self {
        ModelError::Json {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What each architecture provides to the shared forward pass.
pub(crate) trait Decoder {
    fn info(&self) -> &ModelInfo;
    fn kind(&self) -> Kind;
    fn device(&self) -> Device;
    /// `(num_key_value_heads, head_dim)`, for preallocating caches.
    fn kv_shape(&self) -> (i64, i64);
    fn layer_type(&self, layer: usize) -> LayerType;
    fn sliding_window(&self) -> Option<i64>;
    fn rotary(&self, t: LayerType) -> &Rotary;
    /// Token embeddings, already scaled where the architecture scales them.
    fn embed(&self, ids: &Tensor) -> Tensor;
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        past: i64,
        o_adapter: Option<&dyn crate::hooks::LinearAdapter>,
    ) -> Tensor;
    /// Final norm, vocabulary projection and any logit soft-cap.
    fn head(&self, h: &Tensor) -> Tensor;
}

/// Where to load a model and in which precision.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    pub dtype: DType,
}

/// A loaded causal language model.
#[derive(Debug)]
pub enum Model {
    Gemma2(gemma2::Model),
    Gemma3(gemma3::Model),
    Llama(llama::Model),
}

impl Model {
    /// Loads an HF model directory (`config.json` + safetensors) or a `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let device = opts.device.resolve()?;
        let kind = opts.dtype.kind();
        let _guard = tch::no_grad_guard();
        if path.is_dir() {
            Self::load_hf_dir(path, kind, device)
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let (file, config) = crate::weights::open_gguf(path)?;
            Self::from_tensor_store(path, Box::new(file), config, kind, device)
        } else if !path.exists() {
            Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        } else {
            Err(ModelError::Format {
                path: path.to_path_buf(),
                msg: "expected an HF model directory or a .gguf file".into(),
            })
        }
    }

    fn load_hf_dir(dir: &Path, kind: Kind, device: Device) -> Result<Model, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&cfg_path, e))?;
        let weights = Weights::from_hf_dir(dir, kind, device)?;
        Self::from_config_json(&cfg_path, json, &weights)
    }

    /// Builds the architecture named by `model_type` in `json` (an HF `config.json` value).
    pub(crate) fn from_config_json(cfg_path: &Path, json: serde_json::Value, w: &Weights) -> Result<Model, ModelError> {
        // Gemma-3 multimodal checkpoints nest the language model under `text_config`.
        let json = match json.get("text_config") {
            Some(tc) if json.get("model_type").and_then(|t| t.as_str()) == Some("gemma3") => {
                let mut tc = tc.clone();
                tc["model_type"] = "gemma3_text".into();
                tc
            }
            _ => json,
        };
        let model_type = json
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArch {
            path: cfg_path.to_path_buf(),
            arch: model_type.clone(),
        })?;
        let bad = |e: serde_json::Error| ModelError::Config {
            path: cfg_path.to_path_buf(),
            msg: e.to_string(),
        };
        Ok(match arch {
            Arch::Gemma2 => Model::Gemma2(gemma2::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
            Arch::Gemma3 => Model::Gemma3(gemma3::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
            Arch::Llama => Model::Llama(llama::Model::new(serde_json::from_value(json).map_err(bad)?, w)?),
        })
    }

    /// Builds a model from any [`TensorStore`] in llama.cpp naming plus an HF-style config.
    pub fn from_tensor_store(
        path: &Path,
        store: Box<dyn TensorStore>,
        config: serde_json::Value,
        kind: Kind,
        device: Device,
    ) -> Result<Model, ModelError> {
        let _guard = tch::no_grad_guard();
        let model_type = config
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| ModelError::UnsupportedArch {
            path: path.to_path_buf(),
            arch: model_type.clone(),
        })?;
        let heads = config.get("num_attention_heads").and_then(|v| v.as_i64()).unwrap_or(0);
        let kv = config
            .get("num_key_value_heads")
            .and_then(|v| v.as_i64())
            .unwrap_or(heads);
        let w = Weights::from_gguf(path, store, arch, heads, kv, kind, device);
        Self::from_config_json(path, config, &w)
    }

    pub(crate) fn decoder(&self) -> &dyn Decoder {
        match self {
            Model::Gemma2(m) => m,
            Model::Gemma3(m) => m,
            Model::Llama(m) => m,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        self.decoder().info()
    }
    pub fn device(&self) -> Device {
        self.decoder().device()
    }
    pub fn kind(&self) -> Kind {
        self.decoder().kind()
    }

    /// An empty KV cache with room for `capacity` positions of `batch` rows.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let d = self.decoder();
        let (kv, hd) = d.kv_shape();
        KvCache::with_capacity(d.info().num_layers, batch, kv, hd, capacity, d.kind(), d.device())
    }

    /// One forward pass over `input_ids: [B, T]` (int64).
    ///
    /// `attention_mask: [B, past + T]` marks real tokens (nonzero) versus padding, left or right;
    /// `None` means no padding. With a `cache`, the `past` positions already stored are attended
    /// to and the new keys/values are appended. Position ids count real tokens, so a left-padded
    /// row gets the same positions as the unpadded sequence (as HF `generate` does).
    ///
    /// Runs with or without grad: wrap it in `tch::no_grad` for inference.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hooks: &Hooks,
        logits: Logits,
        mut cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput, ModelError> {
        let d = self.decoder();
        let info = d.info();
        let dev = d.device();
        let (b, t) = input_ids
            .size2()
            .map_err(|_| ModelError::Input(format!("input_ids must be [B, T], got {:?}", input_ids.size())))?;
        if t == 0 {
            return Err(ModelError::Input("input_ids has no positions".into()));
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        if let Some(cb) = cache.as_ref().and_then(|c| c.batch())
            && cb != b
        {
            return Err(ModelError::Input(format!(
                "the KV cache holds {cb} rows, input_ids has {b}"
            )));
        }
        let mask = match attention_mask {
            Some(m) => {
                if m.size() != [b, past + t] {
                    return Err(ModelError::Input(format!(
                        "attention_mask is {:?}, expected [{b}, {}] (cached {past} + new {t})",
                        m.size(),
                        past + t
                    )));
                }
                m.to_device(dev)
            }
            None => Tensor::ones([b, past + t], (Kind::Int64, dev)),
        };
        let n = info.num_layers;
        for &l in hooks
            .capture
            .iter()
            .chain(hooks.stop_after.iter())
            .chain(hooks.interventions.iter().map(|(l, _)| l))
            .chain(hooks.o_proj.iter().map(|(l, _)| l))
        {
            if l >= n {
                return Err(ModelError::Input(format!(
                    "layer {l} out of range: the model has {n} layers (0..{})",
                    n - 1
                )));
            }
        }
        // Last layer to run: everything for logits; otherwise up to the deepest layer asked for.
        let last = match (logits, hooks.stop_after) {
            (_, Some(s)) => s,
            (Logits::None, None) => hooks.capture.iter().copied().max().unwrap_or(n - 1),
            _ => n - 1,
        };
        if let Some(&l) = hooks
            .capture
            .iter()
            .chain(hooks.interventions.iter().map(|(l, _)| l))
            .find(|&&l| l > last)
        {
            return Err(ModelError::Input(format!(
                "layer {l} is hooked but the pass stops after layer {last}"
            )));
        }
        if cache.is_some() && last + 1 < n {
            return Err(ModelError::Input(
                "a forward pass with a KV cache must run every layer".into(),
            ));
        }
        let kind = d.kind();
        let ids = input_ids.to_device(dev);
        let pos = position_ids(&mask, t);
        let types: Vec<LayerType> = (0..=last).map(|i| d.layer_type(i)).collect();
        let need = |lt: LayerType| types.contains(&lt);
        let full_mask = need(LayerType::FullAttention).then(|| attention_bias(&mask, past, t, None, kind));
        let window = d.sliding_window();
        let sliding_mask = need(LayerType::SlidingAttention).then(|| attention_bias(&mask, past, t, window, kind));
        let rope_full = d.rotary(LayerType::FullAttention);
        let rope_sliding = d.rotary(LayerType::SlidingAttention);
        let cs_full = need(LayerType::FullAttention).then(|| rope_full.cos_sin(&pos, kind));
        let cs_sliding = if std::ptr::eq(rope_full, rope_sliding) && cs_full.is_some() {
            None
        } else {
            need(LayerType::SlidingAttention).then(|| rope_sliding.cos_sin(&pos, kind))
        };
        let iv_mask = if hooks.interventions.is_empty() {
            None
        } else {
            Some(hooks.intervention_mask(b, t, past, dev).map_err(ModelError::Input)?)
        };
        let real = mask.narrow(1, past, t).ne(0);

        let mut h = d.embed(&ids);
        let mut hidden = Vec::new();
        for (i, &lt) in types.iter().enumerate() {
            let (cos, sin) = match lt {
                LayerType::FullAttention => cs_full.as_ref().unwrap(),
                LayerType::SlidingAttention => cs_sliding.as_ref().or(cs_full.as_ref()).unwrap(),
            };
            let m = match lt {
                LayerType::FullAttention => full_mask.as_ref().unwrap(),
                LayerType::SlidingAttention => sliding_mask.as_ref().unwrap(),
            };
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = d.layer(i, &h, cos, sin, m, lc, past, hooks.o_proj_adapter(i));
            for (l, iv) in &hooks.interventions {
                if *l == i {
                    let ctx = InterventionCtx {
                        mask: iv_mask.as_ref().unwrap(),
                        real: &real,
                        past_len: past,
                    };
                    h = iv.apply(&h, &ctx);
                }
            }
            if hooks.capture.contains(&i) {
                hidden.push((i, h.shallow_clone()));
            }
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let logits = match logits {
            _ if last + 1 < n => None,
            Logits::None => None,
            Logits::Last => Some(d.head(&h.narrow(1, t - 1, 1))),
            Logits::All => Some(d.head(&h)),
        };
        Ok(ForwardOutput { logits, hidden })
    }
}

/// Which side padding goes on when rows of different lengths share a batch. Generation needs
/// `Left` (every row's next token at the last column); either works for [`Model::forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Left,
    Right,
}

/// Packs token rows into `(input_ids, attention_mask)`, both `[B, T]` int64 on the CPU.
pub fn pad(rows: &[Vec<i64>], pad_id: i64, side: Padding) -> (Tensor, Tensor) {
    let b = rows.len();
    let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0i64; b * t];
    for (r, row) in rows.iter().enumerate() {
        let off = r * t + if side == Padding::Left { t - row.len() } else { 0 };
        ids[off..off + row.len()].copy_from_slice(row);
        mask[off..off + row.len()].fill(1);
    }
    (
        Tensor::from_slice(&ids).view([b as i64, t as i64]),
        Tensor::from_slice(&mask).view([b as i64, t as i64]),
    )
}

impl Model {
    /// The residual stream after `layer` for a padded batch, `[B, T, hidden]`, computed without
    /// grad and without running the layers above it (AxBench's activation extraction).
    pub fn activations(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let out = self.forward(
            input_ids,
            attention_mask,
            &Hooks::none().capture(layer),
            Logits::None,
            None,
        )?;
        Ok(out.hidden.into_iter().next().map(|(_, h)| h).expect("captured layer"))
    }
}

// --- training support (crate::train) ---
impl Model {
    /// Final norm, vocabulary projection and any soft-cap applied to hidden states `[..., D]` from
    /// the last layer. A training loss needs logits only at response positions: capturing the last
    /// layer and projecting just those rows avoids a `[B, T, vocab]` tensor (262k columns for Gemma).
    pub fn head(&self, h: &Tensor) -> Tensor {
        self.decoder().head(h)
    }

    /// Every weight tensor by HF name, sharing storage with the model (RMSNorm multipliers are
    /// named `.scale`; tied embeddings appear once). Full finetuning sets `requires_grad` on
    /// these; loading a finetuned checkpoint copies into them. Call it on a model of your own, not
    /// one shared with other users.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Gemma2(m) => m.named_parameters(),
            Model::Gemma3(m) => m.named_parameters(),
            Model::Llama(m) => m.named_parameters(),
        }
    }
}
// --- end training support ---

/// Checks a divisibility the config must satisfy (heads into key/value groups).
pub(crate) fn check_divisible(path: &Path, what: &str, a: i64, b: i64) -> Result<(), ModelError> {
    if b == 0 || a % b != 0 {
        return Err(ModelError::Config {
            path: path.to_path_buf(),
            msg: format!("{what}: {a} is not divisible by {b}"),
        });
    }
    Ok(())
}
