//! Discovery in the event loop: resolve in a spawned task, then dial new addresses and forget
//! peers whose address left discovery while disconnected.

use std::collections::HashSet;

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::Multiaddr;

use super::{EventLoop, Internal};
use crate::discovery;

impl EventLoop {
    pub(super) fn discover(&mut self) {
        if self.resolving || (self.cfg.peers.is_empty() && self.cfg.peers_dns.is_none()) {
            return;
        }
        self.resolving = true;
        let (peers, dns, tx) = (
            self.cfg.peers.clone(),
            self.cfg.peers_dns.clone(),
            self.internal_tx.clone(),
        );
        tokio::spawn(async move {
            let addrs = discovery::resolve(&peers, dns.as_ref()).await;
            let _ = tx.send(Internal::Resolved(addrs)).await;
        });
    }

    pub(super) fn on_resolved(&mut self, addrs: Vec<Multiaddr>) {
        let now: HashSet<Multiaddr> = addrs.into_iter().collect();
        // Peers whose address left DNS and who are not connected are forgotten.
        for gone in self.resolved.difference(&now) {
            if let Some(peer) = self.addr_peer.remove(gone) {
                if !self.connected.contains_key(&peer) {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer);
                    tracing::debug!(%peer, addr = %gone, "peer left discovery");
                }
            }
        }
        let dialing: HashSet<&Multiaddr> = self.dialing.values().collect();
        let mut to_dial = Vec::new();
        for a in &now {
            let connected = self
                .addr_peer
                .get(a)
                .is_some_and(|p| self.connected.contains_key(p));
            if !connected && !dialing.contains(a) && !self.self_addrs.contains(a) {
                to_dial.push(a.clone());
            }
        }
        for a in to_dial {
            let opts = DialOpts::unknown_peer_id().address(a.clone()).build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.dialing.insert(id, a);
                }
                Err(error) => tracing::debug!(addr = %a, %error, "cannot dial"),
            }
        }
        self.resolved = now;
    }
}
