//! Answers to control requests that need the store: complete blobs and partial ones, whoever
//! writes them (this process's swarm fetcher, or a registry pull streaming through a `BlobWriter`).

use preheat_core::bitfield::Bitfield;
use preheat_core::chunk::chunk_hash;
use preheat_core::Digest;
use preheat_store::{ChunkHashes, Store};

use crate::protocol::{
    ChunkHash, CtlRequest, CtlResponse, ProvisionalIndex, MAX_PROVISIONAL_HASHES,
};

/// The answer to `req` from the store's point of view; `forge` is the test-only
/// `SwarmConfig::test_forge_index`.
pub async fn answer(store: &Store, req: &CtlRequest, forge: bool) -> CtlResponse {
    match req {
        CtlRequest::GetIndex { blob } => match store.chunk_index(blob).await {
            Ok(Some(mut idx)) => {
                if forge {
                    let Some(h) = forged(store, blob).await else {
                        return CtlResponse::NotFound;
                    };
                    idx.hashes = h;
                }
                CtlResponse::Index(idx)
            }
            _ => CtlResponse::NotFound,
        },
        CtlRequest::GetProvisional { blob, from } => match store.chunk_hashes(blob).await {
            // A partial with no chunk and no index knows nothing yet, not even the chunk size its
            // source uses (a swarm fetch adopts that of its first answer): stay silent until then.
            Ok(Some(mut known)) if known.complete || known.stored.contains(&true) => {
                if forge && known.complete {
                    let Some(h) = forged(store, blob).await else {
                        return CtlResponse::NotFound;
                    };
                    known.hashes = h.into_iter().map(Some).collect();
                }
                CtlResponse::Provisional(provisional(&known, *from))
            }
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
        // Tags live in the event loop, not in the store.
        CtlRequest::GetTag { .. } => CtlResponse::NotFound,
    }
}

/// The page of `known` from chunk `from` on, at most `MAX_PROVISIONAL_HASHES` hashes.
fn provisional(known: &ChunkHashes, from: u32) -> ProvisionalIndex {
    let start = (from as usize).min(known.hashes.len());
    let end = start
        .saturating_add(MAX_PROVISIONAL_HASHES as usize)
        .min(known.hashes.len());
    ProvisionalIndex {
        blob: known.blob,
        layout: known.layout,
        from: u32::try_from(start).unwrap_or(u32::MAX),
        hashes: known.hashes[start..end]
            .iter()
            .map(|h| h.map(ChunkHash))
            .collect(),
        complete: known.complete,
    }
}

/// Test only: the hashes of the chunks as `test_corrupt_uploads` serves them (first byte flipped).
async fn forged(store: &Store, blob: &Digest) -> Option<Vec<[u8; 32]>> {
    let idx = store.chunk_index(blob).await.ok()??;
    let mut out = Vec::with_capacity(idx.hashes.len());
    for i in 0..idx.layout.count() {
        let mut bad = store.read_chunk(blob, i).await.ok()?.to_vec();
        if let Some(b) = bad.first_mut() {
            *b ^= 0x01;
        }
        out.push(chunk_hash(&bad));
    }
    Some(out)
}

/// Which chunks of `blob` the store can serve: all of a complete blob, the verified ones of a
/// partial blob (a peer checks them against the hashes of our provisional index).
pub async fn bitfield(store: &Store, blob: &Digest) -> Option<Bitfield> {
    let known = store.chunk_hashes(blob).await.ok()??;
    Some(Bitfield::from_bools(&known.stored))
}
