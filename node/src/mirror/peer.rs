//! The swarm as a mirror [`Source`]: tags from peers' tag records (short deadline), manifests and
//! blobs by digest downloaded from peers into the local store, blobs streamed to the client while
//! their chunks arrive (the body follows the store's partial, see `stream`).
//!
//! One download per blob at a time (later requests follow the same partial); a download runs in
//! its own task, so a client that goes away does not stop it (the next pull finds it stored).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use preheat_core::Digest;
use preheat_store::Store;
use preheat_swarm::SwarmHandle;
use registry_proxy::{
    Blob, BlobStat, Manifest, ProxyError, RangeSpec, RepoName, Source, SourceKind, TagOrDigest,
    MANIFEST_MAX_BYTES,
};
use tokio::sync::oneshot::{self, error::TryRecvError};

use super::local::{request_reference, stored_blob, stored_manifest, stored_size};
use super::sizes::Sizes;

/// Re-check interval while a download has not created its partial yet.
const START_POLL: Duration = Duration::from_millis(20);

/// Settings of [`SwarmSource`].
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Registry of requests without `ns`.
    pub default_registry: String,
    /// How long a tag record is looked for.
    pub tag_timeout: Duration,
    /// Longest download of one blob from peers.
    pub fetch_deadline: Duration,
    /// A body that gets no new chunk for this long is aborted.
    pub stall: Duration,
}

/// Serves from peers through the node's swarm.
pub struct SwarmSource {
    swarm: SwarmHandle,
    store: Store,
    sizes: Sizes,
    cfg: PeerConfig,
    downloads: Arc<Mutex<HashSet<Digest>>>,
}

/// Removes a digest from the in-flight set when the download task ends.
struct InFlight {
    set: Arc<Mutex<HashSet<Digest>>>,
    digest: Digest,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
    }
}

impl SwarmSource {
    pub fn new(swarm: SwarmHandle, store: Store, sizes: Sizes, cfg: PeerConfig) -> Self {
        Self {
            swarm,
            store,
            sizes,
            cfg,
            downloads: Arc::default(),
        }
    }

    /// Starts downloading `d` into the store unless a download already runs; the receiver answers
    /// when this download ends (`None` for a download started earlier).
    fn start(&self, d: Digest, size: u64) -> Option<oneshot::Receiver<Result<(), String>>> {
        if !self
            .downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(d)
        {
            return None;
        }
        let guard = InFlight {
            set: self.downloads.clone(),
            digest: d,
        };
        let (tx, rx) = oneshot::channel();
        let swarm = self.swarm.clone();
        let deadline = std::time::Instant::now() + self.cfg.fetch_deadline;
        tokio::spawn(async move {
            let r = swarm.fetch_blob(d, size, deadline).await;
            if let Err(e) = &r {
                tracing::debug!(digest = %d, error = %e, kind = e.kind(), "mirror swarm download failed");
            }
            drop(guard);
            let _ = tx.send(r.map(|_| ()).map_err(|e| e.kind().to_owned()));
        });
        Some(rx)
    }

    /// Downloads `d` of `size` bytes (or joins the running download) and returns once the store
    /// has it complete or being written; `false` when the download failed first.
    async fn fetched(&self, d: Digest, size: u64) -> Result<bool, ProxyError> {
        if stored_size(&self.store, &d).await?.is_some() {
            return Ok(true);
        }
        if self
            .swarm
            .providers(d)
            .await
            .map_err(ProxyError::source)?
            .is_empty()
        {
            return Ok(false);
        }
        let mut done = self.start(d, size);
        loop {
            if stored_size(&self.store, &d).await?.is_some() {
                return Ok(true);
            }
            match done.as_mut().map(oneshot::Receiver::try_recv) {
                // Complete: the next look finds it.
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(_)) | Err(TryRecvError::Closed)) => {
                    return Ok(stored_size(&self.store, &d).await?.is_some());
                }
                Some(Err(TryRecvError::Empty)) => {}
                None => {
                    // Joined a download started earlier; once it ended, start our own.
                    done = self.start(d, size);
                    if done.is_some() {
                        continue;
                    }
                }
            }
            tokio::time::sleep(START_POLL).await;
        }
    }
}

#[async_trait]
impl Source for SwarmSource {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let Some(r) = request_reference(&self.cfg.default_registry, name, reference, ns) else {
            return Ok(None);
        };
        // A tag record (a puller publishes `ref` and `repo@child` records).
        let record = self
            .swarm
            .resolve_tag(&r.to_string(), self.cfg.tag_timeout)
            .await
            .map_err(ProxyError::source)?;
        if let Some(rec) = record {
            return Ok(Some(Manifest {
                digest: rec.manifest,
                media_type: rec.media_type,
                bytes: rec.bytes,
                source: SourceKind::Peer,
            }));
        }
        // A manifest by digest whose size an index named: downloaded like a blob.
        let TagOrDigest::Digest(d) = reference else {
            return Ok(None);
        };
        let size = match self.sizes.get(d, &self.store).await {
            Some(size) if size <= MANIFEST_MAX_BYTES as u64 => size,
            _ => return Ok(None),
        };
        if !self.fetched(*d, size).await? {
            return Ok(None);
        }
        // Small: wait for the whole manifest (it must hash to its digest anyway).
        while !self.store.contains(d).await {
            if stored_size(&self.store, d).await?.is_none() {
                return Ok(None);
            }
            tokio::time::sleep(START_POLL).await;
        }
        Ok(stored_manifest(&self.store, *d).await?.map(|m| Manifest {
            source: SourceKind::Peer,
            ..m
        }))
    }

    async fn blob(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        let Some(size) = self.sizes.get(digest, &self.store).await else {
            return Ok(None);
        };
        if !self.fetched(*digest, size).await? {
            return Ok(None);
        }
        let blob = stored_blob(&self.store, *digest, range, self.cfg.stall).await?;
        Ok(blob.map(|b| Blob {
            source: SourceKind::Peer,
            ..b
        }))
    }

    async fn blob_size(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        let Some(size) = self.sizes.get(digest, &self.store).await else {
            return Ok(None);
        };
        let providers = self
            .swarm
            .providers(*digest)
            .await
            .map_err(ProxyError::source)?;
        Ok((!providers.is_empty()).then_some(BlobStat {
            size,
            source: SourceKind::Peer,
        }))
    }
}
