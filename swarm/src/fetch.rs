//! Downloading one blob from peers by driving `core::transfer::Transfer`: find an index, learn who
//! has which chunk (bitfields, `Have` pushes), request chunks from several peers at once, verify and
//! store them, finish with the sha256. See the crate docs for the trust chain.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use preheat_core::bitfield::Bitfield;
use preheat_core::transfer::{Action, Transfer, TransferConfig};
use preheat_core::{ChunkIndex, Digest};
use preheat_store::{BlobWriter, StoreError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::chunks::{self, Reply};
use crate::event_loop::{Command, HAVE_QUEUE};
use crate::handle::{FetchReport, SwarmHandle};
use crate::metrics::FailReason;
use crate::protocol::{check_bitfield, check_index, CtlRequest, ProtocolError};
use crate::Error;

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
    blob: Digest,
    size: u64,
    deadline: Instant,
) -> Result<FetchReport, Error> {
    let m = &h.inner.metrics;
    m.fetch_total.inc();
    let started = Instant::now();
    let res = fetch_inner(h, blob, size, deadline, started).await;
    match &res {
        Ok(r) if !r.already_local => m.fetch_duration.observe(r.duration.as_secs_f64()),
        Ok(_) => {}
        Err(e) => {
            m.failed(match e {
                Error::NoProviders { .. } => FailReason::NoProviders,
                Error::Deadline { .. } => FailReason::Deadline,
                Error::Stopped => FailReason::Stopped,
                _ => FailReason::Store,
            });
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
    let mut used = HashSet::new();
    loop {
        let (index, source) = find_index(h, blob, size, deadline, &excluded).await?;
        let outcome = attempt(h, Arc::new(index), source, deadline, &mut report, &mut used).await;
        report.peers_used = used.len();
        match outcome {
            Ok(Outcome::Done) => {
                report.duration = started.elapsed();
                return Ok(report);
            }
            Ok(Outcome::ForgedIndex) => {
                report.forged_indexes += 1;
                tracing::warn!(%blob, source = ?source, "chunk index failed the blob digest; source banned");
                if let Some(s) = source {
                    h.ban(s, Instant::now() + h.inner.cfg.ban_duration);
                    excluded.insert(s);
                }
            }
            Ok(Outcome::SuspectIndex) => {
                tracing::warn!(%blob, source = ?source, "several peers failed one chunk index; fetching another");
                if let Some(s) = source {
                    excluded.insert(s);
                }
            }
            Err(e) => {
                let _ = h.withdraw(blob).await;
                return Err(e);
            }
        }
    }
}

enum Outcome {
    Done,
    ForgedIndex,
    SuspectIndex,
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

async fn ask(
    h: &SwarmHandle,
    peer: PeerId,
    req: CtlRequest,
) -> Option<crate::protocol::CtlResponse> {
    h.ask(|reply| Command::Ctl { peer, req, reply })
        .await
        .ok()
        .flatten()
}

/// A chunk index for `blob` from the store (a resumed partial) or from the first peer that gives a
/// valid one; `NoProviders` at the deadline.
async fn find_index(
    h: &SwarmHandle,
    blob: Digest,
    size: u64,
    deadline: Instant,
    excluded: &HashSet<PeerId>,
) -> Result<(ChunkIndex, Option<PeerId>), Error> {
    if excluded.is_empty() {
        if let Ok(Some(ix)) = h.inner.store.chunk_index(&blob).await {
            if ix.validate().is_ok() && ix.layout.size == size && ix.blob == blob {
                return Ok((ix, None));
            }
        }
    }
    loop {
        if Instant::now() >= deadline {
            return Err(Error::NoProviders { digest: blob });
        }
        let mut asks: FuturesUnordered<_> = candidates(h, blob, deadline)
            .await
            .into_iter()
            .filter(|p| !excluded.contains(p))
            .take(INDEX_ASKS)
            .map(|p| async move { (p, ask(h, p, CtlRequest::GetIndex { blob }).await) })
            .collect();
        while let Ok(Some((p, resp))) = tokio::time::timeout_at(deadline.into(), asks.next()).await
        {
            match resp.map(|r| check_index(r, &blob, size)) {
                Some(Ok(ix)) => return Ok((ix, Some(p))),
                Some(Err(ProtocolError::NotFound)) | None => {}
                Some(Err(error)) => tracing::debug!(peer = %p, %error, "bad chunk index answer"),
            }
        }
        let pause = (Instant::now() + INDEX_RETRY).min(deadline);
        tokio::time::sleep_until(pause.into()).await;
    }
}

/// Aborts every outstanding chunk request and the refresh task when the attempt ends.
#[derive(Default)]
struct Tasks {
    requests: HashMap<(PeerId, u32), AbortHandle>,
    refresh: Option<AbortHandle>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.requests.values().for_each(AbortHandle::abort);
        if let Some(r) = &self.refresh {
            r.abort();
        }
    }
}

enum PeerUpdate {
    Has(Bitfield),
    Gone,
}

struct ChunkResult {
    peer: PeerId,
    chunk: u32,
    reply: std::io::Result<Reply>,
}

/// One download with one index; registered with the event loop for its duration.
async fn attempt(
    h: &SwarmHandle,
    index: Arc<ChunkIndex>,
    source: Option<PeerId>,
    deadline: Instant,
    report: &mut FetchReport,
    used: &mut HashSet<PeerId>,
) -> Result<Outcome, Error> {
    let blob = index.blob;
    let store = &h.inner.store;
    let mut writer = store.writer(blob, index.layout.size).await?;
    if let Err(e) = writer.set_index(ChunkIndex::clone(&index)).await {
        // A partial left with another index (an earlier, abandoned one): start over.
        if !matches!(e, StoreError::IndexMismatch { .. }) {
            return Err(e.into());
        }
        writer.discard().await?;
        writer = store.writer(blob, index.layout.size).await?;
        writer.set_index(ChunkIndex::clone(&index)).await?;
    }
    let have = Bitfield::from_bools(writer.done());
    let (have_tx, have_rx) = mpsc::channel(HAVE_QUEUE);
    h.send(Command::Register {
        blob,
        index: index.clone(),
        have: have.clone(),
        events: have_tx,
    })
    .await?;
    let out = drive(
        h, &index, writer, have, have_rx, source, deadline, report, used,
    )
    .await;
    let _ = h.send(Command::Unregister(blob)).await;
    out
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn drive(
    h: &SwarmHandle,
    index: &Arc<ChunkIndex>,
    mut writer: BlobWriter,
    have: Bitfield,
    mut have_rx: mpsc::Receiver<(PeerId, u32)>,
    source: Option<PeerId>,
    deadline: Instant,
    report: &mut FetchReport,
    used: &mut HashSet<PeerId>,
) -> Result<Outcome, Error> {
    let blob = index.blob;
    let cfg = &h.inner.cfg;
    let tcfg = TransferConfig {
        max_in_flight_per_peer: u32::try_from(cfg.max_requests_per_peer.max(1)).unwrap_or(u32::MAX),
        max_in_flight_total: u32::try_from(cfg.max_requests.max(1)).unwrap_or(u32::MAX),
        chunk_timeout: cfg.chunk_timeout,
        ban_duration: cfg.ban_duration,
        ..TransferConfig::default()
    };
    let mut announced = !have.is_clear();
    if announced {
        h.announce(blob).await?;
    }
    // The writer adopted `index`, so its bitfield has the index's chunk count.
    let Ok(mut t) = Transfer::<PeerId>::new(index.layout, have, tcfg) else {
        return Ok(Outcome::SuspectIndex);
    };
    let mut rng = StdRng::from_entropy();
    let (res_tx, mut res_rx) = mpsc::channel::<ChunkResult>(cfg.max_requests.max(1) + 8);
    let (peer_tx, mut peer_rx) = mpsc::channel::<(PeerId, PeerUpdate)>(MAX_CANDIDATES);
    let mut tasks = Tasks::default();
    let mut refresh = tokio::time::interval(REFRESH);
    let mut bad_peers = HashSet::new();
    loop {
        let now = Instant::now();
        let mut complete = false;
        for a in t.poll(now, &mut rng) {
            match a {
                Action::Request { peer, chunk } => {
                    let job = request(
                        h,
                        blob,
                        index.layout.len(chunk),
                        peer,
                        chunk,
                        res_tx.clone(),
                    );
                    tasks
                        .requests
                        .insert((peer, chunk), tokio::spawn(job).abort_handle());
                }
                Action::Cancel { peer, chunk } => {
                    if let Some(a) = tasks.requests.remove(&(peer, chunk)) {
                        a.abort();
                    }
                }
                Action::Ban { peer, until } => {
                    tracing::warn!(%peer, %blob, "peer served a bad chunk; banned");
                    h.ban(peer, until);
                    bad_peers.insert(peer);
                }
                Action::Complete => complete = true,
            }
        }
        if complete {
            drop(tasks);
            return match writer.finish().await {
                Ok(()) => {
                    if !announced {
                        h.announce(blob).await?;
                    }
                    Ok(Outcome::Done)
                }
                Err(StoreError::DigestMismatch { .. }) => Ok(Outcome::ForgedIndex),
                Err(e) => Err(e.into()),
            };
        }
        if source.is_some_and(|s| !bad_peers.contains(&s)) && bad_peers.len() >= SUSPECT_INDEX_BANS
        {
            drop(tasks);
            writer.discard().await?;
            return Ok(Outcome::SuspectIndex);
        }
        if now >= deadline {
            return Err(Error::Deadline { digest: blob });
        }
        let wake = t.next_deadline().unwrap_or(deadline).min(deadline);
        tokio::select! {
            Some(r) = res_rx.recv() => {
                tasks.requests.remove(&(r.peer, r.chunk));
                let now = Instant::now();
                match r.reply {
                    Ok(Reply::Data(buf)) if t.have().get(r.chunk) => {
                        t.on_chunk_ok(r.peer, r.chunk, buf.len() as u64, now);
                    }
                    Ok(Reply::Data(buf)) => {
                        let Some(expected) = index.hashes.get(r.chunk as usize) else { continue };
                        match writer.write_chunk(r.chunk, &buf, expected).await {
                            Ok(()) => {
                                t.on_chunk_ok(r.peer, r.chunk, buf.len() as u64, now);
                                report.bytes_from_peers += buf.len() as u64;
                                used.insert(r.peer);
                                h.send(Command::LocalHave { blob, chunk: r.chunk }).await?;
                                if !announced {
                                    h.announce(blob).await?;
                                    announced = true;
                                }
                            }
                            Err(StoreError::ChunkMismatch { .. }) => {
                                report.bad_chunks += 1;
                                h.inner.metrics.bad_chunks.inc();
                                t.on_chunk_bad(r.peer, r.chunk, now);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Ok(Reply::Busy) => t.on_busy(r.peer, r.chunk, now),
                    Ok(Reply::NotFound) | Err(_) => t.on_failure(r.peer, r.chunk, now),
                }
            }
            Some((peer, upd)) = peer_rx.recv() => match upd {
                PeerUpdate::Has(bf) if !h.is_banned(&peer) => { let _ = t.add_peer(peer, bf); }
                _ => t.remove_peer(peer),
            },
            Some((peer, chunk)) = have_rx.recv() => { let _ = t.peer_have(peer, chunk); }
            _ = refresh.tick() => {
                if tasks.refresh.as_ref().is_none_or(AbortHandle::is_finished) {
                    let job = refresh_peers(h.clone(), blob, index.layout.count(), deadline, peer_tx.clone());
                    tasks.refresh = Some(tokio::spawn(job).abort_handle());
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// One chunk request; always reports exactly one result.
fn request(
    h: &SwarmHandle,
    blob: Digest,
    len: u32,
    peer: PeerId,
    chunk: u32,
    tx: mpsc::Sender<ChunkResult>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let control = h.inner.control.clone();
    let (limiter, metrics, timeout) = (
        h.inner.download.clone(),
        h.inner.metrics.clone(),
        h.inner.cfg.chunk_timeout,
    );
    async move {
        let fut = chunks::request(control, peer, blob, chunk, len, &limiter, &metrics);
        let reply = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        let _ = tx.send(ChunkResult { peer, chunk, reply }).await;
    }
}

/// Asks every candidate for its bitfield (which also subscribes us to its `Have` pushes).
async fn refresh_peers(
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
