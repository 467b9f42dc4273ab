//! Starting a node and the cloneable handle callers use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use libp2p_stream::Control;
use preheat_core::upload::UploadConfig;
use preheat_core::Digest;
use preheat_store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::chunks::{self, Uploads};
use crate::config::SwarmConfig;
use crate::event_loop::{key, Command, EventLoop, CHANNEL};
use crate::limits::ByteLimiter;
use crate::metrics::Metrics;
use crate::protocol::CHUNK_PROTOCOL;
use crate::waitlist::Waitlist;
use crate::{behaviour, fetch, identity, Error};

/// Bound on the node-wide ban list.
const MAX_BANS: usize = 4096;
/// How long `spawn` waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Starts swarm nodes.
pub struct Swarm;

/// What one `fetch_blob` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub digest: Digest,
    pub size: u64,
    /// The blob was already complete in the store; nothing was fetched.
    pub already_local: bool,
    /// Bytes of verified chunks received from peers (endgame duplicates excluded).
    pub bytes_from_peers: u64,
    /// Distinct peers that delivered at least one verified chunk.
    pub peers_used: usize,
    /// Chunks that failed blake3 verification (their senders were banned).
    pub bad_chunks: u64,
    /// Index sources whose index failed the final sha256 (banned; the fetch restarted).
    pub forged_indexes: u32,
    pub duration: Duration,
}

/// A cloneable handle to a running node. Commands go to the task owning the swarm over a bounded
/// channel; replies come back on oneshots.
#[derive(Clone)]
pub struct SwarmHandle {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub cmds: mpsc::Sender<Command>,
    pub peer_id: PeerId,
    pub store: Store,
    pub control: Control,
    pub cfg: SwarmConfig,
    pub metrics: Metrics,
    pub download: ByteLimiter,
    pub buffers: crate::buffers::Buffers,
    bans: Mutex<HashMap<PeerId, Instant>>,
    tasks: Mutex<Vec<AbortHandle>>,
    event_loop: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Swarm {
    /// Starts a node serving `store`: loads or creates `<store dir>/identity.key`, listens, starts
    /// the event loop, discovery and the chunk server, and re-announces the store's complete and
    /// partial blobs.
    /// Metrics are registered in `registry`. Must be called inside a tokio runtime.
    pub async fn spawn(
        cfg: SwarmConfig,
        store: Store,
        registry: &mut Registry,
    ) -> Result<SwarmHandle, Error> {
        let key = identity::load_or_create(store.dir())?;
        let peer_id = key.public().to_peer_id();
        let mut swarm = behaviour::build(key, &cfg)?;
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|source| Error::Listen {
                    addr: addr.clone(),
                    source,
                })?;
        }
        for addr in &cfg.external {
            swarm.add_external_address(addr.clone());
        }
        // Let the listeners report their (possibly port-0) addresses before anyone asks.
        let wait = tokio::time::sleep(LISTEN_WAIT);
        tokio::pin!(wait);
        let mut reported = 0;
        while reported < cfg.listen.len() {
            tokio::select! {
                ev = swarm.select_next_some() => if let SwarmEvent::NewListenAddr { address, .. } = ev {
                    tracing::info!(%address, %peer_id, "swarm listening");
                    reported += 1;
                },
                _ = &mut wait => break,
            }
        }

        let metrics = Metrics::register(registry, cfg.peer_metrics_label);
        let p2p_metrics = libp2p::metrics::Metrics::new(registry);
        let control = swarm.behaviour().stream.new_control();
        let incoming = match control.clone().accept(CHUNK_PROTOCOL) {
            Ok(i) => i,
            // A fresh behaviour has no protocol registered yet.
            Err(_) => return Err(Error::Stopped),
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let el = EventLoop::new(
            swarm,
            cfg.clone(),
            store.clone(),
            metrics.clone(),
            p2p_metrics,
            rx,
        );
        let event_loop = tokio::spawn(el.run());

        let burst = store
            .chunk_size()
            .max(preheat_core::chunk::MAX_CHUNK_SIZE.min(16 << 20));
        let waitlist = Waitlist::new(UploadConfig {
            max_uploads: cfg.max_uploads.max(1),
            resend_after: cfg.resend_after,
            max_wait: cfg.upload_wait,
            max_waiting: cfg.upload_waiting,
        });
        let timer = tokio::spawn(waitlist.clone().run_timer()).abort_handle();
        let uploads = Arc::new(Uploads {
            store: store.clone(),
            waitlist: waitlist.clone(),
            limiter: ByteLimiter::new(cfg.upload_rate, burst),
            buffers: crate::buffers::Buffers::default(),
            metrics: metrics.clone(),
            timeout: cfg.chunk_timeout,
            corrupt: cfg.test_corrupt_uploads,
        });
        let accept = tokio::spawn(chunks::accept_loop(incoming, uploads)).abort_handle();
        let evictions = tokio::spawn(withdraw_evicted(store.clone(), tx.clone())).abort_handle();

        let handle = SwarmHandle {
            inner: Arc::new(Inner {
                cmds: tx,
                peer_id,
                download: ByteLimiter::new(cfg.download_rate, burst),
                buffers: crate::buffers::Buffers::default(),
                store,
                control,
                cfg,
                metrics,
                bans: Mutex::new(HashMap::new()),
                tasks: Mutex::new(vec![accept, evictions, timer]),
                event_loop: Mutex::new(Some(event_loop)),
            }),
        };
        // Partial blobs too: their verified chunks are served, and a writer may resume them.
        let store = &handle.inner.store;
        for d in store
            .complete_blobs()
            .into_iter()
            .chain(store.partial_blobs())
        {
            handle.announce(d).await?;
        }
        Ok(handle)
    }
}

impl SwarmHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The addresses the node listens on (ports resolved).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(Command::ListenAddrs).await
    }

    /// Fetches blob `digest` of `size` bytes from peers into the store, verified chunk by chunk
    /// and by sha256 at the end. Peers still writing the blob (a registry pull, another fetch) are
    /// followed: their provisional index is used and refreshed, and the fetch waits for chunks they
    /// do not have yet. `NoProviders` when no peer offered it before `deadline`, `Stalled` when no
    /// chunk, hash or availability arrived for `SwarmConfig::stall_timeout`, `Deadline` when the
    /// download did not finish in time.
    pub async fn fetch_blob(
        &self,
        digest: Digest,
        size: u64,
        deadline: Instant,
    ) -> Result<FetchReport, Error> {
        fetch::fetch(self, "", digest, size, deadline).await
    }

    /// [`SwarmHandle::fetch_blob`] for a blob of image `image` (its reference): the `image` label
    /// of the per-peer fetch metrics (empty for `fetch_blob`).
    pub async fn fetch_blob_for(
        &self,
        image: &str,
        digest: Digest,
        size: u64,
        deadline: Instant,
    ) -> Result<FetchReport, Error> {
        fetch::fetch(self, image, digest, size, deadline).await
    }

    /// Advertises that this node provides `digest`: complete, being fetched, or being written by
    /// any `BlobWriter` of the store (call it right after creating the writer; chunks are served and
    /// `Have`s pushed as they are stored). Withdraw it when the writer is discarded.
    pub async fn announce(&self, digest: Digest) -> Result<(), Error> {
        self.send(Command::Announce(digest)).await
    }

    /// Withdraws the advertisement (evicted or failed).
    pub async fn withdraw(&self, digest: Digest) -> Result<(), Error> {
        self.send(Command::Withdraw(digest)).await
    }

    /// Peers the DHT lists as providers of `digest` (this node excluded).
    pub async fn providers(&self, digest: Digest) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::Providers {
            key: key(&digest),
            reply,
        })
        .await
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Bytes of chunks sent to / received from peers since start.
    pub fn bytes_sent(&self) -> u64 {
        self.inner.metrics.sent_total()
    }

    pub fn bytes_received(&self) -> u64 {
        self.inner.metrics.received_total()
    }

    /// Stops the node: the event loop ends (closing every connection) and the chunk server stops.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.cmds.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
        let el = self
            .inner
            .event_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(el) = el {
            let _ = el.await;
        }
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }

    pub(crate) async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.inner.cmds.send(cmd).await.map_err(|_| Error::Stopped)
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Node-wide ban of a peer that served a bad chunk or a forged index.
    pub(crate) fn ban(&self, peer: PeerId, until: Instant) {
        let mut bans = self
            .inner
            .bans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        bans.retain(|_, t| *t > now);
        if bans.len() < MAX_BANS {
            bans.insert(peer, until);
        }
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        let bans = self
            .inner
            .bans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        bans.get(peer).is_some_and(|t| *t > Instant::now())
    }
}

/// Withdraws provider records of blobs the store evicts.
async fn withdraw_evicted(store: Store, tx: mpsc::Sender<Command>) {
    let mut rx = store.subscribe_evictions();
    loop {
        match rx.recv().await {
            Ok(d) => {
                if tx.send(Command::Withdraw(d)).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "eviction notices lost; their provider records expire by ttl"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
