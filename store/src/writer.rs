//! Writing one blob: sequentially (registry pulls) or chunk by chunk in any order (swarm).
//!
//! Sequential mode buffers at most one chunk: `write` fills the chunk at the write position and
//! stores it when full. Swarm mode stores whole chunks checked against an expected blake3 hash and,
//! once set, the peer-supplied chunk index. `finish` checks the sha256 of the whole blob (hashed
//! incrementally while chunks arrive in order, the rest read back from disk) before the blob is
//! installed; a mismatch discards the partial.

use std::mem;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

use preheat_core::chunk::chunk_hash;
use preheat_core::digest::Hasher;
use preheat_core::{ChunkIndex, ChunkLayout, Digest};

use crate::blobs::install;
use crate::error::{blocking, IoContext};
use crate::evict::{BlobEntry, PartialEntry, Verified};
use crate::partial::Partial;
use crate::paths::{fsync_dir, partial_data, remove_dir_if_exists};
use crate::{BusyGuard, Store, StoreError};

impl Store {
    /// A writer for blob `d` of `size` bytes: resumes its partial if there is one, else reserves
    /// `size` bytes (evicting if needed) and creates it. One writer per blob at a time.
    pub async fn writer(&self, d: Digest, size: u64) -> Result<BlobWriter, StoreError> {
        if self.contains(&d).await {
            return Err(StoreError::Exists(d));
        }
        let busy = self.claim(d)?;
        if self.contains(&d).await {
            return Err(StoreError::Exists(d));
        }
        let existing = self
            .inner
            .lock()
            .partials
            .get(&d)
            .map(|e| e.partial.clone());
        let partial = match existing {
            Some(p) => {
                let have = p.size();
                if have != size {
                    return Err(StoreError::SizeMismatch {
                        digest: d,
                        expected: have,
                        actual: size,
                    });
                }
                p
            }
            None => {
                let reservation = self.reserve(size).await?;
                let layout = ChunkLayout::new(size, self.chunk_size());
                let inner = self.inner.clone();
                let p = blocking(move || Partial::create(&inner.paths, d, layout)).await?;
                let p = Arc::new(p);
                self.inner.lock().insert_partial(
                    d,
                    PartialEntry {
                        size,
                        last_access: SystemTime::now(),
                        partial: p.clone(),
                    },
                );
                drop(reservation);
                p
            }
        };
        Ok(BlobWriter::new(self.clone(), partial, busy))
    }
}

/// Writes one blob; see the module docs. Dropping it keeps the partial for a later resume.
pub struct BlobWriter {
    store: Store,
    partial: Arc<Partial>,
    _busy: BusyGuard,
    digest: Digest,
    layout: ChunkLayout,
    done: Vec<bool>,
    bytes_done: u64,
    /// Sequential write position; `buf` holds the bytes from the chunk start up to here.
    pos: u64,
    buf: Vec<u8>,
    /// sha256 of the prefix `0..hashed`.
    sha: Hasher,
    hashed: u64,
    /// Read-back buffer for extending `sha` over chunks stored out of order.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("layout", &self.layout)
            .field("bytes_done", &self.bytes_done)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// Bytes of stored chunks one chunk write may read back to extend the sha256 prefix, so a write
/// stays short while the hashing keeps pace with an out-of-order download.
const RUN_PER_WRITE: u64 = 16 * 1024 * 1024;

/// Extends the sha256 of the prefix `0..hashed` over the stored chunks that follow it, reading at
/// most about `budget` bytes back from the partial (page cache); returns the new prefix length.
/// The bytes read back are not re-hashed with blake3: `finish` does that only when the sha256
/// fails. Blocking.
fn hash_stored_run(
    p: &Partial,
    layout: ChunkLayout,
    sha: &mut Hasher,
    mut hashed: u64,
    budget: u64,
    buf: &mut Vec<u8>,
) -> Result<u64, StoreError> {
    let path = partial_data(&p.dir);
    let mut read = 0u64;
    while hashed < layout.size && read < budget {
        let i = layout.chunk_of(hashed);
        if p.lock().hashes.get(i as usize).is_none_or(Option::is_none) {
            break;
        }
        buf.resize(layout.len(i) as usize, 0);
        p.data.read_exact_at(buf, layout.offset(i)).at(&path)?;
        sha.update(buf);
        hashed += buf.len() as u64;
        read += buf.len() as u64;
    }
    Ok(hashed)
}

impl BlobWriter {
    fn new(store: Store, partial: Arc<Partial>, busy: BusyGuard) -> Self {
        let (layout, done, bytes_done) = {
            let st = partial.lock();
            let done = st.hashes.iter().map(Option::is_some).collect();
            (st.layout, done, st.bytes_done)
        };
        let mut w = Self {
            store,
            digest: partial.digest,
            partial,
            _busy: busy,
            layout,
            done,
            bytes_done,
            pos: 0,
            buf: Vec::new(),
            sha: Hasher::new(),
            hashed: 0,
            scratch: Vec::new(),
        };
        w.advance();
        w
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Where the next [`write`](Self::write) continues. For a new writer: the contiguous verified
    /// prefix. Then it advances with every byte written (chunks stored meanwhile by `write_chunk` are
    /// compared, not skipped); bytes buffered for an unfinished chunk are lost if the writer is
    /// dropped. After a failed `write` it is the start of the chunk that failed.
    pub fn resume_offset(&self) -> u64 {
        self.pos
    }

    /// Moves the sequential position to the start of chunk `i` (to fill a gap between chunks stored
    /// out of order). Only between chunks: nothing may be buffered.
    pub fn seek_chunk(&mut self, i: u32) -> Result<(), StoreError> {
        if !self.buf.is_empty() || i > self.layout.count() {
            return Err(StoreError::SizeMismatch {
                digest: self.digest,
                expected: self.layout.size,
                actual: self.layout.offset(i),
            });
        }
        self.pos = self.layout.offset(i).min(self.layout.size);
        Ok(())
    }

    /// Length of the contiguous prefix of stored, verified chunks.
    pub fn verified_offset(&self) -> u64 {
        let first_missing = self.done.iter().position(|d| !d);
        first_missing.map_or(self.layout.size, |i| {
            self.layout.offset(u32::try_from(i).unwrap_or(u32::MAX))
        })
    }

    /// One flag per chunk: stored and verified.
    pub fn done(&self) -> &[bool] {
        &self.done
    }

    pub fn bytes_done(&self) -> u64 {
        self.bytes_done
    }

    /// The expected chunk index, if one was set.
    pub fn index(&self) -> Option<ChunkIndex> {
        self.partial.lock().index.clone()
    }

    /// Moves the sequential position past the stored prefix. Only when the writer is created: a
    /// stream in progress keeps delivering the bytes of chunks stored meanwhile (they are compared).
    fn advance(&mut self) {
        while self.pos < self.layout.size {
            let i = self.layout.chunk_of(self.pos);
            if !self.done[i as usize] {
                break;
            }
            self.pos = self.layout.offset(i) + u64::from(self.layout.len(i));
        }
    }

    /// Appends `data` at [`resume_offset`](Self::resume_offset), storing each chunk as it fills.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            if self.pos >= self.layout.size {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected: self.layout.size,
                    actual: self.pos + data.len() as u64,
                });
            }
            let start = self.pos - self.buf.len() as u64;
            let i = self.layout.chunk_of(start);
            let want = self.layout.len(i) as usize;
            if self.buf.capacity() < want {
                self.buf.reserve_exact(want - self.buf.len());
            }
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            if self.buf.len() == want {
                let chunk = mem::take(&mut self.buf);
                let res = self.store_chunk(i, chunk, None).await;
                match res {
                    Ok(mut chunk) => {
                        chunk.clear();
                        self.buf = chunk;
                    }
                    Err(e) => {
                        self.pos = start;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Stores chunk `i` whose blake3 hash must be `expected` (and match the chunk index, if set).
    pub async fn write_chunk(
        &mut self,
        i: u32,
        data: &[u8],
        expected: &[u8; 32],
    ) -> Result<(), StoreError> {
        let mismatch = StoreError::ChunkMismatch {
            digest: self.digest,
            index: i,
        };
        if i >= self.layout.count() || data.len() != self.layout.len(i) as usize {
            return Err(mismatch);
        }
        self.store_chunk(i, data.to_vec(), Some(*expected)).await?;
        Ok(())
    }

    /// [`write_chunk`](Self::write_chunk) without a copy: takes the buffer and gives it back
    /// (also on error, when it was not consumed) for the caller to reuse.
    pub async fn write_chunk_owned(
        &mut self,
        i: u32,
        data: Vec<u8>,
        expected: &[u8; 32],
    ) -> (Result<(), StoreError>, Option<Vec<u8>>) {
        if i >= self.layout.count() || data.len() != self.layout.len(i) as usize {
            let mismatch = StoreError::ChunkMismatch {
                digest: self.digest,
                index: i,
            };
            return (Err(mismatch), Some(data));
        }
        match self.store_chunk(i, data, Some(*expected)).await {
            Ok(buf) => (Ok(()), Some(buf)),
            Err(e) => (Err(e), None),
        }
    }

    /// Verifies and stores one whole chunk; gives the buffer back.
    async fn store_chunk(
        &mut self,
        i: u32,
        chunk: Vec<u8>,
        expected: Option<[u8; 32]>,
    ) -> Result<Vec<u8>, StoreError> {
        let mismatch = StoreError::ChunkMismatch {
            digest: self.digest,
            index: i,
        };
        let hash = chunk_hash(&chunk);
        let (indexed, recorded) = {
            let st = self.partial.lock();
            let indexed = st
                .index
                .as_ref()
                .and_then(|ix| ix.hashes.get(i as usize).copied());
            (indexed, st.hashes.get(i as usize).copied().flatten())
        };
        if expected.is_some_and(|e| e != hash) || indexed.is_some_and(|e| e != hash) {
            return Err(mismatch);
        }
        if let Some(have) = recorded {
            return if have == hash {
                Ok(chunk)
            } else {
                Err(mismatch)
            };
        }
        let p = self.partial.clone();
        let inner = self.store.inner.clone();
        let (layout, mut sha, mut hashed) = (self.layout, self.sha.clone(), self.hashed);
        let mut scratch = mem::take(&mut self.scratch);
        // The notice goes out from the blocking task, so a cancelled caller cannot lose it.
        let (chunk, sha, hashed, scratch) = blocking(move || {
            p.write_chunk(i, &chunk, hash)?;
            let _ = inner.chunks.send(crate::ChunkWritten {
                digest: p.digest,
                chunk: i,
                hash,
            });
            if layout.offset(i) == hashed {
                sha.update(&chunk);
                hashed += chunk.len() as u64;
                hashed =
                    hash_stored_run(&p, layout, &mut sha, hashed, RUN_PER_WRITE, &mut scratch)?;
            }
            Ok((chunk, sha, hashed, scratch))
        })
        .await?;
        self.scratch = scratch;
        self.done[i as usize] = true;
        self.bytes_done += chunk.len() as u64;
        self.sha = sha;
        self.hashed = hashed;
        Ok(chunk)
    }

    /// Adopts the chunk index of this blob (swarm mode): chunks must then match it.
    pub async fn set_index(&mut self, index: ChunkIndex) -> Result<(), StoreError> {
        if index.layout != self.layout && !self.buf.is_empty() {
            return Err(StoreError::IndexMismatch {
                digest: self.digest,
                reason: "index chunk size differs from the chunk being written",
            });
        }
        let p = self.partial.clone();
        let inner = self.store.inner.clone();
        blocking(move || p.set_index(&inner.paths, index)).await?;
        let st = self.partial.lock();
        if st.layout != self.layout {
            self.layout = st.layout;
            self.done = vec![false; st.hashes.len()];
            self.bytes_done = 0;
            self.pos = 0;
            self.sha = Hasher::new();
            self.hashed = 0;
        }
        Ok(())
    }

    /// Adopts the chunk layout of a peer's provisional index (swarm mode, before its full index is
    /// known). Allowed while no chunk is stored or when the layout is already this one.
    pub async fn set_layout(&mut self, layout: ChunkLayout) -> Result<(), StoreError> {
        if layout == self.layout {
            return Ok(());
        }
        if !self.buf.is_empty() {
            return Err(StoreError::IndexMismatch {
                digest: self.digest,
                reason: "index chunk size differs from the chunk being written",
            });
        }
        let p = self.partial.clone();
        let inner = self.store.inner.clone();
        blocking(move || p.set_layout(&inner.paths, layout)).await?;
        self.layout = layout;
        self.done = vec![false; layout.count() as usize];
        self.bytes_done = 0;
        self.pos = 0;
        self.sha = Hasher::new();
        self.hashed = 0;
        Ok(())
    }

    /// Checks the sha256 and installs the blob. On a digest mismatch the partial is discarded.
    pub async fn finish(self) -> Result<(), StoreError> {
        let missing = self.done.iter().filter(|d| !**d).count();
        if missing > 0 || !self.buf.is_empty() {
            return Err(StoreError::Incomplete {
                digest: self.digest,
                missing: u32::try_from(missing.max(1)).unwrap_or(u32::MAX),
            });
        }
        let digest = self.digest;
        let layout = self.layout;
        let p = self.partial.clone();
        let inner = self.store.inner.clone();
        let (sha, hashed) = (self.sha.clone(), self.hashed);
        // Everything, including the bookkeeping, happens in the blocking task so that a cancelled
        // caller cannot leave the in-memory state behind the disk.
        blocking(move || {
            let path = partial_data(&p.dir);
            let hashes: Vec<[u8; 32]> = p
                .lock()
                .hashes
                .iter()
                .map(|h| h.unwrap_or_default())
                .collect();
            let mut sha = sha;
            let mut scratch = Vec::new();
            hash_stored_run(&p, layout, &mut sha, hashed, u64::MAX, &mut scratch)?;
            let actual = sha.finish();
            if actual != digest {
                // Chunks read back were not re-hashed: a chunk changed on disk since it was
                // verified is a local fault, not a forged index; find it before blaming peers.
                let mut buf = Vec::new();
                for i in 0..layout.count() {
                    buf.resize(layout.len(i) as usize, 0);
                    p.data.read_exact_at(&mut buf, layout.offset(i)).at(&path)?;
                    if chunk_hash(&buf) != hashes[i as usize] {
                        p.forget(i);
                        let reason = format!("chunk {i} changed on disk");
                        return Err(StoreError::corrupt(&path, reason));
                    }
                }
                tracing::warn!(%digest, %actual, "blob digest mismatch, partial discarded");
                inner.lock().remove_partial(&digest);
                remove_dir_if_exists(&p.dir)?;
                return Err(StoreError::DigestMismatch {
                    expected: digest,
                    actual,
                });
            }
            p.data.sync_all().at(&path)?;
            let ix = ChunkIndex {
                blob: digest,
                layout,
                hashes,
            };
            install(&inner.paths, &path, &ix)?;
            let now = SystemTime::now();
            {
                let mut st = inner.lock();
                st.remove_partial(&digest);
                st.insert_blob(
                    digest,
                    BlobEntry {
                        size: layout.size,
                        last_access: now,
                        persisted: now,
                        verified: Arc::new(Verified::new(layout.count(), true)),
                        index: Arc::new(ix),
                    },
                );
            }
            tracing::debug!(%digest, size = layout.size, "blob stored");
            // The blob is complete; a left-over partial directory is removed on the next open.
            if let Err(e) =
                remove_dir_if_exists(&p.dir).and_then(|()| fsync_dir(inner.paths.partial_root()))
            {
                tracing::warn!(%digest, error = %e, "could not remove finished partial");
            }
            Ok(())
        })
        .await
    }

    /// Removes the partial blob.
    pub async fn discard(self) -> Result<(), StoreError> {
        self.discard_files().await
    }

    async fn discard_files(&self) -> Result<(), StoreError> {
        self.store.inner.lock().remove_partial(&self.digest);
        let dir = self.partial.dir.clone();
        blocking(move || remove_dir_if_exists(&dir)).await
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let mut st = self.store.inner.lock();
        if let Some(e) = st.partials.get_mut(&self.digest) {
            e.last_access = SystemTime::now();
        }
    }
}
