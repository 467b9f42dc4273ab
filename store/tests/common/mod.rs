//! Helpers shared by the store's integration tests.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code
#![allow(dead_code)] // each test binary uses a different subset

use preheat_core::chunk::{chunk_hash, MIN_CHUNK_SIZE};
use preheat_core::{ChunkIndex, ChunkLayout, Digest};
use preheat_store::{Store, StoreConfig};
use rand::{Rng, SeedableRng};

pub const CS: u32 = MIN_CHUNK_SIZE;

pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

pub fn cfg(dir: &std::path::Path, max: Option<u64>) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        max_bytes: max,
        chunk_size: CS,
    }
}

pub async fn open(dir: &std::path::Path) -> Store {
    Store::open(cfg(dir, None)).await.unwrap()
}

pub fn index_of(data: &[u8]) -> ChunkIndex {
    ChunkIndex {
        blob: Digest::of(data),
        layout: ChunkLayout::new(data.len() as u64, CS),
        hashes: data.chunks(CS as usize).map(chunk_hash).collect(),
    }
}

pub fn chunk(data: &[u8], i: u32) -> &[u8] {
    let l = ChunkLayout::new(data.len() as u64, CS);
    let start = l.offset(i) as usize;
    &data[start..start + l.len(i) as usize]
}

/// Stores `data` completely through a sequential writer.
pub async fn store_blob(store: &Store, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = store.writer(d, data.len() as u64).await.unwrap();
    w.write(data).await.unwrap();
    w.finish().await.unwrap();
    d
}
