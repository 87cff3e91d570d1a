//! Toy stages: tiny, deterministic, fast. They exercise every engine feature (params, inputs,
//! gathers, list outputs, failures, cancellation, resources) and are what the integration
//! tests, the reliability tests and the benchmark run. The binary registers them too, so
//! `axbench run tests/fixtures/engine/toy.toml` works out of the box.

use std::time::Duration;

use crate::stage::{OutputKind, ParamSpec, ParamType, Registry, Stage, StageContext, StageError};
use crate::value::Value;

/// A registry with every toy stage.
pub fn register(reg: Registry) -> Registry {
    reg.register(Box::new(Const))
        .register(Box::new(Add))
        .register(Box::new(Concat))
        .register(Box::new(Sleep))
        .register(Box::new(Fail))
        .register(Box::new(List))
        .register(Box::new(FileSize))
        .register(Box::new(Tally))
}

fn read_value(path: &std::path::Path) -> Result<Value, StageError> {
    let bytes = std::fs::read(path).map_err(|source| StageError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
    Ok(Value::from_json(&v))
}

fn write_value(ctx: &StageContext, v: &Value) -> Result<(), StageError> {
    ctx.write_output("value.json", v.to_json().to_string().as_bytes())
}

/// Every input artifact's `value.json`, in input-name then node order.
fn input_values(ctx: &StageContext) -> Result<Vec<Value>, StageError> {
    let mut out = Vec::new();
    for name in ctx.input_names() {
        for a in ctx.inputs(name)? {
            out.push(read_value(a.file("value.json")?)?);
        }
    }
    Ok(out)
}

/// `test.const`: writes its `value` param to `value.json`.
pub struct Const;
impl Stage for Const {
    fn kind(&self) -> &str {
        "test.const"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::required("value", ParamType::Any, "the value to output")]
    }
    fn doc(&self) -> &str {
        "Outputs a constant (value.json)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let v = ctx.param("value")?.clone();
        write_value(ctx, &v)
    }
}

/// `test.add`: sums the numbers of all inputs plus `offset`.
pub struct Add;
impl Stage for Add {
    fn kind(&self) -> &str {
        "test.add"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional("offset", ParamType::Float, 0.0, "added to the sum")]
    }
    fn doc(&self) -> &str {
        "Sums value.json of every input, plus offset"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let mut sum = ctx.param_f64("offset")?;
        for v in input_values(ctx)? {
            sum += v
                .as_f64()
                .ok_or_else(|| StageError::msg(format!("input value {v} is not a number")))?;
        }
        write_value(ctx, &Value::Float(sum).normalized())
    }
}

/// `test.concat`: joins the inputs' values as text.
pub struct Concat;
impl Stage for Concat {
    fn kind(&self) -> &str {
        "test.concat"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional("sep", ParamType::Str, ",", "separator")]
    }
    fn doc(&self) -> &str {
        "Joins value.json of every input as text"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let sep = ctx.param_str("sep")?.to_string();
        let parts: Vec<String> = input_values(ctx)?.iter().map(|v| v.to_string()).collect();
        write_value(ctx, &Value::Str(parts.join(&sep)))
    }
}

/// `test.sleep`: sleeps `ms` milliseconds (polling cancellation), then outputs `value`.
pub struct Sleep;
impl Stage for Sleep {
    fn kind(&self) -> &str {
        "test.sleep"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("ms", ParamType::Int, 100, "milliseconds to sleep"),
            ParamSpec::optional("value", ParamType::Any, 0, "the value to output"),
        ]
    }
    fn doc(&self) -> &str {
        "Sleeps, then outputs a value (for scheduling tests)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let ms = ctx.param_i64("ms")?.max(0) as u64;
        let steps = ms.div_ceil(10).max(1);
        ctx.progress().set_length(steps);
        for _ in 0..steps {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(ms.min(10)));
            ctx.progress().inc(1);
        }
        let v = ctx.param("value")?.clone();
        ctx.log(format!("slept {ms} ms"));
        write_value(ctx, &v)
    }
}

/// `test.fail`: always fails with `message`.
pub struct Fail;
impl Stage for Fail {
    fn kind(&self) -> &str {
        "test.fail"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::optional(
            "message",
            ParamType::Str,
            "test.fail always fails",
            "the error",
        )]
    }
    fn doc(&self) -> &str {
        "Always fails (for failure-handling tests)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        ctx.log("about to fail");
        Err(StageError::msg(ctx.param_str("message")?.to_string()))
    }
}

/// `test.list`: outputs a list (`items`, or `0..n`) that downstream stages fan out over.
pub struct List;
impl Stage for List {
    fn kind(&self) -> &str {
        "test.list"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional("items", ParamType::List, Value::List(vec![]), "the list"),
            ParamSpec::optional("n", ParamType::Int, 0, "if items is empty: 0..n"),
        ]
    }
    fn output_kind(&self) -> OutputKind {
        OutputKind::List
    }
    fn doc(&self) -> &str {
        "Outputs a list (list.json) to fan out over"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let items = ctx.param("items")?.as_list().unwrap_or_default().to_vec();
        let items = if items.is_empty() {
            (0..ctx.param_i64("n")?).map(Value::Int).collect()
        } else {
            items
        };
        ctx.write_list(&items)?;
        write_value(ctx, &Value::Int(items.len() as i64))
    }
}

/// `test.file`: outputs the byte size of a file or directory param (hashed by content).
pub struct FileSize;
impl Stage for FileSize {
    fn kind(&self) -> &str {
        "test.file"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::required("path", ParamType::Path, "a file or directory")]
    }
    fn doc(&self) -> &str {
        "Outputs the size in bytes of a file or directory"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        fn size(p: &std::path::Path) -> std::io::Result<u64> {
            let m = std::fs::metadata(p)?;
            if m.is_dir() {
                let mut t = 0;
                for e in std::fs::read_dir(p)? {
                    t += size(&e?.path())?;
                }
                Ok(t)
            } else {
                Ok(m.len())
            }
        }
        let p = ctx.param_path("path")?;
        let n = size(&p).map_err(|source| StageError::Io {
            context: p.display().to_string(),
            source,
        })?;
        write_value(ctx, &Value::Int(n as i64))
    }
}

/// `test.tally`: appends its node id to the file `tally` names (a side effect outside the
/// cache), sleeps `ms`, then outputs `value`. Counting the lines tells how many times each node
/// really ran — what the Slurm and kill-and-rerun tests check ("nothing runs twice"). `tally` is
/// a string, not a path param, so the file growing does not change the node's key.
pub struct Tally;
impl Stage for Tally {
    fn kind(&self) -> &str {
        "test.tally"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "tally",
                ParamType::Str,
                "file to append this node's id to, once per run of the stage",
            ),
            ParamSpec::optional("ms", ParamType::Int, 0, "milliseconds to sleep after appending"),
            ParamSpec::optional("value", ParamType::Any, 0, "the value to output"),
        ]
    }
    fn doc(&self) -> &str {
        "Appends its node id to a file, sleeps, outputs a value (counts real executions in tests)"
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        use std::io::Write;
        let path = std::path::PathBuf::from(ctx.param_str("tally")?);
        let line = format!("{}\n", ctx.node());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| StageError::Io {
                context: path.display().to_string(),
                source,
            })?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| StageError::Io {
                context: path.display().to_string(),
                source,
            })?;
        let ms = ctx.param_i64("ms")?.max(0) as u64;
        for _ in 0..ms.div_ceil(10) {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(ms.min(10)));
        }
        let v = ctx.param("value")?.clone();
        write_value(ctx, &v)
    }
}
