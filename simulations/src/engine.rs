//! The event loop: per node and blob one real [`Transfer`] from preheat-core, fed chunk
//! completions, busy answers and peer updates in virtual time; its actions become flows in the
//! [`Net`]. One node (the elected puller) downloads from the origin; every other node fetches
//! chunks only from peers that announced them, as production does.
//!
//! Invariants: events at equal times run in insertion order and every random choice comes from
//! the one seeded RNG, so a config and a seed give one result.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use preheat_core::bitfield::Bitfield;
use preheat_core::picker::Policy;
use preheat_core::transfer::{Action, Transfer, TransferConfig};
use preheat_core::upload::{UploadConfig, UploadQueue};
use preheat_core::ChunkLayout;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{SimConfig, StartPattern, Victim};
use crate::net::{ns, FlowId, Net};
use crate::report::{NodeResult, SimResult};
use crate::SimError;

mod flows;
mod peers;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Start(u32),
    /// A chunk request reaches its uploader.
    Arrive(Req),
    /// The uploader refused or was gone.
    Refused(Req, Refusal),
    FlowDone(FlowId, u64),
    Wake(u32, u16),
    /// A node's upload queue has a wait or a resend window ending.
    GateWake(u32),
    Refresh(u32, u16),
    Kill(usize),
    Takeover,
}

/// Why a request got no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    Gone,
    Busy,
    Declined,
}

/// A chunk request: downloader, blob, uploader, chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Req {
    dst: u32,
    blob: u16,
    src: u32,
    chunk: u32,
}

#[derive(Debug, Clone, Copy)]
enum ReqState {
    Travelling,
    Flowing(FlowId),
}

#[derive(Debug, Default)]
struct Download {
    t: Option<Transfer<u32>>,
    /// Nodes tracking this node as a peer of this blob (they get its `Have`s).
    subs: Vec<u32>,
    wake: Option<u64>,
    done: bool,
}

#[derive(Debug)]
struct NodeSim {
    alive: bool,
    start: Option<u64>,
    done: Option<u64>,
    next_blob: usize,
    active: usize,
    dl: Vec<Download>,
    received: u64,
}

/// Network time τ against simulated time t. Without a CPU cap they are equal. With one, every
/// flow runs at `pace` (≤ 1) times its network rate, `pace = min(1, cap / Σ rates)`; the net
/// model works in τ, where `dτ = pace · dt`, so a change of pace needs no rescheduling: a flow due
/// at τ is due at `t_now + (τ - τ_now) / pace` for as long as the pace holds, and the pace only
/// changes at events.
#[derive(Debug)]
struct Clock {
    /// Bytes per second all flows together may carry; `None`: no CPU model.
    cap: Option<f64>,
    tau: f64,
    /// The simulated time (ns) `tau` belongs to.
    at: u64,
    pace: f64,
}

impl Clock {
    fn advance(&mut self, t: u64) {
        if t > self.at {
            self.tau += (t - self.at) as f64 * self.pace;
            self.at = t;
        }
    }

    /// τ now, whole nanoseconds.
    fn now(&self) -> u64 {
        // τ is non-negative and far below 2^64 ns.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = self.tau.round() as u64;
        v
    }

    /// When network time `tau` comes at the current pace (never before now).
    fn real(&self, tau: u64) -> u64 {
        let ahead = tau as f64 - self.tau;
        if ahead <= 0.0 {
            return self.at;
        }
        // As `now`: a non-negative time well inside u64.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let dt = (ahead / self.pace).ceil() as u64;
        self.at.saturating_add(dt)
    }

    /// The flows' total rate changed.
    fn set_total(&mut self, total: f64) {
        if let Some(cap) = self.cap {
            self.pace = if total > cap { cap / total } else { 1.0 };
        }
    }
}

/// A simulation in progress; [`run`] is the usual entry point.
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    net: Net,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    /// Events exactly half a round trip ahead (requests and answers on the wire), in order.
    hops: VecDeque<(u64, u64, Ev)>,
    /// Flow completions, keyed by network time (see [`Clock`]) and the shared sequence number.
    flow_queue: BinaryHeap<Reverse<(u64, u64, FlowId, u64)>>,
    clock: Clock,
    nodes: Vec<NodeSim>,
    layouts: Vec<ChunkLayout>,
    origin: u32,
    puller: Option<u32>,
    reqs: HashMap<Req, ReqState>,
    /// Per node: its upload slots, recent sends and waiting requests (production's serving
    /// policy), and when its queue wants a `poll` next.
    gates: Vec<UploadQueue<u16, Req>>,
    gate_wake: Vec<Option<u64>>,
    /// Per blob: nodes downloading or holding it (candidates), and those with at least one chunk.
    registered: Vec<Vec<u32>>,
    providers: Vec<Vec<u32>>,
    waves: Vec<Vec<u32>>,
    wave: usize,
    base: Instant,
    events: u64,
    /// Nodes done or killed.
    settled: usize,
}

/// Runs `cfg` to the end: every live node has the image or nothing can change any more.
pub fn run(cfg: &SimConfig) -> Result<SimResult, SimError> {
    let mut sim = Sim::new(cfg.clone())?;
    sim.run_to_end();
    Ok(sim.result())
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let n = cfg.nodes.len();
        let origin = u32::try_from(n).map_err(|_| SimError::Invalid("too many nodes"))?;
        let mut links: Vec<(f64, f64)> = cfg.nodes.iter().map(|l| (l.up, l.down)).collect();
        links.push((cfg.origin_up, f64::INFINITY));
        let layouts = cfg
            .layers
            .iter()
            .map(|&s| ChunkLayout::new(s, cfg.chunk_size))
            .collect();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut order: Vec<u32> = (0..origin).collect();
        // The elected puller: one node chosen by the seed, in the first wave.
        let puller = rng.gen_range(0..origin);
        order.swap(0, puller as usize);
        let per_wave = match cfg.start {
            StartPattern::AllAtOnce => n,
            // In (0, 1] by validation, so the product is in [0, n].
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            StartPattern::Rolling { fraction } => ((n as f64 * fraction).ceil() as usize).max(1),
        };
        let waves = order.chunks(per_wave).map(<[u32]>::to_vec).collect();
        let blobs = cfg.layers.len();
        let nodes = (0..n)
            .map(|_| NodeSim {
                alive: true,
                start: None,
                done: None,
                next_blob: 0,
                active: 0,
                dl: (0..blobs).map(|_| Download::default()).collect(),
                received: 0,
            })
            .collect();
        let mut sim = Self {
            net: Net::new(&links),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hops: VecDeque::new(),
            flow_queue: BinaryHeap::new(),
            clock: Clock {
                cap: cfg.cpu_cap(),
                tau: 0.0,
                at: 0,
                pace: 1.0,
            },
            nodes,
            layouts,
            origin,
            puller: Some(puller),
            reqs: HashMap::new(),
            gates: (0..n)
                .map(|_| {
                    UploadQueue::new(UploadConfig {
                        max_uploads: cfg.max_uploads,
                        resend_after: cfg.resend_after,
                        max_wait: cfg.max_wait,
                        max_waiting: cfg.max_waiting,
                    })
                })
                .collect(),
            gate_wake: vec![None; n],
            registered: vec![Vec::new(); blobs],
            providers: vec![Vec::new(); blobs],
            waves,
            wave: 0,
            base: Instant::now(),
            events: 0,
            settled: 0,
            cfg,
        };
        sim.start_wave(0);
        for (i, c) in sim.cfg.churn.clone().iter().enumerate() {
            sim.push(ns(c.at), Ev::Kill(i));
        }
        Ok(sim)
    }

    pub fn run_to_end(&mut self) {
        let horizon = u64::try_from(self.cfg.horizon.as_nanos()).unwrap_or(u64::MAX);
        loop {
            // The earliest of the three queues' heads; equal times run in push order.
            let heads = [
                self.queue.peek().map(|Reverse((t, seq, _))| (*t, *seq)),
                self.hops.front().map(|(t, seq, _)| (*t, *seq)),
                self.flow_queue
                    .peek()
                    .map(|Reverse((tau, seq, _, _))| (self.clock.real(*tau), *seq)),
            ];
            let Some((which, (t, _))) = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.map(|h| (i, h)))
                .min_by_key(|&(_, h)| h)
            else {
                break;
            };
            let popped = match which {
                0 => self.queue.pop().map(|Reverse((_, _, ev))| (t, ev)),
                1 => self.hops.pop_front().map(|(_, _, ev)| (t, ev)),
                _ => self
                    .flow_queue
                    .pop()
                    .map(|Reverse((_, _, f, generation))| (t, Ev::FlowDone(f, generation))),
            };
            let Some((t, ev)) = popped else { break };
            if t > horizon {
                break;
            }
            self.clock.advance(t);
            self.now = t;
            self.events += 1;
            self.handle(ev);
            if self.settled == self.nodes.len() && self.wave_done() {
                break;
            }
        }
    }

    /// The network's clock for `Net` calls now.
    fn net_now(&self) -> u64 {
        self.clock.now()
    }

    fn wave_done(&self) -> bool {
        self.wave + 1 >= self.waves.len()
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        if at == self.now + self.half_rtt() {
            // Every message hop has this one delay and `now` never goes back, so these events
            // arrive in order and a FIFO keeps them sorted (most events are hops).
            self.hops.push_back((at, self.seq, ev));
        } else {
            self.queue.push(Reverse((at, self.seq, ev)));
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn half_rtt(&self) -> u64 {
        u64::try_from(self.cfg.rtt.as_nanos() / 2).unwrap_or(u64::MAX)
    }

    fn start_wave(&mut self, w: usize) {
        self.wave = w;
        let nodes = self.waves.get(w).cloned().unwrap_or_default();
        for n in nodes {
            self.push(self.now, Ev::Start(n));
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => {
                if self.nodes[n as usize].alive {
                    self.nodes[n as usize].start = Some(self.now);
                    self.start_blobs(n);
                }
            }
            Ev::Arrive(r) => self.arrive(r),
            Ev::Refused(r, why) => {
                if self.reqs.remove(&r).is_some() {
                    let now = self.instant();
                    if let Some(t) = self.transfer(r.dst, r.blob) {
                        match why {
                            Refusal::Busy => t.on_busy(r.src, r.chunk, now),
                            Refusal::Declined => t.on_declined(r.src, r.chunk, now),
                            Refusal::Gone => t.on_failure(r.src, r.chunk, now),
                        }
                    }
                    self.drive(r.dst, r.blob);
                }
            }
            Ev::FlowDone(f, generation) => self.flow_done(f, generation),
            Ev::Wake(n, b) => {
                let d = &mut self.nodes[n as usize].dl[usize::from(b)];
                if d.wake == Some(self.now) {
                    d.wake = None;
                }
                self.drive(n, b);
            }
            Ev::GateWake(n) => {
                if self.gate_wake[n as usize] == Some(self.now) {
                    self.gate_wake[n as usize] = None;
                }
                self.gate_poll(n);
            }
            Ev::Refresh(n, b) => self.refresh(n, b),
            Ev::Kill(i) => self.kill(i),
            Ev::Takeover => self.takeover(),
        }
    }

    fn transfer(&mut self, n: u32, b: u16) -> Option<&mut Transfer<u32>> {
        let node = self.nodes.get_mut(n as usize)?;
        if !node.alive {
            return None;
        }
        node.dl.get_mut(usize::from(b))?.t.as_mut()
    }

    /// Starts blobs on node `n` up to `parallel_blobs` at once.
    fn start_blobs(&mut self, n: u32) {
        while self.nodes[n as usize].active < self.cfg.parallel_blobs
            && self.nodes[n as usize].next_blob < self.layouts.len()
        {
            let node = &mut self.nodes[n as usize];
            let b = node.next_blob;
            node.next_blob += 1;
            node.active += 1;
            let layout = self.layouts[b];
            let blob = u16::try_from(b).unwrap_or(u16::MAX);
            let is_puller = self.puller == Some(n);
            let cfg = if is_puller {
                self.puller_config()
            } else {
                self.cfg.transfer.clone()
            };
            let Ok(mut t) = Transfer::new(layout, Bitfield::new(layout.count()), cfg) else {
                continue;
            };
            if is_puller {
                // The full bitfield has the layout's length, so this cannot fail.
                let _ = t.add_peer(self.origin, Bitfield::full(layout.count()));
            } else {
                let at = self.now + u64::try_from(self.cfg.dht_lookup.as_nanos()).unwrap_or(0);
                self.push(at, Ev::Refresh(n, blob));
            }
            self.nodes[n as usize].dl[b].t = Some(t);
            self.registered[b].push(n);
            self.drive(n, blob);
        }
    }

    /// The origin pull: a pipelined sequential stream per blob.
    fn puller_config(&self) -> TransferConfig {
        TransferConfig {
            max_in_flight_per_peer: self.cfg.origin_streams,
            max_in_flight_total: self
                .cfg
                .origin_streams
                .max(self.cfg.transfer.max_in_flight_total),
            policy: Policy::Sequential,
            ..self.cfg.transfer.clone()
        }
    }

    /// Polls the transfer of `(n, b)` and carries out its actions.
    fn drive(&mut self, n: u32, b: u16) {
        let now = self.instant();
        let Some(node) = self.nodes.get_mut(n as usize).filter(|n| n.alive) else {
            return;
        };
        let Some(t) = node.dl.get_mut(usize::from(b)).and_then(|d| d.t.as_mut()) else {
            return;
        };
        let actions = t.poll(now, &mut self.rng);
        let deadline = t.next_deadline();
        for a in actions {
            match a {
                Action::Request { peer, chunk } => {
                    let r = Req {
                        dst: n,
                        blob: b,
                        src: peer,
                        chunk,
                    };
                    self.reqs.insert(r, ReqState::Travelling);
                    self.push(self.now + self.half_rtt(), Ev::Arrive(r));
                }
                Action::Cancel { peer, chunk } => {
                    let r = Req {
                        dst: n,
                        blob: b,
                        src: peer,
                        chunk,
                    };
                    match self.reqs.remove(&r) {
                        Some(ReqState::Flowing(f)) => {
                            self.end_flow(f, false);
                        }
                        // It may wait in the uploader's queue (the model cancels at once).
                        Some(ReqState::Travelling) => {
                            if let Some(g) = self.gates.get_mut(peer as usize) {
                                g.cancel(&r);
                            }
                        }
                        None => {}
                    }
                }
                Action::Ban { .. } => {}
                Action::Complete => self.blob_complete(n, b),
            }
        }
        if let Some(d) = deadline {
            let at = u64::try_from(d.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX);
            let dl = &mut self.nodes[n as usize].dl[usize::from(b)];
            if dl.wake.is_none_or(|w| at < w || w < self.now) {
                dl.wake = Some(at);
                self.push(at, Ev::Wake(n, b));
            }
        }
    }

    fn blob_complete(&mut self, n: u32, b: u16) {
        let node = &mut self.nodes[n as usize];
        let d = &mut node.dl[usize::from(b)];
        if d.done {
            return;
        }
        d.done = true;
        node.active -= 1;
        if node.dl.iter().all(|d| d.done) {
            node.done = Some(self.now);
            self.settled += 1;
            self.node_finished();
        } else {
            self.start_blobs(n);
        }
    }

    /// A node completed or died: the next rolling wave starts once this one is through.
    fn node_finished(&mut self) {
        let through = self.waves.get(self.wave).is_some_and(|w| {
            w.iter()
                .all(|&n| !self.nodes[n as usize].alive || self.nodes[n as usize].done.is_some())
        });
        if through && !self.wave_done() {
            self.start_wave(self.wave + 1);
        }
    }

    pub fn result(&self) -> SimResult {
        let secs = |t: u64| t as f64 / 1e9;
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeResult {
                start: n.start.map_or(0.0, secs),
                done: n.done.map(secs),
                killed: !n.alive,
                puller: u32::try_from(i).ok() == self.puller,
                received: n.received,
                sent: self.net.sent[i],
            })
            .collect();
        let mut stats = crate::report::Counters::default();
        for d in self.nodes.iter().flat_map(|n| &n.dl) {
            if let Some(t) = &d.t {
                let st = t.stats();
                stats.requests += st.requests;
                stats.busy += st.busy;
                stats.declined += st.declined;
                stats.timeouts += st.timeouts;
                stats.failures += st.failures;
                stats.duplicates += st.duplicates;
            }
        }
        SimResult::new(
            &self.cfg,
            stats,
            nodes,
            self.net.sent[self.origin as usize],
            self.events,
            matches!(
                self.cfg.churn.first().map(|c| c.victim),
                Some(Victim::Puller)
            ),
        )
    }
}
