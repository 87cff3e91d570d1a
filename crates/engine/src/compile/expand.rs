//! `expand`: stages × fan-out → nodes. A node is a stage at one coordinate of its fan-out
//! dimensions (cartesian product of literal lists, list params, and lists read from upstream
//! list outputs once those exist). Params are substituted and type-checked per node, and
//! inputs are bound by matching the dimensions two stages share:
//!
//! - upstream dims ⊆ downstream dims: one artifact per node (with broadcast where the
//!   downstream stage has more dims);
//! - upstream has dims the downstream stage lacks: the input gathers every matching upstream
//!   node (e.g. an aggregate over all concepts).
//!
//! A dynamic fan-out whose upstream list is not computed yet leaves the stage (and everything
//! reading it) *pending*: it is expanded in a later wave of the same run.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::compile::graph::StageGraph;
use crate::compile::spec::{Dim, Loc, PipelineSpec, SpecError, refs_in, substitute};
use crate::stage::{OutputKind, Registry};
use crate::value::{Coord, Value, node_id};

/// One unit of work: a stage at one fan-out coordinate.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    /// Stage name in the pipeline (shared by all nodes of the stage).
    pub stage: Arc<str>,
    /// Stage kind in the registry.
    pub kind: Arc<str>,
    pub version: u32,
    pub coord: Coord,
    /// Every param the stage declares, resolved and type-checked (defaults filled in).
    /// Shared between the nodes of a stage whose params do not depend on the coordinate.
    pub params: Arc<BTreeMap<String, Value>>,
    /// Input name → upstream node indices (sorted by input name, then node order).
    pub inputs: Vec<(Arc<str>, Vec<usize>)>,
    pub resources: BTreeMap<String, u32>,
    pub list_output: bool,
}

/// Part of the pipeline that cannot be expanded yet.
#[derive(Clone, Debug)]
pub struct Pending {
    /// A placeholder id, e.g. `fit[concept=*]`.
    pub id: String,
    pub stage: String,
    pub reason: String,
}

/// The expanded node graph. Node indices are topological: inputs come first.
#[derive(Debug, Default)]
pub struct NodeGraph {
    pub nodes: Vec<Node>,
    pub pending: Vec<Pending>,
}

/// One input of a stage: its name, the dims it shares with the upstream stage, and the
/// upstream nodes grouped by their values on those dims.
type InputTable = (String, Vec<String>, HashMap<String, Vec<usize>>);

/// Whether any param value of a stage refers to one of its fan-out dimensions.
fn params_use_dims(values: &[&Value], dims: &[&String]) -> bool {
    fn walk(v: &Value, dims: &[&String]) -> bool {
        match v {
            Value::Str(s) => refs_in(s).iter().any(|r| {
                let base = r.split_once('.').map(|(b, _)| b).unwrap_or(r);
                dims.iter().any(|d| d.as_str() == *r || d.as_str() == base)
            }),
            Value::List(l) => l.iter().any(|x| walk(x, dims)),
            Value::Table(t) => t.values().any(|x| walk(x, dims)),
            _ => false,
        }
    }
    values.iter().any(|v| walk(v, dims))
}

/// [`Stage::validate_param`](crate::Stage::validate_param) for a stage left pending (its fan-out waits on an upstream
/// list), so a bad value fails the plan on a cold cache too: each param whose value resolves from the pipeline params
/// alone, or from them and one literal or list-param dim, is checked for every value of that dim. Params that need a
/// pending dim are checked once their nodes expand.
fn validate_pending(
    spec: &PipelineSpec,
    sname: &str,
    stage: &dyn crate::Stage,
    declared: &[crate::ParamSpec],
    params: &HashMap<&str, &Value>,
) -> Result<(), SpecError> {
    let s = &spec.stages[sname];
    let mut scopes: Vec<Coord> = vec![Coord::new()];
    for (dim, d) in &s.foreach {
        let vals = match &d.value {
            Dim::Values(v) => v.clone(),
            Dim::Param(p) => params[p.as_str()].as_list().unwrap_or_default().to_vec(),
            Dim::From(_) => continue,
        };
        scopes.extend(vals.into_iter().map(|v| Coord::from([(dim.clone(), v)])));
    }
    for p in declared {
        let Some(raw) = s.params.get(p.name) else { continue };
        for scope in &scopes {
            let lookup = |name: &str| -> Option<Value> {
                scope
                    .get(name)
                    .cloned()
                    .or_else(|| params.get(name).map(|v| (*v).clone()))
            };
            let Ok(v) = substitute(&raw.value, &lookup) else {
                continue;
            };
            let Some(v) = p.ty.coerce(&v) else { continue };
            stage
                .validate_param(p.name, &v)
                .map_err(|m| SpecError::new(&raw.loc, format!("stages.{sname}.params.{}", p.name), m))?;
        }
    }
    Ok(())
}

/// Expands `spec`. `lists` holds the known list outputs (node id → items) of list stages.
pub fn expand(
    spec: &PipelineSpec,
    registry: &Registry,
    graph: &StageGraph,
    lists: &HashMap<String, Vec<Value>>,
) -> Result<NodeGraph, SpecError> {
    let mut out = NodeGraph::default();
    // Duplicate-id detection by 64-bit hash (ids are compared on a hash match).
    let id_hasher = std::collections::hash_map::RandomState::new();
    let mut seen_ids: HashMap<u64, usize> = HashMap::new();
    // stage → indices of its nodes; stage → whether any part of it is pending.
    let mut stage_nodes: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut stage_pending: HashMap<&str, bool> = HashMap::new();
    let params: HashMap<&str, &Value> = spec.params.iter().map(|(k, d)| (k.as_str(), &d.value)).collect();
    check_static_size(spec, graph, &params)?;

    for sname in &graph.order {
        let s = &spec.stages[sname];
        let stage = registry.get(&s.kind.value).expect("graph checked kinds");
        let declared = stage.params();
        let dims: Vec<&String> = s.foreach.keys().collect();

        // Waiting on anything upstream that is pending?
        let waits_on = s
            .inputs
            .values()
            .map(|u| u.value.as_str())
            .chain(s.foreach.values().filter_map(|d| match &d.value {
                Dim::From(u) => Some(u.as_str()),
                _ => None,
            }))
            .find(|u| stage_pending.get(u).copied().unwrap_or(false));
        if let Some(u) = waits_on {
            validate_pending(spec, sname, stage.as_ref(), &declared, &params)?;
            out.pending.push(Pending {
                id: format!("{sname}[*]"),
                stage: sname.clone(),
                reason: format!("waits for `{u}` to be expanded"),
            });
            stage_pending.insert(sname, true);
            continue;
        }

        // Coordinates: cartesian product over dims in name order.
        let mut coords: Vec<Coord> = vec![Coord::new()];
        let mut pending_here = false;
        for dim in &dims {
            let d = &s.foreach[*dim];
            let key = format!("stages.{sname}.foreach.{dim}");
            let mut next = Vec::new();
            match &d.value {
                Dim::Values(_) | Dim::Param(_) => {
                    let vals = match &d.value {
                        Dim::Values(v) => v.clone(),
                        Dim::Param(p) => params[p.as_str()].as_list().unwrap_or_default().to_vec(),
                        Dim::From(_) => unreachable!(),
                    };
                    check_size(spec, &out, coords.len().saturating_mul(vals.len()), &d.loc, &key)?;
                    for c in &coords {
                        for v in &vals {
                            let mut c = c.clone();
                            c.insert((*dim).clone(), v.clone());
                            next.push(c);
                        }
                    }
                }
                Dim::From(up) => {
                    let up_stage = &spec.stages[up];
                    let up_dims: Vec<&String> = up_stage.foreach.keys().collect();
                    for c in &coords {
                        // The upstream node whose coordinate agrees with ours on its dims.
                        let matches: Vec<usize> = stage_nodes
                            .get(up.as_str())
                            .map(|v| {
                                v.iter()
                                    .copied()
                                    .filter(|&i| {
                                        up_dims
                                            .iter()
                                            .all(|ud| c.get(*ud).is_none_or(|x| out.nodes[i].coord.get(*ud) == Some(x)))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if matches.len() > 1 {
                            return Err(SpecError::new(
                                &d.loc,
                                key,
                                format!(
                                    "`{up}` fans out over {} which `{sname}` does not, so the list to fan out over is ambiguous; add those dims to `{sname}`",
                                    up_dims.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                                ),
                            ));
                        }
                        let Some(&ui) = matches.first() else { continue };
                        match lists.get(&out.nodes[ui].id) {
                            Some(items) => {
                                check_size(spec, &out, next.len().saturating_add(items.len()), &d.loc, &key)?;
                                for v in items {
                                    let mut c = c.clone();
                                    c.insert((*dim).clone(), v.clone());
                                    next.push(c);
                                }
                            }
                            None => pending_here = true,
                        }
                    }
                }
            }
            coords = next;
        }
        if pending_here {
            validate_pending(spec, sname, stage.as_ref(), &declared, &params)?;
            let from: Vec<String> = s
                .foreach
                .values()
                .filter_map(|d| {
                    if let Dim::From(u) = &d.value {
                        Some(u.clone())
                    } else {
                        None
                    }
                })
                .collect();
            out.pending.push(Pending {
                id: format!("{sname}[*]"),
                stage: sname.clone(),
                reason: format!("fan-out waits for the list of `{}`", from.join("`, `")),
            });
            stage_pending.insert(sname, true);
            continue;
        }
        check_size(spec, &out, coords.len(), &s.loc, &format!("stages.{sname}"))?;

        // Input matching tables: for each input, upstream nodes grouped by the shared dims.
        let mut input_tables: Vec<InputTable> = Vec::new();
        for (iname, up) in &s.inputs {
            let up_stage = &spec.stages[&up.value];
            let shared: Vec<String> = up_stage
                .foreach
                .keys()
                .filter(|d| s.foreach.contains_key(*d))
                .cloned()
                .collect();
            let mut table: HashMap<String, Vec<usize>> = HashMap::new();
            for &i in stage_nodes.get(up.value.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                table.entry(project(&out.nodes[i].coord, &shared)).or_default().push(i);
            }
            input_tables.push((iname.clone(), shared, table));
        }

        let mut resources: BTreeMap<String, u32> =
            stage.resources().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &s.resources {
            resources.insert(k.clone(), v.value);
        }
        let list_output = stage.output_kind() == OutputKind::List;
        let stage_name: Arc<str> = Arc::from(sname.as_str());
        let kind: Arc<str> = Arc::from(s.kind.value.as_str());
        let input_names: Vec<Arc<str>> = input_tables.iter().map(|(n, _, _)| Arc::from(n.as_str())).collect();
        let raw_values: Vec<&Value> = s.params.values().map(|v| &v.value).collect();
        let per_node_params = params_use_dims(&raw_values, &dims);
        let mut shared_params: Option<Arc<BTreeMap<String, Value>>> = None;

        let mut mine = Vec::with_capacity(coords.len());
        for coord in coords {
            // `${dim}`, `${param}`, or `${dim.field}` for table-valued dimensions (e.g.
            // `method = [{ name = "lora", lr = 1e-3 }]` with `lr = "${method.lr}"`).
            let lookup = |name: &str| -> Option<Value> {
                coord
                    .get(name)
                    .cloned()
                    .or_else(|| params.get(name).map(|v| (*v).clone()))
                    .or_else(|| {
                        let (d, f) = name.split_once('.')?;
                        match coord.get(d)? {
                            Value::Table(t) => t.get(f).cloned(),
                            _ => None,
                        }
                    })
            };
            let resolved = match (&shared_params, per_node_params) {
                (Some(shared), false) => shared.clone(),
                _ => {
                    let mut resolved = BTreeMap::new();
                    for p in &declared {
                        let key = format!("stages.{sname}.params.{}", p.name);
                        let (raw, loc) = match s.params.get(p.name) {
                            Some(v) => (v.value.clone(), v.loc.clone()),
                            None => match &p.default {
                                Some(d) => (d.clone(), s.loc.clone()),
                                None => {
                                    return Err(SpecError::new(
                                        &s.loc,
                                        key,
                                        format!(
                                            "stage kind `{}` needs param `{}` ({}): {}",
                                            s.kind.value,
                                            p.name,
                                            p.ty.name(),
                                            p.doc
                                        ),
                                    ));
                                }
                            },
                        };
                        let v = substitute(&raw, &lookup).map_err(|missing| {
                            SpecError::new(
                                &loc,
                                key.clone(),
                                format!(
                                    "unknown reference `${{{missing}}}`; valid params: {}{}",
                                    spec.param_list(),
                                    dims_hint(&dims)
                                ),
                            )
                        })?;
                        let v = p.ty.coerce(&v).ok_or_else(|| {
                            SpecError::new(
                                &loc,
                                key.clone(),
                                format!("expected {}, got {} {}", p.ty.name(), v.type_name(), v.to_json()),
                            )
                        })?;
                        stage
                            .validate_param(p.name, &v)
                            .map_err(|m| SpecError::new(&loc, key.clone(), m))?;
                        resolved.insert(p.name.to_string(), v);
                    }
                    let resolved = Arc::new(resolved);
                    if !per_node_params {
                        shared_params = Some(resolved.clone());
                    }
                    resolved
                }
            };
            // Table elements are identified by their `name`: their other fields reach the stage
            // only through the params that read them, so only those params enter the key.
            let coord: Coord = coord
                .into_iter()
                .map(|(k, v)| match v {
                    Value::Table(t) if t.contains_key("name") => (k, t["name"].clone()),
                    v => (k, v),
                })
                .collect();
            let mut inputs = Vec::with_capacity(input_tables.len());
            for (ii, (iname, shared, table)) in input_tables.iter().enumerate() {
                let ups = table.get(&project(&coord, shared)).cloned().unwrap_or_default();
                let up = &s.inputs[iname];
                let up_dims = spec.stages[&up.value].foreach.len();
                // One-to-one inputs (upstream dims ⊆ ours) must find their node.
                if ups.is_empty() && !table.is_empty() && up_dims == shared.len() {
                    return Err(SpecError::new(
                        &up.loc,
                        format!("stages.{sname}.inputs.{iname}"),
                        format!(
                            "node `{}` finds no node of `{}` at {}; the two stages fan out over different values",
                            node_id(sname, &coord),
                            up.value,
                            shared
                                .iter()
                                .map(|d| format!("{d}={}", coord[d]))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    ));
                }
                inputs.push((input_names[ii].clone(), ups));
            }
            let id = node_id(sname, &coord);
            let idx = out.nodes.len();

            let prev = seen_ids.insert(id_hasher.hash_one(&id), idx);
            if prev.is_some_and(|p| out.nodes[p].id == id) {
                return Err(SpecError::new(
                    &s.loc,
                    format!("stages.{sname}.foreach"),
                    format!("two fan-out elements give the same node id `{id}`; give table elements distinct `name`s"),
                ));
            }
            out.nodes.push(Node {
                id,
                stage: stage_name.clone(),
                kind: kind.clone(),
                version: stage.version(),
                coord,
                params: resolved,
                inputs,
                resources: resources.clone(),
                list_output,
            });
            mine.push(idx);
        }
        stage_nodes.insert(sname, mine);
        stage_pending.insert(sname, false);
    }
    Ok(out)
}

fn dims_hint(dims: &[&String]) -> String {
    if dims.is_empty() {
        String::new()
    } else {
        format!(
            "; fan-out dims: {}",
            dims.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    }
}

/// The values of `dims` in `coord`, as a lookup key.
fn project(coord: &Coord, dims: &[String]) -> String {
    let mut s = String::new();
    for d in dims {
        if let Some(v) = coord.get(d) {
            s.push_str(&v.to_json().to_string());
        }
        s.push('\u{1f}');
    }
    s
}

/// Refuses an enormous fan-out before any node exists: the node count of every stage whose
/// dimensions are all static (literal lists and list params) is a product of list lengths,
/// known from the spec alone. Counting them in topological order, the first dimension that
/// takes the running total over `max_nodes` is the error (the same one the expansion would
/// report, without first building millions of coordinates). Stages that fan out over an
/// upstream list count as zero here (the list may be empty); their size is checked while
/// expanding, once the list exists.
fn check_static_size(spec: &PipelineSpec, graph: &StageGraph, params: &HashMap<&str, &Value>) -> Result<(), SpecError> {
    let mut total: usize = 0;
    for sname in &graph.order {
        let s = &spec.stages[sname];
        if s.foreach.values().any(|d| matches!(d.value, Dim::From(_))) {
            continue;
        }
        let mut product: usize = 1;
        for (dim, d) in &s.foreach {
            let len = match &d.value {
                Dim::Values(v) => v.len(),
                Dim::Param(p) => params.get(p.as_str()).and_then(|v| v.as_list()).map_or(0, |l| l.len()),
                Dim::From(_) => unreachable!(),
            };
            product = product.saturating_mul(len);
            let would = total.saturating_add(product);
            if would > spec.max_nodes {
                return Err(size_error(
                    spec,
                    would,
                    &d.loc,
                    &format!("stages.{sname}.foreach.{dim}"),
                ));
            }
        }
        total = total.saturating_add(product);
    }
    Ok(())
}

fn size_error(spec: &PipelineSpec, total: usize, loc: &Loc, key: &str) -> SpecError {
    SpecError::new(
        loc,
        key,
        format!(
            "fan-out would create {} nodes in all, over the limit of {} (raise [pipeline] max_nodes, or pass --max-nodes, if this is intended)",
            if total == usize::MAX {
                "too many".to_string()
            } else {
                total.to_string()
            },
            spec.max_nodes
        ),
    )
}

fn check_size(spec: &PipelineSpec, out: &NodeGraph, adding: usize, loc: &Loc, key: &str) -> Result<(), SpecError> {
    let total = out.nodes.len().saturating_add(adding);
    if total > spec.max_nodes {
        return Err(size_error(spec, total, loc, key));
    }
    Ok(())
}
