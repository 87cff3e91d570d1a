//! GGUF reader: header, typed metadata, tensor directory, and dequantized tensors.
//!
//! GGUF (llama.cpp's model file format, versions 2 and 3) is little-endian:
//!
//! ```text
//! "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//! kv_count    x { string key | u32 value_type | value }
//! tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//! padding to `general.alignment` (default 32) | tensor data (offsets are relative to here)
//! ```
//!
//! where `string` is `u64 len | bytes` (UTF-8). The file is memory-mapped; [`GgufFile::open`] parses
//! and validates the header, metadata and tensor directory (every tensor's bytes must lie inside the
//! file), and tensors are dequantized on demand by [`GgufFile::tensor`].
//!
//! Shapes: ggml lists dimensions fastest-varying first (`ne[0]` is the row length), torch lists
//! them slowest first. A ggml tensor with `ne = [n_embd, n_vocab]` is therefore the row-major torch
//! tensor `[n_vocab, n_embd]`; [`TensorInfo::shape`] gives the torch order, [`TensorInfo::dims`]
//! the ggml order.
//!
//! Everything read from the file is treated as hostile: lengths and counts are checked against the
//! bytes actually present before anything is allocated, arithmetic is checked, and every error
//! names the file and the field or tensor it concerns.
//!
//! ```no_run
//! use axbench_models::gguf::GgufFile;
//! let f = GgufFile::open("model.gguf")?;
//! let hp = f.hparams()?;
//! let emb = f.tensor("token_embd.weight")?; // [n_vocab, n_embd], f32, CPU
//! # Ok::<(), axbench_models::gguf::GgufError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::quant::{self, GgmlType, QuantError};

/// `"GGUF"` read as a little-endian u32.
const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal GGUF; nothing real nests deeper than this.
const MAX_ARRAY_DEPTH: usize = 8;

/// Everything that can go wrong opening or reading a GGUF file. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a GGUF file (magic {found:02x?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{}: unsupported GGUF version {version} (this reader handles versions 2 and 3{hint})", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{}: truncated: {what} at byte {offset} needs {needed} bytes, but the file has {file_len}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{}: invalid {what}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{}: tensor `{tensor}` has type {ty}, which cannot be dequantized", path.display())]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{}: no tensor named `{tensor}`", path.display())]
    TensorNotFound { path: PathBuf, tensor: String },
    #[error("{}: metadata key `{key}` is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key `{key}` is {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: tensor `{tensor}`: {source}", path.display())]
    Torch {
        path: PathBuf,
        tensor: String,
        source: tch::TchError,
    },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// A metadata value. Arrays are stored typed (one `Vec` per element type) because tokenizer
/// vocabularies are arrays of 50k-260k strings or floats.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetadataArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: all elements share one type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetadataArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetadataArray {
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type name as in the GGUF spec (`uint32`, `string`, ...).
    pub fn element_type_name(&self) -> &'static str {
        match self {
            MetadataArray::U8(_) => "uint8",
            MetadataArray::I8(_) => "int8",
            MetadataArray::U16(_) => "uint16",
            MetadataArray::I16(_) => "int16",
            MetadataArray::U32(_) => "uint32",
            MetadataArray::I32(_) => "int32",
            MetadataArray::F32(_) => "float32",
            MetadataArray::Bool(_) => "bool",
            MetadataArray::String(_) => "string",
            MetadataArray::Array(_) => "array",
            MetadataArray::U64(_) => "uint64",
            MetadataArray::I64(_) => "int64",
            MetadataArray::F64(_) => "float64",
        }
    }

    /// Integer elements widened to i64 (token types, per-layer head counts, ...).
    pub fn as_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            MetadataArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            MetadataArray::I64(v) => v.clone(),
            MetadataArray::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            _ => return None,
        })
    }
}

impl MetadataValue {
    /// Type name as in the GGUF spec, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            MetadataValue::U8(_) => "uint8".into(),
            MetadataValue::I8(_) => "int8".into(),
            MetadataValue::U16(_) => "uint16".into(),
            MetadataValue::I16(_) => "int16".into(),
            MetadataValue::U32(_) => "uint32".into(),
            MetadataValue::I32(_) => "int32".into(),
            MetadataValue::F32(_) => "float32".into(),
            MetadataValue::Bool(_) => "bool".into(),
            MetadataValue::String(_) => "string".into(),
            MetadataValue::Array(a) => format!("array of {} {}", a.len(), a.element_type_name()),
            MetadataValue::U64(_) => "uint64".into(),
            MetadataValue::I64(_) => "int64".into(),
            MetadataValue::F64(_) => "float64".into(),
        }
    }

    /// Any integer type, widened (llama.cpp writers are not consistent about u32 vs i32 vs u64).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(x) => x as i128,
            MetadataValue::I8(x) => x as i128,
            MetadataValue::U16(x) => x as i128,
            MetadataValue::I16(x) => x as i128,
            MetadataValue::U32(x) => x as i128,
            MetadataValue::I32(x) => x as i128,
            MetadataValue::U64(x) => x as i128,
            MetadataValue::I64(x) => x as i128,
            _ => return None,
        })
    }

    /// Floats, or integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(x) => Some(x as f64),
            MetadataValue::F64(x) => Some(x),
            _ => self.as_i128().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for MetadataValue {
    /// Short human form; arrays are summarized.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataValue::String(s) if s.chars().count() > 80 => {
                write!(f, "{:?}... ({} bytes)", s.chars().take(80).collect::<String>(), s.len())
            }
            MetadataValue::String(s) => write!(f, "{s:?}"),
            MetadataValue::Array(a) => write!(f, "[{} x {}]", a.len(), a.element_type_name()),
            MetadataValue::Bool(b) => write!(f, "{b}"),
            MetadataValue::F32(x) => write!(f, "{x}"),
            MetadataValue::F64(x) => write!(f, "{x}"),
            other => write!(f, "{}", other.as_i128().expect("integer")),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml order (`ne`): `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    /// Offset of the first byte relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    /// Size of the tensor's data; `None` for types whose block layout is unknown.
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// Torch shape: the ggml dims reversed.
    pub fn shape(&self) -> Vec<i64> {
        // dims were checked at open to have a product that fits in i64.
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// Hyperparameters under llama.cpp's `{arch}.*` keys, enough to build a model config. Optional
/// ones are `None` when the file does not have them (the loader then uses the architecture's
/// default).
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// `general.architecture`: `llama`, `gemma2`, `gemma3`, ...
    pub arch: String,
    pub block_count: u32,
    pub embedding_length: u32,
    pub feed_forward_length: u32,
    pub head_count: u32,
    /// Defaults to `head_count` (no grouped-query attention) when absent, as in llama.cpp.
    pub head_count_kv: u32,
    pub context_length: Option<u32>,
    pub rope_freq_base: Option<f32>,
    /// `.rope.scaling.type`/`.factor` and friends are left to the loader via [`GgufFile::arch_key`].
    pub rope_dimension_count: Option<u32>,
    pub rms_norm_eps: Option<f32>,
    /// Per-head dimension of keys (`head_dim` in HF configs).
    pub key_length: Option<u32>,
    pub value_length: Option<u32>,
    pub sliding_window: Option<u32>,
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub vocab_size: Option<u32>,
}

/// A memory-mapped, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Opens, maps and validates `path`. Tensor data is not touched until [`GgufFile::tensor`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap-based model loader we assume the file is
        // not truncated or rewritten while open (doing so is a bug of whoever does it, and at worst
        // gives SIGBUS, not silent corruption of our memory).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap)
    }

    fn parse(path: PathBuf, mmap: memmap2::Mmap) -> Result<GgufFile> {
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path: &path,
        };
        let magic: [u8; 4] = r.bytes(4, || "magic".into())?.try_into().expect("4 bytes");
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: magic,
            });
        }
        let version = r.u32(|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                "; this file is big-endian"
            } else if version == 1 {
                "; version 1 files predate 64-bit counts, re-convert with a current llama.cpp"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
                hint,
            });
        }
        let tensor_count = r.u64(|| "tensor count".into())?;
        let kv_count = r.u64(|| "metadata count".into())?;

        // Each KV takes at least 8 (key len) + 4 (type) + 1 bytes: cap preallocation by that.
        let mut metadata = Vec::with_capacity(r.cap(kv_count, 13));
        let mut metadata_index = HashMap::with_capacity(metadata.capacity());
        for i in 0..kv_count {
            let key = r.string(|| format!("key of metadata entry #{i}"))?;
            let value = r.value(&key, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.invalid(format!("metadata `{key}`"), "key appears twice".into()));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(MetadataValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(r.invalid(
                    "metadata `general.alignment`".into(),
                    format!("{} {v} is not a nonzero power of two uint32", v.type_name()),
                ));
            }
        };

        // A tensor info takes at least 8 + 4 + 4 + 8 bytes.
        let mut tensors = Vec::with_capacity(r.cap(tensor_count, 24));
        let mut tensor_index = HashMap::with_capacity(tensors.capacity());
        for i in 0..tensor_count {
            let name = r.string(|| format!("name of tensor #{i}"))?;
            let n_dims = r.u32(|| format!("tensor `{name}` n_dims"))?;
            if n_dims > MAX_DIMS {
                return Err(r.bad_tensor(&name, format!("{n_dims} dimensions (ggml allows at most {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(|| format!("tensor `{name}` dimension {d}"))?);
            }
            let type_id = r.u32(|| format!("tensor `{name}` type"))?;
            let offset = r.u64(|| format!("tensor `{name}` offset"))?;
            let ggml_type = GgmlType::from_u32(type_id);

            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
                .ok_or_else(|| r.bad_tensor(&name, format!("dimensions {dims:?} overflow (product > i64::MAX)")))?;
            let n_bytes = match ggml_type.block_layout() {
                None => None,
                Some((block, size)) => {
                    let row = dims.first().copied().unwrap_or(1);
                    if !row.is_multiple_of(block as u64) {
                        return Err(r.bad_tensor(
                            &name,
                            format!("row length {row} is not a multiple of the {ggml_type} block size {block}"),
                        ));
                    }
                    Some(
                        (n_elements / block as u64)
                            .checked_mul(size as u64)
                            .ok_or_else(|| r.bad_tensor(&name, format!("byte size of dims {dims:?} overflows")))?,
                    )
                }
            };
            if !offset.is_multiple_of(alignment) {
                return Err(r.bad_tensor(
                    &name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.bad_tensor(&name, "name appears twice in the tensor directory".into()));
            }
            tensors.push(TensorInfo {
                name,
                ggml_type,
                dims,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let file_len = mmap.len() as u64;
        for t in &tensors {
            let Some(n_bytes) = t.n_bytes else { continue };
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::BadTensor {
                        path: path.clone(),
                        tensor: t.name.clone(),
                        reason: format!(
                            "data at offset {} (+ data section {data_offset}) with {n_bytes} bytes ({} x {}, dims {:?}) \
                             runs past the end of the file ({file_len} bytes)",
                            t.offset, t.n_elements, t.ggml_type, t.dims
                        ),
                    });
                }
            }
        }

        Ok(GgufFile {
            path,
            mmap,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &MetadataValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: found.type_name(),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer in u32 range", v))
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_i128()
            .and_then(|x| u64::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer in u64 range", v))
    }

    /// A float32/float64 (or integer) value as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetadataValue::Bool(b) => Ok(*b),
            v => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        match self.require(key)? {
            MetadataValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, "an array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.require(key)? {
            MetadataValue::Array(MetadataArray::String(a)) => Ok(a),
            v => Err(self.wrong_type(key, "an array of strings", v)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.require(key)? {
            MetadataValue::Array(MetadataArray::F32(a)) => Ok(a),
            v => Err(self.wrong_type(key, "an array of float32", v)),
        }
    }

    /// An array of any integer type, widened.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        match v {
            MetadataValue::Array(a) => a.as_i64_vec(),
            _ => None,
        }
        .ok_or_else(|| self.wrong_type(key, "an array of integers", v))
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_str(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_u32(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_f32(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_bool(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_str_array(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_f32_array(key).map(Some)
        }
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.get_i64_array(key).map(Some)
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// `"{arch}.{suffix}"`, e.g. `arch_key("attention.head_count")` = `gemma3.attention.head_count`.
    pub fn arch_key(&self, suffix: &str) -> Result<String> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }

    /// The llama.cpp hyperparameter keys of this file's architecture.
    pub fn hparams(&self) -> Result<HParams> {
        let arch = self.architecture()?.to_string();
        let k = |s: &str| format!("{arch}.{s}");
        let head_count = self.get_u32(&k("attention.head_count"))?;
        let vocab_size = match self.opt_u32(&k("vocab_size"))? {
            Some(v) => Some(v),
            None => match self.get("tokenizer.ggml.tokens") {
                Some(MetadataValue::Array(a)) => u32::try_from(a.len()).ok(),
                _ => None,
            },
        };
        Ok(HParams {
            block_count: self.get_u32(&k("block_count"))?,
            embedding_length: self.get_u32(&k("embedding_length"))?,
            feed_forward_length: self.get_u32(&k("feed_forward_length"))?,
            head_count,
            head_count_kv: self.opt_u32(&k("attention.head_count_kv"))?.unwrap_or(head_count),
            context_length: self.opt_u32(&k("context_length"))?,
            rope_freq_base: self.opt_f32(&k("rope.freq_base"))?,
            rope_dimension_count: self.opt_u32(&k("rope.dimension_count"))?,
            rms_norm_eps: self.opt_f32(&k("attention.layer_norm_rms_epsilon"))?,
            key_length: self.opt_u32(&k("attention.key_length"))?,
            value_length: self.opt_u32(&k("attention.value_length"))?,
            sliding_window: self.opt_u32(&k("attention.sliding_window"))?,
            attn_logit_softcapping: self.opt_f32(&k("attn_logit_softcapping"))?,
            final_logit_softcapping: self.opt_f32(&k("final_logit_softcapping"))?,
            vocab_size,
            arch,
        })
    }

    /// The tensor directory in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::TensorNotFound {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    /// The raw (still quantized) bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensor_info(name)?;
        let n_bytes = info.n_bytes.ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.into(),
            ty: info.ggml_type,
        })?;
        // Bounds were checked at open.
        let start = (self.data_offset + info.offset) as usize;
        Ok((info, &self.mmap[start..start + n_bytes as usize]))
    }

    /// Dequantizes a tensor into `out` (which must have `n_elements` values), in ggml/row-major
    /// order: the same memory layout as the torch tensor of shape [`TensorInfo::shape`].
    pub fn dequantize_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let (info, bytes) = self.tensor_bytes(name)?;
        if out.len() as u64 != info.n_elements {
            return Err(GgufError::BadTensor {
                path: self.path.clone(),
                tensor: name.into(),
                reason: format!("output buffer has {} values, tensor has {}", out.len(), info.n_elements),
            });
        }
        quant::dequantize(info.ggml_type, bytes, out).map_err(|e| match e {
            QuantError::Unsupported { ty } => GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.into(),
                ty,
            },
            other => GgufError::BadTensor {
                path: self.path.clone(),
                tensor: name.into(),
                reason: other.to_string(),
            },
        })
    }

    /// A tensor dequantized to a flat `Vec<f32>` (row-major, torch shape [`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        let mut out = vec![0f32; info.n_elements as usize];
        self.dequantize_into(name, &mut out)?;
        Ok(out)
    }

    /// A tensor dequantized to an f32 CPU torch tensor in torch order (ggml dims reversed).
    pub fn tensor(&self, name: &str) -> Result<tch::Tensor> {
        let info = self.tensor_info(name)?;
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.into(),
                ty: info.ggml_type,
            });
        }
        let torch_err = |source| GgufError::Torch {
            path: self.path.clone(),
            tensor: name.into(),
            source,
        };
        let t = tch::Tensor::f_empty(info.shape(), (tch::Kind::Float, tch::Device::Cpu)).map_err(torch_err)?;
        let n = info.n_elements as usize;
        if n > 0 {
            // SAFETY: `t` is a freshly allocated, contiguous f32 CPU tensor of exactly n elements,
            // owned here and not aliased until we return it.
            let out = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
            self.dequantize_into(name, out)?;
        }
        Ok(t)
    }

    /// [`GgufFile::tensor`] converted to `kind` on `device` (e.g. bf16 on CUDA for inference).
    pub fn tensor_to(&self, name: &str, kind: tch::Kind, device: tch::Device) -> Result<tch::Tensor> {
        let t = self.tensor(name)?;
        t.f_to_kind(kind)
            .and_then(|t| t.f_to_device(device))
            .map_err(|source| GgufError::Torch {
                path: self.path.clone(),
                tensor: name.into(),
                source,
            })
    }
}

/// Bounds-checked little-endian cursor over the mapped file. `what` closures build the field
/// description only when an error is actually reported (vocabularies have 260k strings).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let at = self.pos;
        let bytes = self.bytes(len, || format!("{} (string of {len} bytes)", what()))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.invalid(what(), format!("string at byte {at} is not UTF-8 ({e})"))),
        }
    }

    /// Capacity to reserve for `count` items of at least `min_size` bytes each: never more than
    /// the rest of the file could hold, so a hostile count cannot make us allocate gigabytes.
    fn cap(&self, count: u64, min_size: u64) -> usize {
        let remaining = (self.buf.len() - self.pos) as u64;
        count.min(remaining / min_size.max(1)) as usize
    }

    fn invalid(&self, what: String, reason: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            what,
            reason,
        }
    }

    fn bad_tensor(&self, tensor: &str, reason: String) -> GgufError {
        GgufError::BadTensor {
            path: self.path.to_path_buf(),
            tensor: tensor.into(),
            reason,
        }
    }

    fn value(&mut self, key: &str, depth: usize) -> Result<MetadataValue> {
        let ty = self.u32(|| format!("type of metadata `{key}`"))?;
        self.value_of_type(key, ty, depth)
    }

    fn value_of_type(&mut self, key: &str, ty: u32, depth: usize) -> Result<MetadataValue> {
        let what = || format!("metadata `{key}`");
        Ok(match ty {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetadataValue::Bool(self.bool(key)?),
            8 => MetadataValue::String(self.string(what)?),
            9 => MetadataValue::Array(self.metadata_array(key, depth)?),
            10 => MetadataValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.invalid(what(), format!("unknown value type {other}"))),
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        match self.array::<1>(|| format!("metadata `{key}`"))?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.invalid(format!("metadata `{key}`"), format!("bool byte {b} is neither 0 nor 1"))),
        }
    }

    fn metadata_array(&mut self, key: &str, depth: usize) -> Result<MetadataArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.invalid(
                format!("metadata `{key}`"),
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let ty = self.u32(|| format!("element type of metadata array `{key}`"))?;
        let len = self.u64(|| format!("length of metadata array `{key}`"))?;
        // Fixed-size elements: check the whole array fits, then decode it in one pass.
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const S: usize = std::mem::size_of::<$t>();
                let total = len.checked_mul(S as u64).unwrap_or(u64::MAX);
                let bytes = self.bytes(total, || {
                    format!("metadata array `{key}` ({len} x {})", stringify!($t))
                })?;
                MetadataArray::$variant(
                    bytes
                        .chunks_exact(S)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            0 => fixed!(U8, u8),
            1 => fixed!(I8, i8),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => {
                let mut v = Vec::with_capacity(self.cap(len, 1));
                for _ in 0..len {
                    v.push(self.bool(key)?);
                }
                MetadataArray::Bool(v)
            }
            8 => {
                let mut v = Vec::with_capacity(self.cap(len, 8));
                for i in 0..len {
                    v.push(self.string(|| format!("element {i} of metadata array `{key}`"))?);
                }
                MetadataArray::String(v)
            }
            9 => {
                let mut v = Vec::with_capacity(self.cap(len, 12));
                for _ in 0..len {
                    v.push(self.metadata_array(key, depth + 1)?);
                }
                MetadataArray::Array(v)
            }
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            other => {
                return Err(self.invalid(
                    format!("metadata array `{key}`"),
                    format!("unknown element type {other}"),
                ));
            }
        })
    }
}
