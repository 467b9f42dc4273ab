//! Downloading one blob from peers by driving `core::transfer::Transfer`: find a (possibly
//! provisional) index, learn who has which chunk (bitfields, `Have` pushes), request chunks from
//! several peers at once, verify and store them, finish with the sha256. A provider still writing
//! the blob is followed: hashes of chunks beyond what we know are fetched when a peer offers those
//! chunks, and the download waits (up to the stall timeout) while nobody has the chunks it needs.
//! See the crate docs for the trust chain.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use preheat_core::Digest;

use crate::event_loop::Command;
use crate::handle::{FetchReport, SwarmHandle};
use crate::metrics::FailReason;
use crate::protocol::{check_provisional, CtlRequest, CtlResponse, ProtocolError};
use crate::Error;

mod drive;
mod known;
mod peers;

use known::Known;

/// How often the peer list and bitfields are refreshed during a download.
const REFRESH: Duration = Duration::from_secs(2);
/// Peers asked at once and in total per refresh.
const PARALLEL_ASKS: usize = 16;
const MAX_CANDIDATES: usize = 64;
/// Index sources asked per round, and the pause between rounds while nobody has the blob.
const INDEX_ASKS: usize = 8;
const INDEX_RETRY: Duration = Duration::from_millis(500);
/// Bound on one provider lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// This many distinct peers failing chunk checks against one index makes the index suspect.
const SUSPECT_INDEX_BANS: usize = 3;

pub(crate) async fn fetch(
    h: &SwarmHandle,
    image: &str,
    blob: Digest,
    size: u64,
    deadline: Instant,
) -> Result<FetchReport, Error> {
    let m = &h.inner.metrics;
    let started = Instant::now();
    // Verified bytes per peer that delivered chunks, for the per-peer metrics.
    let mut used = HashMap::new();
    let res = fetch_inner(h, blob, size, deadline, started, &mut used).await;
    match &res {
        Ok(r) if !r.already_local => m.fetched(image, r.duration, &used),
        Ok(_) => {}
        Err(e) => {
            let reason = match e {
                Error::NoProviders { .. } => FailReason::NoProviders,
                Error::Deadline { .. } => FailReason::Deadline,
                Error::Stalled { .. } => FailReason::Stalled,
                Error::Stopped => FailReason::Stopped,
                _ => FailReason::Store,
            };
            m.fetch_failed(image, reason, &used);
            tracing::debug!(%blob, error = %e, "peer fetch failed");
        }
    }
    res
}

async fn fetch_inner(
    h: &SwarmHandle,
    blob: Digest,
    size: u64,
    deadline: Instant,
    started: Instant,
    used: &mut HashMap<PeerId, u64>,
) -> Result<FetchReport, Error> {
    let mut report = FetchReport {
        digest: blob,
        size,
        already_local: false,
        bytes_from_peers: 0,
        peers_used: 0,
        bad_chunks: 0,
        forged_indexes: 0,
        duration: Duration::ZERO,
    };
    if h.inner.store.contains(&blob).await {
        report.already_local = true;
        return Ok(report);
    }
    let mut excluded = HashSet::new();
    loop {
        let known = find_index(h, blob, size, deadline, &excluded).await?;
        let outcome = drive::attempt(h, known, deadline, &mut report, used).await;
        report.peers_used = used.len();
        match outcome {
            Ok(drive::Outcome::Done) => {
                report.duration = started.elapsed();
                return Ok(report);
            }
            Ok(drive::Outcome::ForgedIndex(sources)) => {
                report.forged_indexes += 1;
                tracing::warn!(%blob, sources = ?sources, "chunk index failed the blob digest; its sources banned");
                for s in sources {
                    h.ban(s, Instant::now() + h.inner.cfg.ban_duration);
                    excluded.insert(s);
                }
            }
            Ok(drive::Outcome::SuspectIndex(sources)) => {
                tracing::warn!(%blob, sources = ?sources, "several peers failed one chunk index; fetching another");
                excluded.extend(sources);
            }
            Err(e) => {
                let _ = h.withdraw(blob).await;
                return Err(e);
            }
        }
    }
}

/// Providers first, then other connected peers; without banned ones and this node.
async fn candidates(h: &SwarmHandle, blob: Digest, deadline: Instant) -> Vec<PeerId> {
    let until = deadline.min(Instant::now() + LOOKUP_TIMEOUT);
    let mut out = tokio::time::timeout_at(until.into(), h.providers(blob))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for p in h.connected_peers().await.unwrap_or_default() {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    let me = h.local_peer_id();
    out.retain(|p| *p != me && !h.is_banned(p));
    out.truncate(MAX_CANDIDATES);
    out
}

async fn ask(h: &SwarmHandle, peer: PeerId, req: CtlRequest) -> Option<CtlResponse> {
    h.ask(|reply| Command::Ctl { peer, req, reply })
        .await
        .ok()
        .flatten()
}

/// What is known of `blob`'s chunk index: the store's full index (a resumed partial), or the first
/// valid (provisional) index a peer gives; `NoProviders` at the deadline.
async fn find_index(
    h: &SwarmHandle,
    blob: Digest,
    size: u64,
    deadline: Instant,
    excluded: &HashSet<PeerId>,
) -> Result<Known, Error> {
    if excluded.is_empty() {
        if let Ok(Some(ix)) = h.inner.store.chunk_index(&blob).await {
            if ix.validate().is_ok() && ix.layout.size == size && ix.blob == blob {
                return Ok(Known::from_index(&ix));
            }
        }
    }
    loop {
        if Instant::now() >= deadline {
            return Err(Error::NoProviders { digest: blob });
        }
        let req = CtlRequest::GetProvisional { blob, from: 0 };
        let mut asks: FuturesUnordered<_> = candidates(h, blob, deadline)
            .await
            .into_iter()
            .filter(|p| !excluded.contains(p))
            .take(INDEX_ASKS)
            .map(|p| {
                let req = req.clone();
                async move { (p, ask(h, p, req).await) }
            })
            .collect();
        while let Ok(Some((p, resp))) = tokio::time::timeout_at(deadline.into(), asks.next()).await
        {
            match resp.map(|r| check_provisional(r, &blob, size, 0)) {
                Some(Ok(page)) => {
                    let mut known = Known::new(blob, page.layout);
                    if known.merge(&page, Some(p)).is_ok() {
                        return Ok(known);
                    }
                }
                Some(Err(ProtocolError::NotFound)) | None => {}
                Some(Err(error)) => tracing::debug!(peer = %p, %error, "bad chunk index answer"),
            }
        }
        let pause = (Instant::now() + INDEX_RETRY).min(deadline);
        tokio::time::sleep_until(pause.into()).await;
    }
}
