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

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::compile::graph::StageGraph;
use crate::compile::spec::{Dim, Loc, Located, PipelineSpec, SpecError, StageSpec, refs_in, substitute};
use crate::stage::{OutputKind, ParamSpec, Registry, Stage};
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

/// [`Stage::validate_param`] for a stage left pending (its fan-out waits on an upstream
/// list), so a bad value fails the plan on a cold cache too: each param whose value resolves from the pipeline params
/// alone, or from them and one literal or list-param dim, is checked for every value of that dim. Params that need a
/// pending dim are checked once their nodes expand.
fn validate_pending(
    spec: &PipelineSpec,
    sname: &str,
    stage: &dyn Stage,
    declared: &[ParamSpec],
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
    let params: HashMap<&str, &Value> = spec.params.iter().map(|(k, d)| (k.as_str(), &d.value)).collect();
    check_static_size(spec, graph, &params)?;
    let mut x = Expander {
        spec,
        registry,
        lists,
        params,
        out: NodeGraph::default(),
        id_hasher: RandomState::new(),
        seen_ids: HashMap::new(),
        stage_nodes: HashMap::new(),
        stage_pending: HashMap::new(),
    };
    for sname in &graph.order {
        x.stage(sname)?;
    }
    Ok(x.out)
}

/// An expansion in progress, stage by stage in topological order: the nodes so far and, for every stage done, its
/// nodes or that it is pending.
struct Expander<'a> {
    spec: &'a PipelineSpec,
    registry: &'a Registry,
    lists: &'a HashMap<String, Vec<Value>>,
    /// The pipeline params in effect, by name.
    params: HashMap<&'a str, &'a Value>,
    out: NodeGraph,
    /// Duplicate-id detection by 64-bit hash (ids are compared on a hash match).
    id_hasher: RandomState,
    seen_ids: HashMap<u64, usize>,
    /// Stage → indices of its nodes.
    stage_nodes: HashMap<&'a str, Vec<usize>>,
    /// Stage → whether any part of it is pending.
    stage_pending: HashMap<&'a str, bool>,
}

/// What every node of one stage shares.
struct StageCommon {
    name: Arc<str>,
    kind: Arc<str>,
    version: u32,
    resources: BTreeMap<String, u32>,
    list_output: bool,
    /// Whether a param refers to a fan-out dimension: then params are resolved per node, else once per stage.
    per_node_params: bool,
}

/// A node's inputs, as [`Node::inputs`] holds them.
type BoundInputs = Vec<(Arc<str>, Vec<usize>)>;

/// One input of a stage, ready to bind: the upstream nodes grouped by their values on the dims both stages share.
struct InputTable<'a> {
    name: Arc<str>,
    upstream: &'a Located<String>,
    /// How many dims the upstream stage fans out over.
    upstream_dims: usize,
    shared: Vec<String>,
    by_shared: HashMap<String, Vec<usize>>,
}

impl<'a> Expander<'a> {
    /// Expands one stage, whose upstream stages are done: into its nodes, or into a pending placeholder when its
    /// fan-out waits on a list that is not computed yet.
    fn stage(&mut self, sname: &str) -> Result<(), SpecError> {
        let (spec, registry) = (self.spec, self.registry);
        let (sname, s) = spec.stages.get_key_value(sname).expect("graph stages are spec stages");
        let stage = registry.get(&s.kind.value).expect("graph checked kinds");
        let declared = stage.params();
        if let Some(up) = self.pending_upstream(s) {
            let reason = format!("waits for `{up}` to be expanded");
            return self.defer(sname, stage.as_ref(), &declared, reason);
        }
        let Some(coords) = self.coords(sname, s)? else {
            let from: Vec<&str> = s
                .foreach
                .values()
                .filter_map(|d| match &d.value {
                    Dim::From(u) => Some(u.as_str()),
                    _ => None,
                })
                .collect();
            let reason = format!("fan-out waits for the list of `{}`", from.join("`, `"));
            return self.defer(sname, stage.as_ref(), &declared, reason);
        };
        check_size(spec, &self.out, coords.len(), &s.loc, &format!("stages.{sname}"))?;

        let tables = self.input_tables(s);
        let common = StageCommon::new(sname, s, stage.as_ref());
        let mut shared_params: Option<Arc<BTreeMap<String, Value>>> = None;
        let mut mine = Vec::with_capacity(coords.len());
        for coord in coords {
            let params = match (&shared_params, common.per_node_params) {
                (Some(shared), false) => shared.clone(),
                _ => {
                    let resolved = Arc::new(self.resolve_params(sname, s, stage.as_ref(), &declared, &coord)?);
                    if !common.per_node_params {
                        shared_params = Some(resolved.clone());
                    }
                    resolved
                }
            };
            let coord = tables_by_name(coord);
            let inputs = self.bind_inputs(sname, &tables, &coord)?;
            let node = Node {
                id: node_id(sname, &coord),
                stage: common.name.clone(),
                kind: common.kind.clone(),
                version: common.version,
                coord,
                params,
                inputs,
                resources: common.resources.clone(),
                list_output: common.list_output,
            };
            mine.push(self.push_node(sname, s, node)?);
        }
        self.stage_nodes.insert(sname, mine);
        self.stage_pending.insert(sname, false);
        Ok(())
    }

    /// The first stage this one reads (as an input or a dynamic fan-out) that is pending.
    fn pending_upstream(&self, s: &'a StageSpec) -> Option<&'a str> {
        s.inputs
            .values()
            .map(|u| u.value.as_str())
            .chain(s.foreach.values().filter_map(|d| match &d.value {
                Dim::From(u) => Some(u.as_str()),
                _ => None,
            }))
            .find(|u| self.stage_pending.get(u).copied().unwrap_or(false))
    }

    /// Leaves a stage pending: a placeholder stands for its nodes, and its params are checked as far as they resolve
    /// already.
    fn defer(
        &mut self,
        sname: &'a str,
        stage: &dyn Stage,
        declared: &[ParamSpec],
        reason: String,
    ) -> Result<(), SpecError> {
        validate_pending(self.spec, sname, stage, declared, &self.params)?;
        self.out.pending.push(Pending {
            id: format!("{sname}[*]"),
            stage: sname.to_string(),
            reason,
        });
        self.stage_pending.insert(sname, true);
        Ok(())
    }

    /// The stage's coordinates: the cartesian product over its dims in name order. `None` when a dynamic fan-out's
    /// list is not computed yet (the other dims are still walked, so their errors show on a cold cache too).
    fn coords(&self, sname: &str, s: &StageSpec) -> Result<Option<Vec<Coord>>, SpecError> {
        let mut coords: Vec<Coord> = vec![Coord::new()];
        let mut waits = false;
        for (dim, d) in &s.foreach {
            let key = format!("stages.{sname}.foreach.{dim}");
            coords = match &d.value {
                Dim::Values(v) => self.cross(&coords, dim, v, &d.loc, &key)?,
                Dim::Param(p) => {
                    let vals = self.params[p.as_str()].as_list().unwrap_or_default();
                    self.cross(&coords, dim, vals, &d.loc, &key)?
                }
                Dim::From(up) => {
                    let (next, missing) = self.cross_upstream_list(sname, &coords, dim, up, &d.loc, key)?;
                    waits |= missing;
                    next
                }
            };
        }
        Ok((!waits).then_some(coords))
    }

    /// Every coordinate extended by every value of a literal or list-param dim.
    fn cross(
        &self,
        coords: &[Coord],
        dim: &str,
        vals: &[Value],
        loc: &Loc,
        key: &str,
    ) -> Result<Vec<Coord>, SpecError> {
        check_size(self.spec, &self.out, coords.len().saturating_mul(vals.len()), loc, key)?;
        let mut next = Vec::new();
        for c in coords {
            for v in vals {
                let mut c = c.clone();
                c.insert(dim.to_string(), v.clone());
                next.push(c);
            }
        }
        Ok(next)
    }

    /// Every coordinate extended by the items of the list that the upstream node agreeing with it on the upstream's
    /// dims wrote. The bool: some coordinate's list is not computed yet (it is left out).
    fn cross_upstream_list(
        &self,
        sname: &str,
        coords: &[Coord],
        dim: &str,
        up: &str,
        loc: &Loc,
        key: String,
    ) -> Result<(Vec<Coord>, bool), SpecError> {
        let up_dims: Vec<&String> = self.spec.stages[up].foreach.keys().collect();
        let nodes = &self.out.nodes;
        let mut next = Vec::new();
        let mut missing = false;
        for c in coords {
            let matches: Vec<usize> = self
                .stage_nodes
                .get(up)
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|&i| {
                            up_dims
                                .iter()
                                .all(|ud| c.get(*ud).is_none_or(|x| nodes[i].coord.get(*ud) == Some(x)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if matches.len() > 1 {
                return Err(SpecError::new(
                    loc,
                    key,
                    format!(
                        "`{up}` fans out over {} which `{sname}` does not, so the list to fan out over is ambiguous; add those dims to `{sname}`",
                        up_dims.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let Some(&ui) = matches.first() else { continue };
            match self.lists.get(&nodes[ui].id) {
                Some(items) => {
                    check_size(self.spec, &self.out, next.len().saturating_add(items.len()), loc, &key)?;
                    for v in items {
                        let mut c = c.clone();
                        c.insert(dim.to_string(), v.clone());
                        next.push(c);
                    }
                }
                None => missing = true,
            }
        }
        Ok((next, missing))
    }

    /// For each input (in name order), the upstream nodes grouped by their values on the dims both stages share.
    fn input_tables(&self, s: &'a StageSpec) -> Vec<InputTable<'a>> {
        s.inputs
            .iter()
            .map(|(iname, up)| {
                let up_stage = &self.spec.stages[&up.value];
                let shared: Vec<String> = up_stage
                    .foreach
                    .keys()
                    .filter(|d| s.foreach.contains_key(*d))
                    .cloned()
                    .collect();
                let mut by_shared: HashMap<String, Vec<usize>> = HashMap::new();
                for &i in self
                    .stage_nodes
                    .get(up.value.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    by_shared
                        .entry(project(&self.out.nodes[i].coord, &shared))
                        .or_default()
                        .push(i);
                }
                InputTable {
                    name: Arc::from(iname.as_str()),
                    upstream: up,
                    upstream_dims: up_stage.foreach.len(),
                    shared,
                    by_shared,
                }
            })
            .collect()
    }

    /// Every param the stage declares, at one coordinate: `${dim}`, `${param}`, or `${dim.field}` for table-valued
    /// dimensions (e.g. `method = [{ name = "lora", lr = 1e-3 }]` with `lr = "${method.lr}"`) substituted, defaults
    /// filled in, type-checked and validated by the stage.
    fn resolve_params(
        &self,
        sname: &str,
        s: &StageSpec,
        stage: &dyn Stage,
        declared: &[ParamSpec],
        coord: &Coord,
    ) -> Result<BTreeMap<String, Value>, SpecError> {
        let lookup = |name: &str| -> Option<Value> {
            coord
                .get(name)
                .cloned()
                .or_else(|| self.params.get(name).map(|v| (*v).clone()))
                .or_else(|| {
                    let (d, f) = name.split_once('.')?;
                    match coord.get(d)? {
                        Value::Table(t) => t.get(f).cloned(),
                        _ => None,
                    }
                })
        };
        let mut resolved = BTreeMap::new();
        for p in declared {
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
                        self.spec.param_list(),
                        dims_hint(&s.foreach.keys().collect::<Vec<_>>())
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
        Ok(resolved)
    }

    /// The upstream nodes of each input at one coordinate. A one-to-one input (every upstream dim is shared) must
    /// find its node.
    fn bind_inputs(&self, sname: &str, tables: &[InputTable], coord: &Coord) -> Result<BoundInputs, SpecError> {
        let mut inputs = Vec::with_capacity(tables.len());
        for t in tables {
            let ups = t.by_shared.get(&project(coord, &t.shared)).cloned().unwrap_or_default();
            if ups.is_empty() && !t.by_shared.is_empty() && t.upstream_dims == t.shared.len() {
                return Err(SpecError::new(
                    &t.upstream.loc,
                    format!("stages.{sname}.inputs.{}", t.name),
                    format!(
                        "node `{}` finds no node of `{}` at {}; the two stages fan out over different values",
                        node_id(sname, coord),
                        t.upstream.value,
                        t.shared
                            .iter()
                            .map(|d| format!("{d}={}", coord[d]))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ));
            }
            inputs.push((t.name.clone(), ups));
        }
        Ok(inputs)
    }

    /// Adds a node; two nodes with one id are an error.
    fn push_node(&mut self, sname: &str, s: &StageSpec, node: Node) -> Result<usize, SpecError> {
        let idx = self.out.nodes.len();
        let prev = self.seen_ids.insert(self.id_hasher.hash_one(&node.id), idx);
        if prev.is_some_and(|p| self.out.nodes[p].id == node.id) {
            return Err(SpecError::new(
                &s.loc,
                format!("stages.{sname}.foreach"),
                format!(
                    "two fan-out elements give the same node id `{}`; give table elements distinct `name`s",
                    node.id
                ),
            ));
        }
        self.out.nodes.push(node);
        Ok(idx)
    }
}

impl StageCommon {
    fn new(sname: &str, s: &StageSpec, stage: &dyn Stage) -> StageCommon {
        let mut resources: BTreeMap<String, u32> =
            stage.resources().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &s.resources {
            resources.insert(k.clone(), v.value);
        }
        let raw_values: Vec<&Value> = s.params.values().map(|v| &v.value).collect();
        let dims: Vec<&String> = s.foreach.keys().collect();
        StageCommon {
            name: Arc::from(sname),
            kind: Arc::from(s.kind.value.as_str()),
            version: stage.version(),
            resources,
            list_output: stage.output_kind() == OutputKind::List,
            per_node_params: params_use_dims(&raw_values, &dims),
        }
    }
}

/// Table elements of a fan-out are identified by their `name`: their other fields reach the stage only through the
/// params that read them, so only those params enter the key.
fn tables_by_name(coord: Coord) -> Coord {
    coord
        .into_iter()
        .map(|(k, v)| match v {
            Value::Table(t) if t.contains_key("name") => (k, t["name"].clone()),
            v => (k, v),
        })
        .collect()
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
