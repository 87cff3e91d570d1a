//! Per-node file locks: two `axbench run` processes on one cache never compute the same node
//! at the same time. The lock is advisory (flock) and released when the process dies, so a
//! `kill -9` never leaves a node locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// An exclusive lock on one node key, held until dropped.
#[derive(Debug)]
pub struct NodeLock {
    file: File,
    path: PathBuf,
}

impl NodeLock {
    /// Blocks until the lock on `path` is ours.
    pub fn acquire(path: &Path) -> io::Result<NodeLock> {
        let file = Self::open(path)?;
        fs4::FileExt::lock(&file)?;
        Ok(NodeLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock if nobody holds it; `Ok(None)` if another process (or thread) does.
    pub fn try_acquire(path: &Path) -> io::Result<Option<NodeLock>> {
        let file = Self::open(path)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => Ok(Some(NodeLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(fs4::TryLockError::WouldBlock) => Ok(None),
            Err(fs4::TryLockError::Error(e)) => Err(e),
        }
    }

    fn open(path: &Path) -> io::Result<File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.file);
    }
}
