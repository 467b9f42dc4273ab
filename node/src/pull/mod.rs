//! Pulls one image from its registry into the content store.
//!
//! ```text
//!  resolve ─► put_small(index, manifest) ─► put_image (partial, wanted) ─► blobs, 3 at a time:
//!     writer(d) ─► missing chunk runs ─► blob_range(run) ─► write … ─► finish (sha256) ─► put_image
//! ```
//!
//! With a [`PeerSource`] each missing blob is tried in the swarm first (see `swarm_pull`); the
//! registry gets only the blobs no peer has, resuming from the chunks peers delivered.
//!
//! Invariants: a blob becomes visible only after `finish` verified its sha256; a broken stream is retried
//! for the chunks still missing, so finished chunks are fetched again only inside merged runs; the image is recorded and
//! wanted before its blobs arrive, so eviction cannot take an early layer to make room for a later one.

mod blobs;

use std::time::{Duration, Instant};

use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{ImageRecord, Store, StoreError};

pub use blobs::{BlobPull, BlobsReport, ByteCounters};

use crate::registry::{RegistryClient, RegistryError, Resolved};
use crate::swarm_pull::PeerSource;

/// Blobs of one image fetched at the same time.
pub const PARALLEL_BLOBS: usize = 3;

/// Receives pull progress; implementations must be cheap (called for every piece written).
pub trait PullProgress: Send + Sync {
    /// The image needs `total_bytes`, of which `already` are in the store.
    fn start(&self, total_bytes: u64, already: u64);
    /// `bytes` more are stored (verified prefix grew).
    fn advance(&self, bytes: u64);
    fn blob_done(&self, d: &Digest);
    /// A notable event for the operator (a retry, a resumed blob).
    fn message(&self, msg: &str);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn start(&self, _: u64, _: u64) {}
    fn advance(&self, _: u64) {}
    fn blob_done(&self, _: &Digest) {}
    fn message(&self, _: &str) {}
}

/// What a finished pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub reference: Reference,
    /// The image manifest pulled (the platform's, when the reference names an index).
    pub manifest: Digest,
    /// Size of the config and all layers.
    pub total_bytes: u64,
    /// Bytes received from the registry for blobs (more than needed when a stream broke mid-chunk).
    pub fetched_bytes: u64,
    /// Verified blob bytes received from swarm peers.
    pub peer_bytes: u64,
    /// Blob bytes that were already stored (complete blobs and resumed prefixes).
    pub present_bytes: u64,
    pub duration: Duration,
}

/// Why a pull failed. The store is left consistent: complete blobs stay, partial ones resume next time.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot store {what}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("blob {digest} of {reference} does not match its digest, nothing was stored")]
    DigestMismatch {
        reference: String,
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error(
        "blob {digest} of {reference} is larger than the {expected} bytes its manifest declares"
    )]
    SizeMismatch {
        reference: String,
        digest: Digest,
        expected: u64,
    },
    #[error("gave up on blob {digest} after {attempts} interrupted transfers")]
    GaveUp {
        digest: Digest,
        attempts: u32,
        #[source]
        source: RegistryError,
    },
    /// The caller cancelled the pull (e.g. on a signal); `pull_image` itself never returns it.
    #[error("pull interrupted")]
    Interrupted,
}

impl PullError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registry(e) => e.kind(),
            Self::Store { source, .. } => source.kind(),
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::GaveUp { .. } => "gave_up",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Resolves `reference`, stores its manifests byte-exact and fetches every missing blob.
pub async fn pull_image(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    progress: &dyn PullProgress,
) -> Result<PullReport, PullError> {
    pull_image_via(client, store, reference, progress, None).await
}

/// [`pull_image`], trying `peers` (when given) for each missing blob before the registry.
pub async fn pull_image_via(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    progress: &dyn PullProgress,
    peers: Option<&PeerSource>,
) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let resolved = client.resolve(reference).await?;
    let record = record_image(store, reference, &resolved).await?;
    store.set_wanted([resolved.manifest.digest]).await;
    let pull = BlobPull {
        client,
        store,
        reference,
        progress,
        peers,
        announce: None,
        counters: &ByteCounters::default(),
    };
    let blobs = pull.run(&record.blobs).await?;
    store
        .put_image(record)
        .await
        .map_err(|source| store_err(format!("image record {reference}"), source))?;
    Ok(PullReport {
        reference: reference.clone(),
        manifest: resolved.manifest.digest,
        total_bytes: blobs.total_bytes,
        fetched_bytes: blobs.fetched_bytes,
        peer_bytes: blobs.peer_bytes,
        present_bytes: blobs.present_bytes,
        duration: started.elapsed(),
    })
}

/// Stores the resolved manifests byte-exact and the image record (its blobs still missing), so
/// the blobs fetched next are protected once the caller declares the image wanted.
pub async fn record_image(
    store: &Store,
    reference: &Reference,
    resolved: &Resolved,
) -> Result<ImageRecord, PullError> {
    for raw in resolved
        .index
        .iter()
        .chain(std::iter::once(&resolved.manifest))
    {
        store
            .put_small(raw.digest, &raw.bytes)
            .await
            .map_err(|source| store_err(format!("manifest {}", raw.digest), source))?;
    }
    let record = ImageRecord {
        reference: reference.to_string(),
        manifest: resolved.manifest.digest,
        manifest_media_type: resolved.manifest.media_type.clone(),
        index: resolved.index.as_ref().map(|i| i.digest),
        platform: resolved.platform.as_ref().map(ToString::to_string),
        blobs: resolved.image.blobs().map(|d| (d.digest, d.size)).collect(),
    };
    store
        .put_image(record.clone())
        .await
        .map_err(|source| store_err(format!("image record {reference}"), source))?;
    Ok(record)
}

pub(crate) fn store_err(what: String, source: StoreError) -> PullError {
    PullError::Store { what, source }
}
