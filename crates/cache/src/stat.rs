//! File identity by `stat`: size, modification time and inode. A file whose stat is unchanged
//! since we hashed it is assumed unchanged, so a no-op rerun never re-reads big files.

use std::path::Path;

/// What `stat` says about a file. Equal stats mean "not touched since we last hashed it".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Modification time in nanoseconds since the epoch (nanosecond resolution on ext4/xfs).
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileStat {
    /// Stats `path`, following symlinks.
    pub fn of(path: &Path) -> std::io::Result<FileStat> {
        let meta = std::fs::metadata(path)?;
        Ok(Self::from_metadata(&meta))
    }

    pub fn from_metadata(meta: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    /// 24 bytes: size, mtime (ns), inode, little-endian.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[16..].copy_from_slice(&self.inode.to_le_bytes());
        b
    }

    /// The inverse of [`FileStat::to_bytes`]; `None` if `b` is shorter than 24 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<FileStat> {
        if b.len() < 24 {
            return None;
        }
        Some(FileStat {
            size: u64::from_le_bytes(b[..8].try_into().ok()?),
            mtime_ns: i64::from_le_bytes(b[8..16].try_into().ok()?),
            inode: u64::from_le_bytes(b[16..24].try_into().ok()?),
        })
    }
}
