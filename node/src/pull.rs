//! Pulls one image from its registry into the content store.
//!
//! ```text
//!  resolve ─► put_small(index, manifest) ─► put_image (partial, wanted) ─► blobs, 3 at a time:
//!     writer(d) ─► resume_offset ─► blob_stream(offset) ─► write … ─► finish (sha256) ─► put_image
//! ```
//!
//! With a [`PeerSource`] each missing blob is tried in the swarm first (see `swarm_pull`); the
//! registry gets only the blobs no peer has, resuming from the chunks peers delivered.
//!
//! Invariants: a blob becomes visible only after `finish` verified its sha256; a broken stream is retried
//! from the store's verified prefix, so finished chunks are never fetched again; the image is recorded and
//! wanted before its blobs arrive, so eviction cannot take an early layer to make room for a later one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{BlobWriter, ImageRecord, Store, StoreError};

use crate::registry::{RegistryClient, RegistryError};
use crate::swarm_pull::{PeerFetch, PeerSource};

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

struct Ctx<'a> {
    client: &'a RegistryClient,
    store: &'a Store,
    reference: &'a Reference,
    progress: &'a dyn PullProgress,
    peers: Option<&'a PeerSource>,
    fetched: AtomicU64,
    peer_bytes: AtomicU64,
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
    let blobs: Vec<(Digest, u64)> = resolved.image.blobs().map(|d| (d.digest, d.size)).collect();
    let record = ImageRecord {
        reference: reference.to_string(),
        manifest: resolved.manifest.digest,
        manifest_media_type: resolved.manifest.media_type.clone(),
        index: resolved.index.as_ref().map(|i| i.digest),
        platform: resolved.platform.as_ref().map(ToString::to_string),
        blobs: blobs.clone(),
    };
    // Recorded before the blobs arrive, so the wanted set protects the ones already fetched.
    store
        .put_image(record.clone())
        .await
        .map_err(|source| store_err(format!("image record {reference}"), source))?;
    store.set_wanted([resolved.manifest.digest]).await;

    let ctx = Ctx {
        client,
        store,
        reference,
        progress,
        peers,
        fetched: AtomicU64::new(0),
        peer_bytes: AtomicU64::new(0),
    };
    let mut seen = HashSet::new();
    let mut present = 0u64;
    let mut done = Vec::new();
    let mut jobs = Vec::new();
    for &(digest, size) in &blobs {
        if !seen.insert(digest) {
            continue;
        }
        if store.contains(&digest).await {
            present += size;
            done.push(digest);
            continue;
        }
        match open_writer(store, digest, size).await? {
            Some(writer) => {
                present += writer.verified_offset();
                jobs.push((digest, size, writer));
            }
            None => {
                present += size;
                done.push(digest);
            }
        }
    }
    let total: u64 = blobs
        .iter()
        .filter(|(d, _)| seen.remove(d))
        .map(|(_, s)| s)
        .sum();
    progress.start(total, present);
    for d in &done {
        progress.blob_done(d);
    }
    tracing::debug!(%reference, blobs = blobs.len(), missing = jobs.len(), total, present, "pulling image");

    futures::stream::iter(jobs)
        .map(|(digest, size, writer)| fetch_blob(&ctx, digest, size, writer))
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;

    store
        .put_image(record)
        .await
        .map_err(|source| store_err(format!("image record {reference}"), source))?;
    Ok(PullReport {
        reference: reference.clone(),
        manifest: resolved.manifest.digest,
        total_bytes: total,
        fetched_bytes: ctx.fetched.load(Ordering::Relaxed),
        peer_bytes: ctx.peer_bytes.load(Ordering::Relaxed),
        present_bytes: present,
        duration: started.elapsed(),
    })
}

/// Why one transfer attempt stopped.
enum Stop {
    /// Retry from the store's verified prefix.
    Retry(RegistryError),
    Fatal(PullError),
}

/// Fetches one blob to completion: from peers when they have it, else from the registry,
/// resuming after broken streams.
async fn fetch_blob(
    ctx: &Ctx<'_>,
    digest: Digest,
    size: u64,
    mut writer: BlobWriter,
) -> Result<(), PullError> {
    let mut reported = writer.verified_offset();
    if let Some(peers) = ctx.peers {
        // The swarm opens its own writer for the blob.
        drop(writer);
        match peers
            .fetch(ctx.store, digest, size, reported, ctx.progress)
            .await
        {
            PeerFetch::Done { bytes } => {
                ctx.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
                ctx.progress.blob_done(&digest);
                return Ok(());
            }
            PeerFetch::Fallback { reported: r } => reported = r,
        }
        writer = match open_writer(ctx.store, digest, size).await? {
            Some(w) => w,
            None => {
                ctx.progress.blob_done(&digest);
                return Ok(());
            }
        };
        reported = reported.max(writer.verified_offset());
    }
    let policy = ctx.client.config().retry;
    let mut failures = 0u32;
    loop {
        let offset = writer.resume_offset();
        if offset >= size {
            break;
        }
        match transfer(ctx, digest, size, &mut writer, offset, &mut reported).await {
            Ok(()) => break,
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Retry(e)) => {
                // A transfer that advanced the verified prefix starts a new series of attempts.
                let gained = writer.verified_offset() > offset;
                failures = if gained { 1 } else { failures + 1 };
                if !policy.may_retry(failures) {
                    return Err(PullError::GaveUp {
                        digest,
                        attempts: failures,
                        source: e,
                    });
                }
                let delay = policy.delay(failures, e.retry_after(), &mut rand::thread_rng());
                tracing::debug!(%digest, error = %e, failures, ?delay, "blob transfer interrupted, resuming");
                // Reopen: the writer's unfinished chunk is dropped, the verified chunks are reloaded.
                drop(writer);
                tokio::time::sleep(delay).await;
                writer = match open_writer(ctx.store, digest, size).await? {
                    Some(w) => w,
                    // Completed meanwhile by another writer of the same store.
                    None => {
                        ctx.progress.blob_done(&digest);
                        return Ok(());
                    }
                };
                ctx.progress.message(&format!(
                    "transfer of {digest} interrupted ({e}); resuming at byte {}",
                    writer.resume_offset()
                ));
            }
        }
    }
    writer.finish().await.map_err(|source| match source {
        StoreError::DigestMismatch { .. } => PullError::DigestMismatch {
            reference: ctx.reference.to_string(),
            digest,
            source,
        },
        source => store_err(format!("blob {digest}"), source),
    })?;
    if size > reported {
        ctx.progress.advance(size - reported);
    }
    ctx.progress.blob_done(&digest);
    Ok(())
}

/// One streamed request from `offset` to the end of the blob.
async fn transfer(
    ctx: &Ctx<'_>,
    digest: Digest,
    size: u64,
    writer: &mut BlobWriter,
    offset: u64,
    reported: &mut u64,
) -> Result<(), Stop> {
    let mut stream = ctx
        .client
        .blob_stream(ctx.reference, &digest, offset)
        .await
        .map_err(|e| Stop::Fatal(e.into()))?;
    let mut at = offset;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(Stop::Retry)?;
        ctx.fetched.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if at + piece.len() as u64 > size {
            return Err(Stop::Fatal(PullError::SizeMismatch {
                reference: ctx.reference.to_string(),
                digest,
                expected: size,
            }));
        }
        writer
            .write(&piece)
            .await
            .map_err(|source| Stop::Fatal(store_err(format!("blob {digest}"), source)))?;
        at += piece.len() as u64;
        let verified = writer.verified_offset();
        if verified > *reported {
            ctx.progress.advance(verified - *reported);
            *reported = verified;
        }
    }
    if at < size {
        return Err(Stop::Retry(RegistryError::ShortBlob { digest, at, size }));
    }
    Ok(())
}

/// A writer positioned at the blob's verified prefix; `None` when the blob is already complete.
async fn open_writer(
    store: &Store,
    digest: Digest,
    size: u64,
) -> Result<Option<BlobWriter>, PullError> {
    match store.writer(digest, size).await {
        Ok(w) => Ok(Some(w)),
        Err(StoreError::Exists(_)) => Ok(None),
        Err(source) => Err(store_err(format!("blob {digest}"), source)),
    }
}

fn store_err(what: String, source: StoreError) -> PullError {
    PullError::Store { what, source }
}
