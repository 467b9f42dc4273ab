//! What the store can tell about a blob's chunks while it is still being written: the notices of
//! newly stored chunks and the hashes known so far (a provisional chunk index).
//!
//! Every hash reported for a stored chunk was computed from its bytes after they were made durable;
//! hashes of a partial's chunk index (swarm mode) are a peer's claims, as are the chunks verified
//! against them, until the blob's sha256 is checked by `BlobWriter::finish`.

use preheat_core::{ChunkIndex, ChunkLayout, Digest};

use crate::{Store, StoreError};

/// Capacity of the chunk notification channel.
pub(crate) const CHUNK_NOTICES: usize = 1024;

/// A chunk of a partial blob was stored and verified (by any writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkWritten {
    pub digest: Digest,
    pub chunk: u32,
    /// blake3 of the chunk's bytes.
    pub hash: [u8; 32],
}

/// The chunk hashes known for a blob: all of them for a complete blob or a partial one with a
/// chunk index, otherwise those of its stored chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHashes {
    pub blob: Digest,
    pub layout: ChunkLayout,
    /// One entry per chunk, `None` where the hash is not known yet.
    pub hashes: Vec<Option<[u8; 32]>>,
    /// Every hash is known (complete blob, or a partial with a chunk index).
    pub complete: bool,
    /// Which chunks are stored and readable now.
    pub stored: Vec<bool>,
}

impl ChunkHashes {
    fn full(ix: &ChunkIndex, stored: Vec<bool>) -> Self {
        Self {
            blob: ix.blob,
            layout: ix.layout,
            hashes: ix.hashes.iter().copied().map(Some).collect(),
            complete: true,
            stored,
        }
    }

    /// The full chunk index, when every hash is known.
    pub fn to_index(&self) -> Option<ChunkIndex> {
        let hashes = self.hashes.iter().copied().collect::<Option<Vec<_>>>()?;
        Some(ChunkIndex {
            blob: self.blob,
            layout: self.layout,
            hashes,
        })
    }
}

impl Store {
    /// The chunk hashes known for `d` (complete or partial); `None` when the store has neither.
    pub async fn chunk_hashes(&self, d: &Digest) -> Result<Option<ChunkHashes>, StoreError> {
        let st = self.inner.lock();
        if let Some(e) = st.blobs.get(d) {
            let n = e.index.layout.count() as usize;
            return Ok(Some(ChunkHashes::full(&e.index, vec![true; n])));
        }
        let Some(p) = st.partials.get(d) else {
            return Ok(None);
        };
        let ps = p.partial.lock();
        let stored: Vec<bool> = ps.hashes.iter().map(Option::is_some).collect();
        if let Some(ix) = &ps.index {
            return Ok(Some(ChunkHashes::full(ix, stored)));
        }
        Ok(Some(ChunkHashes {
            blob: *d,
            layout: ps.layout,
            hashes: ps.hashes.clone(),
            complete: false,
            stored,
        }))
    }
}
