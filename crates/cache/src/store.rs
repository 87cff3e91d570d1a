//! The store: blobs by digest, manifests, the index, locks, staging dirs, verify and gc.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::index::{Index, IndexBatch, IndexError, IndexReader, NodeEntry};
use crate::{Digest, FileStat, Manifest, NodeLock, OutputEntry, fsync_dir, hash_file, write_atomic};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("manifest {path}: {source}")]
    Manifest { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Index(#[from] IndexError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProblem {
    /// A blob's bytes no longer hash to its name (bit flip, truncation). It was moved to
    /// `quarantine/` so the next run recomputes the node that produced it.
    CorruptBlob { digest: Digest, node: String },
    /// A manifest names a blob that is not in the store.
    MissingBlob { digest: Digest, node: String },
    /// A manifest file that does not parse (truncated, bit-flipped). It was moved to
    /// `quarantine/` and dropped from the index, so the next run recomputes the node.
    BadManifest { path: PathBuf, error: String },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::CorruptBlob { digest, node } => {
                write!(
                    f,
                    "corrupt blob {} (output of {node}); quarantined, it will be recomputed",
                    digest.short()
                )
            }
            VerifyProblem::MissingBlob { digest, node } => {
                write!(
                    f,
                    "missing blob {} (output of {node}); it will be recomputed",
                    digest.short()
                )
            }
            VerifyProblem::BadManifest { path, error } => write!(
                f,
                "unreadable manifest {}: {error}; quarantined, its node will be recomputed",
                path.display()
            ),
        }
    }
}

/// What `verify` checked and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub problems: Vec<VerifyProblem>,
    /// Whether the index had to be rebuilt because it could not be opened.
    pub index_rebuilt: bool,
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    pub kept_manifests: usize,
    pub removed_manifests: usize,
    pub removed_blobs: usize,
    pub freed_bytes: u64,
    /// `.tmp*` files that a write killed between create and rename left behind.
    pub removed_temp: usize,
}

/// Temp files younger than this are left alone by `gc`: they may belong to a write in
/// progress in another process.
pub const TEMP_LITTER_AGE: Duration = Duration::from_secs(60);

/// A content-addressed store in one directory. Cheap to share across threads (`&Store`).
pub struct Store {
    root: PathBuf,
    index: Option<Index>,
    /// Index writes not yet committed; flushed in batches because every commit fsyncs.
    pending: Mutex<IndexBatch>,
    staging_counter: AtomicU64,
}

const DIRS: &[&str] = &["blobs", "manifests", "locks", "tmp", "logs", "runs"];

impl Store {
    /// Opens the store at `root`, creating it if needed. A damaged index is moved aside and
    /// rebuilt from the manifests.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n# axbench cache: content-addressed artifacts\n",
            );
        }
        let mut store = Store {
            root: root.to_path_buf(),
            index: None,
            pending: Mutex::new(IndexBatch::default()),
            staging_counter: AtomicU64::new(0),
        };
        store.index = store.open_index_or_rebuild()?.0;
        Ok(store)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    /// Opens the index; if it cannot be opened (damaged), moves it aside and rebuilds it.
    /// Returns the index and whether it was rebuilt. If even a fresh index cannot be created
    /// the store still works, reading manifests directly.
    fn open_index_or_rebuild(&self) -> Result<(Option<Index>, bool), StoreError> {
        let path = self.index_path();
        // A panic inside the database library on a damaged file must not take the run down.
        let opened = std::panic::catch_unwind(|| Index::open(&path));
        match opened {
            Ok(Ok(index)) => Ok((Some(index), false)),
            Ok(Err(e)) if is_busy(&e) => {
                tracing::warn!("index busy ({e}); planning from manifests");
                Ok((None, false))
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "panic while opening".to_string(),
                };
                tracing::warn!(
                    "index {} is damaged ({why}); rebuilding it from manifests",
                    path.display()
                );
                let aside = self.root.join(format!("index.redb.damaged-{}", unix_ms()));
                let _ = fs::rename(&path, &aside);
                match Index::open(&path) {
                    Ok(index) => {
                        self.rebuild_into(&index)?;
                        Ok((Some(index), true))
                    }
                    Err(e) => {
                        tracing::warn!("cannot create a new index ({e}); planning from manifests");
                        Ok((None, true))
                    }
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives: `blobs/ab/abcdef…`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    pub fn manifest_path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("manifests").join(&hex[..2]).join(format!("{hex}.json"))
    }

    pub fn lock_path(&self, key: &Digest) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", key.to_hex()))
    }

    pub fn log_path(&self, key: &Digest) -> PathBuf {
        self.root.join("logs").join(format!("{}.log", key.to_hex()))
    }

    /// Blocks until this process holds the lock of node `key`.
    pub fn lock_node(&self, key: &Digest) -> Result<NodeLock, StoreError> {
        let p = self.lock_path(key);
        NodeLock::acquire(&p).map_err(io_err(&p))
    }

    /// A fresh, empty staging dir inside the cache (same filesystem, so promotion is a rename).
    /// Named after this process so a later run can tell abandoned ones apart.
    pub fn staging_dir(&self, key: &Digest) -> Result<PathBuf, StoreError> {
        let n = self.staging_counter.fetch_add(1, Ordering::Relaxed);
        // `<key>-<pid>-<n>@<host>`: on a cache shared by cluster nodes, the pid only means
        // something on the host that made the dir.
        let p = self
            .root
            .join("tmp")
            .join(format!("{}-{}-{n}@{}", key.short(), std::process::id(), this_host()));
        if p.exists() {
            fs::remove_dir_all(&p).map_err(io_err(&p))?;
        }
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// Removes staging dirs left by processes that are gone (killed, crashed).
    pub fn clean_stale_staging(&self) {
        let tmp = self.root.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Made on another host (a Slurm task on a shared cache): its process cannot be seen
            // from here, so leave it unless it is a day old.
            if let Some((_, host)) = name.split_once('@')
                && host != this_host()
            {
                let age = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_none_or(|a| a < Duration::from_secs(24 * 3600)) {
                    continue;
                }
            }
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Moves a finished output file into the store under its digest. The file is hashed,
    /// made read-only, fsynced and renamed; the blob directory is fsynced. If the blob already
    /// exists with the right content the source is dropped instead.
    pub fn put_file(&self, src: &Path) -> Result<OutputEntry, StoreError> {
        let digest = hash_file(src).map_err(io_err(src))?;
        let size = fs::metadata(src).map_err(io_err(src))?.len();
        let dst = self.blob_path(&digest);
        if self.check_blob(&digest) {
            let _ = fs::remove_file(src);
            return Ok(OutputEntry { digest, size });
        }
        let dir = dst.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(src)
                .map_err(io_err(src))?;
            f.sync_all().map_err(io_err(src))?;
        }
        set_readonly(src).map_err(io_err(src))?;
        fs::rename(src, &dst).map_err(io_err(&dst))?;
        fsync_dir(dir).map_err(io_err(dir))?;
        if let Ok(stat) = FileStat::of(&dst) {
            self.pending.lock().unwrap().blob_stats.push((digest, stat));
        }
        Ok(OutputEntry { digest, size })
    }

    /// Stores bytes (convenience for small artifacts and tests).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<OutputEntry, StoreError> {
        let tmp = self.root.join("tmp").join(format!(
            "put-{}-{}",
            std::process::id(),
            self.staging_counter.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        self.put_file(&tmp)
    }

    /// Whether the blob exists with its content intact. A stat equal to the one recorded when
    /// the blob was last verified is trusted (no re-read); otherwise the blob is re-hashed, and
    /// a blob whose bytes do not match its name is quarantined.
    pub fn check_blob(&self, digest: &Digest) -> bool {
        let reader = self.reader();
        self.check_blob_with(reader.as_ref(), digest)
    }

    /// [`Store::check_blob`] against an existing read snapshot (fast path for the planner).
    pub fn check_blob_with(&self, reader: Option<&IndexReader>, digest: &Digest) -> bool {
        let path = self.blob_path(digest);
        let Ok(stat) = FileStat::of(&path) else { return false };
        if let Some(r) = reader
            && let Ok(Some(known)) = r.blob_stat(digest)
            && known == stat
        {
            return true;
        }
        {
            let pending = self.pending.lock().unwrap();
            if pending.blob_stats.iter().any(|(d, s)| d == digest && *s == stat) {
                return true;
            }
        }
        match hash_file(&path) {
            Ok(actual) if actual == *digest => {
                self.pending.lock().unwrap().blob_stats.push((*digest, stat));
                true
            }
            Ok(_) => {
                tracing::warn!("blob {} is corrupt; quarantining it", digest.short());
                self.quarantine(digest);
                false
            }
            Err(_) => false,
        }
    }

    fn quarantine(&self, digest: &Digest) {
        let q = self.root.join("quarantine");
        let _ = fs::create_dir_all(&q);
        let _ = fs::rename(
            self.blob_path(digest),
            q.join(format!("{}-{}", digest.to_hex(), unix_ms())),
        );
        self.clear_fingerprints();
    }

    /// Moves a damaged manifest out of the way and forgets its key in the index, so the node
    /// it recorded is missing (and recomputed) rather than trusted with unreadable provenance.
    fn quarantine_manifest(&self, path: &Path) {
        let q = self.root.join("quarantine");
        let _ = fs::create_dir_all(&q);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let _ = fs::rename(path, q.join(format!("manifest-{name}-{}", unix_ms())));
        if let Some(key) = name.strip_suffix(".json").and_then(|h| h.parse::<Digest>().ok())
            && let Some(index) = &self.index
            && let Err(e) = index.remove_nodes(&[key])
        {
            tracing::warn!("could not drop {} from the index: {e}", key.short());
        }
        self.clear_fingerprints();
    }

    /// Whether every blob still has the given `stat` (size, mtime, inode): what a no-op
    /// check costs per node. The blobs are grouped by shard directory and stat'ed relative to
    /// it (`fstatat`), which saves the kernel walking the full path 82k times (about a third
    /// of the time), and the shards are spread over the available cores.
    pub fn blobs_unchanged(&self, blobs: &[(Digest, FileStat)]) -> bool {
        let mut by_shard: Vec<Vec<&(Digest, FileStat)>> = vec![Vec::new(); 256];
        for b in blobs {
            by_shard[b.0.0[0] as usize].push(b);
        }
        let by_shard: Vec<(usize, Vec<&(Digest, FileStat)>)> = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
            .min(by_shard.len().max(1));
        let blobs_dir = self.root.join("blobs");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (by_shard, blobs_dir) = (&by_shard, &blobs_dir);
                    s.spawn(move || {
                        by_shard
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .all(|(shard, items)| shard_unchanged(&blobs_dir.join(format!("{shard:02x}")), items))
                    })
                })
                .collect();
            handles.into_iter().all(|h| h.join().unwrap_or(false))
        })
    }

    /// Where the up-to-date record of a pipeline fingerprint lives:
    /// `fingerprints/<hex>.bin`. The engine decides what a fingerprint hashes and what the
    /// record holds; the store only keeps the bytes and throws them away whenever it removes
    /// anything (`gc`, `verify`, a quarantined blob), so a record never outlives what it lists.
    pub fn fingerprint_path(&self, fp: &Digest) -> PathBuf {
        self.root.join("fingerprints").join(format!("{}.bin", fp.to_hex()))
    }

    /// The record stored under fingerprint `fp`, if any.
    pub fn read_fingerprint(&self, fp: &Digest) -> Option<Vec<u8>> {
        fs::read(self.fingerprint_path(fp)).ok()
    }

    /// Stores the record of fingerprint `fp` (atomically) and keeps only the
    /// [`Store::KEEP_FINGERPRINTS`] newest records, so switching back and forth between a few
    /// `--set` variants stays fast without the directory growing forever.
    ///
    /// `run`, the run record of the run that wrote the record (when it reached exactly the
    /// record's keys), is kept beside it as `<fp>.run` (a hard link) for
    /// [`Store::record_run_like`].
    pub fn write_fingerprint(&self, fp: &Digest, bytes: &[u8], run: Option<&Path>) -> Result<(), StoreError> {
        let path = self.fingerprint_path(fp);
        write_atomic(&path, bytes).map_err(io_err(&path))?;
        let kept = path.with_extension("run");
        let _ = fs::remove_file(&kept);
        if let Some(run) = run {
            let _ = fs::hard_link(run, &kept);
        }
        for old in self.prune_fingerprints("bin", &path) {
            let _ = fs::remove_file(old.with_extension("run"));
        }
        Ok(())
    }

    /// Removes all but the [`Store::KEEP_FINGERPRINTS`] newest `*.<ext>` files of
    /// `fingerprints/` (never `current`, the one just written); returns the removed paths.
    fn prune_fingerprints(&self, ext: &str, current: &Path) -> Vec<PathBuf> {
        let suffix = format!(".{ext}");
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(self.root.join("fingerprints"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH), e.path()))
            .collect();
        let excess = files.len().saturating_sub(Self::KEEP_FINGERPRINTS);
        files.sort();
        files.truncate(excess);
        let pruned: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).filter(|p| p != current).collect();
        for p in &pruned {
            let _ = fs::remove_file(p);
        }
        pruned
    }

    /// How many fingerprint records [`Store::write_fingerprint`] keeps.
    pub const KEEP_FINGERPRINTS: usize = 8;

    /// Files fingerprint `fp` under a second key, `alias` (atomically; a no-op when it is already
    /// there). The libtorch-free `axbench` launcher cannot compute fingerprints, which hash the
    /// stage registry; it computes aliases, which hash the full binary's identity instead
    /// (`axbench_engine::fingerprint::launch_key`). Aliases live with the records, so `gc` and
    /// `verify` drop them together; one whose record was pruned just misses.
    pub fn write_alias(&self, alias: &Digest, fp: &Digest) -> Result<(), StoreError> {
        let path = self.root.join("fingerprints").join(format!("{}.alias", alias.to_hex()));
        if fs::read(&path).is_ok_and(|b| b == fp.0) {
            return Ok(());
        }
        write_atomic(&path, &fp.0).map_err(io_err(&path))?;
        self.prune_fingerprints("alias", &path);
        Ok(())
    }

    /// The fingerprint filed under `alias` by [`Store::write_alias`], if any.
    pub fn read_alias(&self, alias: &Digest) -> Option<Digest> {
        let b = fs::read(self.root.join("fingerprints").join(format!("{}.alias", alias.to_hex()))).ok()?;
        Some(Digest(b.try_into().ok()?))
    }

    /// Drops every fingerprint record (the next plan of every pipeline takes the full path).
    pub fn clear_fingerprints(&self) {
        let _ = fs::remove_dir_all(self.root.join("fingerprints"));
    }

    /// A read snapshot of the index, if the index is available.
    pub fn reader(&self) -> Option<IndexReader> {
        self.index.as_ref().and_then(|i| i.reader().ok())
    }

    /// Looks a node key up: index first, then the manifest on disk (repairing the index).
    pub fn lookup(&self, reader: Option<&IndexReader>, key: &Digest) -> Result<Option<NodeEntry>, StoreError> {
        if let Some(r) = reader
            && let Some(e) = r.node(key)?
        {
            return Ok(Some(e));
        }
        let manifest = match self.read_manifest(key) {
            Ok(m) => m,
            // Damaged provenance: treat the node as not computed; the run recomputes it and
            // writes a good manifest over this one.
            Err(e @ StoreError::Manifest { .. }) => {
                tracing::warn!("{e}; the node will be recomputed");
                None
            }
            Err(e) => return Err(e),
        };
        match manifest {
            Some(m) => {
                let entry = NodeEntry {
                    node: m.node.clone(),
                    outputs: m.outputs.clone(),
                };
                self.pending.lock().unwrap().nodes.push((*key, entry.clone()));
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    /// The key of the latest manifest recorded for node id `node` (what a stale node is
    /// diffed against).
    pub fn latest(&self, reader: Option<&IndexReader>, node: &str) -> Option<Digest> {
        reader.and_then(|r| r.latest(node).ok().flatten())
    }

    pub fn read_manifest(&self, key: &Digest) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(key);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Manifest { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Records a finished node: writes its manifest atomically (after its blobs are in
    /// place) and queues the index update.
    pub fn commit_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_path(&manifest.key);
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|source| StoreError::Manifest {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(io_err(&path))?;
        let mut pending = self.pending.lock().unwrap();
        pending.nodes.push((
            manifest.key,
            NodeEntry {
                node: manifest.node.clone(),
                outputs: manifest.outputs.clone(),
            },
        ));
        pending.latest.push((manifest.node.clone(), manifest.key));
        Ok(())
    }

    /// Records that `node` currently resolves to `key` (so `plan` can explain the next change).
    pub fn note_latest(&self, node: &str, key: &Digest) {
        self.pending.lock().unwrap().latest.push((node.to_string(), *key));
    }

    /// Content digest of a param file or directory, through the stat cache: a file whose
    /// size, mtime and inode are unchanged is not re-read. Directories hash the sorted
    /// relative paths and content digests of every file beneath them.
    pub fn path_digest(&self, reader: Option<&IndexReader>, path: &Path) -> Result<Digest, StoreError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, path, &mut files).map_err(io_err(path))?;
            files.sort();
            let mut h = blake3::Hasher::new();
            h.update(b"dir\0");
            for rel in files {
                let d = self.path_digest(reader, &path.join(&rel))?;
                h.update(rel.as_bytes());
                h.update(b"\0");
                h.update(&d.0);
            }
            return Ok(h.finalize().into());
        }
        let stat = FileStat::from_metadata(&meta);
        let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let abs_s = abs.to_string_lossy().to_string();
        if let Some(r) = reader
            && let Ok(Some((known, digest))) = r.file_stat(&abs_s)
            && known == stat
        {
            return Ok(digest);
        }
        let digest = hash_file(path).map_err(io_err(path))?;
        self.pending.lock().unwrap().file_stats.push((abs_s, stat, digest));
        Ok(digest)
    }

    /// Commits queued index writes. Safe to call often; a busy or missing index just keeps
    /// the writes queued (manifests are the truth, the index catches up later).
    pub fn flush_index(&self) -> Result<(), StoreError> {
        let Some(index) = &self.index else {
            self.pending.lock().unwrap().nodes.clear();
            return Ok(());
        };
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = index.write(&batch) {
            self.pending.lock().unwrap().append(batch);
            return Err(e.into());
        }
        Ok(())
    }

    /// All manifest keys on disk.
    pub fn manifest_keys(&self) -> Vec<(Digest, PathBuf)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(self.root.join("manifests")) else {
            return out;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if let Some(hex) = name.strip_suffix(".json")
                    && let Ok(d) = hex.parse()
                {
                    out.push((d, f.path()));
                }
            }
        }
        out
    }

    /// Rebuilds the index from the manifests (after damage, or on request).
    pub fn rebuild_index(&self) -> Result<(), StoreError> {
        match &self.index {
            Some(i) => self.rebuild_into(i),
            None => Ok(()),
        }
    }

    fn rebuild_into(&self, index: &Index) -> Result<(), StoreError> {
        let mut batch = IndexBatch::default();
        let mut manifests: Vec<Manifest> = Vec::new();
        for (_, path) in self.manifest_keys() {
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
                continue;
            };
            manifests.push(m);
        }
        // `latest` points at the newest manifest of each node.
        manifests.sort_by_key(|m| m.started_unix_ms);
        for m in manifests {
            batch.nodes.push((
                m.key,
                NodeEntry {
                    node: m.node.clone(),
                    outputs: m.outputs.clone(),
                },
            ));
            batch.latest.push((m.node.clone(), m.key));
        }
        index.write(&batch)?;
        Ok(())
    }

    /// Re-hashes every blob every manifest names. Corrupt blobs are quarantined so the next
    /// run recomputes them; a damaged index is rebuilt.
    pub fn verify(&mut self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        if self.index.is_none() {
            let (index, rebuilt) = self.open_index_or_rebuild()?;
            self.index = index;
            report.index_rebuilt = rebuilt;
        }
        let mut seen: HashSet<Digest> = HashSet::new();
        for (_, path) in self.manifest_keys() {
            report.manifests += 1;
            let m: Manifest = match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(m) => m,
                Err(error) => {
                    self.quarantine_manifest(&path);
                    report.problems.push(VerifyProblem::BadManifest { path, error });
                    continue;
                }
            };
            for out in m.outputs.values() {
                if !seen.insert(out.digest) {
                    continue;
                }
                let blob = self.blob_path(&out.digest);
                match hash_file(&blob) {
                    Ok(d) if d == out.digest => {
                        report.blobs += 1;
                        report.bytes += out.size;
                        if let Ok(stat) = FileStat::of(&blob) {
                            self.pending.lock().unwrap().blob_stats.push((out.digest, stat));
                        }
                    }
                    Ok(_) => {
                        self.quarantine(&out.digest);
                        report.problems.push(VerifyProblem::CorruptBlob {
                            digest: out.digest,
                            node: m.node.clone(),
                        });
                    }
                    Err(_) => report.problems.push(VerifyProblem::MissingBlob {
                        digest: out.digest,
                        node: m.node.clone(),
                    }),
                }
            }
        }
        if !report.problems.is_empty() {
            self.clear_fingerprints();
        }
        self.flush_index()?;
        Ok(report)
    }

    /// Appends a run record: every node key this run reached (computed or fresh). Returns
    /// its path.
    pub fn record_run(&self, keys: &[Digest]) -> Result<PathBuf, StoreError> {
        let mut text = String::with_capacity(keys.len() * 65);
        for k in keys {
            text.push_str(&k.to_hex());
            text.push('\n');
        }
        let path = self.new_run_path();
        write_atomic(&path, text.as_bytes()).map_err(io_err(&path))?;
        Ok(path)
    }

    fn new_run_path(&self) -> PathBuf {
        self.root
            .join("runs")
            .join(format!("{:013}-{}.txt", unix_ms(), std::process::id()))
    }

    /// Records a run that reached exactly the keys of the run kept with fingerprint `fp` (see
    /// [`Store::write_fingerprint`]): a hard link to that record instead of writing (and
    /// fsyncing) megabytes of identical keys again. Falls back to [`Store::record_run`].
    pub fn record_run_like(&self, fp: &Digest, keys: &[Digest]) -> Result<PathBuf, StoreError> {
        let kept = self.fingerprint_path(fp).with_extension("run");
        let path = self.new_run_path();
        if fs::hard_link(&kept, &path).is_ok() {
            let dir = self.root.join("runs");
            fsync_dir(&dir).map_err(io_err(&dir))?;
            return Ok(path);
        }
        self.record_run(keys)
    }

    /// Keeps what the `keep_runs` most recent runs reached and deletes every other manifest,
    /// log and blob; then rebuilds the index.
    pub fn gc(&mut self, keep_runs: usize) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        self.clear_fingerprints();
        let runs_dir = self.root.join("runs");
        let mut runs: Vec<PathBuf> = fs::read_dir(&runs_dir)
            .map_err(io_err(&runs_dir))?
            .flatten()
            .map(|e| e.path())
            .collect();
        runs.sort();
        runs.reverse();
        let mut keep: HashSet<Digest> = HashSet::new();
        for (i, run) in runs.iter().enumerate() {
            if i < keep_runs {
                let text = fs::read_to_string(run).unwrap_or_default();
                keep.extend(text.lines().filter_map(|l| l.parse::<Digest>().ok()));
            } else {
                let _ = fs::remove_file(run);
            }
        }
        let mut live_blobs: HashSet<Digest> = HashSet::new();
        let mut removed_keys = Vec::new();
        let reader = self.reader();
        for (key, path) in self.manifest_keys() {
            if keep.contains(&key) {
                report.kept_manifests += 1;
                match self.read_manifest(&key) {
                    Ok(Some(m)) => live_blobs.extend(m.outputs.values().map(|o| o.digest)),
                    // A damaged manifest: its blobs may well be intact (and `verify` decides),
                    // so keep what the index says the node wrote rather than delete them here.
                    _ => {
                        if let Some(Ok(Some(e))) = reader.as_ref().map(|r| r.node(&key)) {
                            live_blobs.extend(e.outputs.values().map(|o| o.digest));
                        }
                    }
                }
            } else {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(self.log_path(&key));
                let _ = fs::remove_file(self.lock_path(&key));
                removed_keys.push(key);
                report.removed_manifests += 1;
            }
        }
        drop(reader);
        let blobs = self.root.join("blobs");
        for shard in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let Ok(d) = f.file_name().to_string_lossy().parse::<Digest>() else {
                    continue;
                };
                if !live_blobs.contains(&d) {
                    report.freed_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(f.path());
                    report.removed_blobs += 1;
                }
            }
        }
        let _ = fs::remove_dir_all(self.root.join("quarantine"));
        self.clean_stale_staging();
        report.removed_temp = self.remove_temp_litter(TEMP_LITTER_AGE);
        if let Some(index) = &self.index {
            index.remove_nodes(&removed_keys)?;
        }
        Ok(report)
    }

    /// Removes `.tmp*` files (from [`write_atomic`]: a temp file beside its target, renamed
    /// over it once complete) older than `min_age` anywhere in the cache. Such a file exists
    /// only while a write is in flight, or forever after a process was killed mid-write; it is
    /// never read (readers open `<key>.json`, never a temp name). Returns how many it removed.
    pub fn remove_temp_litter(&self, min_age: Duration) -> usize {
        fn walk_tmp(dir: &Path, min_age: Duration, removed: &mut usize) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let Ok(ty) = e.file_type() else { continue };
                if ty.is_dir() {
                    walk_tmp(&e.path(), min_age, removed);
                } else if e.file_name().to_string_lossy().starts_with(".tmp")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() >= min_age)
                    && fs::remove_file(e.path()).is_ok()
                {
                    *removed += 1;
                }
            }
        }
        let mut removed = 0;
        for d in ["manifests", "runs", "fingerprints", "blobs", "logs"] {
            walk_tmp(&self.root.join(d), min_age, &mut removed);
        }
        removed
    }

    /// Summary numbers for `axbench status`.
    pub fn stats(&self) -> (usize, usize, u64) {
        let manifests = self.manifest_keys().len();
        let mut blobs = 0;
        let mut bytes = 0;
        for shard in fs::read_dir(self.root.join("blobs")).into_iter().flatten().flatten() {
            for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                blobs += 1;
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        (manifests, blobs, bytes)
    }

    /// Run records, newest first: (file name, number of keys).
    pub fn runs(&self) -> Vec<(String, usize)> {
        let mut runs: Vec<(String, usize)> = fs::read_dir(self.root.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let n = fs::read_to_string(e.path()).map(|t| t.lines().count()).unwrap_or(0);
                (e.file_name().to_string_lossy().to_string(), n)
            })
            .collect();
        runs.sort();
        runs.reverse();
        runs
    }

    /// Every key in every run record (used by `show` to resolve a node id to its key).
    pub fn all_manifests(&self) -> Vec<Manifest> {
        self.manifest_keys()
            .into_iter()
            .filter_map(|(k, _)| self.read_manifest(&k).ok().flatten())
            .collect()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: a busy index keeps its writes for the next run to repair.
        for _ in 0..50 {
            match self.flush_index() {
                Ok(()) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// [`Store::blobs_unchanged`] for the blobs of one shard directory.
fn shard_unchanged(dir: &Path, items: &[&(Digest, FileStat)]) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(d) = fs::File::open(dir) else { return false };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = [0u8; 65]; // 64 hex digits and a NUL
    items.iter().all(|(digest, want)| {
        for (i, b) in digest.0.iter().enumerate() {
            name[2 * i] = HEX[(b >> 4) as usize];
            name[2 * i + 1] = HEX[(b & 15) as usize];
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated, `st` is written by the call before it is read,
        // and `d` keeps the directory fd open for the duration of the call.
        let ok = unsafe { libc::fstatat(d.as_raw_fd(), name.as_ptr().cast(), st.as_mut_ptr(), 0) } == 0;
        if !ok {
            return false;
        }
        // SAFETY: fstatat returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // The field types of `libc::stat` differ between platforms; the casts are no-ops here.
        #[allow(clippy::unnecessary_cast)]
        let now = FileStat {
            size: st.st_size as u64,
            mtime_ns: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            inode: st.st_ino as u64,
        };
        now == *want
    })
}

fn is_busy(e: &IndexError) -> bool {
    matches!(e, IndexError::Db(redb::DatabaseError::DatabaseAlreadyOpen))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ty = e.file_type()?;
        let p = e.path();
        if ty.is_dir() {
            walk(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn set_readonly(path: &Path) -> io::Result<()> {
    let mut perms = fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms)
}

/// This machine's name, as staging dirs record it.
fn this_host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Store>();
}

/// Sorted set of keys, used by tests.
#[allow(dead_code)]
type KeySet = BTreeSet<Digest>;

#[cfg(test)]
mod tests {
    use super::*;

    fn count(dir: &Path, ext: &str) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == ext))
            .count()
    }

    #[test]
    fn fingerprint_records_and_aliases_keep_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let run = store.record_run(&[]).unwrap();
        let n = Store::KEEP_FINGERPRINTS + 3;
        for i in 0..n {
            let fp = crate::hash_bytes(format!("fp{i}").as_bytes());
            store.write_fingerprint(&fp, b"record", Some(&run)).unwrap();
            store
                .write_alias(&crate::hash_bytes(format!("alias{i}").as_bytes()), &fp)
                .unwrap();
        }
        let fps = dir.path().join("fingerprints");
        assert_eq!(count(&fps, "bin"), Store::KEEP_FINGERPRINTS);
        assert_eq!(count(&fps, "alias"), Store::KEEP_FINGERPRINTS);
        // A pruned record takes its kept run record along.
        assert_eq!(count(&fps, "run"), Store::KEEP_FINGERPRINTS);
        // The last written survive.
        let last = crate::hash_bytes(format!("fp{}", n - 1).as_bytes());
        assert!(store.read_fingerprint(&last).is_some());
        assert_eq!(
            store.read_alias(&crate::hash_bytes(format!("alias{}", n - 1).as_bytes())),
            Some(last)
        );
    }
}
