//! Content-addressed blob store of image-preheat: verified, chunk-indexed, resumable, size-capped.
//!
//! ```text
//! <dir>/blobs/sha256/<hex>          complete blob, read-only, sha256 verified before it got here
//! <dir>/blobs/sha256/<hex>.index    its ChunkIndex (JSON, blake3 per chunk)
//! <dir>/partial/<hex>/data          chunks written at their offsets, in any order
//! <dir>/partial/<hex>/chunks.log    36-byte records (u32 LE index, blake3), appended after fdatasync
//! <dir>/partial/<hex>/meta.json     layout and, in swarm mode, the expected chunk index
//! <dir>/images/<sha256 of ref>.json ImageRecord
//! <dir>/tmp/                        temporary files, emptied on open
//! ```
//!
//! Crash safety (a SIGKILL or power loss at any instant):
//! - A blob is complete if and only if `blobs/sha256/<hex>` exists. That name is only ever created
//!   by `rename` of a file whose sha256 was checked and which was fsynced, and its index was renamed
//!   into place (and the directory fsynced) before; so a complete blob always has its index, and
//!   anything interrupted earlier leaves only a partial or a temporary file.
//! - A chunk is recorded in `chunks.log` only after its data was fdatasync'ed; on open a torn
//!   trailing record is dropped and every record is re-hashed against the data, so resuming never
//!   trusts a lie on disk. The final sha256 check covers anything the chunk hashes could not.
//! - `chunks.log` itself is not fsynced per record: after a power loss a record may be missing
//!   (that chunk is fetched again) or torn (dropped), never trusted unverified.
//! - On open: `tmp/` is emptied, an index without its blob is removed, a blob without its index gets
//!   it rebuilt (and its sha256 re-checked), a partial whose blob is complete is removed.
//! - `ENOSPC` on any write is [`StoreError::NoSpace`]; the chunk being written is not recorded and
//!   the store stays usable.
//!
//! One writer per blob per process ([`StoreError::Busy`]); readers read complete blobs and verified
//! chunks of partial ones while a writer writes. Memory per writer is one chunk. The store assumes a
//! single process owns its directory.

mod blobs;
mod error;
mod evict;
mod hashes;
mod images;
mod partial;
mod paths;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use preheat_core::chunk::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use preheat_core::Digest;
use tokio::sync::broadcast;

pub use blobs::PartialInfo;
pub use error::StoreError;
pub use hashes::{ChunkHashes, ChunkWritten};
pub use images::{ImageRecord, ImageStatus};
pub use writer::BlobWriter;

use error::blocking;
use evict::{State, Victim};
use paths::Paths;

/// Largest blob [`Store::read_small`] returns.
pub const SMALL_LIMIT: u64 = 4 * 1024 * 1024;

/// Where and how big the store is.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// Size cap; `None` for unlimited.
    pub max_bytes: Option<u64>,
    /// Chunk size of new blobs (64 KiB ..= 64 MiB).
    pub chunk_size: u32,
}

impl StoreConfig {
    /// A store in `dir` with no cap and the default 4 MiB chunks.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// A handle to the store; clones share it.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    paths: Paths,
    chunk_size: u32,
    max_bytes: Option<u64>,
    state: Mutex<State>,
    evictions: broadcast::Sender<Digest>,
    chunks: broadcast::Sender<ChunkWritten>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.dir`, repairing what a crash left behind.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cfg.chunk_size) {
            return Err(StoreError::BadChunkSize(cfg.chunk_size));
        }
        let paths = Paths::new(cfg.dir.clone());
        let chunk_size = cfg.chunk_size;
        let (paths, state) = blocking(move || {
            paths.prepare()?;
            let state = blobs::load_state(&paths, chunk_size)?;
            Ok((paths, state))
        })
        .await?;
        tracing::debug!(
            dir = %cfg.dir.display(),
            blobs = state.blobs.len(),
            partials = state.partials.len(),
            usage = state.usage(),
            "store opened"
        );
        let (evictions, _) = broadcast::channel(1024);
        let (chunks, _) = broadcast::channel(hashes::CHUNK_NOTICES);
        Ok(Store {
            inner: Arc::new(Inner {
                paths,
                chunk_size,
                max_bytes: cfg.max_bytes,
                state: Mutex::new(state),
                evictions,
                chunks,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        self.inner.paths.root()
    }

    /// Chunk size used for new blobs.
    pub fn chunk_size(&self) -> u32 {
        self.inner.chunk_size
    }

    /// Bytes of complete blobs plus the reserved size of partial ones.
    pub fn usage(&self) -> u64 {
        self.inner.lock().usage()
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.inner.max_bytes
    }

    /// Digests of evicted (complete or partial) blobs, for withdrawing advertisements.
    /// Bounded: a receiver that lags loses the oldest notices.
    pub fn subscribe_evictions(&self) -> broadcast::Receiver<Digest> {
        self.inner.evictions.subscribe()
    }

    /// Every chunk stored into a partial blob from now on, by any writer (sequential registry
    /// stream or swarm), after it was verified and made durable. Bounded: a receiver that lags
    /// loses the oldest notices (and should re-read [`Store::chunk_hashes`]).
    pub fn subscribe_chunks(&self) -> broadcast::Receiver<ChunkWritten> {
        self.inner.chunks.subscribe()
    }

    /// Reserves `needed` bytes, evicting if the cap requires it.
    async fn reserve(&self, needed: u64) -> Result<Reservation, StoreError> {
        let victims = self.inner.lock().reserve(needed, self.inner.max_bytes)?;
        let reservation = Reservation {
            inner: self.inner.clone(),
            bytes: needed,
        };
        if !victims.is_empty() {
            self.evict(victims).await;
        }
        Ok(reservation)
    }

    /// Deletes the victims' files. Runs to the end even if the caller is cancelled.
    async fn evict(&self, victims: Vec<Victim>) {
        let inner = self.inner.clone();
        let res = tokio::task::spawn_blocking(move || {
            for v in &victims {
                let res = match v {
                    Victim::Blob(d) => paths::remove_if_exists(&inner.paths.blob(d))
                        .and_then(|()| paths::remove_if_exists(&inner.paths.index(d))),
                    Victim::Partial(p) => paths::remove_dir_if_exists(&p.dir),
                };
                if let Err(e) = res {
                    tracing::warn!(digest = %v.digest(), error = %e, "eviction failed to remove files");
                }
            }
            let _ = paths::fsync_dir(inner.paths.blobs_dir());
            inner.lock().evicted(&victims);
            for v in &victims {
                tracing::debug!(digest = %v.digest(), "blob evicted");
                let _ = inner.evictions.send(v.digest());
            }
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "eviction task failed");
        }
    }

    /// Marks `d` busy until the guard drops.
    fn claim(&self, d: Digest) -> Result<BusyGuard, StoreError> {
        let mut st = self.inner.lock();
        if !st.busy.insert(d) {
            return Err(StoreError::Busy(d));
        }
        Ok(BusyGuard {
            inner: self.inner.clone(),
            digest: d,
        })
    }
}

/// Bytes counted in `pending` until dropped (by then the real entry, if any, is in place).
struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.pending = st.pending.saturating_sub(self.bytes);
    }
}

/// A digest marked busy; unmarked on drop.
#[derive(Debug)]
struct BusyGuard {
    inner: Arc<Inner>,
    digest: Digest,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.inner.lock().busy.remove(&self.digest);
    }
}
