//! Fetching the missing blobs of one image: [`PARALLEL_BLOBS`] at a time, each from peers first
//! when a [`PeerSource`] is given, else (or then) from the registry, announced to the swarm as soon
//! as its registry writer exists. The registry is asked only for the chunks the store lacks (peers
//! may have delivered any of them): one range request per run of missing chunks, at most
//! [`MAX_RANGES`] runs (the closest ones merged), and again after a broken stream.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use preheat_core::reference::Reference;
use preheat_core::runs::missing_runs;
use preheat_core::Digest;
use preheat_store::{BlobWriter, Store, StoreError};
use preheat_swarm::SwarmHandle;

use super::{store_err, PullError, PullProgress, PARALLEL_BLOBS};
use crate::registry::{RegistryClient, RegistryError};
use crate::swarm_pull::{PeerFetch, PeerSource};

/// Range requests a resume may split a blob's missing chunks into (stored chunks between merged
/// runs are fetched again).
const MAX_RANGES: usize = 16;

/// How long `open_writer` waits for a blob another writer holds: 50 × 100 ms.
const BUSY_RETRIES: u32 = 50;
const BUSY_WAIT: Duration = Duration::from_millis(100);

/// Byte counts of one [`BlobPull::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobsReport {
    /// Size of the distinct blobs asked for.
    pub total_bytes: u64,
    /// Bytes received from the registry.
    pub fetched_bytes: u64,
    /// Verified bytes received from peers.
    pub peer_bytes: u64,
    /// Bytes already stored when the run started (complete blobs and verified prefixes).
    pub present_bytes: u64,
}

/// Bytes received by a [`BlobPull`], counted as they arrive (readable after a cancelled run).
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// From the registry (more than needed when a stream broke mid-chunk).
    pub registry: AtomicU64,
    /// Verified bytes from peers.
    pub peers: AtomicU64,
}

/// Fetches the missing blobs of one image, [`PARALLEL_BLOBS`] at a time.
pub struct BlobPull<'a> {
    pub client: &'a RegistryClient,
    pub store: &'a Store,
    /// The image the blobs belong to (its repository is asked for them).
    pub reference: &'a Reference,
    pub progress: &'a dyn PullProgress,
    /// Tried for each blob before the registry.
    pub peers: Option<&'a PeerSource>,
    /// Announces each blob right after its registry writer is created (and withdraws it when the
    /// partial is discarded), so peers stream its chunks while it is still arriving.
    pub announce: Option<&'a SwarmHandle>,
    /// Added to as bytes arrive.
    pub counters: &'a ByteCounters,
}

impl BlobPull<'_> {
    /// Fetches every blob of `blobs` not yet complete in the store; calls `progress.start` once.
    pub async fn run(&self, blobs: &[(Digest, u64)]) -> Result<BlobsReport, PullError> {
        let (store, progress) = (self.store, self.progress);
        let (registry_before, peers_before) = (
            self.counters.registry.load(Ordering::Relaxed),
            self.counters.peers.load(Ordering::Relaxed),
        );
        let ctx = Ctx {
            client: self.client,
            store,
            reference: self.reference,
            progress,
            peers: self.peers,
            announce: self.announce,
            counters: self.counters,
        };
        let mut seen = HashSet::new();
        let mut present = 0u64;
        let mut total = 0u64;
        let mut done = Vec::new();
        let mut jobs = Vec::new();
        for &(digest, size) in blobs {
            if !seen.insert(digest) {
                continue;
            }
            total += size;
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
        progress.start(total, present);
        for d in &done {
            progress.blob_done(d);
        }
        tracing::debug!(reference = %self.reference, blobs = blobs.len(), missing = jobs.len(), total, present, "pulling image");

        futures::stream::iter(jobs)
            .map(|(digest, size, writer)| fetch_blob(&ctx, digest, size, writer))
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(BlobsReport {
            total_bytes: total,
            fetched_bytes: self.counters.registry.load(Ordering::Relaxed) - registry_before,
            peer_bytes: self.counters.peers.load(Ordering::Relaxed) - peers_before,
            present_bytes: present,
        })
    }
}

struct Ctx<'a> {
    client: &'a RegistryClient,
    store: &'a Store,
    reference: &'a Reference,
    progress: &'a dyn PullProgress,
    peers: Option<&'a PeerSource>,
    announce: Option<&'a SwarmHandle>,
    counters: &'a ByteCounters,
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
                ctx.counters.peers.fetch_add(bytes, Ordering::Relaxed);
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
    announce(ctx, digest).await;
    let policy = ctx.client.config().retry;
    let mut failures = 0u32;
    loop {
        // Ask only for what is missing: peers may have delivered chunks anywhere in the blob.
        let layout = writer.layout();
        let Some(run) = missing_runs(writer.done(), MAX_RANGES).into_iter().next() else {
            break;
        };
        let range = layout.offset(run.start)..layout.offset(run.end).min(size);
        writer
            .seek_chunk(run.start)
            .map_err(|source| store_err(format!("blob {digest}"), source))?;
        let before = writer.bytes_done();
        match transfer(ctx, digest, range.clone(), size, &mut writer, &mut reported).await {
            Ok(()) if writer.bytes_done() > before => failures = 0,
            Ok(()) => {
                // Nothing new stored from a complete answer: never loop on it.
                return Err(PullError::GaveUp {
                    digest,
                    attempts: failures + 1,
                    source: RegistryError::ShortBlob {
                        digest,
                        at: range.start,
                        size,
                    },
                });
            }
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Retry(e)) => {
                // A transfer that stored something starts a new series of attempts.
                let gained = writer.bytes_done() > before;
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
    let finished = writer.finish().await;
    if finished.is_err() {
        // The partial is gone (digest mismatch) or unusable: stop offering it.
        if let Some(h) = ctx.announce {
            let _ = h.withdraw(digest).await;
        }
    }
    finished.map_err(|source| match source {
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

/// One streamed request for bytes `range` of the blob (the writer is positioned at its start).
async fn transfer(
    ctx: &Ctx<'_>,
    digest: Digest,
    range: std::ops::Range<u64>,
    blob_size: u64,
    writer: &mut BlobWriter,
    reported: &mut u64,
) -> Result<(), Stop> {
    let mut stream = ctx
        .client
        // The last run asks open-ended, so a blob longer than the manifest says is still caught.
        .blob_range(
            ctx.reference,
            &digest,
            range.start..if range.end == blob_size {
                u64::MAX
            } else {
                range.end
            },
        )
        .await
        .map_err(|e| Stop::Fatal(e.into()))?;
    let (mut at, size) = (range.start, range.end);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(Stop::Retry)?;
        ctx.counters
            .registry
            .fetch_add(piece.len() as u64, Ordering::Relaxed);
        if at + piece.len() as u64 > size {
            return Err(Stop::Fatal(PullError::SizeMismatch {
                reference: ctx.reference.to_string(),
                digest,
                expected: blob_size,
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

/// Offers `digest` to the swarm as soon as its registry writer exists (pipelining).
async fn announce(ctx: &Ctx<'_>, digest: Digest) {
    if let Some(h) = ctx.announce {
        if let Err(e) = h.announce(digest).await {
            tracing::debug!(%digest, error = %e, "cannot announce blob");
        }
    }
}

/// A writer positioned at the blob's verified prefix; `None` when the blob is already complete.
/// A blob busy with another writer (a cancelled swarm download letting go) is waited for briefly.
async fn open_writer(
    store: &Store,
    digest: Digest,
    size: u64,
) -> Result<Option<BlobWriter>, PullError> {
    let mut busy = 0u32;
    loop {
        match store.writer(digest, size).await {
            Ok(w) => return Ok(Some(w)),
            Err(StoreError::Exists(_)) => return Ok(None),
            Err(StoreError::Busy(_)) if busy < BUSY_RETRIES => {
                busy += 1;
                tokio::time::sleep(BUSY_WAIT).await;
            }
            Err(source) => return Err(store_err(format!("blob {digest}"), source)),
        }
    }
}
