//! The no-op short-circuit: a whole-pipeline fingerprint and the record of the last complete
//! run under it.
//!
//! A full plan expands every node, hashes its key and looks it up in the index — about 15 µs
//! a node, over a second for an 82k-node sweep. But when nothing changed, all of that
//! recomputes what the last run already knew. Every node key is a function of:
//!
//! - the pipeline after sweep files and `--set` (stage kinds, params, fan-out, inputs),
//! - each used stage kind's code version and declared params,
//! - the content of the files and directories that `Path` params name,
//! - the outputs of list stages (dynamic fan-out), which are themselves node outputs.
//!
//! The [`fingerprint`] hashes the first two (plus the tool version and the project dir, which
//! relative paths resolve against). At the end of a run that reached every node, the run
//! writes a [`FreshPlan`] record under that fingerprint: the content digest of every path param
//! it read, and every node's id, key and outputs with the `stat` of each output blob. A later
//! plan with the same fingerprint then only has to check that the path params still have
//! the same content (through the store's stat cache: a `stat` each) and that every output
//! blob still has its recorded `stat` (size, mtime, inode; stat'ed in parallel). If all hold,
//! every recorded key is what a full plan would compute and every node is fresh — so the
//! full plan is skipped. Any mismatch (a file touched, a blob gone or rewritten, a damaged
//! record) just falls back to the full plan, which finds out what changed and why.
//!
//! The store drops every record whenever it removes anything (`gc`, `verify` with
//! problems, a quarantined blob), so a record never names a node the cache no longer has.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axbench_cache::{Digest, FileStat, OutputEntry, Store};

use crate::compile::key::{CacheKey, KeyHasher};
use crate::compile::plan::{NodeState, PlanJson, PlanJsonNode};
use crate::compile::spec::PipelineSpec;
use crate::stage::Registry;

/// Log lines carry the module's flat public path, which `RUST_LOG` filters name, not its room's.
const LOG: &str = "axbench_engine::fingerprint";

const MAGIC: &[u8; 8] = b"AXFP\x00\x00\x00\x01";

/// The fingerprint of everything except file contents and node outputs that node keys
/// depend on (see the module docs). `Debug` forms are used because every collection in a
/// [`PipelineSpec`] and a stage's [`crate::ParamSpec`]s is ordered (`BTreeMap`, `Vec`): the
/// same pipeline always gives the same text. A difference that does not change any key (a
/// description, a line number) only costs one full plan.
pub fn fingerprint(spec: &PipelineSpec, registry: &Registry, project_dir: &Path) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"axbench.fingerprint.v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    hash_pipeline(&mut h, spec, project_dir);
    let kinds: BTreeSet<&str> = spec.stages.values().map(|s| s.kind.value.as_str()).collect();
    for kind in kinds {
        h.update(b"\0kind\0");
        h.update(kind.as_bytes());
        if let Some(stage) = registry.get(kind) {
            h.update(
                format!(
                    "\0{}\0{:?}\0{:?}\0{:?}",
                    stage.version(),
                    stage.params(),
                    stage.output_kind(),
                    stage.resources()
                )
                .as_bytes(),
            );
        }
    }
    h.finalize().into()
}

/// One node of a [`FreshPlan`].
#[derive(Clone, Debug)]
pub struct FreshNode {
    pub id: String,
    /// Stage name in the pipeline.
    pub stage: Arc<str>,
    pub key: Digest,
    /// Output file name → blob, in name order.
    pub outputs: Vec<(Arc<str>, OutputEntry)>,
}

impl FreshNode {
    /// The output file `name`, if the node has one.
    pub fn output(&self, name: &str) -> Option<&OutputEntry> {
        self.outputs.iter().find(|(n, _)| &**n == name).map(|(_, e)| e)
    }
}

/// Every node of a pipeline, all fresh, as the last complete run left them (in the full
/// plan's node order, inputs first).
#[derive(Clone, Debug, Default)]
pub struct FreshPlan {
    pub nodes: Vec<FreshNode>,
    /// Path params read (absolute path, content digest).
    pub paths: Vec<(PathBuf, Digest)>,
    /// Each distinct output blob with the `stat` it had when the record was written.
    blobs: Vec<(Digest, FileStat)>,
    /// The fingerprint this record was found under (set by [`fresh_plan`]).
    pub fingerprint: Option<Digest>,
}

impl FreshPlan {
    /// The `plan --json` form: every node fresh, nothing to run.
    pub fn to_json(&self) -> PlanJson {
        PlanJson {
            nodes: self
                .nodes
                .iter()
                .map(|n| PlanJsonNode {
                    id: n.id.clone(),
                    stage: n.stage.to_string(),
                    state: NodeState::Fresh,
                    reason: "up to date".to_string(),
                })
                .collect(),
            to_run: 0,
        }
    }

    /// Every node key, sorted and deduplicated (what a run record holds).
    pub fn keys(&self) -> Vec<Digest> {
        let mut keys: Vec<Digest> = self.nodes.iter().map(|n| n.key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Builds a record from a finished run's nodes; the blobs are stat'ed now (they were just
    /// verified or written by the run).
    pub fn from_nodes(nodes: Vec<FreshNode>, paths: Vec<(PathBuf, Digest)>, store: &Store) -> Option<FreshPlan> {
        let mut seen: HashMap<Digest, ()> = HashMap::new();
        let mut blobs = Vec::new();
        for n in &nodes {
            for (_, o) in &n.outputs {
                if seen.insert(o.digest, ()).is_none() {
                    blobs.push((o.digest, FileStat::of(&store.blob_path(&o.digest)).ok()?));
                }
            }
        }
        Some(FreshPlan {
            nodes,
            paths,
            blobs,
            fingerprint: None,
        })
    }

    /// The binary record: a magic, then counted sections (strings length-prefixed, indices
    /// into the stage-name and output-name tables), then a blake3 checksum of all of it, so a
    /// torn or damaged record is rejected instead of misread.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + self.nodes.len() * 160));
        w.0.extend_from_slice(MAGIC);
        let mut stages: Vec<Arc<str>> = Vec::new();
        let mut names: Vec<Arc<str>> = Vec::new();
        let index_of = |table: &mut Vec<Arc<str>>, s: &Arc<str>| -> u32 {
            match table.iter().position(|x| x == s) {
                Some(i) => i as u32,
                None => {
                    table.push(s.clone());
                    (table.len() - 1) as u32
                }
            }
        };
        let blob_index: HashMap<Digest, u32> = self
            .blobs
            .iter()
            .enumerate()
            .map(|(i, (d, _))| (*d, i as u32))
            .collect();
        let mut body = Writer(Vec::with_capacity(self.nodes.len() * 128));
        body.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            body.u32(index_of(&mut stages, &n.stage));
            body.str(&n.id);
            body.0.extend_from_slice(&n.key.0);
            body.u32(n.outputs.len() as u32);
            for (name, e) in &n.outputs {
                body.u32(index_of(&mut names, name));
                body.u32(blob_index[&e.digest]);
                body.u64(e.size);
            }
        }
        for table in [&stages, &names] {
            w.u32(table.len() as u32);
            for s in table {
                w.str(s);
            }
        }
        w.u32(self.paths.len() as u32);
        for (p, d) in &self.paths {
            w.str(&p.to_string_lossy());
            w.0.extend_from_slice(&d.0);
        }
        w.u32(self.blobs.len() as u32);
        for (d, s) in &self.blobs {
            w.0.extend_from_slice(&d.0);
            w.0.extend_from_slice(&s.to_bytes());
        }
        w.0.extend_from_slice(&body.0);
        let sum = blake3::hash(&w.0);
        w.0.extend_from_slice(sum.as_bytes());
        w.0
    }

    /// The inverse of [`FreshPlan::encode`]; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<FreshPlan> {
        let (data, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(data).as_bytes() != sum || !data.starts_with(MAGIC) {
            return None;
        }
        let mut r = Reader(&data[MAGIC.len()..]);
        let mut tables: [Vec<Arc<str>>; 2] = [Vec::new(), Vec::new()];
        for t in &mut tables {
            let n = r.u32()?;
            for _ in 0..n {
                t.push(Arc::from(r.str()?));
            }
        }
        let [stages, names] = tables;
        let np = r.u32()?;
        let mut paths = Vec::new();
        for _ in 0..np {
            paths.push((PathBuf::from(r.str()?), r.digest()?));
        }
        let nb = r.u32()? as usize;
        let mut blobs = Vec::with_capacity(nb.min(r.0.len() / 56));
        for _ in 0..nb {
            blobs.push((r.digest()?, FileStat::from_bytes(r.take(24)?)?));
        }
        let nn = r.u32()? as usize;
        let mut nodes = Vec::with_capacity(nn.min(r.0.len() / 44));
        for _ in 0..nn {
            let stage = stages.get(r.u32()? as usize)?.clone();
            let id = r.str()?.to_string();
            let key = r.digest()?;
            let no = r.u32()?;
            let mut outputs = Vec::with_capacity(no as usize);
            for _ in 0..no {
                let name = names.get(r.u32()? as usize)?.clone();
                let digest = blobs.get(r.u32()? as usize)?.0;
                outputs.push((name, OutputEntry { digest, size: r.u64()? }));
            }
            nodes.push(FreshNode {
                id,
                stage,
                key,
                outputs,
            });
        }
        r.0.is_empty().then_some(FreshPlan {
            nodes,
            paths,
            blobs,
            fingerprint: None,
        })
    }

    /// Whether every blob still has its recorded `stat`: one `stat` per distinct blob (this is
    /// most of what a no-op plan costs; see [`Store::blobs_unchanged`]).
    fn blobs_unchanged(&self, store: &Store) -> bool {
        store.blobs_unchanged(&self.blobs)
    }
}

/// The record under `spec`'s fingerprint, if there is one and it still holds: every path
/// param has its recorded content and every output blob its recorded `stat`. `None` means
/// "plan it in full", never an error.
pub fn fresh_plan(spec: &PipelineSpec, registry: &Registry, store: &Store, project_dir: &Path) -> Option<FreshPlan> {
    fresh_plan_under(fingerprint(spec, registry, project_dir), store)
}

/// The record stored under `fp`, if it still holds (see [`fresh_plan`]).
fn fresh_plan_under(fp: Digest, store: &Store) -> Option<FreshPlan> {
    let mut record = FreshPlan::decode(&store.read_fingerprint(&fp)?)?;
    record.fingerprint = Some(fp);
    if !record.paths.is_empty() {
        let reader = store.reader();
        for (p, d) in &record.paths {
            if store.path_digest(reader.as_ref(), p).ok()? != *d {
                return None;
            }
        }
    }
    if !record.blobs_unchanged(store) {
        return None;
    }
    tracing::debug!(target: LOG, "all {} nodes fresh (no-op record {})", record.nodes.len(), fp.short());
    Some(record)
}

/// The key under which the `axbench` launcher finds a no-op record without a stage registry.
///
/// A fingerprint hashes each used stage's code version and params, which only the full binary
/// (the one linking the stages, and with them libtorch) knows. But the registry is fixed when
/// that binary is built, so the binary's file identity (path, size, mtime, inode) stands in for
/// it: any rebuild changes the key, and the full binary files the record again on its next
/// no-op ([`save_launch_alias`]). `None` if `exe` cannot be stat'ed.
pub fn launch_key(spec: &PipelineSpec, project_dir: &Path, exe: &Path) -> Option<Digest> {
    let exe = std::fs::canonicalize(exe).ok()?;
    let st = axbench_cache::FileStat::of(&exe).ok()?;
    let mut h = blake3::Hasher::new();
    h.update(b"axbench.launch.v1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    h.update(exe.as_os_str().as_encoded_bytes());
    h.update(&st.to_bytes());
    h.update(b"\0");
    hash_pipeline(&mut h, spec, project_dir);
    Some(h.finalize().into())
}

/// What [`fingerprint`] and [`launch_key`] both cover: the pipeline as loaded and the project
/// dir its relative paths resolve against (one place, so the launcher's key can never miss a
/// part of the pipeline the fingerprint sees).
fn hash_pipeline(h: &mut blake3::Hasher, spec: &PipelineSpec, project_dir: &Path) {
    h.update(project_dir.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    let mut spec_hasher = KeyHasher::new("axbench.pipeline.spec.v1");
    spec.cache_key(&mut spec_hasher);
    h.update(&spec_hasher.finish().0);
}

/// Files the record under `spec`'s fingerprint also under its [`launch_key`] for the binary
/// `exe` (the running full binary), if there is a record. Best effort, like [`save`].
pub fn save_launch_alias(spec: &PipelineSpec, registry: &Registry, store: &Store, project_dir: &Path, exe: &Path) {
    let fp = fingerprint(spec, registry, project_dir);
    if !store.fingerprint_path(&fp).exists() {
        return;
    }
    if let Some(alias) = launch_key(spec, project_dir, exe)
        && let Err(e) = store.write_alias(&alias, &fp)
    {
        tracing::warn!(target: LOG, "could not write the launcher's no-op alias: {e}");
    }
}

/// What [`fresh_plan`] answers, found through the [`launch_key`] of the full binary `exe`
/// instead of the fingerprint: for the launcher, which has no registry.
pub fn launch_fresh_plan(spec: &PipelineSpec, store: &Store, project_dir: &Path, exe: &Path) -> Option<FreshPlan> {
    let fp = store.read_alias(&launch_key(spec, project_dir, exe)?)?;
    fresh_plan_under(fp, store)
}

/// Stores `record` under `spec`'s fingerprint, with `run`, the run record of a run that
/// reached exactly the record's keys (later no-op runs link to it instead of writing their
/// own). Best effort: a record that cannot be written only means the next no-op plans in full.
pub fn save(
    spec: &PipelineSpec,
    registry: &Registry,
    store: &Store,
    project_dir: &Path,
    record: &FreshPlan,
    run: Option<&Path>,
) {
    let fp = fingerprint(spec, registry, project_dir);
    if let Err(e) = store.write_fingerprint(&fp, &record.encode(), run) {
        tracing::warn!(target: LOG, "could not write the no-op record: {e}");
    }
}

struct Writer(Vec<u8>);
impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = self.0.split_at_checked(n)?;
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn digest(&mut self) -> Option<Digest> {
        Some(Digest(self.take(32)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(store: &Store) -> FreshPlan {
        let a = store.put_bytes(b"a").unwrap();
        let b = store.put_bytes(b"b").unwrap();
        let stage: Arc<str> = Arc::from("fit");
        let name: Arc<str> = Arc::from("value.json");
        let nodes = vec![
            FreshNode {
                id: "fit[c=1]".into(),
                stage: stage.clone(),
                key: axbench_cache::hash_bytes(b"k1"),
                outputs: vec![(name.clone(), a.clone())],
            },
            FreshNode {
                id: "fit[c=2]".into(),
                stage,
                key: axbench_cache::hash_bytes(b"k2"),
                outputs: vec![(name.clone(), a), (Arc::from("x.bin"), b)],
            },
        ];
        FreshPlan::from_nodes(
            nodes,
            vec![(PathBuf::from("/p/data.txt"), axbench_cache::hash_bytes(b"d"))],
            store,
        )
        .unwrap()
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = sample(&store);
        let bytes = rec.encode();
        let back = FreshPlan::decode(&bytes).unwrap();
        assert_eq!(back.nodes.len(), 2);
        assert_eq!(back.nodes[1].id, "fit[c=2]");
        assert_eq!(
            back.nodes[1].output("x.bin").unwrap().digest,
            rec.nodes[1].outputs[1].1.digest
        );
        assert_eq!(back.paths, rec.paths);
        assert_eq!(back.blobs, rec.blobs);
        assert_eq!(back.keys(), rec.keys());
        // Every truncation and every single-byte flip is rejected, never misread.
        for n in 0..bytes.len() {
            assert!(FreshPlan::decode(&bytes[..n]).is_none(), "truncated to {n}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(FreshPlan::decode(&b).is_none(), "flip at {i}");
        }
    }

    #[test]
    fn the_launch_alias_finds_the_record_until_the_binary_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let registry = crate::toy::register(Registry::new());
        let spec =
            PipelineSpec::parse("p.toml", "[stages.a]\nkind = \"test.const\"\nparams = { value = 1 }\n").unwrap();
        let exe = dir.path().join("axbench-full");
        std::fs::write(&exe, b"binary").unwrap();
        let project = dir.path();
        // No record yet: filing an alias does nothing.
        save_launch_alias(&spec, &registry, &store, project, &exe);
        assert!(launch_fresh_plan(&spec, &store, project, &exe).is_none());
        let mut record = sample(&store);
        record.paths.clear(); // its path param names no real file
        save(&spec, &registry, &store, project, &record, None);
        assert!(
            launch_fresh_plan(&spec, &store, project, &exe).is_none(),
            "no alias filed yet"
        );
        save_launch_alias(&spec, &registry, &store, project, &exe);
        let found = launch_fresh_plan(&spec, &store, project, &exe).unwrap();
        assert_eq!(
            found.keys(),
            fresh_plan(&spec, &registry, &store, project).unwrap().keys()
        );
        // Another pipeline, another project dir: no answer.
        let other =
            PipelineSpec::parse("p.toml", "[stages.a]\nkind = \"test.const\"\nparams = { value = 2 }\n").unwrap();
        assert!(launch_fresh_plan(&other, &store, project, &exe).is_none());
        assert!(launch_fresh_plan(&spec, &store, &project.join("cache"), &exe).is_none());
        // A rebuilt binary (new mtime and size) may have other stage versions: no answer.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&exe, b"binary v2").unwrap();
        assert!(launch_fresh_plan(&spec, &store, project, &exe).is_none());
    }

    #[test]
    fn a_rewritten_or_missing_blob_invalidates_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = sample(&store);
        assert!(rec.blobs_unchanged(&store));
        let path = store.blob_path(&rec.nodes[1].outputs[1].1.digest);
        std::fs::remove_file(&path).unwrap();
        assert!(!rec.blobs_unchanged(&store));
        std::fs::write(&path, b"b").unwrap(); // same bytes, new inode and mtime
        assert!(!rec.blobs_unchanged(&store));
    }
}
