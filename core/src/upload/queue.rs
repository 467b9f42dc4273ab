//! Requests the serving side holds instead of refusing them at once.
//!
//! A refused request costs the downloader a round trip and, at once, another request elsewhere;
//! when most holders are busy or have just sent every chunk the downloader wants, downloaders
//! poll them in a loop (BitTorrent avoids this with choking). Here a request that cannot be
//! served now waits, up to `max_wait`, for a free slot or for its chunk to leave its resend
//! window; it is answered `Busy` or `Declined` only when the wait ends or the queue is full. A
//! downloader's slot is then occupied by one waiting request instead of a stream of refused ones.
//! Waiting requests are served in arrival order as slots free.
//!
//! The driver feeds requests, finished uploads and cancellations, and calls `poll(now)` after each
//! and at `next_deadline()`; it reads no clock and does no I/O.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::Instant;

use super::{UploadConfig, UploadGate};

/// Most requests one node holds at once (`UploadConfig::max_waiting` is capped by it).
pub const MAX_WAITING: usize = 256;

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send the chunk; it holds a slot until `finished`.
    Serve,
    /// No slot came free in time, or the queue is full.
    Busy,
    /// The chunk stayed in its resend window (super-seeding): ask elsewhere.
    Declined,
}

#[derive(Debug)]
struct Waiting<B, I> {
    id: I,
    blob: B,
    chunk: u32,
    until: Instant,
}

/// Upload slots, super-seeding and the requests waiting for them, of one node.
#[derive(Debug)]
pub struct UploadQueue<B, I> {
    gate: UploadGate<B>,
    waiting: VecDeque<Waiting<B, I>>,
    answers: Vec<(I, Answer)>,
    /// A slot came free since the last scan of `waiting`.
    dirty: bool,
    /// When a waiting chunk's resend window ends (the next scan is due then).
    rescan_at: Option<Instant>,
}

impl<B: Copy + Eq + Hash, I: Copy + Eq> UploadQueue<B, I> {
    pub fn new(cfg: UploadConfig) -> Self {
        Self {
            gate: UploadGate::new(cfg),
            waiting: VecDeque::new(),
            answers: Vec::new(),
            dirty: false,
            rescan_at: None,
        }
    }

    pub fn config(&self) -> &UploadConfig {
        self.gate.config()
    }

    /// Uploads running.
    pub fn active(&self) -> usize {
        self.gate.active()
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn max_waiting(&self) -> usize {
        let cfg = self.gate.config();
        if cfg.max_wait.is_zero() {
            0
        } else {
            cfg.max_waiting.min(MAX_WAITING)
        }
    }

    /// A request for `chunk` of `blob`, answered now or by a later `poll`.
    pub fn request(&mut self, id: I, blob: B, chunk: u32, now: Instant) {
        // Waiting requests go first while no slot is free.
        let refusal = if !self.gate.has_slot() {
            Answer::Busy
        } else {
            match self.gate.serve(blob, chunk, now) {
                Ok(()) => {
                    self.answers.push((id, Answer::Serve));
                    return;
                }
                Err(ends) => {
                    if self.waiting.len() < self.max_waiting() {
                        // Nothing about the older waiting requests changed; only this window.
                        self.rescan_at = min_opt(self.rescan_at, ends);
                    }
                    Answer::Declined
                }
            }
        };
        if self.waiting.len() >= self.max_waiting() {
            self.answers.push((id, refusal));
            return;
        }
        self.waiting.push_back(Waiting {
            id,
            blob,
            chunk,
            until: now + self.gate.config().max_wait,
        });
    }

    /// An upload answered `Serve` has ended (sent, failed or cancelled).
    pub fn finished(&mut self, blob: B, chunk: u32) {
        self.gate.finished(blob, chunk);
        self.dirty = true;
    }

    /// The downloader gave up on a request (its stream closed). Returns whether it was waiting.
    pub fn cancel(&mut self, id: &I) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.id != *id);
        before != self.waiting.len()
    }

    /// Serves the waiting requests that can be, refuses those whose wait ended, and returns
    /// every answer due.
    pub fn poll(&mut self, now: Instant) -> Vec<(I, Answer)> {
        let slot = self.gate.has_slot();
        if slot && (self.dirty || self.rescan_at.is_some_and(|t| t <= now)) {
            self.scan(now);
        }
        while self.waiting.front().is_some_and(|w| w.until <= now) {
            if let Some(w) = self.waiting.pop_front() {
                self.expire(w);
            }
        }
        // Waits end in arrival order unless `max_wait` changed; catch any left behind.
        if self.waiting.iter().any(|w| w.until <= now) {
            let (gone, keep): (Vec<_>, Vec<_>) =
                self.waiting.drain(..).partition(|w| w.until <= now);
            self.waiting = keep.into();
            for w in gone {
                self.expire(w);
            }
        }
        std::mem::take(&mut self.answers)
    }

    fn expire(&mut self, w: Waiting<B, I>) {
        let a = if self.gate.has_slot() {
            Answer::Declined
        } else {
            Answer::Busy
        };
        self.answers.push((w.id, a));
    }

    /// Hands free slots to waiting requests in arrival order and finds when the next resend
    /// window of a waiting chunk ends.
    fn scan(&mut self, now: Instant) {
        self.dirty = false;
        self.rescan_at = None;
        let mut i = 0;
        while i < self.waiting.len() && self.gate.has_slot() {
            let w = &self.waiting[i];
            match self.gate.serve(w.blob, w.chunk, now) {
                Ok(()) => {
                    if let Some(w) = self.waiting.remove(i) {
                        self.answers.push((w.id, Answer::Serve));
                    }
                }
                Err(ends) => {
                    self.rescan_at = min_opt(self.rescan_at, ends);
                    i += 1;
                }
            }
        }
    }

    /// When `poll` has something to do without another event: a wait or a resend window ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        let waits = self.waiting.front().map(|w| w.until);
        min_opt(waits, self.rescan_at.filter(|_| self.gate.has_slot()))
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
