//! Swarm-first blob fetching for pulls: a blob some peer advertises is fetched from the swarm;
//! a blob nobody advertises within `find_timeout`, or whose peer download fails, is left to the
//! registry, which resumes from the chunks the peers already delivered.
//!
//! ```text
//!  providers(d) every 200 ms ──none before find_timeout──► Fallback (registry)
//!        │ some
//!        ▼
//!  SwarmHandle::fetch_blob(d, size, now + fetch_timeout) ──error──► Fallback (partial kept)
//!        │ ok                     ▲ progress: the partial's bytes_done, polled
//!        ▼
//!  Done { bytes from peers }
//! ```
//!
//! Invariant: this module never holds a `BlobWriter`; the swarm opens its own, so the caller must
//! drop its writer first (one writer per blob).

use std::sync::Arc;
use std::time::{Duration, Instant};

use preheat_core::Digest;
use preheat_store::Store;
use preheat_swarm::SwarmHandle;

use crate::pull::PullProgress;

/// How often the DHT is asked for providers while looking for a source.
const PROVIDER_POLL: Duration = Duration::from_millis(200);
/// How often the progress of a peer download is read from the store.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// Fetches blobs through a running swarm node for [`crate::pull::pull_image_via`].
#[derive(Clone)]
pub struct PeerSource {
    handle: SwarmHandle,
    find_timeout: Duration,
    fetch_timeout: Duration,
    stall: Option<Duration>,
    /// The image the blobs are for: the `image` label of the swarm's per-peer fetch metrics.
    image: Arc<str>,
}

/// The result of trying the swarm for one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFetch {
    /// The blob is complete in the store; `bytes` of it came from peers.
    Done { bytes: u64 },
    /// No peer had it, or the peer download failed; `reported` bytes of progress were reported.
    Fallback { reported: u64 },
}

impl PeerSource {
    /// `find_timeout` bounds the search for a peer advertising a blob; `fetch_timeout` bounds the
    /// peer download once one was found.
    pub fn new(handle: SwarmHandle, find_timeout: Duration, fetch_timeout: Duration) -> Self {
        Self {
            handle,
            find_timeout,
            fetch_timeout,
            stall: None,
            image: Arc::from(""),
        }
    }

    /// Labels the peer fetch metrics of this source's blobs with `image` (its reference).
    pub fn for_image(mut self, image: &str) -> Self {
        self.image = image.into();
        self
    }

    /// Gives up on a peer download (keeping its chunks) once no new chunk arrived for `stall`:
    /// for a puller taking over, which must not wait on chunks nobody has any more.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    pub fn handle(&self) -> &SwarmHandle {
        &self.handle
    }

    /// Tries the swarm for blob `digest`; `reported` bytes of it were already reported as
    /// progress (its stored prefix). See the module docs.
    pub async fn fetch(
        &self,
        store: &Store,
        digest: Digest,
        size: u64,
        mut reported: u64,
        progress: &dyn PullProgress,
    ) -> PeerFetch {
        if !self.find_provider(digest).await {
            tracing::debug!(%digest, "no peer advertises the blob");
            return PeerFetch::Fallback { reported };
        }
        let deadline = Instant::now() + self.fetch_timeout;
        let fetch = self
            .handle
            .fetch_blob_for(&self.image, digest, size, deadline);
        tokio::pin!(fetch);
        let poll = self
            .stall
            .map_or(PROGRESS_POLL, |s| PROGRESS_POLL.min(s / 4));
        let mut tick = tokio::time::interval(poll);
        let mut moved = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                r = &mut fetch => break r,
                _ = tick.tick() => {
                    if let Ok(Some(p)) = store.partial(&digest).await {
                        if p.bytes_done > reported {
                            progress.advance(p.bytes_done - reported);
                            reported = p.bytes_done;
                            moved = tokio::time::Instant::now();
                        }
                    }
                    if self.stall.is_some_and(|s| moved.elapsed() >= s) {
                        tracing::debug!(%digest, reported, "peers stopped delivering the blob");
                        return PeerFetch::Fallback { reported };
                    }
                }
            }
        };
        match result {
            Ok(report) => {
                if size > reported {
                    progress.advance(size - reported);
                }
                tracing::debug!(%digest, bytes = report.bytes_from_peers, peers = report.peers_used, "blob fetched from peers");
                PeerFetch::Done {
                    bytes: report.bytes_from_peers,
                }
            }
            Err(e) => {
                progress.message(&format!("fetching {digest} from peers failed ({e})"));
                PeerFetch::Fallback { reported }
            }
        }
    }

    /// Polls the DHT until some peer advertises `digest`, at most `find_timeout`.
    async fn find_provider(&self, digest: Digest) -> bool {
        let until = tokio::time::Instant::now() + self.find_timeout;
        loop {
            match tokio::time::timeout_at(until, self.handle.providers(digest)).await {
                Ok(Ok(p)) if !p.is_empty() => return true,
                Ok(Ok(_)) => {}
                // The swarm stopped or the search ran out of time.
                Ok(Err(_)) | Err(_) => return false,
            }
            let next = tokio::time::Instant::now() + PROVIDER_POLL;
            if next >= until {
                return false;
            }
            tokio::time::sleep_until(next).await;
        }
    }
}
