//! axbench-cache: a content-addressed artifact store.
//!
//! The store knows bytes, digests and node manifests; it knows nothing about pipelines. The
//! engine decides *what* a node key is; this crate decides *where* its outputs live and makes
//! every write crash-safe.
//!
//! Imports no other axbench crate.
//!
//! Layout of a cache directory (default `.axbench/` in the project dir):
//!
//! ```text
//! blobs/ab/abcdef…        artifact bytes, named by their blake3 digest, read-only
//! manifests/ab/abcdef….json  one readable JSON manifest per computed node key (source of truth)
//! index.redb              embedded index (redb): key → outputs, node → latest key, stat caches
//! locks/abcdef….lock      per-node file locks (fs4) so two processes never compute one node twice
//! tmp/                    staging dirs; outputs are promoted into blobs/ only after success
//! logs/abcdef….log        per-node stage logs
//! runs/                   which keys each run reached (what `gc` keeps)
//! ```
//!
//! Invariants:
//! - A blob is written to a temp file, fsynced, renamed into place, and its directory fsynced.
//!   A blob path therefore either does not exist or holds exactly the bytes of its digest —
//!   unless something outside the store damaged it, which [`Store::check_blob`] detects.
//! - A manifest is written only after every blob it names is in place. A manifest that exists
//!   means the node finished.
//! - The index is an accelerator. It can be deleted or damaged at any time; it is rebuilt from
//!   the manifests ([`Store::rebuild_index`]).

mod atomic;
mod digest;
mod index;
mod lock;
mod manifest;
mod stat;
mod store;

pub use atomic::{fsync_dir, write_atomic};
pub use digest::{Digest, DigestParseError, hash_bytes, hash_file};
pub use index::{Index, IndexBatch, IndexError, IndexReader, NodeEntry};
pub use lock::NodeLock;
pub use manifest::{Manifest, ManifestInput, OutputEntry};
pub use stat::FileStat;
pub use store::{GcReport, Store, StoreError, TEMP_LITTER_AGE, VerifyProblem, VerifyReport};
