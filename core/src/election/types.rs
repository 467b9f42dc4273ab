//! The election's configuration, inputs and outputs.

use std::time::{Duration, Instant};

/// Whether a Lease is used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionMode {
    /// `LEASE=kube`: a `coordination.k8s.io/v1` Lease decides; coordination-free while it fails.
    Kube,
    /// `LEASE=none`: the top-ranked live member that wants the image pulls; the next one if it
    /// disappears; the next ranks too (1, 2, 4, …) while no provider shows up in time.
    CoordinationFree,
}

/// Tunables of one election; `Default` gives the deployment defaults.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub mode: ElectionMode,
    /// `leaseDurationSeconds` we write (`K8S_LOCK_TIMEOUT`); the holder renews every third of it.
    pub lease_duration: Duration,
    /// How many top-ranked members contend for the Lease.
    pub contenders: usize,
    /// How long a non-contender waits for a provider in the swarm before it contends itself.
    pub provider_wait: Duration,
    /// Extra margin before a Lease counts as expired (clock skew between nodes).
    pub clock_skew: Duration,
    /// Delay of the first API call per rank (rank r waits r × this), so the top-ranked usually
    /// creates the Lease and the others find it instead of racing into a 409.
    pub stagger: Duration,
    /// Coordination-free mode: the first decision waits this long unless a provider is already
    /// there, so the want records of nodes that start together are seen before anyone ranks itself
    /// first.
    pub settle: Duration,
    /// First retry delay after an API error; doubles per failure up to `retry_max`; jittered.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            mode: ElectionMode::Kube,
            lease_duration: Duration::from_secs(300),
            contenders: 3,
            provider_wait: Duration::from_secs(10),
            clock_skew: Duration::from_secs(2),
            stagger: Duration::from_millis(500),
            settle: Duration::from_millis(500),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// The Lease as read from (or written to) the API server, with times on the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub renew_time: Option<Instant>,
    /// `leaseDurationSeconds`; `None` means the reader's configured duration.
    pub duration: Option<Duration>,
    pub resource_version: String,
}

impl LeaseRecord {
    /// When the Lease stops protecting its holder; `None` if it has no holder or renew time.
    pub fn expires_at(&self, cfg: &ElectionConfig) -> Option<Instant> {
        self.holder.as_ref()?;
        let d = self.duration.unwrap_or(cfg.lease_duration);
        Some(self.renew_time? + d + cfg.clock_skew)
    }
}

/// Result of an [`Action::Get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Lease(LeaseRecord),
    Absent,
    ApiError,
}

/// Result of a write ([`Action::Create`], `Renew`, `TakeOver`, `Release`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Ok(LeaseRecord),
    /// 409: the Lease exists (create) or its resourceVersion moved on (replace, delete).
    Conflict,
    /// 404: the Lease is gone.
    NotFound,
    ApiError,
}

/// What the adapter must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the Lease; answer with [`Election::on_get`].
    Get,
    /// Create the Lease held by us; answer with [`Election::on_write`].
    Create,
    /// Replace our Lease with a fresh renew time, based on this resourceVersion.
    Renew { resource_version: String },
    /// Replace an expired Lease, taking it over, based on this resourceVersion.
    TakeOver { resource_version: String },
    /// Delete our Lease with this resourceVersion as precondition (the image is complete).
    Release { resource_version: String },
    /// Replace our Lease with one without holder (we stop before the image is complete): the next
    /// contender that reads it takes it over without waiting for expiry, and followers do not
    /// mistake it for a completed image (which a deleted Lease means).
    Yield { resource_version: String },
    /// Start (or keep) pulling the image from the registry and serving it to the swarm.
    PullFromRegistry,
    /// Stop pulling from the registry; fetch the image from the swarm.
    FeedFromSwarm,
    /// The API server failed: the coordination-free rule decides until it answers again.
    FallbackCoordinationFree,
    /// Nothing to do before `until` unless the view changes or a result arrives.
    Wait { until: Instant },
}

/// What the swarm says about the image right now.
#[derive(Debug)]
pub struct View<'a, M> {
    /// Live members (this node may or may not be listed); the Lease contenders are ranked on them.
    pub members: &'a [M],
    /// Live members that want the image (this node always counts, listed or not); the
    /// coordination-free rule (and the fallback) ranks them, so a node that does not want the
    /// image is never waited for.
    pub wanting: &'a [M],
    /// Live members other than this node that provide (part of) the image: a puller from its
    /// start, every node once it has the whole image.
    pub providers: &'a [M],
}

// Manual impls: a derive would require `M: Copy`.
impl<M> Clone for View<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for View<'_, M> {}

/// The role this node plays for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Undecided,
    Pull,
    Follow,
}
