//! `spec`: pipeline TOML (and sweep files, and `--set`) → a typed [`PipelineSpec`] whose every
//! piece remembers where it was written, so every later error can name file, line, column and
//! key.
//!
//! A pipeline file:
//!
//! ```toml
//! [pipeline]
//! name = "toy"
//! description = "Adds numbers"
//! max_nodes = 100000            # optional fan-out limit (default 1,000,000)
//!
//! [params."model.layer"]        # user-facing params: default + one-line description
//! default = 9
//! description = "Layer whose activations are read"
//!
//! [resources]                   # capacity per resource class (default 1 each)
//! gpu = 1
//!
//! [stages.concepts]
//! kind = "test.list"            # a name in the stage registry
//! params = { n = "${concepts.limit}" }   # whole-string reference keeps the param's type
//!
//! [stages.fit]
//! kind = "test.add"
//! inputs = { a = "concepts" }   # input name → upstream stage
//! foreach = { concept = { from = "concepts" }, method = ["pca", "probe"], layer = "${layers}" }
//! params = { offset = "${layer}" }       # fan-out dimensions can be referenced too
//! resources = { gpu = 1 }
//! ```
//!
//! A sweep file (in `configs/`) names a base pipeline with `extends` and overrides or extends it:
//!
//! ```toml
//! extends = "../pipelines/main.toml"     # relative to the sweep file
//! [set]
//! "model.layer" = 12
//! [stages.fit]                           # merged into the base stage (or a new stage)
//! foreach = { method = ["pca"] }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::compile::key::{CacheKey, KeyHasher};
use crate::slurm::options::SlurmOptions;
use crate::value::Value;

/// Default cap on the number of nodes one pipeline may expand to.
pub const DEFAULT_MAX_NODES: usize = 1_000_000;

/// Where something was written: file, 1-based line and column. Command-line values have
/// line 0 and print as their flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Loc {
    pub fn cli(flag: &str) -> Loc {
        Loc {
            file: Arc::from(flag),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// Bad input: a pipeline, sweep or `--set` that cannot be used. Always names where and which
/// key. (The CLI exits with code 2 on these.)
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{loc}: {key}: {message}")]
pub struct SpecError {
    pub loc: Loc,
    /// Dotted key path, e.g. `stages.fit.params.offset`.
    pub key: String,
    pub message: String,
}

impl SpecError {
    pub fn new(loc: &Loc, key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            loc: loc.clone(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub loc: Loc,
}

/// A declared, user-facing pipeline param.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub default: Value,
    pub description: String,
    /// The value in effect (default, or set by a sweep file or `--set`).
    pub value: Value,
    /// Who set `value`, if not the default (`configs/x.toml:3:1` or `--set`).
    pub set_by: Option<Loc>,
    pub loc: Loc,
}

/// One fan-out dimension of a stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// A literal list: `method = ["pca", "probe"]`.
    Values(Vec<Value>),
    /// A declared param holding a list: `layer = "${layers}"`.
    Param(String),
    /// The list output of an upstream stage, known only once it ran: `concept = { from = "concepts" }`.
    From(String),
}

/// A stage as written in the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    pub name: String,
    pub kind: Located<String>,
    pub description: String,
    /// Raw param values; strings may hold `${param}` or `${dim}` references.
    pub params: BTreeMap<String, Located<Value>>,
    /// Input name → upstream stage name.
    pub inputs: BTreeMap<String, Located<String>>,
    pub foreach: BTreeMap<String, Located<Dim>>,
    /// Resource needs beyond what the stage kind declares (`gpu = 1`).
    pub resources: BTreeMap<String, Located<u32>>,
    /// `[stages.x.slurm]`: partition, gres, time… for `--executor slurm`. Never part of a key.
    pub slurm: SlurmOptions,
    pub loc: Loc,
}

/// A whole pipeline after sweep files and `--set` were applied.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    pub name: String,
    pub description: String,
    /// The file given on the command line (a pipeline or a sweep).
    pub file: PathBuf,
    pub params: BTreeMap<String, ParamDecl>,
    pub resources: BTreeMap<String, u32>,
    pub stages: BTreeMap<String, StageSpec>,
    pub max_nodes: usize,
}

// ---- raw serde shapes ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Option<String>,
    #[serde(default)]
    description: String,
    max_nodes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    default: Spanned<toml::Value>,
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    inputs: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    foreach: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, Spanned<i64>>,
    /// `[stages.x.slurm]`: what the Slurm executor asks for (see [`SlurmOptions`]).
    slurm: Option<Spanned<SlurmOptions>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    pipeline: Option<RawMeta>,
    #[serde(default)]
    params: BTreeMap<Spanned<String>, Spanned<RawParam>>,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, Spanned<i64>>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, Spanned<RawStage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    extends: Spanned<String>,
    pipeline: Option<RawMeta>,
    #[serde(default)]
    set: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, Spanned<i64>>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, Spanned<RawStage>>,
}

/// A source file and its line starts, to turn byte spans into line:column.
struct Source {
    name: Arc<str>,
    text: String,
    line_starts: Vec<usize>,
}

impl Source {
    fn new(name: &str, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            name: Arc::from(name),
            text,
            line_starts,
        }
    }

    fn loc(&self, offset: usize) -> Loc {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc {
            file: self.name.clone(),
            line: line as u32,
            col: col as u32,
        }
    }

    fn loc_of(&self, span: Range<usize>) -> Loc {
        self.loc(span.start)
    }

    /// Best-effort dotted key at a byte offset: the enclosing `[table]` header plus the key
    /// written on that line. Used for TOML syntax and schema errors, which only carry a span.
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[offset..]
            .find('\n')
            .map(|i| offset + i)
            .unwrap_or(self.text.len());
        let line = self.text[line_start..line_end].trim();
        let mut header = String::new();
        for l in self.text[..line_start].lines().rev() {
            let t = l.trim();
            if t.starts_with('[') {
                header = t.trim_start_matches('[').trim_end_matches(']').trim().replace('"', "");
                break;
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if !header.is_empty() && !line.starts_with('[') {
            parts.push(header);
        }
        if line.starts_with('[') {
            parts.push(
                line.trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .replace('"', ""),
            );
        } else if let Some((k, _)) = line.split_once('=') {
            parts.push(k.trim().replace('"', ""));
        }
        // The token at the offset, if it is a key inside an inline table.
        let tok: String = self.text[offset..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || "_-.\"".contains(*c))
            .collect();
        let tok = tok.replace('"', "");
        if !tok.is_empty()
            && parts.last().is_none_or(|p| !p.ends_with(&tok))
            && self.text[offset..]
                .trim_start_matches(|c: char| c != '=' && c != '\n')
                .starts_with('=')
        {
            parts.push(tok);
        }
        parts.join(".")
    }

    fn toml_error(&self, e: &toml::de::Error) -> SpecError {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = e.message().trim().to_string();
        SpecError {
            loc: self.loc(offset),
            key: self.key_at(offset),
            message,
        }
    }
}

fn read_source(path: &Path, loc: Option<&Loc>) -> Result<Source, SpecError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let l = loc.cloned().unwrap_or_else(|| Loc {
            file: Arc::from(shown.as_str()),
            line: 0,
            col: 0,
        });
        SpecError::new(&l, "file", format!("cannot read {shown}: {e}"))
    })?;
    Ok(Source::new(&shown, text))
}

fn positive(src: &Source, key: String, v: &Spanned<i64>) -> Result<u32, SpecError> {
    let n = *v.get_ref();
    if !(0..=1_000_000).contains(&n) {
        return Err(SpecError::new(
            &src.loc_of(v.span()),
            key,
            format!("expected a count between 0 and 1000000, got {n}"),
        ));
    }
    Ok(n as u32)
}

/// Names that end up in ids, log lines and file names: letters, digits, `_`, `-`, `.`;
/// never `..`, never a path separator.
pub fn check_name(what: &str, name: &str, loc: &Loc, key: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !name.contains("..")
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            loc,
            key,
            format!("invalid {what} {name:?}: use letters, digits, `_`, `-` and `.` (no `/`, no `..`)"),
        ))
    }
}

impl PipelineSpec {
    /// Loads a pipeline file, or a sweep file (one with `extends = "…"`) applied to its base.
    pub fn load(path: &Path) -> Result<PipelineSpec, SpecError> {
        let src = read_source(path, None)?;
        let table: toml::Table = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;
        if table.contains_key("extends") {
            let raw: RawSweep = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;
            let ext_loc = src.loc_of(raw.extends.span());
            let base_path = path.parent().unwrap_or(Path::new(".")).join(raw.extends.get_ref());
            if !base_path.exists() {
                return Err(SpecError::new(
                    &ext_loc,
                    "extends",
                    format!("base pipeline {} does not exist", base_path.display()),
                ));
            }
            let base_src = read_source(&base_path, Some(&ext_loc))?;
            let base_table: toml::Table = toml::from_str(&base_src.text).map_err(|e| base_src.toml_error(&e))?;
            if base_table.contains_key("extends") {
                return Err(SpecError::new(
                    &ext_loc,
                    "extends",
                    "a sweep file must extend a pipeline, not another sweep file",
                ));
            }
            let base_raw: RawPipeline = toml::from_str(&base_src.text).map_err(|e| base_src.toml_error(&e))?;
            let mut spec = Self::from_raw(&base_src, base_raw, path)?;
            spec.apply_sweep(&src, raw)?;
            Ok(spec)
        } else {
            let raw: RawPipeline = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;
            Self::from_raw(&src, raw, path)
        }
    }

    /// Parses pipeline TOML from a string (tests, and tools that generate pipelines).
    pub fn parse(name: &str, text: &str) -> Result<PipelineSpec, SpecError> {
        let src = Source::new(name, text.to_string());
        let raw: RawPipeline = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;
        Self::from_raw(&src, raw, Path::new(name))
    }

    fn from_raw(src: &Source, raw: RawPipeline, file: &Path) -> Result<PipelineSpec, SpecError> {
        let mut spec = PipelineSpec {
            name: file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            description: String::new(),
            file: file.to_path_buf(),
            params: BTreeMap::new(),
            resources: BTreeMap::new(),
            stages: BTreeMap::new(),
            max_nodes: DEFAULT_MAX_NODES,
        };
        if let Some(meta) = raw.pipeline {
            spec.apply_meta(src, meta)?;
        }
        for (name, p) in raw.params {
            let loc = src.loc_of(name.span());
            let name = name.into_inner();
            let key = format!("params.{name}");
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) || name.is_empty() {
                return Err(SpecError::new(
                    &loc,
                    key,
                    "param names use letters, digits, `_`, `-` and `.`",
                ));
            }
            let p = p.into_inner();
            if p.description.trim().is_empty() || p.description.contains('\n') {
                return Err(SpecError::new(
                    &loc,
                    format!("{key}.description"),
                    "every param needs a one-line description",
                ));
            }
            let default = Value::from_toml(p.default.get_ref());
            spec.params.insert(
                name.clone(),
                ParamDecl {
                    name,
                    value: default.clone(),
                    default,
                    description: p.description,
                    set_by: None,
                    loc,
                },
            );
        }
        for (class, n) in raw.resources {
            let key = format!("resources.{}", class.get_ref());
            let cap = positive(src, key.clone(), &n)?;
            check_name("resource class", class.get_ref(), &src.loc_of(class.span()), &key)?;
            spec.resources.insert(class.into_inner(), cap);
        }
        for (name, stage) in raw.stages {
            let loc = src.loc_of(name.span());
            let name = name.into_inner();
            check_name("stage name", &name, &loc, &format!("stages.{name}"))?;
            let stage = stage.into_inner();
            let Some(kind) = &stage.kind else {
                return Err(SpecError::new(
                    &loc,
                    format!("stages.{name}.kind"),
                    "missing `kind` (the stage implementation to run)",
                ));
            };
            let mut s = StageSpec {
                name: name.clone(),
                kind: Located {
                    value: kind.get_ref().clone(),
                    loc: src.loc_of(kind.span()),
                },
                description: String::new(),
                params: BTreeMap::new(),
                inputs: BTreeMap::new(),
                foreach: BTreeMap::new(),
                resources: BTreeMap::new(),
                slurm: Default::default(),
                loc,
            };
            merge_stage(src, &mut s, stage)?;
            spec.stages.insert(name, s);
        }
        Ok(spec)
    }

    fn apply_meta(&mut self, src: &Source, meta: RawMeta) -> Result<(), SpecError> {
        if let Some(n) = meta.name {
            self.name = n;
        }
        if !meta.description.is_empty() {
            self.description = meta.description;
        }
        if let Some(m) = meta.max_nodes {
            if *m.get_ref() < 1 {
                return Err(SpecError::new(
                    &src.loc_of(m.span()),
                    "pipeline.max_nodes",
                    "must be at least 1",
                ));
            }
            self.max_nodes = *m.get_ref() as usize;
        }
        Ok(())
    }

    fn apply_sweep(&mut self, src: &Source, raw: RawSweep) -> Result<(), SpecError> {
        if let Some(meta) = raw.pipeline {
            self.apply_meta(src, meta)?;
        }
        for (name, v) in raw.set {
            let loc = src.loc_of(name.span());
            self.set_param(name.get_ref(), Value::from_toml(v.get_ref()), &loc)?;
        }
        for (class, n) in raw.resources {
            let cap = positive(src, format!("resources.{}", class.get_ref()), &n)?;
            self.resources.insert(class.into_inner(), cap);
        }
        for (name, patch) in raw.stages {
            let loc = src.loc_of(name.span());
            let name = name.into_inner();
            check_name("stage name", &name, &loc, &format!("stages.{name}"))?;
            let patch = patch.into_inner();
            match self.stages.get_mut(&name) {
                Some(s) => merge_stage(src, s, patch)?,
                None => {
                    let Some(kind) = &patch.kind else {
                        return Err(SpecError::new(
                            &loc,
                            format!("stages.{name}.kind"),
                            format!("stage `{name}` is not in the base pipeline, so it needs a `kind`"),
                        ));
                    };
                    let mut s = StageSpec {
                        name: name.clone(),
                        kind: Located {
                            value: kind.get_ref().clone(),
                            loc: src.loc_of(kind.span()),
                        },
                        description: String::new(),
                        params: BTreeMap::new(),
                        inputs: BTreeMap::new(),
                        foreach: BTreeMap::new(),
                        resources: BTreeMap::new(),
                        slurm: Default::default(),
                        loc,
                    };
                    merge_stage(src, &mut s, patch)?;
                    self.stages.insert(name, s);
                }
            }
        }
        Ok(())
    }

    /// Sets a declared param (from a sweep file's `[set]` or `--set`). A wrong name or a value
    /// of the wrong type is an error naming the param and listing the valid ones.
    pub fn set_param(&mut self, name: &str, value: Value, loc: &Loc) -> Result<(), SpecError> {
        let valid = self.param_list();
        let Some(decl) = self.params.get_mut(name) else {
            return Err(SpecError::new(
                loc,
                name,
                format!("unknown param `{name}`; valid params: {valid}"),
            ));
        };
        let value = coerce_like(&decl.default, value).map_err(|got| {
            SpecError::new(
                loc,
                name,
                format!(
                    "param `{name}` expects {} (like its default {}), got {got}; valid params: {valid}",
                    article(decl.default.type_name()),
                    decl.default.to_json()
                ),
            )
        })?;
        decl.value = value;
        decl.set_by = Some(loc.clone());
        Ok(())
    }

    /// Applies `--set name=value` pairs in order.
    pub fn apply_sets(&mut self, sets: &[String]) -> Result<(), SpecError> {
        for s in sets {
            let loc = Loc::cli(&format!("--set {s}"));
            let Some((name, value)) = s.split_once('=') else {
                return Err(SpecError::new(
                    &loc,
                    s,
                    format!("expected name=value; valid params: {}", self.param_list()),
                ));
            };
            self.set_param(name.trim(), Value::parse_cli(value.trim()), &loc)?;
        }
        Ok(())
    }

    /// `a, b, c` — the declared param names, for error messages.
    pub fn param_list(&self) -> String {
        if self.params.is_empty() {
            "(this pipeline declares none)".to_string()
        } else {
            self.params.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

fn article(t: &str) -> String {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {t}")
    } else {
        format!("a {t}")
    }
}

/// Checks a new value against a param's default type; integers are accepted for floats.
/// `Err` carries a description of what was given.
fn coerce_like(default: &Value, v: Value) -> Result<Value, String> {
    let describe = |v: &Value| format!("{} {}", v.type_name(), v.to_json());
    match (default, v) {
        (Value::Float(_), Value::Int(i)) => Ok(Value::Float(i as f64)),
        (Value::Float(_), v @ Value::Float(_)) => Ok(v),
        (Value::Int(_), v @ Value::Int(_)) => Ok(v),
        (Value::Bool(_), v @ Value::Bool(_)) => Ok(v),
        (Value::Str(_), v @ Value::Str(_)) => Ok(v),
        (Value::List(_), v @ Value::List(_)) => Ok(v),
        (Value::Table(_), v @ Value::Table(_)) => Ok(v),
        (_, v) => Err(describe(&v)),
    }
}

fn merge_stage(src: &Source, s: &mut StageSpec, raw: RawStage) -> Result<(), SpecError> {
    let name = s.name.clone();
    if let Some(kind) = raw.kind {
        s.kind = Located {
            value: kind.get_ref().clone(),
            loc: src.loc_of(kind.span()),
        };
    }
    if !raw.description.is_empty() {
        s.description = raw.description;
    }
    for (k, v) in raw.params {
        let loc = src.loc_of(k.span());
        s.params.insert(
            k.into_inner(),
            Located {
                value: Value::from_toml(v.get_ref()),
                loc,
            },
        );
    }
    for (k, v) in raw.inputs {
        let loc = src.loc_of(k.span());
        check_name(
            "input name",
            k.get_ref(),
            &loc,
            &format!("stages.{name}.inputs.{}", k.get_ref()),
        )?;
        let vloc = src.loc_of(v.span());
        s.inputs.insert(
            k.into_inner(),
            Located {
                value: v.into_inner(),
                loc: vloc,
            },
        );
    }
    for (k, v) in raw.foreach {
        let loc = src.loc_of(k.span());
        let key = format!("stages.{name}.foreach.{}", k.get_ref());
        check_name("fan-out dimension", k.get_ref(), &loc, &key)?;
        let vloc = src.loc_of(v.span());
        let dim = match v.get_ref() {
            toml::Value::Array(a) => {
                let vals: Vec<Value> = a.iter().map(Value::from_toml).collect();
                if vals.is_empty() {
                    return Err(SpecError::new(
                        &vloc,
                        key,
                        "an empty fan-out list would make the stage vanish",
                    ));
                }
                Dim::Values(vals)
            }
            toml::Value::String(s) => match whole_ref(s) {
                Some(p) => Dim::Param(p.to_string()),
                None => {
                    return Err(SpecError::new(
                        &vloc,
                        key,
                        format!("expected a list, \"${{param}}\" or {{ from = \"stage\" }}, got string {s:?}"),
                    ));
                }
            },
            toml::Value::Table(t) => match (t.get("from"), t.len()) {
                (Some(toml::Value::String(from)), 1) => Dim::From(from.clone()),
                _ => {
                    return Err(SpecError::new(
                        &vloc,
                        key,
                        "a dynamic fan-out is written { from = \"stage\" }",
                    ));
                }
            },
            other => {
                return Err(SpecError::new(
                    &vloc,
                    key,
                    format!(
                        "expected a list, \"${{param}}\" or {{ from = \"stage\" }}, got {}",
                        other.type_str()
                    ),
                ));
            }
        };
        s.foreach.insert(k.into_inner(), Located { value: dim, loc: vloc });
    }
    for (k, v) in raw.resources {
        let key = format!("stages.{name}.resources.{}", k.get_ref());
        let n = positive(src, key, &v)?;
        s.resources.insert(
            k.into_inner(),
            Located {
                value: n,
                loc: src.loc_of(v.span()),
            },
        );
    }
    if let Some(slurm) = raw.slurm {
        let loc = src.loc_of(slurm.span());
        let slurm = slurm.into_inner();
        slurm
            .check()
            .map_err(|(field, message)| SpecError::new(&loc, format!("stages.{name}.slurm{field}"), message))?;
        s.slurm.merge(slurm);
    }
    Ok(())
}

/// `"${name}"` (the whole string) → `Some("name")`.
pub fn whole_ref(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains(['$', '{', '}'])).then_some(inner)
}

/// Every `${name}` inside a string, in order.
pub fn refs_in(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Substitutes `${name}` references. A string that is exactly one reference takes the
/// referenced value with its type; references inside longer strings are interpolated.
pub fn substitute(v: &Value, lookup: &dyn Fn(&str) -> Option<Value>) -> Result<Value, String> {
    match v {
        Value::Str(s) if s.contains("${") => {
            if let Some(name) = whole_ref(s) {
                return lookup(name).ok_or_else(|| name.to_string());
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let after = &rest[i + 2..];
                let Some(j) = after.find('}') else {
                    out.push_str(&rest[i..]);
                    rest = "";
                    break;
                };
                let name = &after[..j];
                let val = lookup(name).ok_or_else(|| name.to_string())?;
                out.push_str(&val.to_string());
                rest = &after[j + 1..];
            }
            out.push_str(rest);
            Ok(Value::Str(out))
        }
        Value::List(l) => Ok(Value::List(
            l.iter().map(|x| substitute(x, lookup)).collect::<Result<_, _>>()?,
        )),
        Value::Table(t) => Ok(Value::Table(
            t.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, lookup)?)))
                .collect::<Result<_, String>>()?,
        )),
        other => Ok(other.clone()),
    }
}

// ---- the whole spec as a CacheKey (the no-op record's fingerprint) -----------------------------

/// Every field of a spec type, in declaration order, after a tag naming the type.
macro_rules! cache_key_fields {
    ($ty:ty, $tag:literal, $($field:ident),+) => {
        impl CacheKey for $ty {
            fn cache_key(&self, h: &mut KeyHasher) {
                h.bytes($tag.as_bytes());
                $( self.$field.cache_key(h); )+
            }
        }
    };
}

impl CacheKey for Loc {
    fn cache_key(&self, h: &mut KeyHasher) {
        self.file.as_ref().cache_key(h);
        self.line.cache_key(h);
        self.col.cache_key(h);
    }
}
impl<T: CacheKey> CacheKey for Located<T> {
    fn cache_key(&self, h: &mut KeyHasher) {
        self.value.cache_key(h);
        self.loc.cache_key(h);
    }
}
impl CacheKey for Dim {
    fn cache_key(&self, h: &mut KeyHasher) {
        match self {
            Dim::Values(v) => {
                h.tag(b'v');
                v.cache_key(h)
            }
            Dim::Param(p) => {
                h.tag(b'p');
                p.cache_key(h)
            }
            Dim::From(s) => {
                h.tag(b'f');
                s.cache_key(h)
            }
        }
    }
}
impl CacheKey for SlurmOptions {
    /// Its serde form: every field by name, maps sorted, so a new option is covered without an edit here.
    fn cache_key(&self, h: &mut KeyHasher) {
        h.bytes(&serde_json::to_vec(self).expect("SlurmOptions serializes"));
    }
}
cache_key_fields!(ParamDecl, "ParamDecl", name, default, description, value, set_by, loc);
cache_key_fields!(
    StageSpec,
    "StageSpec",
    name,
    kind,
    description,
    params,
    inputs,
    foreach,
    resources,
    slurm,
    loc
);
impl CacheKey for PipelineSpec {
    fn cache_key(&self, h: &mut KeyHasher) {
        h.bytes(b"PipelineSpec");
        self.name.cache_key(h);
        self.description.cache_key(h);
        // The no-op record is local to this checkout, so the pipeline's own path may enter it.
        h.bytes(self.file.as_os_str().as_encoded_bytes());
        self.params.cache_key(h);
        self.resources.cache_key(h);
        self.stages.cache_key(h);
        (self.max_nodes as u64).cache_key(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOY: &str = r#"
[pipeline]
name = "toy"

[params."model.layer"]
default = 9
description = "Layer to read"

[stages.a]
kind = "test.const"
params = { value = "${model.layer}" }
"#;

    #[test]
    fn parses_params_and_stages_with_locations() {
        let spec = PipelineSpec::parse("toy.toml", TOY).unwrap();
        assert_eq!(spec.params["model.layer"].value, Value::Int(9));
        let a = &spec.stages["a"];
        assert_eq!(a.kind.value, "test.const");
        assert_eq!(a.params["value"].loc.line, 11);
    }

    #[test]
    fn unknown_keys_name_file_line_column_and_key() {
        let text = TOY.replace("params = {", "parmas = {");
        let err = PipelineSpec::parse("toy.toml", &text).unwrap_err();
        assert_eq!((err.loc.line, err.key.as_str()), (11, "stages.a.parmas"), "{err}");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn set_checks_names_and_types() {
        let mut spec = PipelineSpec::parse("toy.toml", TOY).unwrap();
        spec.apply_sets(&["model.layer=12".into()]).unwrap();
        assert_eq!(spec.params["model.layer"].value, Value::Int(12));
        let e = spec.apply_sets(&["model.layr=1".into()]).unwrap_err();
        assert!(
            e.message
                .contains("unknown param `model.layr`; valid params: model.layer"),
            "{e}"
        );
        let e = spec.apply_sets(&["model.layer=abc".into()]).unwrap_err();
        assert!(e.message.contains("expects an integer"), "{e}");
    }

    #[test]
    fn substitution_keeps_types_for_whole_references() {
        let look = |n: &str| (n == "x").then_some(Value::Int(3));
        assert_eq!(substitute(&Value::from("${x}"), &look).unwrap(), Value::Int(3));
        assert_eq!(
            substitute(&Value::from("l${x}.bin"), &look).unwrap(),
            Value::from("l3.bin")
        );
        assert_eq!(substitute(&Value::from("${y}"), &look).unwrap_err(), "y");
    }

    #[test]
    fn names_with_traversal_are_rejected() {
        let loc = Loc::cli("t");
        assert!(check_name("stage name", "../x", &loc, "k").is_err());
        assert!(check_name("stage name", "a/b", &loc, "k").is_err());
        assert!(check_name("stage name", "fit.pca-2", &loc, "k").is_ok());
    }

    #[test]
    fn pipeline_stage_tables_parse_and_unknown_fields_name_file_and_key() {
        let spec = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\nparams = { value = 1 }\n[stages.a.slurm]\ngres = \"gpu:1\"\ntime = \"2:00:00\"\noptions = { qos = \"long\" }\n",
        )
        .unwrap();
        let s = &spec.stages["a"].slurm;
        assert_eq!(s.gres.as_deref(), Some("gpu:1"));
        assert_eq!(s.time.as_deref(), Some("2:00:00"));
        assert_eq!(s.options["qos"], "long");
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\ngpus = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("p.toml:") && err.contains("gpus"), "{err}");
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\noptions = { array = \"1\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stages.a.slurm.options.array"), "{err}");
    }

    #[test]
    fn stage_slurm_tables_parse_nodes_per_task_and_refuse_zero() {
        let spec = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\nparams = { value = 1 }\n[stages.a.slurm]\nnodes_per_task = 8\n",
        )
        .unwrap();
        assert_eq!(spec.stages["a"].slurm.nodes_per_task, Some(8));
        let err = PipelineSpec::parse(
            "p.toml",
            "[stages.a]\nkind = \"test.const\"\n[stages.a.slurm]\nnodes_per_task = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("stages.a.slurm.nodes_per_task") && err.contains("at least 1"),
            "{err}"
        );
    }
}
