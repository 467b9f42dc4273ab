//! Peer discovery and churn: a download's periodic refresh adds candidates (providers first,
//! then nodes that registered the blob), as production's 2 s refresh does; killed nodes vanish
//! from their peers at once; a dead puller's origin pull moves to another node after the
//! lease takeover delay.

use preheat_core::bitfield::Bitfield;
use rand::seq::SliceRandom;
use rand::Rng;

use super::{Ev, Sim};
use crate::config::Victim;

impl Sim {
    pub(super) fn refresh(&mut self, n: u32, b: u16) {
        let bi = usize::from(b);
        let node = &self.nodes[n as usize];
        if !node.alive || node.dl[bi].done {
            return;
        }
        let have = node.dl[bi].t.as_ref().map_or(0, |t| t.peers().count());
        let want = self.cfg.max_peers.saturating_sub(have);
        if want > 0 {
            let mut picked = self.sample(bi, true, n, want);
            if picked.len() < want {
                for p in self.sample(bi, false, n, want - picked.len()) {
                    if !picked.contains(&p) {
                        picked.push(p);
                    }
                }
            }
            for p in picked {
                self.add_peer(n, b, p);
            }
            self.drive(n, b);
        }
        let at = self.now + u64::try_from(self.cfg.refresh.as_nanos()).unwrap_or(u64::MAX);
        self.push(at, Ev::Refresh(n, b));
    }

    /// Up to `k` live nodes of the provider (or registered) list of blob `bi`, not `me` and not
    /// yet peers of `me`, in random order.
    fn sample(&mut self, bi: usize, providers: bool, me: u32, k: usize) -> Vec<u32> {
        let list = if providers {
            &self.providers[bi]
        } else {
            &self.registered[bi]
        };
        let t = self.nodes[me as usize].dl[bi].t.as_ref();
        let eligible = |p: u32| {
            p != me && self.nodes[p as usize].alive && t.is_none_or(|t| t.peer_has(&p).is_none())
        };
        let mut out = Vec::with_capacity(k);
        if list.len() <= 4 * k {
            let mut all: Vec<u32> = list.iter().copied().filter(|&p| eligible(p)).collect();
            all.shuffle(&mut self.rng);
            all.truncate(k);
            return all;
        }
        // Large lists: rejection sampling, bounded.
        for _ in 0..8 * k {
            if out.len() == k {
                break;
            }
            let p = list[self.rng.gen_range(0..list.len())];
            if eligible(p) && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    fn add_peer(&mut self, n: u32, b: u16, p: u32) {
        let bi = usize::from(b);
        let layout = self.layouts[bi];
        let has = self.nodes[p as usize].dl[bi]
            .t
            .as_ref()
            .map_or_else(|| Bitfield::new(layout.count()), |t| t.have().clone());
        if let Some(t) = self.transfer(n, b) {
            if t.add_peer(p, has).is_ok() {
                self.nodes[p as usize].dl[bi].subs.push(n);
            }
        }
    }

    pub(super) fn kill(&mut self, i: usize) {
        let Some(c) = self.cfg.churn.get(i).copied() else {
            return;
        };
        let victim = match c.victim {
            Victim::Puller => self.puller.filter(|&p| self.nodes[p as usize].alive),
            Victim::Other => {
                let alive: Vec<u32> = (0..self.origin)
                    .filter(|&n| {
                        let s = &self.nodes[n as usize];
                        s.alive && s.start.is_some() && s.done.is_none() && Some(n) != self.puller
                    })
                    .collect();
                alive.choose(&mut self.rng).copied()
            }
        };
        let Some(v) = victim else { return };
        self.nodes[v as usize].alive = false;
        if self.nodes[v as usize].done.is_none() {
            self.settled += 1;
        }
        for f in self.net.flows_of(v) {
            self.end_flow(f, false);
        }
        for bi in 0..self.layouts.len() {
            let b = u16::try_from(bi).unwrap_or(u16::MAX);
            let subs = std::mem::take(&mut self.nodes[v as usize].dl[bi].subs);
            for s in subs {
                if let Some(t) = self.transfer(s, b) {
                    t.remove_peer(v);
                }
                self.drive(s, b);
            }
        }
        if Some(v) == self.puller {
            self.push(
                self.now + u64::try_from(self.cfg.takeover.as_nanos()).unwrap_or(u64::MAX),
                Ev::Takeover,
            );
        }
        self.node_finished();
    }

    /// Another live node that still misses blobs becomes the puller: the origin joins as a peer
    /// of its unfinished downloads (unstarted ones get it when they start).
    pub(super) fn takeover(&mut self) {
        let candidates: Vec<u32> = (0..self.origin)
            .filter(|&n| {
                let s = &self.nodes[n as usize];
                s.alive && s.start.is_some() && s.done.is_none()
            })
            .collect();
        let Some(&p) = candidates.choose(&mut self.rng) else {
            self.puller = None;
            return;
        };
        self.puller = Some(p);
        for bi in 0..self.layouts.len() {
            let b = u16::try_from(bi).unwrap_or(u16::MAX);
            let count = self.layouts[bi].count();
            let origin = self.origin;
            if let Some(t) = self.transfer(p, b) {
                if !t.is_complete() {
                    let _ = t.add_peer(origin, Bitfield::full(count));
                }
            }
            self.drive(p, b);
        }
    }
}
