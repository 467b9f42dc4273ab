//! One registry puller per image: runs `preheat_core::election` against `coordination.k8s.io/v1`
//! Leases (kube, rustls) or, with `LEASE=none`, by the coordination-free ranking alone.
//!
//! ```text
//!  LeaseElector::start(image, view) ──► task: Election::poll ─► LeaseApi (GET/POST/PUT/DELETE)
//!        │                                   │  role changes
//!        ▼                                   ▼
//!  ImageElection (watch of Status: Pull | Follow, holder, fallback) ── complete() ─► DELETE
//! ```
//!
//! Invariants: only the election's top-k contenders (and nodes that saw no provider in time) call
//! the API; every write is optimistic (resourceVersion), 409 = another node won; API failures are
//! logged and turn into the coordination-free rule, never a panic; Lease names come from
//! `preheat_core::election::lease_name`, labelled `app.kubernetes.io/managed-by=image-preheat` and
//! `image-preheat.io/digest=<63 hex>` for garbage collection. Needs the RBAC in
//! `deploy/rbac-lease.yaml`.
//!
//! ```no_run
//! # use image_preheat::lease::*;
//! # async fn demo(image: preheat_core::Digest, view: impl SwarmView, peer_id: String) -> Result<(), LeaseError> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = LeaseMetrics::register(&mut registry);
//! let cfg = LeaseConfig::new(LeaseMode::Kube, "image-preheat", "node-a");
//! let elector = LeaseElector::from_environment(cfg, peer_id, metrics).await?;
//! let mut election = elector.start(image, view);
//! match election.acquire_or_follow().await.role {
//!     Role::Pull => { /* pull from the registry, announcing chunks as they are stored */ }
//!     _ => { /* fetch from the swarm; watch `election.subscribe()` for a takeover (→ Pull) */ }
//! }
//! election.complete().await; // image complete here: the holder deletes its Lease
//! # Ok(()) }
//! ```

mod api;
mod elector;
mod metrics;

use std::time::Duration;

use preheat_core::election::{ElectionConfig, ElectionMode};

pub use api::{
    client_from_config, kube_client, lease_record, new_lease, LeaseApi, DIGEST_LABEL,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
pub use elector::{ImageElection, LeaseElector, Mode, Role, Snapshot, Status, SwarmView};
pub use metrics::{ApiResult, ApiVerb, LeaseMetrics};

/// `LEASE=kube|none` (clap value names `kube`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaseMode {
    Kube,
    None,
}

/// Configuration of the election; [`LeaseConfig::new`] gives the deployment defaults.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub mode: LeaseMode,
    /// `K8S_NAMESPACE`: where the Leases live.
    pub namespace: String,
    /// `NODE_NAME`: written as `holderIdentity`.
    pub node_name: String,
    /// `K8S_LOCK_TIMEOUT` (default 5 min); renewed every third of it.
    pub lease_duration: Duration,
    /// How many top-ranked members contend for each Lease (default 3).
    pub contenders: usize,
    /// How long a non-contender waits for a provider before contending (default 10 s).
    pub provider_wait: Duration,
    /// First retry delay after an API error (doubles, jittered, up to `retry_max`).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Delay per rank before a contender's first API call.
    pub stagger: Duration,
    /// Coordination-free: pause before the first decision (unless a provider is there), so the
    /// want records of nodes starting together are seen.
    pub settle: Duration,
    /// Margin for clock skew before a Lease counts as expired.
    pub clock_skew: Duration,
}

impl LeaseConfig {
    pub fn new(
        mode: LeaseMode,
        namespace: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Self {
        let d = ElectionConfig::default();
        Self {
            mode,
            namespace: namespace.into(),
            node_name: node_name.into(),
            lease_duration: d.lease_duration,
            contenders: d.contenders,
            provider_wait: d.provider_wait,
            retry_min: d.retry_min,
            retry_max: d.retry_max,
            stagger: d.stagger,
            settle: d.settle,
            clock_skew: d.clock_skew,
        }
    }

    /// The core election's configuration.
    pub fn election(&self) -> ElectionConfig {
        ElectionConfig {
            mode: match self.mode {
                LeaseMode::Kube => ElectionMode::Kube,
                LeaseMode::None => ElectionMode::CoordinationFree,
            },
            lease_duration: self.lease_duration,
            contenders: self.contenders,
            provider_wait: self.provider_wait,
            clock_skew: self.clock_skew,
            stagger: self.stagger,
            settle: self.settle,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
        }
    }
}

/// Why a Lease API call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {name} was changed by another node (409)")]
    Conflict { name: String },
    #[error("lease {name} not found")]
    NotFound { name: String },
    #[error("lease api call failed")]
    Api(#[source] kube::Error),
    #[error("no kubernetes configuration (in-cluster or kubeconfig)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("lease duration {0:?} is not a positive number of seconds")]
    Duration(Duration),
    #[error("at least one contender per lease is needed")]
    NoContenders,
}

impl LeaseError {
    /// A bounded name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "conflict",
            Self::NotFound { .. } => "not_found",
            Self::Api(_) => "api",
            Self::Config(_) => "config",
            Self::Duration(_) => "duration",
            Self::NoContenders => "no_contenders",
        }
    }
}
