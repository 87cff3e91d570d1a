//! The embedded index (redb): fast lookups for the planner. Everything in it can be rebuilt from
//! the manifests, so a damaged index costs time, never correctness.
//!
//! The database is opened in redb's `MultiWriter` mode, so several `axbench` processes can use
//! one cache at once; writes are batched ([`IndexBatch`]) because every commit fsyncs.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Digest, FileStat, OutputEntry};

/// node key (hex) → [`NodeEntry`] as JSON.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// node id → key (hex) of the latest manifest computed for it (what `plan` diffs against).
const LATEST: TableDefinition<&str, &str> = TableDefinition::new("latest");
/// blob digest (hex) → stat of the blob when it was last verified.
const BLOB_STAT: TableDefinition<&str, &[u8]> = TableDefinition::new("blob_stat");
/// absolute path of a param file → stat + content digest (the param stat cache).
const FILE_STAT: TableDefinition<&str, &[u8]> = TableDefinition::new("file_stat");

/// The index could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(#[from] redb::DatabaseError),
    #[error("index transaction: {0}")]
    Txn(#[from] redb::TransactionError),
    #[error("index table: {0}")]
    Table(#[from] redb::TableError),
    #[error("index storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("index commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("index entry: {0}")]
    Entry(#[from] serde_json::Error),
}

/// What the index keeps per node key: enough to plan without reading the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    pub outputs: BTreeMap<String, OutputEntry>,
}

/// Pending index writes, applied in one transaction.
#[derive(Default, Debug)]
pub struct IndexBatch {
    pub nodes: Vec<(Digest, NodeEntry)>,
    pub latest: Vec<(String, Digest)>,
    pub blob_stats: Vec<(Digest, FileStat)>,
    pub file_stats: Vec<(String, FileStat, Digest)>,
}

impl IndexBatch {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.latest.is_empty() && self.blob_stats.is_empty() && self.file_stats.is_empty()
    }
    pub fn append(&mut self, other: IndexBatch) {
        self.nodes.extend(other.nodes);
        self.latest.extend(other.latest);
        self.blob_stats.extend(other.blob_stats);
        self.file_stats.extend(other.file_stats);
    }
}

/// An open index database.
pub struct Index {
    db: redb::Database,
}

impl Index {
    /// Opens (or creates) the index at `path`, shared with other processes.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
        builder.set_cache_size(64 << 20);
        let db = builder.create(path)?;
        let index = Index { db };
        // Create the tables up front so read transactions never see them missing — only when
        // one is missing: a write transaction commits with an fsync, which would otherwise be
        // paid by every command, a no-op plan included.
        if index.reader().is_ok() {
            return Ok(index);
        }
        let txn = index.db.begin_write()?;
        {
            txn.open_table(NODES)?;
            txn.open_table(LATEST)?;
            txn.open_table(BLOB_STAT)?;
            txn.open_table(FILE_STAT)?;
        }
        txn.commit()?;
        Ok(index)
    }

    /// A consistent read snapshot.
    pub fn reader(&self) -> Result<IndexReader, IndexError> {
        let txn = self.db.begin_read()?;
        Ok(IndexReader {
            nodes: txn.open_table(NODES)?,
            latest: txn.open_table(LATEST)?,
            blob_stat: txn.open_table(BLOB_STAT)?,
            file_stat: txn.open_table(FILE_STAT)?,
        })
    }

    /// Applies a batch in one transaction (one fsync).
    pub fn write(&self, batch: &IndexBatch) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut nodes = txn.open_table(NODES)?;
            for (key, entry) in &batch.nodes {
                nodes.insert(key.to_hex().as_str(), serde_json::to_vec(entry)?.as_slice())?;
            }
            let mut latest = txn.open_table(LATEST)?;
            for (node, key) in &batch.latest {
                latest.insert(node.as_str(), key.to_hex().as_str())?;
            }
            let mut blob = txn.open_table(BLOB_STAT)?;
            for (digest, stat) in &batch.blob_stats {
                blob.insert(digest.to_hex().as_str(), stat.to_bytes().as_slice())?;
            }
            let mut files = txn.open_table(FILE_STAT)?;
            for (path, stat, digest) in &batch.file_stats {
                let mut v = stat.to_bytes().to_vec();
                v.extend_from_slice(&digest.0);
                files.insert(path.as_str(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes node entries (used by `gc`).
    pub fn remove_nodes(&self, keys: &[Digest]) -> Result<(), IndexError> {
        let txn = self.db.begin_write()?;
        {
            let mut nodes = txn.open_table(NODES)?;
            for key in keys {
                nodes.remove(key.to_hex().as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// A read snapshot of the index.
pub struct IndexReader {
    nodes: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    latest: redb::ReadOnlyTable<&'static str, &'static str>,
    blob_stat: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    file_stat: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl IndexReader {
    pub fn node(&self, key: &Digest) -> Result<Option<NodeEntry>, IndexError> {
        match self.nodes.get(key.to_hex().as_str())? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn latest(&self, node: &str) -> Result<Option<Digest>, IndexError> {
        Ok(self.latest.get(node)?.and_then(|v| v.value().parse().ok()))
    }

    pub fn blob_stat(&self, digest: &Digest) -> Result<Option<FileStat>, IndexError> {
        Ok(self
            .blob_stat
            .get(digest.to_hex().as_str())?
            .and_then(|v| FileStat::from_bytes(v.value())))
    }

    pub fn file_stat(&self, path: &str) -> Result<Option<(FileStat, Digest)>, IndexError> {
        Ok(self.file_stat.get(path)?.and_then(|v| {
            let b = v.value();
            let stat = FileStat::from_bytes(b)?;
            let digest: [u8; 32] = b.get(24..56)?.try_into().ok()?;
            Some((stat, Digest(digest)))
        }))
    }
}
