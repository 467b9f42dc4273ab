//! Flow-level network: every chunk in transit is a fluid flow from an uploader to a downloader.
//!
//! Rates: each uploader's capacity is water-filled over its flows, where a flow may take at most
//! its downloader's equal share (`down / active downloads`). That is feasible at both ends (no
//! link ever exceeds its capacity) and max-min fair at the uploaders; capacity a downloader's
//! other flows leave unused is not redistributed, so the model errs on the slow side — results
//! stay above the Kumar–Ross bound. A change at one node re-rates the flows of that node and
//! of the uploaders feeding its downloader, so an event costs O(degree²), not O(flows).
//!
//! Shared CPU (optional, `SimConfig::cpu_cores`/`cpu_per_gib`): when all hosts share a few
//! cores and every byte delivered costs CPU, the sum of all flow rates is capped. Where the
//! max-min rates above exceed the cap, every flow is slowed by the same factor
//! `cap / Σ rates` — proportional, not a re-run of max-min with the CPU as one more shared link:
//! a CPU-bound kernel slows every socket alike, and one factor keeps an event O(degree²). The
//! engine applies it as a clock (network time runs at that pace), so this module never sees it;
//! it only keeps `Σ rates` ([`Net::total_rate`]).
//!
//! Time is integer nanoseconds, so runs are exactly repeatable.

/// Index of a flow in the slab.
pub type FlowId = usize;

/// Seconds to nanoseconds, rounded up (a flow never finishes early).
pub fn ns(secs: f64) -> u64 {
    // Saturating float-to-int conversion is the intent: simulated times are far below 2^64 ns.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let v = (secs * 1e9).ceil() as u64;
    v
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub blob: u16,
    pub chunk: u32,
    pub bytes: u64,
    remaining: f64,
    rate: f64,
    /// The rate the pending completion event was computed with.
    scheduled_rate: f64,
    last: u64,
    /// Unique per re-rating (never reused, also not by a later flow in the same slot); a
    /// completion event with another generation is stale.
    pub generation: u64,
}

/// A completion to (re)schedule: flow, generation, finish time (ns).
pub type Due = (FlowId, u64, u64);

#[derive(Debug)]
pub struct Net {
    up: Vec<f64>,
    down: Vec<f64>,
    ups: Vec<Vec<FlowId>>,
    downs: Vec<Vec<FlowId>>,
    flows: Vec<Option<Flow>>,
    free: Vec<FlowId>,
    next_generation: u64,
    /// Sum of every flow's rate (kept as rates change; the CPU model caps it).
    total: f64,
    /// Bytes each node (and the origin, last) has sent, counting completed flows only.
    pub sent: Vec<u64>,
}

impl Net {
    /// `links[i] = (up, down)` in bytes per second.
    pub fn new(links: &[(f64, f64)]) -> Self {
        Self {
            up: links.iter().map(|l| l.0).collect(),
            down: links.iter().map(|l| l.1).collect(),
            ups: vec![Vec::new(); links.len()],
            downs: vec![Vec::new(); links.len()],
            flows: Vec::new(),
            free: Vec::new(),
            sent: vec![0; links.len()],
            next_generation: 0,
            total: 0.0,
        }
    }

    /// Sum of the rates of all flows, bytes per second.
    pub fn total_rate(&self) -> f64 {
        self.total.max(0.0)
    }

    pub fn uploads(&self, node: u32) -> usize {
        self.ups[node as usize].len()
    }

    pub fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(id).and_then(Option::as_ref)
    }

    /// Flows from or to `node`.
    pub fn flows_of(&self, node: u32) -> Vec<FlowId> {
        let n = node as usize;
        self.ups[n].iter().chain(&self.downs[n]).copied().collect()
    }

    /// Starts a flow at `now`; returns its id and every completion to (re)schedule.
    pub fn start(
        &mut self,
        now: u64,
        src: u32,
        dst: u32,
        blob: u16,
        chunk: u32,
        bytes: u64,
    ) -> (FlowId, Vec<Due>) {
        let flow = Flow {
            src,
            dst,
            blob,
            chunk,
            bytes,
            remaining: bytes as f64,
            rate: 0.0,
            scheduled_rate: 0.0,
            last: now,
            generation: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.ups[src as usize].push(id);
        self.downs[dst as usize].push(id);
        (id, self.rerate(now, src, dst))
    }

    /// Removes a flow (finished or abandoned); the bytes it moved so far count as sent.
    pub fn finish(&mut self, now: u64, id: FlowId, completed: bool) -> Option<(Flow, Vec<Due>)> {
        let flow = self.flows.get_mut(id)?.take()?;
        self.free.push(id);
        self.ups[flow.src as usize].retain(|&f| f != id);
        self.downs[flow.dst as usize].retain(|&f| f != id);
        let moved = if completed {
            flow.bytes
        } else {
            let elapsed = now.saturating_sub(flow.last) as f64 / 1e9;
            let left = (flow.remaining - flow.rate * elapsed).max(0.0);
            // Truncation of a non-negative byte count below `bytes` is the intent.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let moved = flow.bytes.saturating_sub(left.ceil() as u64);
            moved
        };
        self.sent[flow.src as usize] += moved;
        self.total -= flow.rate;
        if self.free.len() == self.flows.len() {
            // Drift of the running sum ends with the last flow.
            self.total = 0.0;
        }
        let due = self.rerate(now, flow.src, flow.dst);
        Some((flow, due))
    }

    /// Re-rates the flows of uploader `src` and of every uploader feeding downloader `dst`:
    /// first the conservative water-fill (feasible at both ends), then the capacity both ends
    /// still leave free is handed out greedily, which keeps every link within its capacity.
    fn rerate(&mut self, now: u64, src: u32, dst: u32) -> Vec<Due> {
        let mut uploaders: Vec<u32> = vec![src];
        for &f in &self.downs[dst as usize] {
            if let Some(fl) = &self.flows[f] {
                uploaders.push(fl.src);
            }
        }
        uploaders.sort_unstable();
        uploaders.dedup();
        let mut rates: Vec<(FlowId, f64)> = Vec::new();
        for &u in &uploaders {
            self.waterfill(now, u, &mut rates);
        }
        for (f, rate) in &mut rates {
            let Some(fl) = self.flows[*f].as_ref() else {
                continue;
            };
            let (s, d) = (fl.src as usize, fl.dst as usize);
            let used = |ids: &[FlowId], flows: &[Option<Flow>]| -> f64 {
                ids.iter()
                    .filter_map(|&g| flows[g].as_ref().map(|g| g.rate))
                    .sum()
            };
            let free_up = self.up[s] - used(&self.ups[s], &self.flows);
            let free_down = self.down[d] - used(&self.downs[d], &self.flows);
            let extra = free_up.min(free_down);
            if extra > *rate * 1e-9 && extra.is_finite() {
                *rate += extra;
                if let Some(fl) = self.flows[*f].as_mut() {
                    self.total += *rate - fl.rate;
                    fl.rate = *rate;
                }
            }
        }
        #[cfg(debug_assertions)]
        self.check_feasible();
        let mut due = Vec::new();
        for (f, rate) in rates {
            let Some(fl) = self.flows[f].as_mut() else {
                continue;
            };
            if (rate - fl.scheduled_rate).abs() > rate * 1e-12 || fl.generation == 0 {
                fl.scheduled_rate = rate;
                self.next_generation += 1;
                fl.generation = self.next_generation;
                due.push((
                    f,
                    fl.generation,
                    now.saturating_add(ns(fl.remaining / rate)),
                ));
            }
        }
        due
    }

    /// Settles the flows of uploader `u` at `now` and gives each the water-filled share of the
    /// upload, capped by its downloader's equal share and by what the downloader's other flows
    /// leave free at that moment (so no link is ever over-committed); records `(flow, rate)`.
    fn waterfill(&mut self, now: u64, u: u32, out: &mut Vec<(FlowId, f64)>) {
        let mut caps: Vec<(f64, FlowId)> = self.ups[u as usize]
            .iter()
            .filter_map(|&f| {
                let fl = self.flows[f].as_ref()?;
                Some((self.fair_down(fl.dst), f))
            })
            .collect();
        caps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut left = self.up[u as usize];
        let mut k = caps.len();
        for (_, f) in caps {
            let Some(dst) = self.flows[f].as_ref().map(|fl| fl.dst) else {
                continue;
            };
            let others: f64 = self.downs[dst as usize]
                .iter()
                .filter(|&&g| g != f)
                .filter_map(|&g| self.flows[g].as_ref().map(|g| g.rate))
                .sum();
            let cap = self.fair_down(dst).min(self.down[dst as usize] - others);
            let share = left / k as f64;
            // A floor keeps completion times finite; it is far below any byte that matters.
            let rate = cap.min(share).max(1e-6);
            left -= rate;
            k -= 1;
            let Some(fl) = self.flows[f].as_mut() else {
                continue;
            };
            let elapsed = now.saturating_sub(fl.last) as f64 / 1e9;
            fl.remaining = (fl.remaining - fl.rate * elapsed).max(0.0);
            fl.last = now;
            self.total += rate - fl.rate;
            fl.rate = rate;
            out.push((f, rate));
        }
    }

    /// Debug builds: no link carries more than its capacity.
    #[cfg(debug_assertions)]
    fn check_feasible(&self) {
        let sum = |ids: &[FlowId]| -> f64 {
            ids.iter()
                .filter_map(|&g| self.flows[g].as_ref().map(|g| g.rate))
                .sum()
        };
        for n in 0..self.up.len() {
            let (u, d) = (sum(&self.ups[n]), sum(&self.downs[n]));
            assert!(
                u <= self.up[n] * (1.0 + 1e-9) + 1e-3,
                "node {n} sends {u} > {}",
                self.up[n]
            );
            assert!(
                d <= self.down[n] * (1.0 + 1e-9) + 1e-3,
                "node {n} receives {d} > {}",
                self.down[n]
            );
        }
    }

    fn fair_down(&self, d: u32) -> f64 {
        let d = d as usize;
        self.down[d] / self.downs[d].len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_flow_runs_at_the_slower_end_and_two_share_the_uploader() {
        let mut net = Net::new(&[(100.0, 1e9), (1e9, 50.0), (1e9, 1e9)]);
        let (a, due) = net.start(0, 0, 1, 0, 0, 100);
        assert_eq!(due, vec![(a, 1, ns(2.0))]);
        let (b, due) = net.start(0, 0, 2, 0, 1, 100);
        // Flow a is capped at 50 by its downloader, b gets the other 50 of the uploader.
        assert!(due.iter().any(|d| d.0 == b && d.2 == ns(2.0)), "{due:?}");
        let (_, due) = net.finish(ns(2.0), a, true).unwrap();
        // b has 0 left at t=2 (it ran at 50/s for 2 s).
        assert!(due.iter().all(|d| d.2 == ns(2.0)), "{due:?}");
        assert_eq!(net.sent[0], 100);
    }
}
