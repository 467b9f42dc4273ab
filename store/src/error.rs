//! The store's error type: one enum for the store boundary, with typed context.

use std::io;
use std::path::{Path, PathBuf};

use preheat_core::Digest;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no space left on the device holding {path}")]
    NoSpace { path: PathBuf },
    #[error("store is full: {needed} bytes needed, cap is {max} bytes")]
    Full { needed: u64, max: u64 },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("blob {0} is busy (being written or evicted)")]
    Busy(Digest),
    #[error("blob {0} is already complete")]
    Exists(Digest),
    #[error("blob of {size} bytes is larger than the {limit} bytes allowed here")]
    TooLarge { size: u64, limit: u64 },
    #[error("chunk {index} of {digest} does not match its expected hash")]
    ChunkMismatch { digest: Digest, index: u32 },
    #[error("chunk {index} of {digest} is not stored")]
    ChunkMissing { digest: Digest, index: u32 },
    #[error("blob {digest} is incomplete: {missing} chunks missing")]
    Incomplete { digest: Digest, missing: u32 },
    #[error("chunk index does not fit blob {digest}: {reason}")]
    IndexMismatch {
        digest: Digest,
        reason: &'static str,
    },
    #[error("corrupt store file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("chunk size {0} is outside the accepted range")]
    BadChunkSize(u32),
}

impl StoreError {
    /// A short stable name, for metric labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::NoSpace { .. } => "no_space",
            Self::Full { .. } => "full",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::NotFound(_) => "not_found",
            Self::Busy(_) => "busy",
            Self::Exists(_) => "exists",
            Self::TooLarge { .. } => "too_large",
            Self::ChunkMismatch { .. } => "chunk_mismatch",
            Self::ChunkMissing { .. } => "chunk_missing",
            Self::Incomplete { .. } => "incomplete",
            Self::IndexMismatch { .. } => "index_mismatch",
            Self::Corrupt { .. } => "corrupt",
            Self::BadChunkSize(_) => "bad_chunk_size",
        }
    }

    /// Maps an I/O error on `path`, turning "disk full" and "quota exceeded" into [`StoreError::NoSpace`].
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let full = source.kind() == io::ErrorKind::StorageFull
            || source.kind() == io::ErrorKind::QuotaExceeded
            || matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT));
        if full {
            Self::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Attaches a path to an I/O result.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(path, e))
    }
}

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e),
        }),
    }
}
