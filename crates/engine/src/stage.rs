//! The `Stage` trait that stage implementations (the `axbench-stages` crate, the toy stages)
//! implement, the [`StageContext`] they run with, and the name-keyed [`Registry`].
//!
//! The engine never imports a stage: the binary builds a registry and hands it over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::value::{Coord, Value};

/// The type of a param a stage reads. The key hashes params by this type: `Path` params
/// contribute the content digest of the file or directory they name, never the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    Int,
    Float,
    Bool,
    Str,
    List,
    /// Any value (tables included), hashed canonically.
    Any,
    /// A file or directory, relative to the project dir (or absolute). Hashed by content; the empty string means
    /// "not set" (keyed as the string, nothing read).
    Path,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Int => "an integer",
            ParamType::Float => "a float",
            ParamType::Bool => "a boolean",
            ParamType::Str => "a string",
            ParamType::List => "a list",
            ParamType::Any => "any value",
            ParamType::Path => "a path (string)",
        }
    }

    /// Checks (and for floats, converts) a value. `None` if it does not fit.
    pub fn coerce(self, v: &Value) -> Option<Value> {
        match (self, v) {
            (ParamType::Int, Value::Int(_)) => Some(v.clone()),
            (ParamType::Float, Value::Int(i)) => Some(Value::Float(*i as f64)),
            (ParamType::Float, Value::Float(_)) => Some(v.clone()),
            (ParamType::Bool, Value::Bool(_)) => Some(v.clone()),
            (ParamType::Str | ParamType::Path, Value::Str(_)) => Some(v.clone()),
            (ParamType::List, Value::List(_)) => Some(v.clone()),
            (ParamType::Any, _) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One param a stage reads. Only declared params enter the node key, so a stage that does
/// not read a param is not recomputed when it changes.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// `None`: the pipeline must set it.
    pub default: Option<Value>,
    pub doc: &'static str,
}

impl ParamSpec {
    pub fn required(name: &'static str, ty: ParamType, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: None,
            doc,
        }
    }
    pub fn optional(name: &'static str, ty: ParamType, default: impl Into<Value>, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: Some(default.into()),
            doc,
        }
    }
}

/// What a stage's output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputKind {
    /// Named files.
    #[default]
    Files,
    /// Named files, one of which is `list.json`: a JSON array that downstream stages may fan
    /// out over (`foreach = { concept = { from = "this-stage" } }`).
    List,
}

/// File name of a list-producing stage's list.
pub const LIST_FILE: &str = "list.json";

/// A stage failed. The message is shown to the user with the node's log path.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("param `{name}`: {message}")]
    Param { name: String, message: String },
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    pub fn msg(m: impl Into<String>) -> StageError {
        StageError::Failed(m.into())
    }
}

/// A stage implementation, registered by kind name.
pub trait Stage: Send + Sync {
    /// Registry name, e.g. `axbench.fit` or `test.add`.
    fn kind(&self) -> &str;
    /// Bump when the code changes what it computes: every node of this kind is recomputed.
    fn version(&self) -> u32;
    /// The params this stage reads (names + types). Only these are hashed into the key, and
    /// a pipeline setting any other param for this stage is an error.
    fn params(&self) -> Vec<ParamSpec>;
    /// Resource classes this stage holds while running, e.g. `[("gpu", 1)]`.
    fn resources(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }
    /// Whether the output includes a `list.json` that downstream stages can fan out over.
    fn output_kind(&self) -> OutputKind {
        OutputKind::Files
    }
    /// One-line description, shown by `axbench plan --params` and `--help`.
    fn doc(&self) -> &str {
        ""
    }
    /// Checks one param's value at plan time, beyond its type (e.g. a method name against the methods a stage
    /// knows), so a typo fails `plan` with exit 2 at the param's location instead of a node failing mid-run.
    /// `Err` holds the message (say what is valid). Default: every value of the declared type is fine.
    fn validate_param(&self, _name: &str, _value: &Value) -> Result<(), String> {
        Ok(())
    }
    /// Computes one node. Blocking code is fine: the scheduler runs it on a blocking thread.
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError>;
}

/// One input artifact: an upstream node's outputs (read-only files in the store).
#[derive(Clone, Debug)]
pub struct InputArtifact {
    pub node: String,
    pub coord: Coord,
    /// Output file name → path of the blob in the store. Read-only.
    pub files: BTreeMap<String, PathBuf>,
}

impl InputArtifact {
    /// Path of the upstream output file `name`.
    pub fn file(&self, name: &str) -> Result<&Path, StageError> {
        self.files
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| StageError::Input {
                name: self.node.clone(),
                message: format!(
                    "has no output file `{name}` (it has: {})",
                    self.files.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })
    }

    /// Reads and parses the upstream `list.json`.
    pub fn list(&self) -> Result<Vec<Value>, StageError> {
        let p = self.file(LIST_FILE)?;
        let text = std::fs::read(p).map_err(|source| StageError::Io {
            context: p.display().to_string(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| StageError::msg(format!("{}: {e}", p.display())))?;
        match Value::from_json(&v) {
            Value::List(l) => Ok(l),
            _ => Err(StageError::msg(format!("{}: not a JSON array", p.display()))),
        }
    }
}

/// Progress of the running node (bound to an indicatif bar by the CLI; a no-op otherwise).
pub trait ProgressSink: Send + Sync {
    fn set_length(&self, _len: u64) {}
    fn inc(&self, _n: u64) {}
    fn set_message(&self, _msg: String) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl ProgressSink for NoProgress {}

/// A cooperative cancellation flag (Ctrl-C). Long stages should poll it.
#[derive(Clone, Default, Debug)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a running stage may see. Built by the executor; stages never touch the store.
pub struct StageContext {
    pub(crate) node: String,
    pub(crate) coord: Coord,
    pub(crate) params: BTreeMap<String, Value>,
    pub(crate) inputs: BTreeMap<String, Vec<InputArtifact>>,
    pub(crate) out_dir: PathBuf,
    pub(crate) project_dir: PathBuf,
    pub(crate) progress: Arc<dyn ProgressSink>,
    pub(crate) cancel: CancelFlag,
    pub(crate) log: Vec<String>,
}

impl StageContext {
    /// A context for running a stage by hand (tests, `exec-node`-style tools).
    pub fn new(
        node: &str,
        coord: Coord,
        params: BTreeMap<String, Value>,
        inputs: BTreeMap<String, Vec<InputArtifact>>,
        out_dir: PathBuf,
        project_dir: PathBuf,
    ) -> Self {
        StageContext {
            node: node.to_string(),
            coord,
            params,
            inputs,
            out_dir,
            project_dir,
            progress: Arc::new(NoProgress),
            cancel: CancelFlag::new(),
            log: Vec::new(),
        }
    }

    /// The node id, e.g. `fit[concept=3,method=pca]`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The fan-out coordinate.
    pub fn coord(&self) -> &Coord {
        &self.coord
    }

    /// A param value (declared params only; defaults filled in).
    pub fn param(&self, name: &str) -> Result<&Value, StageError> {
        self.params.get(name).ok_or_else(|| StageError::Param {
            name: name.into(),
            message: "not declared by this stage".into(),
        })
    }
    pub fn param_i64(&self, name: &str) -> Result<i64, StageError> {
        let v = self.param(name)?;
        v.as_i64().ok_or_else(|| StageError::Param {
            name: name.into(),
            message: format!("expected an integer, got {v}"),
        })
    }
    pub fn param_f64(&self, name: &str) -> Result<f64, StageError> {
        let v = self.param(name)?;
        v.as_f64().ok_or_else(|| StageError::Param {
            name: name.into(),
            message: format!("expected a number, got {v}"),
        })
    }
    pub fn param_bool(&self, name: &str) -> Result<bool, StageError> {
        let v = self.param(name)?;
        v.as_bool().ok_or_else(|| StageError::Param {
            name: name.into(),
            message: format!("expected a boolean, got {v}"),
        })
    }
    pub fn param_str(&self, name: &str) -> Result<&str, StageError> {
        let v = self.param(name)?;
        v.as_str().ok_or_else(|| StageError::Param {
            name: name.into(),
            message: format!("expected a string, got {v}"),
        })
    }
    /// A `Path` param resolved against the project dir.
    pub fn param_path(&self, name: &str) -> Result<PathBuf, StageError> {
        let p = Path::new(self.param_str(name)?);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.project_dir.join(p)
        })
    }

    /// All artifacts bound to input `name` (several when the input gathers a fan-out).
    pub fn inputs(&self, name: &str) -> Result<&[InputArtifact], StageError> {
        self.inputs
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StageError::Input {
                name: name.into(),
                message: format!(
                    "not bound (inputs: {})",
                    self.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })
    }

    /// The single artifact bound to input `name`.
    pub fn input(&self, name: &str) -> Result<&InputArtifact, StageError> {
        match self.inputs(name)? {
            [one] => Ok(one),
            many => Err(StageError::Input {
                name: name.into(),
                message: format!("expected one artifact, got {}", many.len()),
            }),
        }
    }

    /// Input names bound for this node, sorted.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.keys().map(String::as_str).collect()
    }

    /// Path to write output file `name` to. Names are flat (no `/`, no `..`).
    pub fn output_path(&self, name: &str) -> Result<PathBuf, StageError> {
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !ok {
            return Err(StageError::msg(format!(
                "invalid output name {name:?}: flat names of letters, digits, `_`, `-`, `.`"
            )));
        }
        Ok(self.out_dir.join(name))
    }

    /// Writes an output file in one go.
    pub fn write_output(&self, name: &str, bytes: &[u8]) -> Result<(), StageError> {
        let p = self.output_path(name)?;
        std::fs::write(&p, bytes).map_err(|source| StageError::Io {
            context: p.display().to_string(),
            source,
        })
    }

    /// Writes `list.json` (for stages whose output kind is [`OutputKind::List`]).
    pub fn write_list(&self, items: &[Value]) -> Result<(), StageError> {
        let json = serde_json::to_vec(&Value::List(items.to_vec()).to_json()).expect("values serialize");
        self.write_output(LIST_FILE, &json)
    }

    pub fn progress(&self) -> &dyn ProgressSink {
        self.progress.as_ref()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once Ctrl-C was pressed: `ctx.check_cancelled()?` in loops.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn project_dir(&self) -> &Path {
        &self.project_dir
    }

    /// Appends a line to the node's log (kept in the cache next to the manifest).
    pub fn log(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }
}

/// Stage implementations by kind name.
#[derive(Default, Clone)]
pub struct Registry {
    stages: BTreeMap<String, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage; a later registration of the same kind replaces the earlier one.
    pub fn register(mut self, stage: Box<dyn Stage>) -> Self {
        self.stages.insert(stage.kind().to_string(), Arc::from(stage));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.stages.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.stages.values()
    }
}
