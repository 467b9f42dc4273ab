//! Getting one image onto this node with at most one registry puller per image in the swarm: the
//! per-image flow the agent (and the registry mirror) call.
//!
//! ```text
//!  fetch(ref) ─► resolve (swarm tag record, else registry + publish) ─► record_image
//!     │ every blob stored? ─► done
//!     ▼
//!  announce want_key(manifest) (withdrawn when the fetch ends; LEASE=none ranks these nodes)
//!  LeaseElector::start(manifest digest, MemberView) ─► Role::Pull ─► registry pull, each blob
//!     │      ▲ role changes (lost Lease / takeover)          announced as its writer opens
//!     │      ▼                                                  │
//!     └─► Role::Follow ─► every blob from the swarm (PeerSource), retried, never the registry
//!  complete ─► announce the manifest digest, ImageElection::complete (the holder deletes its Lease)
//! ```
//!
//! Invariants: a follower never asks the registry for a blob; the puller role is left the moment
//! the election says so (its writers close; whoever pulls next resumes from the stored chunks);
//! without a swarm or an elector the image is pulled swarm-first, as `pull` does. The caller
//! declares wanted images in the store (eviction protection).

mod args;
mod follow;
mod metrics;
mod resolve;
mod view;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use preheat_core::election::want_key;
use preheat_core::manifest::Platform;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;
use preheat_swarm::SwarmHandle;
use tokio::sync::watch;

pub use args::LeaseArgs;
pub use metrics::{FetchMetrics, PullResult};
pub use resolve::{publish, resolve, ResolvedVia};
pub use view::MemberView;

use crate::lease::{LeaseElector, Role, Status};
use crate::pull::{self, BlobPull, ByteCounters, PullError, PullProgress};
use crate::registry::{RegistryClient, RegistryError};
use crate::swarm_pull::PeerSource;
use follow::{follow, stored, Tracker};

/// Tunables of [`ImageFetcher`]; [`FetchConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The platform chosen when a tag record names an index (as the registry client's).
    pub platform: Platform,
    /// How long one swarm attempt looks for a provider of a blob.
    pub swarm_find_timeout: Duration,
    /// How long the swarm is asked for a tag record before the registry is.
    pub tag_timeout: Duration,
    /// A follower that received no byte for this long gives up (the puller is stuck or gone and
    /// no takeover happened); one peer download is bounded by it too.
    pub pulling_timeout: Duration,
    /// A node taking the pull over first takes from peers what the swarm has of each blob, and
    /// turns to the registry once no chunk arrived for this long.
    pub takeover_stall: Duration,
    /// This node's name, for `registry_pulling{node}`.
    pub node_name: String,
}

impl FetchConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            platform: Platform::host(),
            swarm_find_timeout: Duration::from_secs(10),
            tag_timeout: Duration::from_secs(2),
            pulling_timeout: Duration::from_secs(600),
            takeover_stall: Duration::from_secs(3),
            node_name: node_name.into(),
        }
    }
}

/// What one [`ImageFetcher::fetch`] did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    pub reference: Reference,
    /// The platform image manifest (the election key and the store's `ImageRecord::manifest`).
    pub manifest: Digest,
    /// Size of the distinct config and layer blobs.
    pub total_bytes: u64,
    /// Blob bytes received from the registry by this node.
    pub registry_bytes: u64,
    /// Verified blob bytes received from peers.
    pub peer_bytes: u64,
    /// Blob bytes stored before the fetch started.
    pub present_bytes: u64,
    /// This node pulled from the registry (as elected puller, or without election).
    pub puller: bool,
    /// Where the manifest came from.
    pub resolved_via: ResolvedVia,
    pub duration: Duration,
}

/// Why a fetch failed; the store stays consistent (partials resume next time).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {reference}")]
    Resolve {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(
        "no byte of {reference} arrived from the swarm for {idle:?} while following its puller"
    )]
    Stalled { reference: String, idle: Duration },
}

impl FetchError {
    /// A bounded name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Resolve { source, .. } => source.kind(),
            Self::Pull(e) => e.kind(),
            Self::Stalled { .. } => "stalled",
        }
    }
}

/// Fetches images for this node; cheap to clone.
#[derive(Clone)]
pub struct ImageFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: RegistryClient,
    swarm: Option<SwarmHandle>,
    elector: Option<LeaseElector>,
    cfg: FetchConfig,
    metrics: FetchMetrics,
}

/// Byte counts and roles of one fetch.
#[derive(Default)]
struct Tally {
    counters: ByteCounters,
    puller: bool,
}

impl ImageFetcher {
    /// `elector` must have been created with `swarm`'s peer id as member id (see [`MemberView`]);
    /// it is ignored without a swarm.
    pub fn new(
        store: Store,
        registry: RegistryClient,
        swarm: Option<SwarmHandle>,
        elector: Option<LeaseElector>,
        cfg: FetchConfig,
        metrics: FetchMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                registry,
                swarm,
                elector,
                cfg,
                metrics,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn swarm(&self) -> Option<&SwarmHandle> {
        self.inner.swarm.as_ref()
    }

    pub fn metrics(&self) -> &FetchMetrics {
        &self.inner.metrics
    }

    /// Resolves (swarm tag record, else registry), elects, pulls or follows; stores an
    /// ImageRecord. See the module docs.
    pub async fn fetch(
        &self,
        reference: &Reference,
        progress: Arc<dyn PullProgress>,
    ) -> Result<FetchReport, FetchError> {
        let started = Instant::now();
        let s = &*self.inner;
        let (resolved, via) = resolve(
            &s.registry,
            s.swarm.as_ref(),
            &s.cfg.platform,
            s.cfg.tag_timeout,
            reference,
        )
        .await
        .map_err(|source| FetchError::Resolve {
            reference: reference.to_string(),
            source,
        })?;
        let record = pull::record_image(&s.store, reference, &resolved).await?;
        let manifest = record.manifest;
        let mut seen = HashSet::new();
        let blobs: Vec<(Digest, u64)> = record
            .blobs
            .iter()
            .copied()
            .filter(|(d, _)| seen.insert(*d))
            .collect();
        let tracker = Tracker::new(progress);
        let (present, total) = stored(&s.store, &blobs).await;
        let mut missing = false;
        for (d, _) in &blobs {
            missing |= !s.store.contains(d).await;
        }
        let mut tally = Tally::default();
        if !missing {
            tracker.start(total, present);
        } else if let (Some(h), Some(el)) = (&s.swarm, &s.elector) {
            self.elected(h, el, reference, manifest, &blobs, &tracker, &mut tally)
                .await?;
        } else {
            self.unelected(reference, &blobs, &tracker, &mut tally)
                .await?;
        }
        if let Some(h) = &s.swarm {
            // The whole image is here: a provider of its manifest for the next elections.
            if let Err(e) = h.announce(manifest).await {
                tracing::debug!(%manifest, error = %e, "cannot announce the manifest");
            }
        }
        Ok(FetchReport {
            reference: reference.clone(),
            manifest,
            total_bytes: total,
            registry_bytes: tally.counters.registry.load(Ordering::Relaxed),
            peer_bytes: tally.counters.peers.load(Ordering::Relaxed),
            present_bytes: present,
            puller: tally.puller,
            resolved_via: via,
            duration: started.elapsed(),
        })
    }

    /// No election: swarm first for each blob (when there is a swarm), else the registry.
    async fn unelected(
        &self,
        reference: &Reference,
        blobs: &[(Digest, u64)],
        tracker: &Tracker,
        tally: &mut Tally,
    ) -> Result<(), FetchError> {
        let s = &*self.inner;
        let peers = s.swarm.as_ref().map(|h| {
            PeerSource::new(h.clone(), s.cfg.swarm_find_timeout, s.cfg.pulling_timeout)
                .for_image(&reference.to_string())
        });
        let pull = BlobPull {
            client: &s.registry,
            store: &s.store,
            reference,
            progress: tracker,
            peers: peers.as_ref(),
            announce: s.swarm.as_ref(),
            counters: &tally.counters,
        };
        let image = reference.to_string();
        let t0 = Instant::now();
        let r = pull.run(blobs).await;
        tally.puller = tally.counters.registry.load(Ordering::Relaxed) > 0;
        if tally.puller || r.is_err() {
            let result = if r.is_ok() {
                PullResult::Ok
            } else {
                PullResult::Error
            };
            s.metrics.pulled(&image, result, t0.elapsed().as_secs_f64());
        }
        r?;
        Ok(())
    }

    /// Elected, with this node's want record announced for the duration.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    async fn elected(
        &self,
        h: &SwarmHandle,
        el: &LeaseElector,
        reference: &Reference,
        manifest: Digest,
        blobs: &[(Digest, u64)],
        tracker: &Tracker,
        tally: &mut Tally,
    ) -> Result<(), FetchError> {
        // Wanted here: the ranking of every node fetching the image includes this one.
        let _want = Want::announce(h, manifest).await;
        self.elect(h, el, reference, manifest, blobs, tracker, tally)
            .await
    }

    /// The election loop: pull while this node holds the role, follow the swarm otherwise.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    async fn elect(
        &self,
        h: &SwarmHandle,
        el: &LeaseElector,
        reference: &Reference,
        manifest: Digest,
        blobs: &[(Digest, u64)],
        tracker: &Tracker,
        tally: &mut Tally,
    ) -> Result<(), FetchError> {
        let s = &*self.inner;
        let image = reference.to_string();
        let node = s.cfg.node_name.as_str();
        let peers = PeerSource::new(h.clone(), s.cfg.swarm_find_timeout, s.cfg.pulling_timeout)
            .for_image(&image);
        let find = s.cfg.swarm_find_timeout.min(s.cfg.takeover_stall);
        let takeover = PeerSource::new(h.clone(), find, s.cfg.pulling_timeout)
            .with_stall(s.cfg.takeover_stall)
            .for_image(&image);
        let mut election = el.start(manifest, MemberView::new(h.clone()));
        let mut status = election.subscribe();
        // Set once this node followed: pulling after that is a takeover, and peers have chunks.
        let mut followed = false;
        loop {
            let st = election.acquire_or_follow().await;
            if st.role == Role::Pull {
                tally.puller = true;
                s.metrics.set_pulling(&image, node, true);
                if let Err(e) = h.announce(manifest).await {
                    tracing::debug!(%manifest, error = %e, "cannot announce the manifest");
                }
                let t0 = Instant::now();
                let pull = BlobPull {
                    client: &s.registry,
                    store: &s.store,
                    reference,
                    progress: tracker,
                    peers: followed.then_some(&takeover),
                    announce: Some(h),
                    counters: &tally.counters,
                };
                let r = tokio::select! {
                    r = pull.run(blobs) => Some(r),
                    () = role_change(&mut status, |s| s.role != Role::Pull) => None,
                };
                s.metrics.set_pulling(&image, node, false);
                let secs = t0.elapsed().as_secs_f64();
                match r {
                    Some(Ok(_)) => {
                        s.metrics.pulled(&image, PullResult::Ok, secs);
                        break;
                    }
                    Some(Err(e)) => {
                        s.metrics.pulled(&image, PullResult::Error, secs);
                        election.abandon().await;
                        return Err(e.into());
                    }
                    None => {
                        s.metrics.pulled(&image, PullResult::Lost, secs);
                        tracing::info!(%reference, "another node pulls the image now; following the swarm");
                    }
                }
            } else {
                followed = true;
                let r = tokio::select! {
                    r = follow(&peers, &s.store, blobs, tracker, s.cfg.pulling_timeout, &tally.counters.peers) => Some(r),
                    () = role_change(&mut status, |s| s.role == Role::Pull) => None,
                };
                match r {
                    Some(Ok(())) => break,
                    Some(Err(idle)) => {
                        election.abandon().await;
                        return Err(FetchError::Stalled {
                            reference: image,
                            idle,
                        });
                    }
                    None => tracing::info!(%reference, "taking over the registry pull"),
                }
            }
        }
        election.complete().await;
        Ok(())
    }
}

/// This node's want record of one image: announced while its fetch runs, withdrawn when the fetch
/// ends, fails or is cancelled (drop).
struct Want {
    swarm: SwarmHandle,
    key: Digest,
}

impl Want {
    async fn announce(swarm: &SwarmHandle, manifest: Digest) -> Self {
        let key = want_key(&manifest);
        if let Err(e) = swarm.announce(key).await {
            tracing::debug!(%manifest, error = %e, "cannot announce the want record");
        }
        Self {
            swarm: swarm.clone(),
            key,
        }
    }
}

impl Drop for Want {
    fn drop(&mut self) {
        // Drop cannot await the bounded command queue: withdraw from a task.
        let (swarm, key) = (self.swarm.clone(), self.key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = swarm.withdraw(key).await {
                    tracing::debug!(error = %e, "cannot withdraw the want record");
                }
            });
        }
    }
}

/// Resolves when the election's status satisfies `f`; never when the election task is gone (its
/// last role stands).
async fn role_change(rx: &mut watch::Receiver<Status>, f: impl FnMut(&Status) -> bool) {
    if rx.wait_for(f).await.is_err() {
        std::future::pending::<()>().await;
    }
}
