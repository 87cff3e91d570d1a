//! Node manifests: the readable provenance record of one computed node, and the source of truth
//! the index is rebuilt from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// One stored output file of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    pub digest: Digest,
    pub size: u64,
}

/// One input of a node: which upstream node (and key) fed it, and the digests it read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    /// Input name as the stage sees it (e.g. `table`).
    pub name: String,
    /// Upstream node id (e.g. `fit[concept=3,method=pca]`).
    pub node: String,
    pub key: Digest,
    pub outputs: BTreeMap<String, Digest>,
}

/// What a node was computed from and what it produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The node key (blake3 of stage kind, code version, canonical params, input digests).
    pub key: Digest,
    /// Node id: stage name plus fan-out coordinate.
    pub node: String,
    /// Stage kind in the registry (e.g. `test.add`).
    pub stage: String,
    pub stage_version: u32,
    /// The fan-out coordinate, dimension → value.
    #[serde(default)]
    pub coord: serde_json::Value,
    /// The canonical params the stage reads, exactly as hashed into the key.
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub inputs: Vec<ManifestInput>,
    pub outputs: BTreeMap<String, OutputEntry>,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    /// `axbench` version that computed the node.
    pub tool_version: String,
    pub host: String,
    /// Anything else the engine wants to keep (e.g. the job spec a remote executor replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}
