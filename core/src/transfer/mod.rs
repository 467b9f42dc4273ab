//! The per-blob download state machine: who to ask for which chunk, and when.
//!
//! It is fed events (peers appear with their bitfields, chunks arrive verified, fail, are refused)
//! and `poll(now, rng)` returns the [`Action`]s to perform. It never does I/O, reads a clock or logs.
//!
//! Invariants, after every call: no request for a chunk we have; no request to a banned peer or to
//! a peer that has not announced the chunk; never two requests of one chunk to one peer; at most
//! `max_in_flight_per_peer` requests per peer and `max_in_flight_total` overall (endgame duplicates
//! included); at most `1 + endgame_duplicates` requests per chunk. `Complete` is emitted once.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use rand::{Rng, RngCore};

use crate::bitfield::Bitfield;
use crate::picker::PiecePolicy;
use crate::ChunkLayout;

mod peer_map;
mod types;

use peer_map::PeerMap;

pub use types::{Action, TransferConfig, TransferError, TransferStats};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// Weight of the newest throughput sample in a peer's score.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug, Clone)]
struct PeerState {
    has: Bitfield,
    in_flight: u32,
    /// EWMA of bytes per second; `None` until the first sample.
    score: Option<f64>,
    /// No new request before this instant (busy answer or failure backoff).
    not_before: Option<Instant>,
    failures: u32,
    /// Chunks this peer declined, and until when they are not asked of it (few: one per request).
    declined: Vec<(u32, Instant)>,
    /// The chunks of `declined`, as a set, and its earliest expiry.
    declined_mask: Bitfield,
    declined_due: Option<Instant>,
    /// `|has ∖ our have ∖ declined_mask|`: chunks this peer could be asked for (kept by every
    /// change of the three sets, so `schedule` need not intersect bitfields per peer).
    useful: u32,
}

impl PeerState {
    /// When this peer's earliest backoff or decline ends.
    fn due(&self) -> Option<Instant> {
        match (self.not_before, self.declined_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A bound on when the next peer backoff or decline ends, so `poll` and `next_deadline` skip the
/// scan of every peer while none does (most calls).
#[derive(Debug, Clone, Copy)]
struct Expiry {
    /// At or before every peer's `due()`; `None`: no peer has one.
    at: Option<Instant>,
    /// `at` is the earliest `due()` itself, not only a bound.
    exact: bool,
}

impl Expiry {
    /// A peer's `due()` went from `old` to `new`.
    fn update(&mut self, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        match new {
            // Below the bound: the new earliest (an exact bound stays exact).
            Some(n) if self.at.is_none_or(|a| n < a) => self.at = Some(n),
            // This peer may have held the earliest one.
            _ if old.is_some() && old == self.at => self.exact = false,
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Outstanding<P> {
    peer: P,
    sent: Instant,
}

/// Download state of one blob, generic over the peer id.
#[derive(Debug)]
pub struct Transfer<P> {
    layout: ChunkLayout,
    cfg: TransferConfig,
    policy: Box<dyn PiecePolicy>,
    have: Bitfield,
    peers: PeerMap<P, PeerState>,
    /// Survive `remove_peer`, so a reconnecting bad peer stays banned.
    bans: BTreeMap<P, Instant>,
    /// Chunk -> its outstanding requests (at most `1 + endgame_duplicates`).
    requests: BTreeMap<u32, Vec<Outstanding<P>>>,
    total_in_flight: u32,
    /// Per chunk: connected peers that have it (saturating).
    availability: Vec<u16>,
    /// Actions produced by events, handed out by the next `poll`.
    queued: Vec<Action<P>>,
    complete_sent: bool,
    stats: TransferStats,
    /// Reused buffers of `schedule` (a peer's chunks minus its declines; the peer order).
    scratch: Bitfield,
    order: Vec<Ranked<P>>,
    expiry: Expiry,
}

/// A peer's place in `schedule`'s order: best score first, then a random draw, then the peer
/// (the max of a heap is the next peer to ask).
#[derive(Debug)]
struct Ranked<P>(f64, u64, P);

impl<P: Ord> Ord for Ranked<P> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&o.0)
            .then(o.1.cmp(&self.1))
            .then(o.2.cmp(&self.2))
    }
}

impl<P: Ord> PartialOrd for Ranked<P> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl<P: Ord> PartialEq for Ranked<P> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl<P: Ord> Eq for Ranked<P> {}

impl<P: Copy + Eq + Hash + Ord + Debug> Transfer<P> {
    /// A transfer of a blob cut by `layout`, of which the chunks in `have` are already stored.
    pub fn new(
        layout: ChunkLayout,
        have: Bitfield,
        cfg: TransferConfig,
    ) -> Result<Self, TransferError> {
        let policy = Box::new(cfg.policy);
        Self::with_policy(layout, have, cfg, policy)
    }

    /// As [`Transfer::new`] with a custom piece policy (`cfg.policy` is then ignored).
    pub fn with_policy(
        layout: ChunkLayout,
        have: Bitfield,
        cfg: TransferConfig,
        policy: Box<dyn PiecePolicy>,
    ) -> Result<Self, TransferError> {
        let n = layout.count();
        if have.len() != n {
            return Err(TransferError::BitfieldLength {
                got: have.len(),
                want: n,
            });
        }
        let bytes_have = have.iter_ones().map(|i| u64::from(layout.len(i))).sum();
        let stats = TransferStats {
            chunks: n,
            chunks_have: have.count_ones(),
            bytes_have,
            ..TransferStats::default()
        };
        Ok(Self {
            layout,
            cfg,
            policy,
            have,
            peers: PeerMap::new(),
            bans: BTreeMap::new(),
            requests: BTreeMap::new(),
            total_in_flight: 0,
            availability: vec![0; n as usize],
            queued: Vec::new(),
            complete_sent: false,
            stats,
            scratch: Bitfield::new(n),
            order: Vec::new(),
            expiry: Expiry {
                at: None,
                exact: true,
            },
        })
    }

    /// A peer appeared, or re-sent its whole bitfield (which then replaces the old one; its
    /// outstanding requests stay).
    pub fn add_peer(&mut self, peer: P, has: Bitfield) -> Result<(), TransferError> {
        let want = self.layout.count();
        if has.len() != want {
            return Err(TransferError::BitfieldLength {
                got: has.len(),
                want,
            });
        }
        if let Some(old) = self.peers.get(&peer) {
            for i in old.has.iter_ones() {
                self.availability[i as usize] = self.availability[i as usize].saturating_sub(1);
            }
        }
        for i in has.iter_ones() {
            self.availability[i as usize] = self.availability[i as usize].saturating_add(1);
        }
        let st = self.peers.get_or_insert_with(peer, || PeerState {
            has: Bitfield::new(want),
            in_flight: 0,
            score: None,
            not_before: None,
            failures: 0,
            declined: Vec::new(),
            declined_mask: Bitfield::new(want),
            declined_due: None,
            useful: 0,
        });
        st.useful = has.count_ones_except(&self.have, &st.declined_mask);
        st.has = has;
        Ok(())
    }

    /// `peer` now has `chunk`. Unknown peers are ignored (the event raced a disconnect).
    pub fn peer_have(&mut self, peer: P, chunk: u32) -> Result<(), TransferError> {
        let count = self.layout.count();
        if chunk >= count {
            return Err(TransferError::ChunkOutOfRange { chunk, count });
        }
        if let Some(st) = self.peers.get_mut(&peer) {
            if st.has.set(chunk) {
                let a = &mut self.availability[chunk as usize];
                *a = a.saturating_add(1);
                if !self.have.get(chunk) && !st.declined_mask.get(chunk) {
                    st.useful += 1;
                }
            }
        }
        Ok(())
    }

    /// `peer` is gone: its outstanding requests return to the pool; no `Cancel` for it is emitted.
    pub fn remove_peer(&mut self, peer: P) {
        let Some(st) = self.peers.remove(&peer) else {
            return;
        };
        self.expiry.update(st.due(), None);
        self.queued
            .retain(|a| !matches!(a, Action::Cancel { peer: p, .. } if *p == peer));
        for i in st.has.iter_ones() {
            self.availability[i as usize] = self.availability[i as usize].saturating_sub(1);
        }
        let mut removed = 0u32;
        self.requests.retain(|_, reqs| {
            reqs.retain(|r| {
                removed += u32::from(r.peer == peer);
                r.peer != peer
            });
            !reqs.is_empty()
        });
        self.total_in_flight -= removed;
    }

    /// `chunk` from `peer` was verified and stored. Updates the peer's score and cancels the other
    /// requests of the chunk. Also accepted when it was not (or no longer) requested.
    pub fn on_chunk_ok(&mut self, peer: P, chunk: u32, bytes: u64, now: Instant) {
        if chunk >= self.layout.count() {
            return;
        }
        if let Some(sent) = self.take_request(peer, chunk) {
            if let Some(st) = self.peers.get_mut(&peer) {
                let secs = now.saturating_duration_since(sent).as_secs_f64().max(1e-3);
                let rate = bytes as f64 / secs;
                st.score = Some(match st.score {
                    Some(s) => s + EWMA_ALPHA * (rate - s),
                    None => rate,
                });
                st.failures = 0;
            }
        }
        if !self.have.set(chunk) {
            self.stats.duplicates += 1;
            return;
        }
        for st in self.peers.values_mut() {
            if st.has.get(chunk) && !st.declined_mask.get(chunk) {
                st.useful -= 1;
            }
        }
        self.stats.chunks_ok += 1;
        self.stats.chunks_have += 1;
        self.stats.bytes_have += u64::from(self.layout.len(chunk));
        if let Some(reqs) = self.requests.remove(&chunk) {
            self.release(&reqs);
            self.queued.extend(reqs.iter().map(|r| Action::Cancel {
                peer: r.peer,
                chunk,
            }));
        }
    }

    /// `chunk` from `peer` failed verification: the peer is banned until `now + ban_duration`,
    /// its other requests are cancelled, and the chunk is requested elsewhere.
    pub fn on_chunk_bad(&mut self, peer: P, chunk: u32, now: Instant) {
        self.take_request(peer, chunk);
        self.stats.bad += 1;
        let until = now + self.cfg.ban_duration;
        let newly = self.bans.insert(peer, until).is_none();
        if newly {
            self.stats.bans += 1;
            self.queued.push(Action::Ban { peer, until });
        }
        let mut cancelled = Vec::new();
        for (&c, reqs) in &self.requests {
            if reqs.iter().any(|r| r.peer == peer) {
                cancelled.push(c);
            }
        }
        for c in cancelled {
            self.take_request(peer, c);
            self.queued.push(Action::Cancel { peer, chunk: c });
        }
        if let Some(st) = self.peers.get_mut(&peer) {
            st.score = Some(0.0);
        }
    }

    /// The request failed (network error, stream reset): requeue the chunk, penalise the peer and
    /// back it off. Ignored when the request is no longer outstanding.
    pub fn on_failure(&mut self, peer: P, chunk: u32, now: Instant) {
        if self.take_request(peer, chunk).is_some() {
            self.stats.failures += 1;
            self.penalise(peer, now);
        }
    }

    /// The peer refused (too many uploads): requeue, leave it alone for `busy_backoff`.
    pub fn on_busy(&mut self, peer: P, chunk: u32, now: Instant) {
        if self.take_request(peer, chunk).is_some() {
            self.stats.busy += 1;
            if let Some(st) = self.peers.get_mut(&peer) {
                let (old, until) = (st.due(), now + self.cfg.busy_backoff);
                st.not_before = Some(st.not_before.map_or(until, |t| t.max(until)));
                self.expiry.update(old, st.due());
            }
        }
    }

    /// The peer declined `chunk` (it just sent it to someone else): requeue, and do not ask it for
    /// that chunk for `decline_backoff`; the peer is asked for other chunks at once.
    pub fn on_declined(&mut self, peer: P, chunk: u32, now: Instant) {
        if self.take_request(peer, chunk).is_some() {
            self.stats.declined += 1;
            self.mark_declined(peer, chunk, now);
        }
    }

    /// `chunk` is not asked of `peer` for `decline_backoff`.
    fn mark_declined(&mut self, peer: P, chunk: u32, now: Instant) {
        if let Some(st) = self.peers.get_mut(&peer) {
            let (old, until) = (st.due(), now + self.cfg.decline_backoff);
            st.declined.retain(|(c, _)| *c != chunk);
            st.declined.push((chunk, until));
            if st.declined_mask.set(chunk) && st.has.get(chunk) && !self.have.get(chunk) {
                st.useful -= 1;
            }
            st.declined_due = st.declined.iter().map(|(_, t)| *t).min();
            self.expiry.update(old, st.due());
        }
    }

    /// Expires bans and backoffs, fails timed-out requests, hands out new requests, and returns
    /// every action due. Call after each event and at [`Transfer::next_deadline`].
    pub fn poll<R: Rng>(&mut self, now: Instant, rng: &mut R) -> Vec<Action<P>> {
        self.bans.retain(|_, until| *until > now);
        let timeout = self.cfg.chunk_timeout;
        let expired: Vec<(P, u32)> = self
            .requests
            .iter()
            .flat_map(|(&c, reqs)| reqs.iter().map(move |r| (r, c)))
            .filter(|(r, _)| now.saturating_duration_since(r.sent) >= timeout)
            .map(|(r, c)| (r.peer, c))
            .collect();
        for (peer, chunk) in expired {
            self.take_request(peer, chunk);
            self.stats.timeouts += 1;
            self.queued.push(Action::Cancel { peer, chunk });
            self.penalise(peer, now);
        }
        if self.have.is_full() {
            if !self.complete_sent {
                self.complete_sent = true;
                self.queued.push(Action::Complete);
            }
        } else {
            self.schedule(now, rng);
        }
        debug_assert!(self.expiry_holds());
        std::mem::take(&mut self.queued)
    }

    /// Ends the backoff and the declines of one peer that are due at `now`.
    fn expire_peer(st: &mut PeerState, have: &Bitfield, now: Instant) {
        if st.not_before.is_some_and(|t| t <= now) {
            st.not_before = None;
        }
        if st.declined_due.is_some_and(|t| t <= now) {
            let (mask, has) = (&mut st.declined_mask, &st.has);
            let useful = &mut st.useful;
            st.declined.retain(|&(c, t)| {
                let keep = t > now;
                if !keep && mask.clear(c) && has.get(c) && !have.get(c) {
                    *useful += 1;
                }
                keep
            });
            st.declined_due = st.declined.iter().map(|(_, t)| *t).min();
        }
    }

    /// `expiry` bounds every peer's `due()` (and is their minimum when exact).
    fn expiry_holds(&self) -> bool {
        let min = self.peers.values().filter_map(PeerState::due).min();
        let bound = self
            .peers
            .values()
            .filter_map(PeerState::due)
            .all(|d| self.expiry.at.is_some_and(|a| a <= d));
        bound && (!self.expiry.exact || min == self.expiry.at)
    }

    /// The earliest instant at which `poll` has something new to do without an event (a request
    /// times out, a backoff or ban ends); `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.have.is_full() {
            return None;
        }
        let timeouts = self
            .requests
            .values()
            .flatten()
            .map(|r| r.sent + self.cfg.chunk_timeout);
        let scan = (!self.expiry.exact).then(|| self.peers.values().filter_map(PeerState::due));
        let backoffs = self.expiry.at.filter(|_| self.expiry.exact);
        let bans = self
            .bans
            .iter()
            .filter(|(p, _)| self.peers.contains_key(p))
            .map(|(_, &t)| t);
        timeouts
            .chain(backoffs)
            .chain(scan.into_iter().flatten())
            .chain(bans)
            .min()
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    pub fn config(&self) -> &TransferConfig {
        &self.cfg
    }

    /// Outstanding requests as `(peer, chunk)`, by chunk.
    pub fn in_flight(&self) -> impl Iterator<Item = (P, u32)> + '_ {
        self.requests
            .iter()
            .flat_map(|(&c, reqs)| reqs.iter().map(move |r| (r.peer, c)))
    }

    pub fn in_flight_count(&self) -> u32 {
        self.total_in_flight
    }

    /// Whether `peer` announcing `chunk` could let `poll` at `now` make a request it could not
    /// make before (a driver may skip the poll otherwise): a chunk we miss, not yet requested
    /// (or in endgame, below the duplicate limit and not asked of `peer`), not declined by
    /// `peer`, which is connected, not banned, not backed off and below its request limit, with
    /// a request slot free.
    pub fn could_use(&self, peer: &P, chunk: u32, now: Instant) -> bool {
        let Some(st) = self.peers.get(peer) else {
            return false;
        };
        if chunk >= self.layout.count()
            || self.have.get(chunk)
            || self.total_in_flight >= self.cfg.max_in_flight_total
            || st.in_flight >= self.cfg.max_in_flight_per_peer
            || st.not_before.is_some_and(|t| t > now)
            || st.declined_mask.get(chunk)
            || self.bans.get(peer).is_some_and(|&t| t > now)
        {
            return false;
        }
        match self.requests.get(&chunk) {
            None => true,
            Some(reqs) => {
                let endgame = self.requests.len() as u64 + u64::from(self.stats.chunks_have)
                    >= u64::from(self.layout.count());
                endgame
                    && reqs.len() < 1 + self.cfg.endgame_duplicates as usize
                    && reqs.iter().all(|r| r.peer != *peer)
            }
        }
    }

    /// Requests outstanding at `peer` (0 for an unknown peer).
    pub fn in_flight_to(&self, peer: &P) -> u32 {
        self.peers.get(peer).map_or(0, |s| s.in_flight)
    }

    /// Connected peers, ascending.
    pub fn peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers.keys().copied()
    }

    /// The bitfield a connected peer announced.
    pub fn peer_has(&self, peer: &P) -> Option<&Bitfield> {
        self.peers.get(peer).map(|s| &s.has)
    }

    /// Throughput estimate (bytes/s) of a peer, once it delivered or failed something.
    pub fn peer_score(&self, peer: &P) -> Option<f64> {
        self.peers.get(peer).and_then(|s| s.score)
    }

    /// Until when `peer` is banned (as of the last `poll`).
    pub fn banned_until(&self, peer: &P) -> Option<Instant> {
        self.bans.get(peer).copied()
    }

    /// Per chunk: how many connected peers have it.
    pub fn availability(&self) -> &[u16] {
        &self.availability
    }

    pub fn stats(&self) -> TransferStats {
        TransferStats {
            in_flight: self.total_in_flight,
            peers: u32::try_from(self.peers.len()).unwrap_or(u32::MAX),
            ..self.stats.clone()
        }
    }

    /// Ends the backoffs and declines due, then hands out requests to eligible peers, best score
    /// first, until slots or chunks run out. One pass over the peers does both (and finds the
    /// neutral score), and none is made while no slot is free and nothing is due.
    fn schedule<R: Rng>(&mut self, now: Instant, rng: &mut R) {
        let free = self.total_in_flight < self.cfg.max_in_flight_total;
        let due = !self.expiry.exact || self.expiry.at.is_some_and(|t| t <= now);
        if !free && !due {
            return;
        }
        let per_peer = self.cfg.max_in_flight_per_peer;
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        let (mut next_due, mut neutral) = (None::<Instant>, 0.0f64);
        for (p, st) in self.peers.iter_mut() {
            if due {
                Self::expire_peer(st, &self.have, now);
                if let Some(d) = st.due() {
                    next_due = Some(next_due.map_or(d, |a| a.min(d)));
                }
            }
            debug_assert_eq!(
                st.useful,
                st.has.count_ones_except(&self.have, &st.declined_mask)
            );
            if let Some(s) = st.score {
                neutral = neutral.max(s);
            }
            // Only peers with a chunk we miss (declines aside) could get a request; each draws
            // its random tie-breaker. Unsampled peers get the neutral score below.
            if free
                && st.useful > 0
                && st.in_flight < per_peer
                && st.not_before.is_none_or(|t| t <= now)
                && !self.bans.contains_key(p)
            {
                order.push(Ranked(st.score.unwrap_or(f64::NAN), rng.next_u64(), *p));
            }
        }
        if due {
            self.expiry = Expiry {
                at: next_due,
                exact: true,
            };
        }
        for r in &mut order {
            if r.0.is_nan() {
                r.0 = neutral;
            }
        }
        if order.is_empty() {
            self.order = order;
            return;
        }
        let mut want = self.have.not();
        for &c in self.requests.keys() {
            want.clear(c);
        }
        let mut order = std::collections::BinaryHeap::from(order);
        let entered_endgame = self.schedule_in_order(now, want, &mut order, rng);
        self.order = order.into_vec();
        // Peers ranked before the last unrequested chunk went out may now take endgame
        // duplicates: one more pass (it starts in endgame, so it does not come back here).
        if entered_endgame && self.total_in_flight < self.cfg.max_in_flight_total {
            self.schedule(now, rng);
        }
    }

    /// `schedule`'s loop: peers best first (popped lazily, as few slots are usually free).
    /// Returns whether the last unrequested chunk went out during it (endgame began).
    fn schedule_in_order(
        &mut self,
        now: Instant,
        mut want: Bitfield,
        order: &mut std::collections::BinaryHeap<Ranked<P>>,
        rng: &mut dyn RngCore,
    ) -> bool {
        let per_peer = self.cfg.max_in_flight_per_peer;
        let started_clear = want.is_clear();
        while let Some(Ranked(_, _, peer)) = order.pop() {
            loop {
                if self.total_in_flight >= self.cfg.max_in_flight_total {
                    return !started_clear && want.is_clear();
                }
                let Some(st) = self.peers.get(&peer) else {
                    break;
                };
                if st.in_flight >= per_peer {
                    break;
                }
                let has = if st.declined.is_empty() {
                    &st.has
                } else {
                    self.scratch.copy_from(&st.has);
                    self.scratch.remove_all(&st.declined_mask);
                    &self.scratch
                };
                let chunk = if want.is_clear() {
                    self.endgame_pick(peer, has)
                } else {
                    self.policy
                        .pick(&want, has, &self.availability, rng)
                        // A custom policy could misbehave; the invariants do not depend on it.
                        .filter(|&c| want.get(c) && has.get(c))
                };
                let Some(chunk) = chunk else { break };
                want.clear(chunk);
                self.requests
                    .entry(chunk)
                    .or_default()
                    .push(Outstanding { peer, sent: now });
                self.total_in_flight += 1;
                self.stats.requests += 1;
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.in_flight += 1;
                }
                self.queued.push(Action::Request { peer, chunk });
            }
        }
        !started_clear && want.is_clear()
    }

    /// Endgame: a chunk already in flight elsewhere, not yet asked of `peer`, below the duplicate
    /// limit; fewest outstanding copies first, then the oldest request.
    fn endgame_pick(&self, peer: P, has: &Bitfield) -> Option<u32> {
        let max = 1 + self.cfg.endgame_duplicates as usize;
        self.requests
            .iter()
            .filter(|(&c, reqs)| {
                has.get(c) && reqs.len() < max && reqs.iter().all(|r| r.peer != peer)
            })
            .min_by_key(|(_, reqs)| (reqs.len(), reqs.iter().map(|r| r.sent).min()))
            .map(|(&c, _)| c)
    }

    /// Removes the outstanding request `(peer, chunk)`, returning when it was sent. The driver
    /// answered it, so a `Cancel` of it still queued is moot and dropped.
    fn take_request(&mut self, peer: P, chunk: u32) -> Option<Instant> {
        self.queued.retain(|a| *a != Action::Cancel { peer, chunk });
        let reqs = self.requests.get_mut(&chunk)?;
        let pos = reqs.iter().position(|r| r.peer == peer)?;
        let r = reqs.swap_remove(pos);
        if reqs.is_empty() {
            self.requests.remove(&chunk);
        }
        self.release(&[r]);
        Some(r.sent)
    }

    /// Frees the slots of requests already removed from `self.requests`.
    fn release(&mut self, reqs: &[Outstanding<P>]) {
        for r in reqs {
            self.total_in_flight -= 1;
            if let Some(st) = self.peers.get_mut(&r.peer) {
                st.in_flight -= 1;
            }
        }
    }

    fn penalise(&mut self, peer: P, now: Instant) {
        let neutral = self.neutral_score();
        let (base, cap) = (self.cfg.busy_backoff, self.cfg.chunk_timeout);
        if let Some(st) = self.peers.get_mut(&peer) {
            st.score = Some(st.score.unwrap_or(neutral) * 0.5);
            st.failures = st.failures.saturating_add(1);
            let backoff = base.saturating_mul(1 << (st.failures - 1).min(16)).min(cap);
            let (old, until) = (st.due(), now + backoff);
            st.not_before = Some(st.not_before.map_or(until, |t| t.max(until)));
            self.expiry.update(old, st.due());
        }
    }

    /// Score given to peers without a sample: the best known one, so a new peer is tried soon (it
    /// ties with the best and ties are random) and cannot be starved by penalised peers.
    fn neutral_score(&self) -> f64 {
        self.peers
            .values()
            .filter_map(|s| s.score)
            .fold(0.0, f64::max)
    }
}
