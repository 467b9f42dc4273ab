//! One download attempt with one (possibly provisional) index, registered with the event loop for
//! its duration so that peers' `Have` pushes reach it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use libp2p::PeerId;
use preheat_core::bitfield::Bitfield;
use preheat_core::transfer::{Action, Transfer, TransferConfig};
use preheat_core::Digest;
use preheat_store::{BlobWriter, StoreError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::known::Known;
use super::peers::{open_writer, refresh_peers, request, ChunkResult, PeerUpdate};
use super::{ask, MAX_CANDIDATES, REFRESH, SUSPECT_INDEX_BANS};
use crate::chunks::Reply;
use crate::event_loop::{Command, HAVE_QUEUE};
use crate::handle::{FetchReport, SwarmHandle};
use crate::protocol::{check_provisional, CtlRequest, ProvisionalIndex};
use crate::Error;

pub(super) enum Outcome {
    Done,
    /// The blob failed its sha256: these peers vouched for the index.
    ForgedIndex(Vec<PeerId>),
    /// Several peers' chunks failed the index: do not take it from these peers again.
    SuspectIndex(Vec<PeerId>),
}

/// Aborts every outstanding chunk request and helper task when the attempt ends.
#[derive(Default)]
struct Tasks {
    requests: HashMap<(PeerId, u32), AbortHandle>,
    refresh: Option<AbortHandle>,
    index: Option<AbortHandle>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.requests.values().for_each(AbortHandle::abort);
        self.refresh
            .iter()
            .chain(&self.index)
            .for_each(AbortHandle::abort);
    }
}

/// One download with one index.
pub(super) async fn attempt(
    h: &SwarmHandle,
    mut known: Known,
    deadline: Instant,
    report: &mut FetchReport,
    used: &mut HashMap<PeerId, u64>,
) -> Result<Outcome, Error> {
    let blob = known.blob();
    let writer = open_writer(h, &mut known).await?;
    let (have_tx, have_rx) = mpsc::channel(HAVE_QUEUE);
    h.send(Command::Register {
        blob,
        events: have_tx,
    })
    .await?;
    let mut d = Driver {
        h,
        blob,
        known,
        raw: HashMap::new(),
        ignored: HashSet::new(),
        bad_peers: HashSet::new(),
        tasks: Tasks::default(),
        index_wanted: None,
        last_progress: Instant::now(),
        report,
        used,
    };
    let out = d.run(writer, have_rx, deadline).await;
    let _ = h.send(Command::Unregister(blob)).await;
    out
}

struct Driver<'a> {
    h: &'a SwarmHandle,
    blob: Digest,
    known: Known,
    /// Each peer's whole bitfield (also chunks whose hash we do not know yet).
    raw: HashMap<PeerId, Bitfield>,
    /// Peers whose index answer contradicted ours: not used in this attempt.
    ignored: HashSet<PeerId>,
    bad_peers: HashSet<PeerId>,
    tasks: Tasks,
    /// A peer offers chunks whose hashes we lack: ask it for its provisional index.
    index_wanted: Option<PeerId>,
    last_progress: Instant,
    report: &'a mut FetchReport,
    /// Verified bytes per contributing peer.
    used: &'a mut HashMap<PeerId, u64>,
}

impl Driver<'_> {
    async fn run(
        &mut self,
        mut writer: BlobWriter,
        mut have_rx: mpsc::Receiver<(PeerId, u32)>,
        deadline: Instant,
    ) -> Result<Outcome, Error> {
        let h = self.h;
        let blob = self.blob;
        let cfg = &h.inner.cfg;
        let tcfg = TransferConfig {
            max_in_flight_per_peer: u32::try_from(cfg.max_requests_per_peer.max(1))
                .unwrap_or(u32::MAX),
            max_in_flight_total: u32::try_from(cfg.max_requests.max(1)).unwrap_or(u32::MAX),
            chunk_timeout: cfg.chunk_timeout,
            ban_duration: cfg.ban_duration,
            ..TransferConfig::default()
        };
        let layout = self.known.layout();
        let have = Bitfield::from_bools(writer.done());
        let mut announced = !have.is_clear();
        if announced {
            h.announce(blob).await?;
        }
        // The writer adopted the index's layout, so its bitfield has the index's chunk count.
        let Ok(mut t) = Transfer::<PeerId>::new(layout, have, tcfg) else {
            return Ok(Outcome::SuspectIndex(
                self.known.sources().copied().collect(),
            ));
        };
        let mut rng = StdRng::from_entropy();
        let (res_tx, mut res_rx) = mpsc::channel::<ChunkResult>(cfg.max_requests.max(1) + 8);
        let (peer_tx, mut peer_rx) = mpsc::channel::<(PeerId, PeerUpdate)>(MAX_CANDIDATES);
        let (index_tx, mut index_rx) = mpsc::channel::<(PeerId, Option<ProvisionalIndex>)>(1);
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            let now = Instant::now();
            let mut complete = false;
            for a in t.poll(now, &mut rng) {
                match a {
                    Action::Request { peer, chunk } => {
                        let job = request(h, blob, layout.len(chunk), peer, chunk, res_tx.clone());
                        let job = tokio::spawn(job).abort_handle();
                        self.tasks.requests.insert((peer, chunk), job);
                    }
                    Action::Cancel { peer, chunk } => {
                        if let Some(a) = self.tasks.requests.remove(&(peer, chunk)) {
                            a.abort();
                        }
                    }
                    Action::Ban { peer, until } => {
                        tracing::warn!(%peer, %blob, "peer served a bad chunk; banned");
                        h.ban(peer, until);
                        self.bad_peers.insert(peer);
                    }
                    Action::Complete => complete = true,
                }
            }
            if complete {
                self.tasks = Tasks::default();
                return match writer.finish().await {
                    Ok(()) => {
                        if !announced {
                            h.announce(blob).await?;
                        }
                        Ok(Outcome::Done)
                    }
                    Err(StoreError::DigestMismatch { .. }) => Ok(Outcome::ForgedIndex(
                        self.known.sources().copied().collect(),
                    )),
                    Err(e) => Err(e.into()),
                };
            }
            let vouched = self.known.sources().any(|s| self.bad_peers.contains(s));
            if self.bad_peers.len() >= SUSPECT_INDEX_BANS && !vouched {
                self.tasks = Tasks::default();
                writer.discard().await?;
                return Ok(Outcome::SuspectIndex(
                    self.known.sources().copied().collect(),
                ));
            }
            if now >= deadline {
                return Err(Error::Deadline { digest: blob });
            }
            let stall_at = self.last_progress + cfg.stall_timeout;
            if now >= stall_at {
                return Err(Error::Stalled {
                    digest: blob,
                    waited: cfg.stall_timeout,
                });
            }
            self.start_index_refresh(&t, &index_tx);
            let wake = t
                .next_deadline()
                .unwrap_or(deadline)
                .min(deadline)
                .min(stall_at);
            tokio::select! {
                Some(r) = res_rx.recv() => {
                    self.tasks.requests.remove(&(r.peer, r.chunk));
                    let now = Instant::now();
                    match r.reply {
                        Ok(Reply::Data(buf)) if t.have().get(r.chunk) => {
                            t.on_chunk_ok(r.peer, r.chunk, buf.len() as u64, now);
                            h.inner.buffers.put(buf);
                        }
                        Ok(Reply::Data(buf)) => {
                            let Some(expected) = self.known.hash(r.chunk) else {
                                t.on_failure(r.peer, r.chunk, now);
                                continue;
                            };
                            let n = buf.len() as u64;
                            let (res, back) = writer.write_chunk_owned(r.chunk, buf, &expected).await;
                            if let Some(b) = back {
                                h.inner.buffers.put(b);
                            }
                            match res {
                                Ok(()) => {
                                    t.on_chunk_ok(r.peer, r.chunk, n, now);
                                    self.report.bytes_from_peers += n;
                                    *self.used.entry(r.peer).or_default() += n;
                                    self.last_progress = now;
                                    if !announced {
                                        h.announce(blob).await?;
                                        announced = true;
                                    }
                                }
                                Err(StoreError::ChunkMismatch { .. }) => {
                                    self.report.bad_chunks += 1;
                                    h.inner.metrics.bad_chunks.inc();
                                    t.on_chunk_bad(r.peer, r.chunk, now);
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        Ok(Reply::Busy | Reply::Dropped) => t.on_busy(r.peer, r.chunk, now),
                        Ok(Reply::Declined) => t.on_declined(r.peer, r.chunk, now),
                        Ok(Reply::NotFound) | Err(_) => t.on_failure(r.peer, r.chunk, now),
                    }
                }
                Some((peer, upd)) = peer_rx.recv() => match upd {
                    PeerUpdate::Has(bf) if !h.is_banned(&peer) && !self.ignored.contains(&peer) => {
                        self.on_bitfield(&mut t, peer, bf);
                    }
                    _ => {
                        self.raw.remove(&peer);
                        t.remove_peer(peer);
                    }
                },
                Some((peer, chunk)) = have_rx.recv() => self.on_have(&mut t, peer, chunk),
                Some((peer, page)) = index_rx.recv() => {
                    self.on_index(&mut t, &mut writer, peer, page).await;
                }
                _ = refresh.tick() => {
                    if self.tasks.refresh.as_ref().is_none_or(AbortHandle::is_finished) {
                        let job = refresh_peers(h.clone(), blob, layout.count(), deadline, peer_tx.clone());
                        self.tasks.refresh = Some(tokio::spawn(job).abort_handle());
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn on_bitfield(&mut self, t: &mut Transfer<PeerId>, peer: PeerId, bf: Bitfield) {
        let old = self.raw.get(&peer);
        if bf
            .iter_ones()
            .any(|i| !t.have().get(i) && !old.is_some_and(|o| o.get(i)))
        {
            self.last_progress = Instant::now();
        }
        let _ = t.add_peer(peer, self.known.mask(&bf));
        if self.known.first_unknown(&bf, t.have()).is_some() {
            self.index_wanted = Some(peer);
        }
        self.raw.insert(peer, bf);
    }

    fn on_have(&mut self, t: &mut Transfer<PeerId>, peer: PeerId, chunk: u32) {
        if self.ignored.contains(&peer) {
            return;
        }
        // Only peers whose bitfield we know push to us (a bitfield request subscribes).
        let Some(bf) = self.raw.get_mut(&peer) else {
            return;
        };
        if chunk >= bf.len() || !bf.set(chunk) {
            return;
        }
        if !t.have().get(chunk) {
            self.last_progress = Instant::now();
        }
        if self.known.hash(chunk).is_some() {
            let _ = t.peer_have(peer, chunk);
        } else if !t.have().get(chunk) {
            self.index_wanted = Some(peer);
        }
    }

    /// Asks the wanted peer for the hashes we lack, one request at a time.
    fn start_index_refresh(
        &mut self,
        t: &Transfer<PeerId>,
        tx: &mpsc::Sender<(PeerId, Option<ProvisionalIndex>)>,
    ) {
        if self.tasks.index.as_ref().is_some_and(|a| !a.is_finished()) {
            return;
        }
        let Some(peer) = self.index_wanted.take() else {
            return;
        };
        let Some(from) = self
            .raw
            .get(&peer)
            .and_then(|bf| self.known.first_unknown(bf, t.have()))
        else {
            return;
        };
        let (h, blob, size, tx) = (
            self.h.clone(),
            self.blob,
            self.known.layout().size,
            tx.clone(),
        );
        let job = async move {
            let resp = ask(&h, peer, CtlRequest::GetProvisional { blob, from }).await;
            let page = match resp.map(|r| check_provisional(r, &blob, size, from)) {
                Some(Ok(p)) => Some(p),
                Some(Err(error)) => {
                    tracing::debug!(%peer, %error, "bad provisional index answer");
                    None
                }
                None => None,
            };
            let _ = tx.send((peer, page)).await;
        };
        self.tasks.index = Some(tokio::spawn(job).abort_handle());
    }

    async fn on_index(
        &mut self,
        t: &mut Transfer<PeerId>,
        writer: &mut BlobWriter,
        peer: PeerId,
        page: Option<ProvisionalIndex>,
    ) {
        let Some(page) = page else { return };
        match self.known.merge(&page, Some(peer)) {
            Ok(0) => {}
            Ok(_) => {
                self.last_progress = Instant::now();
                for (p, bf) in &self.raw {
                    let _ = t.add_peer(*p, self.known.mask(bf));
                }
                // A page cut at the size cap: ask for the rest when that peer has more.
                if let Some(bf) = self.raw.get(&peer) {
                    if self.known.first_unknown(bf, t.have()).is_some() {
                        self.index_wanted = Some(peer);
                    }
                }
                let ix = self.known.to_index().filter(|_| writer.index().is_none());
                if let Some(ix) = ix {
                    if let Err(error) = writer.set_index(ix).await {
                        tracing::debug!(blob = %self.blob, %error, "cannot persist the completed index");
                    }
                }
            }
            Err(_) => {
                tracing::warn!(%peer, blob = %self.blob, "peer's chunk index contradicts ours; ignoring the peer");
                self.ignored.insert(peer);
                self.raw.remove(&peer);
                t.remove_peer(peer);
            }
        }
    }
}
