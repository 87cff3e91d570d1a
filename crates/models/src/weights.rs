//! Weight sources: HF safetensors directories (one file or sharded through
//! `model.safetensors.index.json`) and GGUF files, both seen through HF tensor names
//! (`model.layers.3.self_attn.q_proj.weight`, ...).
//!
//! For GGUF the HF name is mapped to llama.cpp's (`blk.3.attn_q.weight`), the tensor is
//! dequantized to f32 and llama.cpp's conversion is undone, exactly as transformers' GGUF loader
//! does (`modeling_gguf_pytorch_utils.py`):
//! - Llama: `convert_hf_to_gguf.py` permutes the rows of `q_proj`/`k_proj` so its RoPE kernel can
//!   rotate adjacent pairs; we apply the inverse permutation.
//! - Gemma-2/3: every `*norm.weight` is stored as `w + 1` (llama.cpp's RMSNorm multiplies by the
//!   weight directly); we subtract 1 so the `(1 + w)` formula of the HF code applies.
//!
//! Every tensor is checked against the shape the architecture expects; errors name the file and
//! the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;
use tch::{Device, Kind, Tensor};

use crate::config::Arch;
use crate::error::ModelError;
use crate::gguf::GgufFile;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

enum Source {
    SafeTensors {
        files: Vec<(PathBuf, Mmap)>,
        index: HashMap<String, Entry>,
    },
    Gguf {
        file: Box<dyn TensorStore>,
        arch: Arch,
        num_heads: i64,
        num_kv_heads: i64,
    },
}

/// A file of named tensors in llama.cpp naming, dequantized to f32 in torch (row-major, HF)
/// dimension order. Implemented for the GGUF reader; a trait so the mapping and conversion rules
/// here can be tested without a GGUF file.
pub trait TensorStore {
    fn has_tensor(&self, name: &str) -> bool;
    fn tensor_shape(&self, name: &str) -> Option<Vec<i64>>;
    fn load_f32(&self, name: &str) -> Result<Tensor, String>;
}

/// Tensors by HF name, converted to one dtype and device on the way out.
pub struct Weights {
    path: PathBuf,
    source: Source,
    kind: Kind,
    device: Device,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .finish()
    }
}

impl Weights {
    /// Opens the safetensors of an HF model directory: `model.safetensors`, or the shards listed
    /// in `model.safetensors.index.json`, or failing both every `*.safetensors` in the directory.
    pub fn from_hf_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_paths: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&index_path, e))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    msg: "missing object field `weight_map`".into(),
                })?;
            let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if shard_paths.is_empty() {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                msg: "no .safetensors files found".into(),
            });
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in shard_paths.into_iter().enumerate() {
            let f = File::open(&p).map_err(|e| ModelError::io(&p, e))?;
            // SAFETY: the file is opened read-only and treated as immutable for the life of the map.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(&p, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Format {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                index.insert(
                    name,
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.iter().map(|&d| d as i64).collect(),
                        start: base + info.data_offsets.0,
                        end: base + info.data_offsets.1,
                    },
                );
            }
            files.push((p, mmap));
        }
        Ok(Self {
            path: dir.to_path_buf(),
            source: Source::SafeTensors { files, index },
            kind,
            device,
        })
    }

    /// Wraps an opened GGUF file; `num_heads`/`num_kv_heads` drive the Llama q/k un-permutation.
    pub fn from_gguf(
        path: &Path,
        file: Box<dyn TensorStore>,
        arch: Arch,
        num_heads: i64,
        num_kv_heads: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            source: Source::Gguf {
                file,
                arch,
                num_heads,
                num_kv_heads,
            },
            kind,
            device,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether a tensor with this HF name exists (used for optional tensors such as an untied
    /// `lm_head.weight`).
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::SafeTensors { index, .. } => index.contains_key(name),
            Source::Gguf { file, arch, .. } => gguf_name(name, *arch).is_some_and(|g| file.has_tensor(&g)),
        }
    }

    /// Shape of a stored tensor, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        match &self.source {
            Source::SafeTensors { index, .. } => index.get(name).map(|e| e.shape.clone()),
            Source::Gguf { file, arch, .. } => gguf_name(name, *arch).and_then(|g| file.tensor_shape(&g)),
        }
    }

    /// The tensor `name`, checked to have `shape`, in the model dtype on the model device.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self.raw(name)?;
        if t.size() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t.to_kind(self.kind).to_device(self.device).set_requires_grad(false))
    }

    /// The stored tensor in its stored dtype (f32 for GGUF), on the CPU, unchecked.
    fn raw(&self, name: &str) -> Result<Tensor, ModelError> {
        let missing = || ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        };
        match &self.source {
            Source::SafeTensors { files, index } => {
                let e = index.get(name).ok_or_else(missing)?;
                let (path, mmap) = &files[e.file];
                let kind = match e.dtype {
                    Dtype::F32 => Kind::Float,
                    Dtype::BF16 => Kind::BFloat16,
                    Dtype::F16 => Kind::Half,
                    Dtype::F64 => Kind::Double,
                    other => {
                        return Err(ModelError::Format {
                            path: path.clone(),
                            msg: format!("tensor `{name}` has unsupported dtype {other:?}"),
                        });
                    }
                };
                Ok(Tensor::from_data_size(&mmap[e.start..e.end], &e.shape, kind))
            }
            Source::Gguf {
                file,
                arch,
                num_heads,
                num_kv_heads,
            } => {
                let g = gguf_name(name, *arch).ok_or_else(missing)?;
                if !file.has_tensor(&g) {
                    return Err(missing());
                }
                let mut t = file.load_f32(&g).map_err(|e| ModelError::Format {
                    path: self.path.clone(),
                    msg: format!("tensor `{g}` (HF `{name}`): {e}"),
                })?;
                match arch {
                    Arch::Gemma2 | Arch::Gemma3 if g.ends_with("norm.weight") => t -= 1.0,
                    Arch::Llama if g.ends_with("attn_q.weight") => t = unpermute_qk(&t, *num_heads),
                    Arch::Llama if g.ends_with("attn_k.weight") => t = unpermute_qk(&t, *num_kv_heads),
                    _ => {}
                }
                Ok(t)
            }
        }
    }
}

impl TensorStore for GgufFile {
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensor_info(name).ok().map(|i| i.shape())
    }
    fn load_f32(&self, name: &str) -> Result<Tensor, String> {
        self.tensor(name).map_err(|e| e.to_string())
    }
}

/// Opens a GGUF file and builds the HF-style `config.json` value its metadata implies, the way
/// transformers' GGUF loader does (`GGUF_CONFIG_MAPPING`): llama.cpp `{arch}.*` keys become HF
/// fields and everything else keeps the architecture's HF default. `tie_word_embeddings` is
/// true exactly when the file has no `output.weight`.
pub fn open_gguf(path: &Path) -> Result<(GgufFile, serde_json::Value), ModelError> {
    let fmt_err = |msg: String| ModelError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let file = GgufFile::open(path).map_err(|e| fmt_err(e.to_string()))?;
    let hp = file.hparams().map_err(|e| fmt_err(e.to_string()))?;
    let arch = Arch::from_model_type(&hp.arch).ok_or_else(|| ModelError::UnsupportedArch {
        path: path.to_path_buf(),
        arch: hp.arch.clone(),
    })?;
    let mut c = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        c.insert(k.to_string(), v);
    };
    put(
        "model_type",
        match arch {
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
            Arch::Llama => "llama",
        }
        .into(),
    );
    put("num_hidden_layers", hp.block_count.into());
    put("hidden_size", hp.embedding_length.into());
    put("intermediate_size", hp.feed_forward_length.into());
    put("num_attention_heads", hp.head_count.into());
    put("num_key_value_heads", hp.head_count_kv.into());
    if let Some(v) = hp.context_length {
        put("max_position_embeddings", v.into());
    }
    // f32 in the file; widened exactly as Python does when transformers reads it.
    if let Some(v) = hp.rms_norm_eps {
        put("rms_norm_eps", (v as f64).into());
    }
    if let Some(v) = hp.rope_freq_base {
        put("rope_theta", (v as f64).into());
    }
    let vocab = match hp.vocab_size {
        Some(v) => v as i64,
        None => file
            .tensor_info("token_embd.weight")
            .map_err(|e| fmt_err(e.to_string()))?
            .shape()[0],
    };
    put("vocab_size", vocab.into());
    match arch {
        Arch::Llama => {
            if let Some(d) = hp.rope_dimension_count {
                put("head_dim", d.into());
            }
        }
        Arch::Gemma2 | Arch::Gemma3 => {
            if let Some(d) = hp.key_length {
                put("head_dim", d.into());
                // Not stored in GGUF; llama.cpp scales queries by head_dim^-0.5, which is what
                // HF's default (256) amounts to for every Gemma up to 12B.
                put("query_pre_attn_scalar", d.into());
            }
            if let Some(w) = hp.sliding_window {
                put("sliding_window", w.into());
            }
            if arch == Arch::Gemma2 {
                if let Some(v) = hp.attn_logit_softcapping {
                    put("attn_logit_softcapping", (v as f64).into());
                }
                if let Some(v) = hp.final_logit_softcapping {
                    put("final_logit_softcapping", (v as f64).into());
                }
            }
        }
    }
    put("tie_word_embeddings", (!file.has_tensor("output.weight")).into());
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = file.get(key).and_then(|v| v.as_i128()) {
            put(field, (v as i64).into());
        }
    }
    Ok((file, serde_json::Value::Object(c)))
}

/// Inverse of llama.cpp's `LlamaModel.permute`: rows `[heads, 2, dim/2]` were reordered to
/// `[heads, dim/2, 2]`; swap them back (transformers' `_reverse_permute_weights`).
fn unpermute_qk(w: &Tensor, heads: i64) -> Tensor {
    let shape = w.size();
    let rows = shape[0];
    let half = rows / heads / 2;
    let mut view = vec![heads, half, 2];
    view.extend_from_slice(&shape[1..]);
    w.reshape(view.as_slice()).transpose(1, 2).reshape(shape.as_slice())
}

/// HF tensor name → llama.cpp GGUF tensor name (the subset the three architectures use).
/// `post_attention_layernorm` is Llama's pre-MLP norm (`ffn_norm`) but Gemma's post-attention
/// norm (`post_attention_norm`), hence the architecture argument.
pub fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (n, part) = rest.split_once('.')?;
    n.parse::<usize>().ok()?;
    let g = match part {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        // Gemma's norm after attention; Llama's pre-MLP norm is asked for as `ffn_norm` below.
        "post_attention_layernorm.weight" if arch == Arch::Llama => "ffn_norm.weight",
        "post_attention_layernorm.weight" => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{n}.{g}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight", Arch::Llama).unwrap(),
            "blk.12.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_feedforward_layernorm.weight", Arch::Gemma3).unwrap(),
            "blk.0.post_ffw_norm.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight", Arch::Gemma2).unwrap(),
            "token_embd.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.post_attention_layernorm.weight", Arch::Llama).unwrap(),
            "blk.1.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.post_attention_layernorm.weight", Arch::Gemma2).unwrap(),
            "blk.1.post_attention_norm.weight"
        );
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight", Arch::Llama).is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(shape)
        let (h, d, inp) = (3i64, 8i64, 5i64);
        let w = Tensor::arange(h * d * inp, (Kind::Float, Device::Cpu)).view([h * d, inp]);
        let permuted = w.reshape([h, 2, d / 2, inp]).transpose(1, 2).reshape([h * d, inp]);
        assert!(unpermute_qk(&permuted, h).equal(&w));
    }
}
