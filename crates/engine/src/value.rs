//! Param and coordinate values: a small JSON-like type with a deterministic order and a
//! canonical number form, so hashing never depends on how a value was written.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A param value, fan-out coordinate value or list element.
///
/// Tables are `BTreeMap`s so iteration (and therefore hashing) is sorted. Floats that hold an
/// integer (`9.0`) compare and hash as that integer ([`Value::normalized`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Table(BTreeMap<String, Value>),
}

impl Value {
    /// Human name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Table(_) => "table",
        }
    }

    /// Canonical form: integral floats become integers, `-0.0` becomes `0`, recursively.
    pub fn normalized(&self) -> Value {
        match self {
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15 => Value::Int(*f as i64),
            Value::List(v) => Value::List(v.iter().map(Value::normalized).collect()),
            Value::Table(t) => Value::Table(t.iter().map(|(k, v)| (k.clone(), v.normalized())).collect()),
            v => v.clone(),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Converts a parsed TOML value. Datetimes become strings (TOML's own spelling).
    pub fn from_toml(v: &toml::Value) -> Value {
        match v {
            toml::Value::String(s) => Value::Str(s.clone()),
            toml::Value::Integer(i) => Value::Int(*i),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Datetime(d) => Value::Str(d.to_string()),
            toml::Value::Array(a) => Value::List(a.iter().map(Value::from_toml).collect()),
            toml::Value::Table(t) => Value::Table(t.iter().map(|(k, v)| (k.clone(), Value::from_toml(v))).collect()),
        }
    }

    /// Converts JSON (e.g. a `list.json` written by a list-producing stage). `null` becomes
    /// an empty string: TOML has no null, and lists of ids never hold one.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Str(String::new()),
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::Table(o.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    /// JSON with sorted table keys.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Table(t) => serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Parses a `--set` value: TOML syntax if it parses (`9`, `0.5`, `true`, `[1, 2]`,
    /// `"quoted"`), otherwise the raw text as a string (so `--set model.path=m.gguf` works).
    pub fn parse_cli(text: &str) -> Value {
        let doc = format!("v = {text}");
        match doc.parse::<toml::Table>() {
            Ok(t) => t
                .get("v")
                .map(Value::from_toml)
                .unwrap_or_else(|| Value::Str(text.to_string())),
            Err(_) => Value::Str(text.to_string()),
        }
    }
}

impl fmt::Display for Value {
    /// Strings print bare (this is how they appear in node ids and interpolated params);
    /// everything else prints as JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A fan-out coordinate: dimension name → value, sorted by dimension.
pub type Coord = BTreeMap<String, Value>;

/// `stage[dim=value,…]`, or just `stage` without fan-out.
pub fn node_id(stage: &str, coord: &Coord) -> String {
    if coord.is_empty() {
        return stage.to_string();
    }
    let mut s = String::with_capacity(stage.len() + 16 * coord.len());
    s.push_str(stage);
    s.push('[');
    for (i, (k, v)) in coord.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        use std::fmt::Write;
        // Table elements (`{ name = "lora", lr = 1e-3 }`) are named by their `name` field.
        match v {
            Value::Table(t) if t.contains_key("name") => {
                let _ = write!(s, "{}", t["name"]);
            }
            _ => {
                let _ = write!(s, "{v}");
            }
        }
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_parse_as_toml_or_fall_back_to_strings() {
        assert_eq!(Value::parse_cli("9"), Value::Int(9));
        assert_eq!(Value::parse_cli("0.5"), Value::Float(0.5));
        assert_eq!(Value::parse_cli("true"), Value::Bool(true));
        assert_eq!(
            Value::parse_cli("[1, 2]"),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(Value::parse_cli("models/m.gguf"), Value::Str("models/m.gguf".into()));
        assert_eq!(Value::parse_cli("\"9\""), Value::Str("9".into()));
    }

    #[test]
    fn integral_floats_normalize_to_integers() {
        assert_eq!(Value::Float(9.0).normalized(), Value::Int(9));
        assert_eq!(Value::Float(-0.0).normalized(), Value::Int(0));
        assert_eq!(Value::Float(0.5).normalized(), Value::Float(0.5));
    }

    #[test]
    fn node_ids_list_sorted_dims() {
        let mut c = Coord::new();
        c.insert("method".into(), "pca".into());
        c.insert("concept".into(), Value::Int(3));
        assert_eq!(node_id("fit", &c), "fit[concept=3,method=pca]");
        assert_eq!(node_id("fit", &Coord::new()), "fit");
    }
}
