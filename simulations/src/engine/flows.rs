//! Chunk requests on the wire: a request reaches its uploader after half a round trip and is
//! refused (busy, gone) or becomes a flow; a finished flow delivers the chunk, and the new owner
//! announces it to the downloads that track it as a peer.

use preheat_core::upload::Answer;

use super::{Ev, Refusal, Req, ReqState, Sim};
use crate::net::{Due, Flow, FlowId};

impl Sim {
    pub(super) fn arrive(&mut self, r: Req) {
        if !self.reqs.contains_key(&r) || !self.nodes[r.dst as usize].alive {
            self.reqs.remove(&r);
            return;
        }
        let back = self.now + self.half_rtt();
        if r.src == self.origin {
            self.start_flow(r);
            return;
        }
        if !self.nodes[r.src as usize].alive {
            self.push(back, Ev::Refused(r, Refusal::Gone));
            return;
        }
        let now = self.instant();
        self.gates[r.src as usize].request(r, r.blob, r.chunk, now);
        self.gate_poll(r.src);
    }

    /// Carries out the answers of node `n`'s upload queue and schedules its next poll.
    pub(super) fn gate_poll(&mut self, n: u32) {
        if !self.nodes.get(n as usize).is_some_and(|s| s.alive) {
            return;
        }
        let back = self.now + self.half_rtt();
        loop {
            let now = self.instant();
            let answers = self.gates[n as usize].poll(now);
            if answers.is_empty() {
                break;
            }
            for (r, a) in answers {
                match a {
                    Answer::Serve => {
                        if !matches!(self.reqs.get(&r), Some(ReqState::Travelling)) {
                            // Cancelled while it waited: give the slot back.
                            self.gates[n as usize].finished(r.blob, r.chunk);
                            continue;
                        }
                        self.start_flow(r);
                    }
                    Answer::Busy => self.push(back, Ev::Refused(r, Refusal::Busy)),
                    Answer::Declined => self.push(back, Ev::Refused(r, Refusal::Declined)),
                }
            }
        }
        if let Some(d) = self.gates[n as usize].next_deadline() {
            let at = u64::try_from(d.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(self.now);
            let w = &mut self.gate_wake[n as usize];
            if w.is_none_or(|w| at < w || w < self.now) {
                *w = Some(at);
                self.push(at, Ev::GateWake(n));
            }
        }
    }

    fn start_flow(&mut self, r: Req) {
        let bytes = u64::from(self.layouts[usize::from(r.blob)].len(r.chunk));
        let (f, due) = self
            .net
            .start(self.net_now(), r.src, r.dst, r.blob, r.chunk, bytes);
        self.reqs.insert(r, ReqState::Flowing(f));
        self.schedule(due);
    }

    /// Queues flow completions (in network time) and takes the new total rate's pace.
    pub(super) fn schedule(&mut self, due: Vec<Due>) {
        for (f, generation, at) in due {
            self.seq += 1;
            self.flow_queue
                .push(std::cmp::Reverse((at, self.seq, f, generation)));
        }
        self.clock.set_total(self.net.total_rate());
    }

    pub(super) fn end_flow(&mut self, f: FlowId, completed: bool) -> Option<Flow> {
        let (flow, due) = self.net.finish(self.net_now(), f, completed)?;
        self.schedule(due);
        if let Some(g) = self.gates.get_mut(flow.src as usize) {
            g.finished(flow.blob, flow.chunk);
            self.gate_poll(flow.src);
        }
        Some(flow)
    }

    pub(super) fn flow_done(&mut self, f: FlowId, generation: u64) {
        if self
            .net
            .flow(f)
            .is_none_or(|fl| fl.generation != generation)
        {
            return;
        }
        let Some(flow) = self.end_flow(f, true) else {
            return;
        };
        let r = Req {
            dst: flow.dst,
            blob: flow.blob,
            src: flow.src,
            chunk: flow.chunk,
        };
        self.reqs.remove(&r);
        self.nodes[r.dst as usize].received += flow.bytes;
        let now = self.instant();
        let Some(t) = self.transfer(r.dst, r.blob) else {
            return;
        };
        let new = !t.have().get(r.chunk);
        t.on_chunk_ok(r.src, r.chunk, flow.bytes, now);
        if new {
            self.announce(r.dst, r.blob, r.chunk);
        }
        self.drive(r.dst, r.blob);
    }

    /// `n` stored chunk `c` of blob `b`: it becomes a provider and its subscribers learn it.
    pub(super) fn announce(&mut self, n: u32, b: u16, c: u32) {
        let bi = usize::from(b);
        if self.nodes[n as usize].dl[bi]
            .t
            .as_ref()
            .is_some_and(|t| t.have().count_ones() == 1)
        {
            self.providers[bi].push(n);
        }
        let subs = std::mem::take(&mut self.nodes[n as usize].dl[bi].subs);
        let mut keep = Vec::with_capacity(subs.len());
        let now = self.instant();
        for s in subs {
            let node = &mut self.nodes[s as usize];
            if !node.alive {
                continue;
            }
            let Some(d) = node.dl.get_mut(bi) else {
                continue;
            };
            let Some(t) = d.t.as_mut().filter(|t| !t.is_complete()) else {
                continue;
            };
            keep.push(s);
            let _ = t.peer_have(n, c);
            // Only `n` changed: poll only if that lets the transfer ask for something new.
            if t.could_use(&n, c, now) {
                self.drive(s, b);
            }
        }
        keep.append(&mut self.nodes[n as usize].dl[bi].subs);
        self.nodes[n as usize].dl[bi].subs = keep;
    }
}
