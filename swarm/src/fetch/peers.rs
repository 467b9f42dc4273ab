//! The I/O a download attempt delegates to spawned tasks and the store: opening the writer in the
//! index's layout, one chunk request, and a round of bitfield requests.

use std::time::Instant;

use futures::StreamExt;
use libp2p::PeerId;
use preheat_core::bitfield::Bitfield;
use preheat_core::Digest;
use preheat_store::{BlobWriter, StoreError};
use tokio::sync::mpsc;

use super::known::Known;
use super::{ask, candidates, PARALLEL_ASKS};
use crate::chunks::{self, Reply};
use crate::handle::SwarmHandle;
use crate::protocol::{check_bitfield, CtlRequest, ProtocolError};
use crate::Error;

pub(super) enum PeerUpdate {
    Has(Bitfield),
    Gone,
}

pub(super) struct ChunkResult {
    pub peer: PeerId,
    pub chunk: u32,
    pub reply: std::io::Result<Reply>,
}

/// Opens the writer in the index's layout; a partial left in another layout or with chunks that
/// contradict the index (an earlier, abandoned attempt) is discarded first.
pub(super) async fn open_writer(h: &SwarmHandle, known: &mut Known) -> Result<BlobWriter, Error> {
    let store = &h.inner.store;
    let (blob, layout) = (known.blob(), known.layout());
    for fresh in [false, true] {
        let mut w = store.writer(blob, layout.size).await?;
        let res = match known.to_index() {
            Some(ix) => w.set_index(ix).await,
            None => w.set_layout(layout).await,
        };
        let stored = match res {
            Ok(()) => store.chunk_hashes(&blob).await?,
            Err(StoreError::IndexMismatch { .. }) if !fresh => {
                w.discard().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let merged = stored.map_or(Ok(0), |s| {
            let only_stored: Vec<_> = s
                .hashes
                .iter()
                .zip(&s.stored)
                .map(|(h, st)| h.filter(|_| *st))
                .collect();
            known.merge_stored(&only_stored)
        });
        match merged {
            Ok(_) => return Ok(w),
            Err(_) if !fresh => w.discard().await?,
            Err(_) => break,
        }
    }
    Err(StoreError::IndexMismatch {
        digest: blob,
        reason: "a fresh partial disagrees with the index",
    }
    .into())
}

/// One chunk request; always reports exactly one result.
pub(super) fn request(
    h: &SwarmHandle,
    blob: Digest,
    len: u32,
    peer: PeerId,
    chunk: u32,
    tx: mpsc::Sender<ChunkResult>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let control = h.inner.control.clone();
    let inner = h.inner.clone();
    let (limiter, metrics, timeout) = (
        h.inner.download.clone(),
        h.inner.metrics.clone(),
        h.inner.cfg.chunk_timeout,
    );
    async move {
        let buf = inner.buffers.take(len as usize);
        let fut = chunks::request(control, peer, blob, chunk, buf, &limiter, &metrics);
        let reply = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        let _ = tx.send(ChunkResult { peer, chunk, reply }).await;
    }
}

/// Asks every candidate for its bitfield (which also subscribes us to its `Have` pushes).
pub(super) async fn refresh_peers(
    h: SwarmHandle,
    blob: Digest,
    chunks: u32,
    deadline: Instant,
    tx: mpsc::Sender<(PeerId, PeerUpdate)>,
) {
    let peers = candidates(&h, blob, deadline).await;
    let h = &h;
    let mut answers = futures::stream::iter(peers)
        .map(|p| async move { (p, ask(h, p, CtlRequest::GetBitfield { blob }).await) })
        .buffer_unordered(PARALLEL_ASKS);
    while let Some((p, resp)) = answers.next().await {
        let upd = match resp.map(|r| check_bitfield(r, chunks)) {
            Some(Ok(bf)) => PeerUpdate::Has(bf),
            Some(Err(ProtocolError::Busy)) => continue,
            _ => PeerUpdate::Gone,
        };
        if tx.send((p, upd)).await.is_err() {
            return;
        }
    }
}
