//! `plan`: for every node, is it fresh (its key is in the cache with intact outputs), stale
//! (computed before, but a param, input or the stage code changed), or missing (never
//! computed) — and why. Keys are computed here for every node whose inputs are fresh; nodes
//! downstream of work still to do get their key at run time, once their inputs exist (that is
//! what makes early cutoff work).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use axbench_cache::{Digest, IndexReader, OutputEntry, Store};
use serde::Serialize;

use crate::compile::expand::{NodeGraph, expand};
use crate::compile::graph::StageGraph;
use crate::compile::key::{KeyInput, KeyParam, node_key, static_key};
use crate::compile::spec::PipelineSpec;
use crate::error::EngineError;
use crate::stage::{LIST_FILE, ParamType, Registry};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Fresh,
    Stale,
    Missing,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Fresh => "fresh",
            NodeState::Stale => "stale",
            NodeState::Missing => "missing",
        }
    }
}

/// The plan for one node.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub state: NodeState,
    pub reason: String,
    /// Hash of kind, version, coordinate and params (inputs not included).
    pub static_key: Digest,
    /// The full key, when every input is fresh.
    pub key: Option<Digest>,
    /// Outputs, when fresh.
    pub outputs: Option<BTreeMap<String, OutputEntry>>,
    /// Params as recorded in the manifest (paths shown with their content digest).
    pub manifest_params: serde_json::Value,
}

/// A plan over the expanded graph.
pub struct Plan {
    pub graph: NodeGraph,
    pub nodes: Vec<PlannedNode>,
    pub project_dir: PathBuf,
    /// Every `Path` param read (absolute path, content digest): part of what a no-op record
    /// has to re-check ([`crate::compile::fingerprint`]).
    pub paths: Vec<(PathBuf, Digest)>,
}

/// The `plan --json` contract.
#[derive(Serialize)]
pub struct PlanJson {
    pub nodes: Vec<PlanJsonNode>,
    pub to_run: usize,
}

#[derive(Serialize)]
pub struct PlanJsonNode {
    pub id: String,
    pub stage: String,
    pub state: NodeState,
    pub reason: String,
}

impl Plan {
    /// Nodes (and pending placeholders) that a run would compute.
    pub fn to_run(&self) -> usize {
        self.nodes.iter().filter(|n| n.state != NodeState::Fresh).count() + self.graph.pending.len()
    }

    pub fn to_json(&self) -> PlanJson {
        let mut nodes: Vec<PlanJsonNode> = self
            .graph
            .nodes
            .iter()
            .zip(&self.nodes)
            .map(|(n, p)| PlanJsonNode {
                id: n.id.clone(),
                stage: n.stage.to_string(),
                state: p.state,
                reason: if p.state == NodeState::Fresh {
                    "up to date".to_string()
                } else {
                    p.reason.clone()
                },
            })
            .collect();
        nodes.extend(self.graph.pending.iter().map(|p| PlanJsonNode {
            id: p.id.clone(),
            stage: p.stage.clone(),
            state: NodeState::Missing,
            reason: p.reason.clone(),
        }));
        PlanJson {
            to_run: self.to_run(),
            nodes,
        }
    }
}

/// Resolves a `Path` param against the project dir.
pub fn resolve_path(project_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        project_dir.join(p)
    }
}

/// Plans `spec` against `store`. `lists` carries list outputs known so far and is extended
/// with those of fresh list nodes (which may let more of the pipeline expand).
pub fn plan(
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Store,
    project_dir: &Path,
    lists: &mut HashMap<String, Vec<Value>>,
) -> Result<Plan, EngineError> {
    plan_with(spec, registry, store, project_dir, lists, false)
}

/// [`plan`] for showing, not running: a node whose `Path` param names something absent here is listed as missing
/// (with the path as the reason) instead of failing the plan, so `axbench plan` works on a setting whose weights or
/// data live on another machine (configs/paper/*.toml). A run still refuses such a node ([`plan`] is strict).
pub fn plan_preview(
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Store,
    project_dir: &Path,
    lists: &mut HashMap<String, Vec<Value>>,
) -> Result<Plan, EngineError> {
    plan_with(spec, registry, store, project_dir, lists, true)
}

fn plan_with(
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Store,
    project_dir: &Path,
    lists: &mut HashMap<String, Vec<Value>>,
    unreadable_paths_ok: bool,
) -> Result<Plan, EngineError> {
    let sg = StageGraph::build(spec, registry)?;
    let reader = store.reader();
    let mut path_memo: HashMap<PathBuf, Digest> = HashMap::new();
    loop {
        let graph = expand(spec, registry, &sg, lists)?;
        let nodes = plan_nodes(
            &graph,
            registry,
            store,
            reader.as_ref(),
            project_dir,
            &mut path_memo,
            unreadable_paths_ok,
        )?;
        let mut learned = false;
        if !graph.pending.is_empty() {
            for (n, p) in graph.nodes.iter().zip(&nodes) {
                if n.list_output
                    && p.state == NodeState::Fresh
                    && !lists.contains_key(&n.id)
                    && let Some(items) = read_list(store, p.outputs.as_ref().unwrap())
                {
                    lists.insert(n.id.clone(), items);
                    learned = true;
                }
            }
        }
        if !learned {
            let mut paths: Vec<(PathBuf, Digest)> = path_memo.into_iter().collect();
            paths.sort();
            return Ok(Plan {
                graph,
                nodes,
                project_dir: project_dir.to_path_buf(),
                paths,
            });
        }
    }
}

/// Reads a list node's `list.json` from the store.
pub fn read_list(store: &Store, outputs: &BTreeMap<String, OutputEntry>) -> Option<Vec<Value>> {
    let e = outputs.get(LIST_FILE)?;
    let bytes = std::fs::read(store.blob_path(&e.digest)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match Value::from_json(&v) {
        Value::List(l) => Some(l),
        _ => None,
    }
}

/// Static key and manifest params of a node: `Path` params by content digest.
pub fn node_static_key(
    node: &crate::compile::expand::Node,
    registry: &Registry,
    store: &Store,
    reader: Option<&IndexReader>,
    project_dir: &Path,
    path_memo: &mut HashMap<PathBuf, Digest>,
) -> Result<(Digest, serde_json::Value), EngineError> {
    let stage = registry.get(&node.kind).expect("expand checked kinds");
    let mut kp = BTreeMap::new();
    let mut shown = serde_json::Map::new();
    for p in stage.params() {
        let v = &node.params[p.name];
        // An empty `Path` param means "not set" (an optional file, e.g. an SAE only some methods read): it is keyed
        // as the empty string and nothing is read — resolving "" would hash the whole project directory.
        if p.ty == ParamType::Path && !v.as_str().unwrap_or_default().is_empty() {
            let s = v.as_str().unwrap_or_default();
            let abs = resolve_path(project_dir, s);
            let d = match path_memo.get(&abs) {
                Some(d) => *d,
                None => {
                    let d = store.path_digest(reader, &abs).map_err(|e| EngineError::PathParam {
                        node: node.id.clone(),
                        param: p.name.to_string(),
                        path: abs.clone(),
                        error: e.to_string(),
                    })?;
                    path_memo.insert(abs.clone(), d);
                    d
                }
            };
            kp.insert(p.name.to_string(), KeyParam::Content(d));
            shown.insert(
                p.name.to_string(),
                serde_json::json!({ "path": s, "content": d.to_hex() }),
            );
        } else {
            kp.insert(p.name.to_string(), KeyParam::Value(v.normalized()));
            shown.insert(p.name.to_string(), v.normalized().to_json());
        }
    }
    Ok((
        static_key(&node.kind, node.version, &node.coord, &kp),
        serde_json::Value::Object(shown),
    ))
}

fn plan_nodes(
    graph: &NodeGraph,
    registry: &Registry,
    store: &Store,
    reader: Option<&IndexReader>,
    project_dir: &Path,
    path_memo: &mut HashMap<PathBuf, Digest>,
    unreadable_paths_ok: bool,
) -> Result<Vec<PlannedNode>, EngineError> {
    let mut planned: Vec<PlannedNode> = Vec::with_capacity(graph.nodes.len());
    // Output digests by file name of fresh nodes, for key computation.
    let mut out_digests: Vec<Option<BTreeMap<String, Digest>>> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let (sk, manifest_params) = match node_static_key(node, registry, store, reader, project_dir, path_memo) {
            Ok(k) => k,
            // Preview only: the node cannot be keyed, so it cannot be fresh; nothing downstream gets a key either.
            Err(EngineError::PathParam { param, error, .. }) if unreadable_paths_ok => {
                let reason = format!("param `{param}`: {error}: not on this machine (a run needs it)");
                planned.push(PlannedNode {
                    state: NodeState::Missing,
                    reason,
                    static_key: Digest([0; 32]),
                    key: None,
                    outputs: None,
                    manifest_params: serde_json::Value::Null,
                });
                out_digests.push(None);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut key_inputs = Vec::new();
        let mut unready: Option<(String, String)> = None;
        for (iname, ups) in &node.inputs {
            for &u in ups {
                match &out_digests[u] {
                    Some(outs) => key_inputs.push(KeyInput {
                        name: iname.as_ref(),
                        coord: &graph.nodes[u].coord,
                        outputs: outs,
                    }),
                    None => {
                        if unready.is_none() {
                            unready = Some((iname.to_string(), graph.nodes[u].id.clone()));
                        }
                    }
                }
            }
        }
        let mut p = PlannedNode {
            state: NodeState::Missing,
            reason: String::new(),
            static_key: sk,
            key: None,
            outputs: None,
            manifest_params,
        };
        // The node's previous key is only needed to explain a change, so fresh nodes (the
        // whole of a no-op plan) skip that lookup.
        let latest_of = || store.latest(reader, &node.id);
        if let Some((iname, up)) = unready {
            let latest = latest_of();
            p.state = if latest.is_some() {
                NodeState::Stale
            } else {
                NodeState::Missing
            };
            p.reason = if latest.is_some() {
                format!("input `{iname}` ({up}) will be recomputed")
            } else {
                "never computed".to_string()
            };
            planned.push(p);
            out_digests.push(None);
            continue;
        }
        let key = node_key(&sk, &key_inputs);
        p.key = Some(key);
        let entry = store.lookup(reader, &key)?;
        match entry {
            Some(e) => {
                let broken: Vec<&String> = e
                    .outputs
                    .iter()
                    .filter(|(_, o)| !store.check_blob_with(reader, &o.digest))
                    .map(|(n, _)| n)
                    .collect();
                if broken.is_empty() {
                    p.state = NodeState::Fresh;
                    // Only needed to build jobs and explain changes: not for fresh nodes.
                    p.manifest_params = serde_json::Value::Null;
                    out_digests.push(Some(e.outputs.iter().map(|(n, o)| (n.clone(), o.digest)).collect()));
                    p.outputs = Some(e.outputs);
                } else {
                    p.state = NodeState::Stale;
                    p.reason = format!(
                        "output `{}` is missing or corrupted",
                        broken.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("`, `")
                    );
                    out_digests.push(None);
                }
            }
            None => {
                match latest_of() {
                    Some(prev) => {
                        p.state = NodeState::Stale;
                        p.reason = explain(store, &prev, node, &p.manifest_params, &key_inputs, graph);
                    }
                    None => {
                        p.state = NodeState::Missing;
                        p.reason = "never computed".to_string();
                    }
                }
                out_digests.push(None);
            }
        }
        planned.push(p);
    }
    Ok(planned)
}

/// Why a node's key differs from the one it had last time: the params, inputs or code
/// version that changed.
fn explain(
    store: &Store,
    prev: &Digest,
    node: &crate::compile::expand::Node,
    params: &serde_json::Value,
    inputs: &[KeyInput<'_>],
    graph: &NodeGraph,
) -> String {
    let Ok(Some(m)) = store.read_manifest(prev) else {
        return "key changed (previous manifest unavailable)".to_string();
    };
    let mut why = Vec::new();
    if m.stage_version != node.version {
        why.push(format!(
            "stage `{}` code version {} -> {}",
            node.kind, m.stage_version, node.version
        ));
    }
    if m.stage != *node.kind {
        why.push(format!("stage kind {} -> {}", m.stage, node.kind));
    }
    let empty = serde_json::Map::new();
    let old = m.params.as_object().unwrap_or(&empty);
    let new = params.as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    for n in names {
        let (a, b) = (old.get(n), new.get(n));
        if a != b {
            let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into());
            why.push(format!("param `{n}` changed: {} -> {}", show(a), show(b)));
        }
    }
    // Inputs: compare the digests each input name saw.
    let mut cur: BTreeMap<&str, Vec<&BTreeMap<String, Digest>>> = BTreeMap::new();
    for i in inputs {
        cur.entry(i.name).or_default().push(i.outputs);
    }
    let mut prev_in: BTreeMap<&str, Vec<&BTreeMap<String, Digest>>> = BTreeMap::new();
    for i in &m.inputs {
        prev_in.entry(i.name.as_str()).or_default().push(&i.outputs);
    }
    for (name, ups) in &node.inputs {
        if cur.get(name.as_ref()) != prev_in.get(name.as_ref()) {
            let from: Vec<&str> = ups.iter().take(3).map(|&u| graph.nodes[u].id.as_str()).collect();
            let more = if ups.len() > 3 {
                format!(" and {} more", ups.len() - 3)
            } else {
                String::new()
            };
            why.push(format!("input `{name}` changed ({}{more})", from.join(", ")));
        }
    }
    if why.is_empty() {
        why.push("key changed".to_string());
    }
    why.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PIPE: &str = r#"
[params.data]
default = "data.txt"
description = "A data file"

[params.a]
default = 1
description = "Read by `c`"

[params.unused]
default = 1
description = "Read by nobody"

[stages.f]
kind = "test.file"
params = { path = "${data}" }

[stages.c]
kind = "test.add"
inputs = { f = "f" }
params = { offset = "${a}" }
"#;

    /// Keys of every node for a pipeline in `project` with `sets` applied.
    fn keys(project: &Path, cache: &Path, sets: &[String]) -> Vec<(String, Option<Digest>, Digest)> {
        let registry = crate::toy::register(Registry::new());
        let mut spec = PipelineSpec::parse("p.toml", PIPE).unwrap();
        spec.apply_sets(sets).unwrap();
        let store = Store::open(cache).unwrap();
        let p = plan(&spec, &registry, &store, project, &mut HashMap::new()).unwrap();
        p.graph
            .nodes
            .iter()
            .zip(&p.nodes)
            .map(|(n, pn)| (n.id.clone(), pn.key, pn.static_key))
            .collect()
    }

    fn project_with(content: &[u8]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("data.txt"), content).unwrap();
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        /// Same content and params in two different project dirs (think: two machines) with
        /// two different caches give identical keys: no absolute path reaches a key.
        #[test]
        fn keys_are_stable_across_dirs_and_machines(content in proptest::collection::vec(any::<u8>(), 0..256), a in -1000i64..1000) {
            let (p1, p2) = (project_with(&content), project_with(&content));
            let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let sets = vec![format!("a={a}")];
            let k1 = keys(p1.path(), c1.path(), &sets);
            prop_assert_eq!(&k1, &keys(p2.path(), c2.path(), &sets));
            // And across runs on the same cache (stat cache path).
            prop_assert_eq!(&k1, &keys(p1.path(), c1.path(), &sets));
        }

        /// A node's key changes iff a param it reads changes: `c` reads `a`, nobody reads
        /// `unused`, `f` reads the data file's content.
        #[test]
        fn keys_change_iff_a_read_param_changes(a1 in -50i64..50, a2 in -50i64..50, u in -50i64..50) {
            let proj = project_with(b"hello");
            let cache = tempfile::tempdir().unwrap();
            let k1 = keys(proj.path(), cache.path(), &[format!("a={a1}")]);
            let k2 = keys(proj.path(), cache.path(), &[format!("a={a2}"), format!("unused={u}")]);
            prop_assert_eq!(k1[0].2, k2[0].2, "f does not read a");
            prop_assert_eq!(k1[1].2 == k2[1].2, a1 == a2, "c reads a");
        }
    }

    #[test]
    fn file_params_hash_content_not_path() {
        let cache = tempfile::tempdir().unwrap();
        let proj = project_with(b"one");
        let k1 = keys(proj.path(), cache.path(), &[]);
        std::fs::write(proj.path().join("data.txt"), b"two").unwrap();
        let k2 = keys(proj.path(), cache.path(), &[]);
        assert_ne!(k1[0].2, k2[0].2, "content changed");
        std::fs::write(proj.path().join("other.txt"), b"two").unwrap();
        let k3 = keys(proj.path(), cache.path(), &["data=\"other.txt\"".to_string()]);
        assert_eq!(k2[0].2, k3[0].2, "same content under another name");
    }
}
