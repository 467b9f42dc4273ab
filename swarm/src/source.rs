//! Answers to control requests that need the store (complete blobs and partial ones that are not
//! being fetched by this process's swarm, e.g. streamed from the registry).

use preheat_core::bitfield::Bitfield;
use preheat_store::Store;

use crate::protocol::{CtlRequest, CtlResponse};

/// The answer to `req` from the store's point of view.
pub async fn answer(store: &Store, req: &CtlRequest) -> CtlResponse {
    match req {
        CtlRequest::GetIndex { blob } => match store.chunk_index(blob).await {
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
