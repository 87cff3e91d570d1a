//! Steering-vector files: our safetensors layout (one vector per concept, with provenance) and
//! GGUF control vectors as llama.cpp and repeng read and write them.
//!
//! # Layer numbering
//!
//! Everywhere in this crate "layer L" means *the output of decoder layer L* (0-based), i.e. HF's
//! `hidden_states[L + 1]`, which is where [`crate::hooks::Hooks::intervene`] adds a vector.
//!
//! llama.cpp's control vectors use the same index: `common_control_vector_load` reads tensor
//! `direction.{N}` into slot `N - 1` of a buffer that `llama_apply_adapter_cvec` documents as
//! "starting from layer 1", and the graph adds slot `il` (0-based decoder layer `il`) to that
//! layer's output (`llama_adapter_cvec::apply_to` after the FFN residual). So `direction.N` is
//! added to the output of 0-based layer N — exactly our layer N. The only difference is that
//! llama.cpp cannot steer layer 0 (`direction.0` is rejected as "invalid (zero) direction tensor
//! layer index"), so [`ControlVector::save_gguf`] refuses it too. repeng's `export_gguf` writes
//! `direction.{layer_id}` with its own layer ids unchanged, and its `ControlModel` adds the
//! direction to the output of `model.layers[layer_id]`: the same convention again.
//!
//! # Safetensors layout (`format = axbench-steering-vectors/1`)
//!
//! One 1-D f32 tensor `[hidden]` per vector, named by the vector's name; the `__metadata__` map
//! holds `format`, `model`, and per vector `{name}.layer`, `{name}.method`, `{name}.concept`,
//! `{name}.concept_id` (all strings, as safetensors metadata must be).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::gguf::{GgufError, GgufFile};

/// `format` metadata value of our safetensors vector files.
pub const SAFETENSORS_FORMAT: &str = "axbench-steering-vectors/1";
/// `general.architecture` of a GGUF control vector.
pub const CONTROL_VECTOR_ARCH: &str = "controlvector";

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

fn format_err(path: &Path, msg: impl Into<String>) -> VectorError {
    VectorError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// One steering direction with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringVector {
    /// Unique within a file; what a server request names.
    pub name: String,
    /// Output of this 0-based decoder layer (see the module docs).
    pub layer: usize,
    pub direction: Vec<f32>,
    /// Method that produced it (`DiffMean`, `PCA`, ...).
    pub method: String,
    /// Concept description.
    pub concept: String,
    pub concept_id: Option<i64>,
}

/// The contents of a safetensors vector file.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorFile {
    /// Model the vectors were computed on (an HF id or file name).
    pub model: String,
    pub vectors: Vec<SteeringVector>,
}

impl VectorFile {
    /// Writes the file; names must be unique and every direction the same, non-zero length.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), VectorError> {
        let invalid = |msg: String| VectorError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), SAFETENSORS_FORMAT.to_string());
        meta.insert("model".to_string(), self.model.clone());
        let dim = self.vectors.first().map(|v| v.direction.len());
        let mut bytes: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for v in &self.vectors {
            if v.name.is_empty() || v.name.contains('.') {
                return Err(invalid(format!(
                    "vector name {:?} must be non-empty and contain no `.`",
                    v.name
                )));
            }
            if Some(v.direction.len()) != dim || v.direction.is_empty() {
                return Err(invalid(format!(
                    "vector `{}` has {} elements, expected {}",
                    v.name,
                    v.direction.len(),
                    dim.unwrap_or(0)
                )));
            }
            if bytes
                .insert(&v.name, v.direction.iter().flat_map(|x| x.to_le_bytes()).collect())
                .is_some()
            {
                return Err(invalid(format!("duplicate vector name `{}`", v.name)));
            }
            meta.insert(format!("{}.layer", v.name), v.layer.to_string());
            meta.insert(format!("{}.method", v.name), v.method.clone());
            meta.insert(format!("{}.concept", v.name), v.concept.clone());
            if let Some(id) = v.concept_id {
                meta.insert(format!("{}.concept_id", v.name), id.to_string());
            }
        }
        let views = bytes
            .iter()
            .map(|(name, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b.len() / 4], b)
                    .map(|t| (name.to_string(), t))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| invalid(e.to_string()))
    }

    /// Reads a file written by [`VectorFile::save_safetensors`], in file order of names.
    pub fn load_safetensors(path: &Path) -> Result<VectorFile, VectorError> {
        let buf = std::fs::read(path).map_err(|source| VectorError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| format_err(path, e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&buf).map_err(|e| format_err(path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format").map(String::as_str) {
            Some(SAFETENSORS_FORMAT) => {}
            other => {
                return Err(format_err(
                    path,
                    format!("metadata `format` is {other:?}, expected {SAFETENSORS_FORMAT:?}"),
                ));
            }
        }
        let model = meta.get("model").cloned().unwrap_or_default();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut vectors = Vec::with_capacity(names.len());
        for name in names {
            let t = st.tensor(&name).map_err(|e| format_err(path, e.to_string()))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 1 {
                return Err(format_err(
                    path,
                    format!("tensor `{name}` must be 1-D F32, is {:?} {:?}", t.dtype(), t.shape()),
                ));
            }
            let direction: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let field = |k: &str| meta.get(&format!("{name}.{k}"));
            let layer = field("layer")
                .ok_or_else(|| format_err(path, format!("metadata `{name}.layer` is missing")))?
                .parse::<usize>()
                .map_err(|e| format_err(path, format!("metadata `{name}.layer`: {e}")))?;
            let concept_id = match field("concept_id") {
                Some(s) => Some(
                    s.parse::<i64>()
                        .map_err(|e| format_err(path, format!("metadata `{name}.concept_id`: {e}")))?,
                ),
                None => None,
            };
            vectors.push(SteeringVector {
                layer,
                direction,
                method: field("method").cloned().unwrap_or_default(),
                concept: field("concept").cloned().unwrap_or_default(),
                concept_id,
                name,
            });
        }
        Ok(VectorFile { model, vectors })
    }
}

/// A GGUF control vector: one direction per steered layer, keyed by our layer index (which is
/// llama.cpp's `direction.N` index too; see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    /// `controlvector.model_hint`: the architecture it was made for (repeng writes the HF
    /// `model_type`, e.g. `llama`).
    pub model_hint: String,
    pub directions: BTreeMap<usize, Vec<f32>>,
}

impl ControlVector {
    /// One steering vector as a single-layer control vector, scaled by `scale` (llama.cpp adds
    /// `strength * direction` with strength 1 by default, so bake the magnitude in here).
    pub fn from_vector(model_hint: &str, v: &SteeringVector, scale: f32) -> ControlVector {
        let dir = v.direction.iter().map(|x| x * scale).collect();
        ControlVector {
            model_hint: model_hint.to_string(),
            directions: BTreeMap::from([(v.layer, dir)]),
        }
    }

    /// Writes a GGUF v3 file: `general.architecture = "controlvector"`,
    /// `controlvector.model_hint`, `controlvector.layer_count` (u32, number of directions, as
    /// repeng writes it) and one F32 tensor `direction.{layer}` per layer.
    pub fn save_gguf(&self, path: &Path) -> Result<(), VectorError> {
        let invalid = |msg: String| VectorError::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        if self.directions.contains_key(&0) {
            return Err(invalid(
                "llama.cpp cannot steer layer 0 (it rejects `direction.0`); use layer >= 1".into(),
            ));
        }
        let dim = self.directions.values().next().map_or(0, Vec::len);
        if dim == 0 || self.directions.values().any(|d| d.len() != dim) {
            return Err(invalid("directions must be non-empty and all the same length".into()));
        }
        let mut w = GgufWriter::default();
        w.kv_str("general.architecture", CONTROL_VECTOR_ARCH);
        w.kv_str("controlvector.model_hint", &self.model_hint);
        w.kv_u32("controlvector.layer_count", self.directions.len() as u32);
        for (layer, d) in &self.directions {
            w.tensor_f32(&format!("direction.{layer}"), d);
        }
        let bytes = w.finish();
        let mut f = std::fs::File::create(path).map_err(|source| VectorError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        f.write_all(&bytes).map_err(|source| VectorError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a control vector GGUF (ours, repeng's or llama.cpp's `cvector-generator`'s), with the
    /// checks llama.cpp applies: every tensor is `direction.N` with N >= 1, 1-D, F32, same size.
    pub fn load_gguf(path: &Path) -> Result<ControlVector, VectorError> {
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?;
        if arch != CONTROL_VECTOR_ARCH {
            return Err(format_err(
                path,
                format!("general.architecture is `{arch}`, expected `{CONTROL_VECTOR_ARCH}`"),
            ));
        }
        let model_hint = file
            .opt_str("controlvector.model_hint")?
            .unwrap_or_default()
            .to_string();
        let mut directions = BTreeMap::new();
        let mut dim = None;
        for info in file.tensor_infos() {
            let layer = info
                .name
                .strip_prefix("direction.")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .ok_or_else(|| format_err(path, format!("tensor `{}` is not `direction.N` with N >= 1", info.name)))?;
            let shape = info.shape();
            if shape.len() != 1 {
                return Err(format_err(
                    path,
                    format!("tensor `{}` must be 1-D, has shape {shape:?}", info.name),
                ));
            }
            let data = file.tensor_f32(&info.name)?;
            if *dim.get_or_insert(data.len()) != data.len() {
                return Err(format_err(
                    path,
                    format!(
                        "tensor `{}` has {} elements, others have {}",
                        info.name,
                        data.len(),
                        dim.unwrap()
                    ),
                ));
            }
            directions.insert(layer, data);
        }
        if directions.is_empty() {
            return Err(format_err(path, "no direction tensors"));
        }
        Ok(ControlVector { model_hint, directions })
    }
}

/// A named steer as the server applies it: a direction per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSteer {
    pub name: String,
    pub layers: BTreeMap<usize, Vec<f32>>,
    /// File it came from, for messages.
    pub source: PathBuf,
}

/// Loads every steer in a vector file: each vector of a `.safetensors` file by its name, or a
/// `.gguf` control vector as one steer named after the file stem.
pub fn load_steers(path: &Path) -> Result<Vec<NamedSteer>, VectorError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => Ok(VectorFile::load_safetensors(path)?
            .vectors
            .into_iter()
            .map(|v| NamedSteer {
                name: v.name,
                layers: BTreeMap::from([(v.layer, v.direction)]),
                source: path.to_path_buf(),
            })
            .collect()),
        "gguf" => {
            let cv = ControlVector::load_gguf(path)?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("control")
                .to_string();
            Ok(vec![NamedSteer {
                name,
                layers: cv.directions,
                source: path.to_path_buf(),
            }])
        }
        _ => Err(format_err(path, "expected a .safetensors or .gguf vector file")),
    }
}

/// The few GGUF v3 pieces a control vector needs: string and u32 metadata, F32 tensors.
#[derive(Default)]
struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<f32>)>,
}

const GGUF_ALIGNMENT: usize = 32;
const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_STRING: u32 = 8;
const GGML_TYPE_F32: u32 = 0;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    fn kv_str(&mut self, key: &str, value: &str) {
        put_str(&mut self.kv, key);
        self.kv.extend(GGUF_TYPE_STRING.to_le_bytes());
        put_str(&mut self.kv, value);
        self.n_kv += 1;
    }
    fn kv_u32(&mut self, key: &str, value: u32) {
        put_str(&mut self.kv, key);
        self.kv.extend(GGUF_TYPE_UINT32.to_le_bytes());
        self.kv.extend(value.to_le_bytes());
        self.n_kv += 1;
    }
    fn tensor_f32(&mut self, name: &str, data: &[f32]) {
        self.tensors.push((name.to_string(), data.to_vec()));
    }
    fn finish(self) -> Vec<u8> {
        let pad = |n: usize| n.div_ceil(GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0usize;
        for (name, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend(1u32.to_le_bytes());
            out.extend((data.len() as u64).to_le_bytes());
            out.extend(GGML_TYPE_F32.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = pad(offset + data.len() * 4);
        }
        out.resize(pad(out.len()), 0);
        for (_, data) in &self.tensors {
            let start = out.len();
            out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
            out.resize(start + pad(out.len() - start), 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str, layer: usize, scale: f32) -> SteeringVector {
        SteeringVector {
            name: name.into(),
            layer,
            direction: (0..8).map(|i| (i as f32 - 3.5) * scale).collect(),
            method: "DiffMean".into(),
            concept: format!("concept {name}"),
            concept_id: Some(layer as i64 * 10),
        }
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.safetensors");
        let file = VectorFile {
            model: "google/gemma-3-270m".into(),
            vectors: vec![vector("a", 3, 1.0), vector("b", 5, -0.25)],
        };
        file.save_safetensors(&path).unwrap();
        assert_eq!(VectorFile::load_safetensors(&path).unwrap(), file);
        let steers = load_steers(&path).unwrap();
        assert_eq!(steers.len(), 2);
        assert_eq!(steers[1].layers[&5], file.vectors[1].direction);
    }

    #[test]
    fn safetensors_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.safetensors");
        let dup = VectorFile {
            model: "m".into(),
            vectors: vec![vector("a", 1, 1.0), vector("a", 2, 1.0)],
        };
        assert!(
            dup.save_safetensors(&path)
                .unwrap_err()
                .to_string()
                .contains("duplicate vector name `a`")
        );
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = VectorFile::load_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("v.safetensors"), "{err}");
    }

    #[test]
    fn gguf_round_trip_through_our_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cv.gguf");
        let cv = ControlVector {
            model_hint: "llama".into(),
            directions: BTreeMap::from([(1, vec![1.0, 2.0, 3.0]), (7, vec![-1.0, 0.5, 0.0])]),
        };
        cv.save_gguf(&path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.get_u32("controlvector.layer_count").unwrap(), 2);
        assert_eq!(ControlVector::load_gguf(&path).unwrap(), cv);
        let steers = load_steers(&path).unwrap();
        assert_eq!(steers[0].name, "cv");
        let zero = ControlVector {
            model_hint: "llama".into(),
            directions: BTreeMap::from([(0, vec![1.0])]),
        };
        assert!(zero.save_gguf(&path).unwrap_err().to_string().contains("layer 0"));
    }
}
