//! The one task that owns the libp2p `Swarm`. Everything else talks to it through [`Command`]s on a
//! bounded channel with oneshot replies; slow work (store reads, DNS) runs in spawned tasks that
//! report back on a second bounded channel, so the loop never blocks on I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::metrics::Recorder;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use preheat_core::Digest;
use preheat_store::{ChunkWritten, Store};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::config::SwarmConfig;
use crate::metrics::{LookupLabels, LookupResult, Metrics};
use crate::protocol::{CtlRequest, CtlResponse, TagWire, IDENTIFY_PROTOCOL};
use crate::{discovery, source};

mod dial;
mod tags;

pub(crate) use tags::tag_key;

/// Capacity of the command and internal channels.
pub const CHANNEL: usize = 256;
/// Control requests answered from the store at once; more get `Busy`.
const ANSWER_SLOTS: usize = 64;
/// How long a `GetBitfield` subscribes the asker to our `Have` pushes, and the bounds on them.
const SUBSCRIPTION: Duration = Duration::from_secs(30);
const MAX_SUBSCRIBERS_PER_BLOB: usize = 512;
const MAX_SUBSCRIBED_BLOBS: usize = 4096;
/// Have events queued per active fetch; on overflow they are dropped (bitfield refresh repairs).
pub const HAVE_QUEUE: usize = 1024;

pub(crate) enum Command {
    Announce(Digest),
    Withdraw(Digest),
    /// Providers of a Kademlia key (a blob's, or a tag's [`tag_key`]).
    Providers {
        key: RecordKey,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Keep a (checked) tag record, answer `GetTag` with it and provide its key.
    PublishTag(TagWire),
    LocalTag {
        reference: String,
        reply: oneshot::Sender<Option<TagWire>>,
    },
    /// `None` in the reply: the request failed (timeout, connection, protocol).
    Ctl {
        peer: PeerId,
        req: CtlRequest,
        reply: oneshot::Sender<Option<CtlResponse>>,
    },
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// A fetch in progress: `Have`s peers push for its blob are routed to it.
    Register {
        blob: Digest,
        events: mpsc::Sender<(PeerId, u32)>,
    },
    Unregister(Digest),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) enum Internal {
    Respond {
        channel: ResponseChannel<CtlResponse>,
        resp: CtlResponse,
    },
    Resolved(Vec<Multiaddr>),
}

struct Active {
    events: mpsc::Sender<(PeerId, u32)>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    cfg: SwarmConfig,
    store: Store,
    metrics: Metrics,
    p2p_metrics: libp2p::metrics::Metrics,
    cmds: mpsc::Receiver<Command>,
    /// Chunks stored by any writer of the store: pushed as `Have` to subscribers.
    stored: broadcast::Receiver<ChunkWritten>,
    tags: tags::TagTable,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    answer_slots: Arc<Semaphore>,
    connected: HashMap<PeerId, Multiaddr>,
    lookups: HashMap<QueryId, (oneshot::Sender<Vec<PeerId>>, Instant)>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Option<CtlResponse>>>,
    active: HashMap<Digest, Active>,
    subs: HashMap<Digest, HashMap<PeerId, Instant>>,
    addr_peer: HashMap<Multiaddr, PeerId>,
    dialing: HashMap<ConnectionId, Multiaddr>,
    resolved: HashSet<Multiaddr>,
    self_addrs: HashSet<Multiaddr>,
    resolving: bool,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: SwarmConfig,
        store: Store,
        metrics: Metrics,
        p2p_metrics: libp2p::metrics::Metrics,
        cmds: mpsc::Receiver<Command>,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::channel(CHANNEL);
        Self {
            swarm,
            cfg,
            stored: store.subscribe_chunks(),
            tags: tags::TagTable::default(),
            store,
            metrics,
            p2p_metrics,
            cmds,
            internal_tx,
            internal_rx,
            answer_slots: Arc::new(Semaphore::new(ANSWER_SLOTS)),
            connected: HashMap::new(),
            lookups: HashMap::new(),
            requests: HashMap::new(),
            active: HashMap::new(),
            subs: HashMap::new(),
            addr_peer: HashMap::new(),
            dialing: HashMap::new(),
            resolved: HashSet::new(),
            self_addrs: HashSet::new(),
            resolving: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut discover = tokio::time::interval(self.cfg.discovery_interval);
        discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(SUBSCRIPTION);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => { let _ = reply.send(()); break; }
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some(i) = self.internal_rx.recv() => self.on_internal(i),
                r = self.stored.recv() => match r {
                    Ok(c) => self.local_have(c.digest, c.chunk),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "chunk notices lost; peers repair by bitfield");
                    }
                    // The store (held by `self.store`) owns the sender, so this cannot happen.
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = discover.tick() => self.discover(),
                _ = prune.tick() => self.prune_subscriptions(),
            }
        }
        tracing::debug!("swarm event loop stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Announce(d) => {
                if let Err(error) = self.swarm.behaviour_mut().kad.start_providing(key(&d)) {
                    tracing::warn!(digest = %d, %error, "cannot announce blob");
                }
            }
            Command::Withdraw(d) => self.swarm.behaviour_mut().kad.stop_providing(&key(&d)),
            Command::Providers { key, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.lookups.insert(id, (reply, Instant::now()));
            }
            Command::PublishTag(t) => {
                let k = tag_key(&t.reference);
                self.tags.insert(t);
                if let Err(error) = self.swarm.behaviour_mut().kad.start_providing(k) {
                    tracing::warn!(%error, "cannot announce tag record");
                }
            }
            Command::LocalTag { reference, reply } => {
                let _ = reply.send(self.tags.get(&reference).cloned());
            }
            Command::Ctl { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().ctl.send_request(&peer, req);
                self.requests.insert(id, reply);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.connected.keys().copied().collect());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Register { blob, events } => {
                self.active.insert(blob, Active { events });
            }
            Command::Unregister(blob) => {
                self.active.remove(&blob);
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Respond { channel, resp } => {
                let _ = self.swarm.behaviour_mut().ctl.send_response(channel, resp);
            }
            Internal::Resolved(addrs) => {
                self.resolving = false;
                self.on_resolved(addrs);
            }
        }
    }

    fn local_have(&mut self, blob: Digest, chunk: u32) {
        let now = Instant::now();
        let Some(subs) = self.subs.get(&blob) else {
            return;
        };
        let peers: Vec<PeerId> = subs
            .iter()
            .filter(|(p, exp)| **exp > now && self.connected.contains_key(*p))
            .map(|(p, _)| *p)
            .collect();
        for p in peers {
            // Fire and forget: the Ack is ignored, a lost Have is repaired by the next bitfield.
            self.swarm
                .behaviour_mut()
                .ctl
                .send_request(&p, CtlRequest::Have { blob, chunk });
        }
    }

    fn subscribe(&mut self, peer: PeerId, blob: Digest) {
        if !self.subs.contains_key(&blob) && self.subs.len() >= MAX_SUBSCRIBED_BLOBS {
            self.prune_subscriptions();
            if self.subs.len() >= MAX_SUBSCRIBED_BLOBS {
                return;
            }
        }
        let s = self.subs.entry(blob).or_default();
        if s.len() < MAX_SUBSCRIBERS_PER_BLOB || s.contains_key(&peer) {
            s.insert(peer, Instant::now() + SUBSCRIPTION);
        }
    }

    fn prune_subscriptions(&mut self) {
        let now = Instant::now();
        self.subs.retain(|_, s| {
            s.retain(|_, exp| *exp > now);
            !s.is_empty()
        });
    }

    fn on_ctl_request(
        &mut self,
        peer: PeerId,
        req: CtlRequest,
        channel: ResponseChannel<CtlResponse>,
    ) {
        let immediate = match &req {
            CtlRequest::Have { blob, chunk } => {
                if let Some(a) = self.active.get(blob) {
                    let _ = a.events.try_send((peer, *chunk));
                }
                Some(CtlResponse::Ack)
            }
            CtlRequest::GetTag { reference } => {
                let mut t = self.tags.get(reference).cloned();
                if let (Some(t), true) = (&mut t, self.cfg.test_forge_tags) {
                    t.bytes.push(b' ');
                }
                Some(t.map_or(CtlResponse::NotFound, CtlResponse::Tag))
            }
            CtlRequest::GetBitfield { blob } => {
                self.subscribe(peer, *blob);
                None
            }
            CtlRequest::GetIndex { .. } | CtlRequest::GetProvisional { .. } => None,
        };
        if let Some(resp) = immediate {
            let _ = self.swarm.behaviour_mut().ctl.send_response(channel, resp);
            return;
        }
        let Ok(permit) = self.answer_slots.clone().try_acquire_owned() else {
            let _ = self
                .swarm
                .behaviour_mut()
                .ctl
                .send_response(channel, CtlResponse::Busy);
            return;
        };
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        let forge = self.cfg.test_forge_index;
        tokio::spawn(async move {
            let resp = source::answer(&store, &req, forge).await;
            let _ = tx.send(Internal::Respond { channel, resp }).await;
            drop(permit);
        });
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&ev);
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.p2p_metrics.record(&e);
                self.on_kad(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.p2p_metrics.record(&e);
                self.on_identify(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.p2p_metrics.record(&e),
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(e)) => self.on_ctl(e),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            SwarmEvent::Behaviour(BehaviourEvent::Stream(())) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.dialing.remove(&connection_id);
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.addr_peer.insert(addr.clone(), peer_id);
                }
                self.connected.insert(peer_id, addr);
                self.metrics
                    .connected_peers
                    .set(self.connected.len() as i64);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                self.metrics
                    .connected_peers
                    .set(self.connected.len() as i64);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                let addr = self.dialing.remove(&connection_id);
                if let (DialError::LocalPeerId { .. }, Some(addr)) = (&error, addr) {
                    self.self_addrs.insert(addr);
                }
                tracing::debug!(%error, "dial failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "swarm listening");
                self.self_addrs.insert(address);
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = e
        else {
            return;
        };
        let QueryResult::GetProviders(res) = result else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        let found: Vec<PeerId> = match &res {
            Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                providers.iter().copied().filter(|p| *p != me).collect()
            }
            _ => Vec::new(),
        };
        if found.is_empty() && !step.last {
            return;
        }
        if let Some((reply, started)) = self.lookups.remove(&id) {
            let result = if found.is_empty() {
                LookupResult::Empty
            } else {
                LookupResult::Found
            };
            self.metrics
                .provider_lookups
                .get_or_create(&LookupLabels { result })
                .inc();
            self.metrics
                .provider_lookup_duration
                .observe(started.elapsed().as_secs_f64());
            let _ = reply.send(found);
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
        }
    }

    fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = e else {
            return;
        };
        if info.protocol_version != IDENTIFY_PROTOCOL {
            tracing::debug!(peer = %peer_id, version = %info.protocol_version, "foreign peer ignored");
            return;
        }
        self.metrics.learn_name(peer_id, &info.agent_version);
        let seen = self.connected.get(&peer_id).cloned();
        for a in info.listen_addrs {
            if discovery::usable_listen_addr(&a, seen.as_ref()) {
                self.addr_peer.insert(a.clone(), peer_id);
                self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
            }
        }
    }

    fn on_ctl(&mut self, e: request_response::Event<CtlRequest, CtlResponse>) {
        use request_response::{Event, Message};
        match e {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_ctl_request(peer, request, channel),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(r) = self.requests.remove(&request_id) {
                    let _ = r.send(Some(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "control request failed");
                if let Some(r) = self.requests.remove(&request_id) {
                    let _ = r.send(None);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "control answer failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

/// Kademlia key of a blob: its sha256 bytes.
pub(crate) fn key(d: &Digest) -> RecordKey {
    RecordKey::new(d.as_bytes())
}
