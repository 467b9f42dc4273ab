//! Chunk requests on the wire: a request reaches its uploader after half a round trip and is
//! refused (busy, gone) or becomes a flow; a finished flow delivers the chunk, and the new owner
//! announces it to the downloads that track it as a peer.

use preheat_core::upload::UploadDecision;

use super::{Ev, Refusal, Req, ReqState, Sim};
use crate::net::{Due, Flow, FlowId};

impl Sim {
    pub(super) fn arrive(&mut self, r: Req) {
        if !self.reqs.contains_key(&r) || !self.nodes[r.dst as usize].alive {
            self.reqs.remove(&r);
            return;
        }
        let back = self.now + self.half_rtt();
        let is_origin = r.src == self.origin;
        if !is_origin && !self.nodes[r.src as usize].alive {
            self.push(back, Ev::Refused(r, Refusal::Gone));
            return;
        }
        if !is_origin {
            let now = self.instant();
            let refusal = match self.gates[r.src as usize].decide(r.blob, r.chunk, now) {
                UploadDecision::Serve => None,
                UploadDecision::Busy => Some(Refusal::Busy),
                UploadDecision::Declined => Some(Refusal::Declined),
            };
            if let Some(why) = refusal {
                self.push(back, Ev::Refused(r, why));
                return;
            }
        }
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
        if let Some(g) = self.gates.get_mut(flow.src as usize) {
            g.finished(flow.blob, flow.chunk);
        }
        self.schedule(due);
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
        let (max, per_peer) = (
            self.cfg.transfer.max_in_flight_total,
            self.cfg.transfer.max_in_flight_per_peer,
        );
        let now = self.now;
        for s in subs {
            let node = &mut self.nodes[s as usize];
            if !node.alive {
                continue;
            }
            let Some(d) = node.dl.get_mut(bi) else {
                continue;
            };
            let busy = d.busy_until.get(&n).is_some_and(|&u| u > now);
            let Some(t) = d.t.as_mut().filter(|t| !t.is_complete()) else {
                continue;
            };
            keep.push(s);
            let _ = t.peer_have(n, c);
            // Only `n` changed: poll only if the transfer could ask `n` for something now.
            let useful = !busy
                && !t.have().get(c)
                && t.in_flight_count() < max
                && t.in_flight_to(&n) < per_peer;
            if useful {
                self.drive(s, b);
            }
        }
        keep.append(&mut self.nodes[n as usize].dl[bi].subs);
        self.nodes[n as usize].dl[bi].subs = keep;
    }
}
