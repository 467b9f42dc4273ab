//! The serving side of chunk exchange: how many uploads run at once, and which requests are worth
//! answering now.
//!
//! Super-seeding: a chunk this node is sending, or sent less than `resend_after` ago, is declined,
//! so the downloaders take the copy that just left from its new holder and this node's upload goes
//! to chunks nobody else has. Without it, every downloader asks the one node holding the newest
//! chunks (the registry puller) for the same chunk, and its upload carries the same bytes many
//! times over while the downloaders' uploads idle. A decline costs the downloader one round trip;
//! it then asks elsewhere or for another chunk ([`crate::transfer::Transfer::on_declined`]).
//! [`UploadQueue`] lets such requests, and those finding no free slot, wait a while first.
//!
//! Bounded: at most [`MAX_TRACKED_BLOBS`] blobs are tracked; the least recently asked one is
//! forgotten first (it is then served as if never sent).

mod queue;

pub use queue::{Answer, UploadQueue, MAX_WAITING};

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Blobs whose per-chunk send times are remembered.
pub const MAX_TRACKED_BLOBS: usize = 64;

/// Limits of the serving side.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadConfig {
    /// Uploads at once; more requests are answered busy.
    pub max_uploads: usize,
    /// A chunk is not sent again (declined) while it is being sent, nor this long after a send
    /// started. Zero turns super-seeding off.
    pub resend_after: Duration,
    /// How long a request that cannot be served now waits for a slot or for its chunk's resend
    /// window to end before it is refused ([`UploadQueue`]). Zero (the default): refused at once.
    pub max_wait: Duration,
    /// Requests waiting at once (at most [`MAX_WAITING`]); more are refused at once.
    pub max_waiting: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_uploads: 8,
            resend_after: Duration::from_secs(1),
            max_wait: Duration::ZERO,
            max_waiting: 64,
        }
    }
}

/// The answer to one chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadDecision {
    /// Send it; call [`UploadGate::finished`] when the upload ends, whatever the outcome.
    Serve,
    /// Every upload slot is taken.
    Busy,
    /// This chunk was just sent: ask someone else, or for another chunk.
    Declined,
}

/// One chunk's sends: uploads running, and when the latest one started.
#[derive(Debug, Clone, Copy)]
struct Send {
    active: u32,
    last: Instant,
}

#[derive(Debug)]
struct Sends {
    chunks: HashMap<u32, Send>,
    used: u64,
}

/// Upload slots and recent sends of one node, generic over the blob id.
#[derive(Debug)]
pub struct UploadGate<B> {
    cfg: UploadConfig,
    active: usize,
    blobs: HashMap<B, Sends>,
    tick: u64,
}

impl<B: Copy + Eq + Hash> UploadGate<B> {
    pub fn new(cfg: UploadConfig) -> Self {
        Self {
            cfg,
            active: 0,
            blobs: HashMap::new(),
            tick: 0,
        }
    }

    pub fn config(&self) -> &UploadConfig {
        &self.cfg
    }

    /// Uploads running.
    pub fn active(&self) -> usize {
        self.active
    }

    /// A slot is free.
    pub fn has_slot(&self) -> bool {
        self.active < self.cfg.max_uploads.max(1)
    }

    /// Decides on a request for `chunk` of `blob` at `now`; `Serve` takes a slot.
    pub fn decide(&mut self, blob: B, chunk: u32, now: Instant) -> UploadDecision {
        if !self.has_slot() {
            return UploadDecision::Busy;
        }
        match self.serve(blob, chunk, now) {
            Ok(()) => UploadDecision::Serve,
            Err(_) => UploadDecision::Declined,
        }
    }

    /// With a slot free: takes it for `chunk` unless the chunk is in its resend window; then
    /// says when that window ends (`Err(None)`: the chunk is being sent).
    pub(crate) fn serve(
        &mut self,
        blob: B,
        chunk: u32,
        now: Instant,
    ) -> Result<(), Option<Instant>> {
        let window = self.cfg.resend_after;
        if window.is_zero() {
            self.active += 1;
            return Ok(());
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(s) = self.blobs.get_mut(&blob) {
            s.used = tick;
            match s.chunks.get(&chunk) {
                Some(x) if x.active > 0 => return Err(None),
                Some(x) if x.last + window > now => return Err(Some(x.last + window)),
                _ => {}
            }
        }
        if !self.blobs.contains_key(&blob) && self.blobs.len() >= MAX_TRACKED_BLOBS {
            let oldest = self
                .blobs
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(b, _)| *b);
            if let Some(b) = oldest {
                self.blobs.remove(&b);
            }
        }
        let s = self.blobs.entry(blob).or_insert_with(|| Sends {
            chunks: HashMap::new(),
            used: tick,
        });
        let x = s.chunks.entry(chunk).or_insert(Send {
            active: 0,
            last: now,
        });
        x.active += 1;
        x.last = now;
        self.active += 1;
        Ok(())
    }

    /// An upload `decide` allowed has ended (sent, failed or cancelled).
    pub fn finished(&mut self, blob: B, chunk: u32) {
        self.active = self.active.saturating_sub(1);
        if let Some(x) = self
            .blobs
            .get_mut(&blob)
            .and_then(|s| s.chunks.get_mut(&chunk))
        {
            x.active = x.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, resend_ms: u64) -> UploadGate<u8> {
        UploadGate::new(UploadConfig {
            max_uploads: max,
            resend_after: Duration::from_millis(resend_ms),
            ..UploadConfig::default()
        })
    }

    #[test]
    fn slots_bound_uploads_and_are_returned() {
        let t = Instant::now();
        let mut g = gate(2, 0);
        assert_eq!(g.decide(1, 0, t), UploadDecision::Serve);
        // Super-seeding off: the same chunk twice at once is fine.
        assert_eq!(g.decide(1, 0, t), UploadDecision::Serve);
        assert_eq!(g.decide(1, 1, t), UploadDecision::Busy);
        g.finished(1, 0);
        assert_eq!(g.active(), 1);
        assert_eq!(g.decide(1, 1, t), UploadDecision::Serve);
    }

    #[test]
    fn a_chunk_being_sent_or_just_sent_is_declined() {
        let t = Instant::now();
        let mut g = gate(8, 1000);
        assert_eq!(g.decide(1, 5, t), UploadDecision::Serve);
        assert_eq!(g.decide(1, 5, t), UploadDecision::Declined);
        // Other chunks and other blobs are unaffected.
        assert_eq!(g.decide(1, 6, t), UploadDecision::Serve);
        assert_eq!(g.decide(2, 5, t), UploadDecision::Serve);
        let later = t + Duration::from_millis(1500);
        // Still running after the window: declined while it runs.
        assert_eq!(g.decide(1, 5, later), UploadDecision::Declined);
        g.finished(1, 5);
        assert_eq!(
            g.decide(1, 5, t + Duration::from_millis(500)),
            UploadDecision::Declined
        );
        assert_eq!(g.decide(1, 5, later), UploadDecision::Serve);
        assert_eq!(g.active(), 3);
    }

    #[test]
    fn tracked_blobs_are_bounded() {
        let t = Instant::now();
        let mut g: UploadGate<u32> = UploadGate::new(UploadConfig {
            max_uploads: 1_000_000,
            resend_after: Duration::from_secs(60),
            ..UploadConfig::default()
        });
        let n = u32::try_from(MAX_TRACKED_BLOBS).unwrap() * 3;
        for b in 0..n {
            assert_eq!(g.decide(b, 0, t), UploadDecision::Serve);
        }
        assert!(g.blobs.len() <= MAX_TRACKED_BLOBS);
        // The first blob was forgotten, the last is remembered.
        assert_eq!(g.decide(0, 0, t), UploadDecision::Serve);
        let last = n - 1;
        assert_eq!(g.decide(last, 0, t), UploadDecision::Declined);
    }
}
