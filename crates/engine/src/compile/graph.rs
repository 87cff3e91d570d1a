//! `graph`: the stage-level DAG (petgraph). Checks that every input and every dynamic
//! fan-out names an existing stage, that stage kinds exist, and that there are no cycles —
//! each error names the stages involved. Yields the order `expand` walks stages in.

use std::collections::BTreeMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::compile::spec::{Dim, PipelineSpec, SpecError};
use crate::stage::{OutputKind, Registry};

/// Stage-level DAG: an edge `u → s` when `s` reads `u` (as an input or a fan-out list).
pub struct StageGraph {
    pub graph: DiGraph<String, EdgeKind>,
    pub index: BTreeMap<String, NodeIndex>,
    /// Stages in dependency order (inputs first; ties broken by name, so it is stable).
    pub order: Vec<String>,
}

/// Why one stage depends on another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// `inputs = { name = "upstream" }`
    Input(String),
    /// `foreach = { dim = { from = "upstream" } }`
    FanOut(String),
}

impl StageGraph {
    /// Builds and checks the stage graph.
    pub fn build(spec: &PipelineSpec, registry: &Registry) -> Result<StageGraph, SpecError> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for name in spec.stages.keys() {
            index.insert(name.clone(), graph.add_node(name.clone()));
        }
        let stage_list = || spec.stages.keys().cloned().collect::<Vec<_>>().join(", ");
        for (name, s) in &spec.stages {
            let Some(stage) = registry.get(&s.kind.value) else {
                return Err(SpecError::new(&s.kind.loc, format!("stages.{name}.kind"), {
                    // Suggest kinds of the same namespace (`test.`, `axbench.`) if there are any.
                    let ns = s
                        .kind
                        .value
                        .split_once('.')
                        .map(|(n, _)| format!("{n}."))
                        .unwrap_or_default();
                    let same: Vec<&str> = registry
                        .kinds()
                        .filter(|k| !ns.is_empty() && k.starts_with(&ns))
                        .collect();
                    let list = if same.is_empty() {
                        registry.kinds().collect::<Vec<_>>()
                    } else {
                        same
                    };
                    format!(
                        "unknown stage kind `{}`; known kinds: {}",
                        s.kind.value,
                        list.join(", ")
                    )
                }));
            };
            let declared = stage.params();
            for (p, v) in &s.params {
                if !declared.iter().any(|d| d.name == p) {
                    let names: Vec<&str> = declared.iter().map(|d| d.name).collect();
                    return Err(SpecError::new(
                        &v.loc,
                        format!("stages.{name}.params.{p}"),
                        format!(
                            "stage kind `{}` does not read param `{p}`; it reads: {}",
                            s.kind.value,
                            if names.is_empty() {
                                "(nothing)".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
            }
            for (input, up) in &s.inputs {
                let Some(&u) = index.get(&up.value) else {
                    return Err(SpecError::new(
                        &up.loc,
                        format!("stages.{name}.inputs.{input}"),
                        format!(
                            "input `{input}` of stage `{name}` names stage `{}`, which does not exist; stages: {}",
                            up.value,
                            stage_list()
                        ),
                    ));
                };
                graph.add_edge(u, index[name], EdgeKind::Input(input.clone()));
            }
            for (dim, d) in &s.foreach {
                let key = format!("stages.{name}.foreach.{dim}");
                match &d.value {
                    Dim::From(up) => {
                        let Some(&u) = index.get(up) else {
                            return Err(SpecError::new(
                                &d.loc,
                                key,
                                format!(
                                    "fan-out `{dim}` of stage `{name}` reads stage `{up}`, which does not exist; stages: {}",
                                    stage_list()
                                ),
                            ));
                        };
                        let up_kind = &spec.stages[up].kind.value;
                        if registry
                            .get(up_kind)
                            .is_some_and(|st| st.output_kind() != OutputKind::List)
                        {
                            return Err(SpecError::new(
                                &d.loc,
                                key,
                                format!("stage `{up}` (kind `{up_kind}`) does not produce a list to fan out over"),
                            ));
                        }
                        graph.add_edge(u, index[name], EdgeKind::FanOut(dim.clone()));
                    }
                    Dim::Param(p) => {
                        let Some(decl) = spec.params.get(p) else {
                            return Err(SpecError::new(
                                &d.loc,
                                key,
                                format!("unknown param `{p}`; valid params: {}", spec.param_list()),
                            ));
                        };
                        if decl.value.as_list().is_none() {
                            return Err(SpecError::new(
                                &d.loc,
                                key,
                                format!(
                                    "param `{p}` is {} {}, not a list",
                                    decl.value.type_name(),
                                    decl.value.to_json()
                                ),
                            ));
                        }
                    }
                    Dim::Values(_) => {}
                }
                if spec.params.contains_key(dim) {
                    return Err(SpecError::new(
                        &d.loc,
                        key,
                        format!(
                            "fan-out dimension `{dim}` has the name of a pipeline param; `${{{dim}}}` would be ambiguous"
                        ),
                    ));
                }
            }
            for (class, n) in s
                .resources
                .iter()
                .map(|(c, n)| (c.as_str(), n.value))
                .chain(stage.resources())
            {
                let cap = spec.resources.get(class).copied().unwrap_or(1);
                if n > cap {
                    let loc = s
                        .resources
                        .get(class)
                        .map(|l| l.loc.clone())
                        .unwrap_or_else(|| s.loc.clone());
                    return Err(SpecError::new(
                        &loc,
                        format!("stages.{name}.resources.{class}"),
                        format!("needs {n} `{class}` but the pipeline has {cap} (set [resources] {class} = …)"),
                    ));
                }
            }
        }
        let order = match toposort(&graph, None) {
            Ok(_) => stable_topo(&graph),
            Err(_) => {
                let cycle = tarjan_scc(&graph)
                    .into_iter()
                    .find(|scc| scc.len() > 1 || graph.contains_edge(scc[0], scc[0]))
                    .map(|scc| {
                        let mut names: Vec<String> = scc.iter().map(|i| graph[*i].clone()).collect();
                        names.sort();
                        names
                    })
                    .unwrap_or_default();
                let first = &spec.stages[&cycle[0]];
                return Err(SpecError::new(
                    &first.loc,
                    format!("stages.{}", cycle[0]),
                    format!("cycle between stages: {} -> {}", cycle.join(" -> "), cycle[0]),
                ));
            }
        };
        Ok(StageGraph { graph, index, order })
    }

    /// Graphviz of the stage graph; fan-out dimensions are listed under each stage.
    pub fn dot(&self, spec: &PipelineSpec) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
        for name in &self.order {
            let s = &spec.stages[name];
            let dims: Vec<String> = s
                .foreach
                .iter()
                .map(|(d, v)| match &v.value {
                    Dim::Values(vals) => format!("{d} ×{}", vals.len()),
                    Dim::Param(p) => format!("{d} = ${{{p}}}"),
                    Dim::From(u) => format!("{d} from {u}"),
                })
                .collect();
            let label = if dims.is_empty() {
                format!("{name}\\n{}", s.kind.value)
            } else {
                format!("{name}\\n{}\\n[{}]", s.kind.value, dims.join(", "))
            };
            out.push_str(&format!("  \"{name}\" [label=\"{label}\"];\n"));
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).unwrap();
            let label = match &self.graph[e] {
                EdgeKind::Input(i) => i.clone(),
                EdgeKind::FanOut(d) => format!("foreach {d}"),
            };
            let style = if matches!(self.graph[e], EdgeKind::FanOut(_)) {
                ", style=dashed"
            } else {
                ""
            };
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{label}\"{style}];\n",
                self.graph[a], self.graph[b]
            ));
        }
        out.push_str("}\n");
        out
    }
}

/// Kahn's algorithm with a sorted ready set: the same pipeline always yields the same order.
fn stable_topo(graph: &DiGraph<String, EdgeKind>) -> Vec<String> {
    use std::collections::BTreeSet;
    let mut indeg: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, petgraph::Incoming).count())
        .collect();
    let mut ready: BTreeSet<(String, NodeIndex)> = graph
        .node_indices()
        .filter(|n| indeg[n.index()] == 0)
        .map(|n| (graph[n].clone(), n))
        .collect();
    let mut order = Vec::new();
    while let Some((name, n)) = ready.pop_first() {
        order.push(name);
        for m in graph.neighbors_directed(n, petgraph::Outgoing) {
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                ready.insert((graph[m].clone(), m));
            }
        }
    }
    order
}
