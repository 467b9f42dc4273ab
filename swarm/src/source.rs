//! Answers to control requests that need the store (complete blobs and partial ones that are not
//! being fetched by this process's swarm, e.g. streamed from the registry).

use preheat_core::bitfield::Bitfield;
use preheat_store::Store;

use crate::protocol::{CtlRequest, CtlResponse};

/// The answer to `req` from the store's point of view; `forge` is the test-only
/// `SwarmConfig::test_forge_index`.
pub async fn answer(store: &Store, req: &CtlRequest, forge: bool) -> CtlResponse {
    match req {
        CtlRequest::GetIndex { blob } => match store.chunk_index(blob).await {
            Ok(Some(idx)) if forge => forged(store, idx).await,
            Ok(Some(idx)) => CtlResponse::Index(idx),
            _ => CtlResponse::NotFound,
        },
        CtlRequest::GetBitfield { blob } => match bitfield(store, blob).await {
            Some(b) => CtlResponse::Bitfield {
                chunks: b.len(),
                bits: b.to_bytes(),
            },
            None => CtlResponse::NotFound,
        },
        CtlRequest::Have { .. } => CtlResponse::Ack,
    }
}

/// Test only: the index of the chunks as `test_corrupt_uploads` serves them (first byte flipped).
async fn forged(store: &Store, mut idx: preheat_core::ChunkIndex) -> CtlResponse {
    for i in 0..idx.layout.count() {
        let Ok(data) = store.read_chunk(&idx.blob, i).await else {
            return CtlResponse::NotFound;
        };
        let mut bad = data.to_vec();
        if let Some(b) = bad.first_mut() {
            *b ^= 0x01;
        }
        if let Some(h) = idx.hashes.get_mut(i as usize) {
            *h = preheat_core::chunk::chunk_hash(&bad);
        }
    }
    CtlResponse::Index(idx)
}

/// Which chunks of `blob` the store can serve: all of a complete blob, the verified ones of a
/// partial blob whose chunk index is known (without it a peer could not check them).
pub async fn bitfield(store: &Store, blob: &preheat_core::Digest) -> Option<Bitfield> {
    if store.contains(blob).await {
        let idx = store.chunk_index(blob).await.ok()??;
        return Some(Bitfield::full(idx.layout.count()));
    }
    let p = store.partial(blob).await.ok()??;
    if !p.has_index {
        return None;
    }
    Some(Bitfield::from_bools(&p.done))
}
