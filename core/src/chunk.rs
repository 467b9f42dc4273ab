//! Fixed-size chunking of a blob and its blake3 chunk index.
//!
//! A blob of `size` bytes is cut into chunks of `chunk_size` bytes (the last one shorter). The chunk
//! index lists one blake3 hash per chunk and names the sha256 digest of the whole blob it belongs to.
//! A chunk index received from anywhere is only a claim until the whole blob hashed to `blob`; see
//! the trust chain in the swarm crate's docs.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Default chunk size: 4 MiB, as Kraken's pieces (issue 2). Small clusters with small images
/// finish sooner with 1 MiB (`CHUNK_SIZE`; the lab runs with it, README "Capacity and
/// benchmarks"), at four times the chunk-index and request overhead.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Smallest and largest chunk sizes accepted from configuration or a peer.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;

/// How a blob is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkLayout {
    pub size: u64,
    pub chunk_size: u32,
}

impl ChunkLayout {
    pub fn new(size: u64, chunk_size: u32) -> Self {
        Self { size, chunk_size }
    }

    /// Number of chunks; an empty blob has none.
    pub fn count(&self) -> u32 {
        let n = self.size.div_ceil(u64::from(self.chunk_size.max(1)));
        // A blob needs more than 2^32 chunks only past 256 TiB at the smallest chunk size.
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Byte offset of chunk `i`.
    pub fn offset(&self, i: u32) -> u64 {
        u64::from(i) * u64::from(self.chunk_size)
    }

    /// Length of chunk `i` (0 past the end).
    pub fn len(&self, i: u32) -> u32 {
        let start = self.offset(i);
        let end = (start + u64::from(self.chunk_size)).min(self.size);
        // end - start <= chunk_size, which is a u32.
        u32::try_from(end.saturating_sub(start)).unwrap_or(0)
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u32 {
        u32::try_from(offset / u64::from(self.chunk_size.max(1))).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// One blake3 hash per chunk, bound to the blob's sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkIndex {
    pub blob: Digest,
    pub layout: ChunkLayout,
    #[serde(with = "hashes_hex")]
    pub hashes: Vec<[u8; 32]>,
}

/// Why a chunk index is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkIndexError {
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("chunk index has {got} hashes, the layout needs {want}")]
    HashCount { got: usize, want: u32 },
}

impl ChunkIndex {
    /// Checks the shape (not the content) of an index received from elsewhere.
    pub fn validate(&self) -> Result<(), ChunkIndexError> {
        let cs = self.layout.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(ChunkIndexError::ChunkSize(cs));
        }
        if self.hashes.len() != self.layout.count() as usize {
            return Err(ChunkIndexError::HashCount {
                got: self.hashes.len(),
                want: self.layout.count(),
            });
        }
        Ok(())
    }

    /// True when `data` is chunk `i` of this blob.
    pub fn verify(&self, i: u32, data: &[u8]) -> bool {
        self.hashes.get(i as usize).is_some_and(|h| {
            data.len() == self.layout.len(i) as usize && blake3::hash(data).as_bytes() == h
        })
    }
}

/// Hash of one chunk's bytes.
pub fn chunk_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

mod hashes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_edges() {
        let l = ChunkLayout::new(10, 4);
        assert_eq!(l.count(), 3);
        assert_eq!((l.len(0), l.len(2), l.len(3)), (4, 2, 0));
        assert_eq!(l.chunk_of(9), 2);
        assert_eq!(ChunkLayout::new(0, 4).count(), 0);
        assert_eq!(ChunkLayout::new(8, 4).count(), 2);
    }

    #[test]
    fn index_verifies_and_roundtrips() {
        let data = vec![7u8; 150_000];
        let layout = ChunkLayout::new(data.len() as u64, MIN_CHUNK_SIZE);
        let hashes = data
            .chunks(MIN_CHUNK_SIZE as usize)
            .map(chunk_hash)
            .collect();
        let idx = ChunkIndex {
            blob: crate::Digest::of(&data),
            layout,
            hashes,
        };
        idx.validate().unwrap();
        assert!(idx.verify(2, &data[2 * 65536..]));
        assert!(!idx.verify(1, &data[2 * 65536..]));
        let json = serde_json::to_string(&idx).unwrap();
        assert_eq!(serde_json::from_str::<ChunkIndex>(&json).unwrap(), idx);
    }
}
