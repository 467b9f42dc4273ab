//! The upstream registry as a mirror [`Source`], through the single-puller election: a manifest
//! request starts a background [`UpstreamFetch`] of the image (the agent's `ImageFetcher`: swarm
//! tag record or registry, then one registry puller per image in the cluster, the others follow
//! through the swarm), and is answered from the store as soon as the fetch has recorded the
//! manifest there. Blob requests of a repository with a fetch running wait until the fetch opens
//! the blob's writer and then stream it as it is written. [`Prefetching`] starts the fetch as soon
//! as the store misses a manifest, so it overlaps the swarm lookup.
//!
//! Invariants: at most `max_fetches` background fetches; one per reference; a fetch runs to its end
//! even when the client gave up (the next pull finds the image stored); nothing is served that the
//! store does not hold (so every byte passed the store's checks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;
use registry_proxy::{
    Blob, BlobStat, BoxError, Chain, Manifest, ProxyError, RangeSpec, RepoName, Source, SourceKind,
    TagOrDigest,
};

use super::local::{request_reference, stored_blob, stored_manifest, stored_size, tagged};
use crate::fetch::ImageFetcher;
use crate::pull::NoProgress;

/// Re-check interval while a fetch has not stored what a request waits for (the store has no
/// notification for manifests and new writers).
const POLL: Duration = Duration::from_millis(25);

/// Gets an image onto this node: its manifests recorded in the store first, then its blobs, each
/// blob's writer opened before its bytes arrive. The mirror's wiring point for the election.
#[async_trait]
pub trait UpstreamFetch: Send + Sync + 'static {
    async fn fetch(&self, reference: &Reference) -> Result<(), BoxError>;
}

#[async_trait]
impl UpstreamFetch for ImageFetcher {
    async fn fetch(&self, reference: &Reference) -> Result<(), BoxError> {
        ImageFetcher::fetch(self, reference, Arc::new(NoProgress))
            .await
            .map(|_| ())
            .map_err(Into::into)
    }
}

/// Settings of [`UpstreamSource`].
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Registry of requests without `ns`.
    pub default_registry: String,
    /// Background fetches at most; further manifest requests miss.
    pub max_fetches: usize,
    /// A body that gets no new chunk for this long is aborted.
    pub stall: Duration,
}

/// Serves what background fetches bring into the store.
pub struct UpstreamSource {
    store: Store,
    fetcher: Arc<dyn UpstreamFetch>,
    cfg: UpstreamConfig,
    /// Running fetches: canonical reference → repository (`registry/name`).
    running: Arc<Mutex<HashMap<String, String>>>,
}

struct Running {
    map: Arc<Mutex<HashMap<String, String>>>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl UpstreamSource {
    pub fn new(store: Store, fetcher: Arc<dyn UpstreamFetch>, cfg: UpstreamConfig) -> Self {
        Self {
            store,
            fetcher,
            cfg,
            running: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts fetching `r` unless it is being fetched; `false` when at the cap.
    fn start(&self, r: &Reference) -> bool {
        let key = r.to_string();
        {
            let mut running = self.lock();
            if running.contains_key(&key) {
                return true;
            }
            if running.len() >= self.cfg.max_fetches {
                tracing::debug!(reference = %key, "mirror upstream fetches at their cap");
                return false;
            }
            running.insert(key.clone(), r.name());
        }
        let guard = Running {
            map: self.running.clone(),
            key,
        };
        let fetcher = self.fetcher.clone();
        let r = r.clone();
        tokio::spawn(async move {
            match fetcher.fetch(&r).await {
                Ok(()) => tracing::debug!(reference = %r, "mirror upstream fetch done"),
                Err(e) => {
                    tracing::warn!(reference = %r, error = %e, "mirror upstream fetch failed")
                }
            }
            drop(guard);
        });
        true
    }

    /// Starts the background fetch a manifest request names (if the cap allows), without waiting.
    pub fn prefetch(&self, name: &RepoName, reference: &TagOrDigest, ns: Option<&str>) {
        if let Some(r) = request_reference(&self.cfg.default_registry, name, reference, ns) {
            self.start(&r);
        }
    }

    fn is_running(&self, reference: &str) -> bool {
        self.lock().contains_key(reference)
    }

    fn repo_running(&self, repo: &str) -> bool {
        self.lock().values().any(|v| v == repo)
    }

    /// Waits while `running` says a fetch may still bring what `look` looks for.
    async fn wait_for<T, F, Fut>(
        &self,
        running: impl Fn() -> bool,
        look: F,
    ) -> Result<Option<T>, ProxyError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ProxyError>>,
    {
        loop {
            let was_running = running();
            if let Some(hit) = look().await? {
                return Ok(Some(hit));
            }
            if !was_running {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn repo(&self, name: &RepoName, ns: Option<&str>) -> String {
        format!("{}/{name}", ns.unwrap_or(&self.cfg.default_registry))
    }
}

#[async_trait]
impl Source for UpstreamSource {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let Some(r) = request_reference(&self.cfg.default_registry, name, reference, ns) else {
            return Ok(None);
        };
        if !self.start(&r) {
            return Ok(None);
        }
        let key = r.to_string();
        let store = &self.store;
        let found = self
            .wait_for(
                || self.is_running(&key),
                || async {
                    let d = match reference {
                        TagOrDigest::Digest(d) => store.contains(d).await.then_some(*d),
                        TagOrDigest::Tag(_) => tagged(store, &r).await?,
                    };
                    match d {
                        Some(d) => stored_manifest(store, d).await,
                        None => Ok(None),
                    }
                },
            )
            .await?;
        Ok(found.map(|m| Manifest {
            source: SourceKind::Upstream,
            ..m
        }))
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        let repo = self.repo(name, ns);
        let found = self
            .wait_for(
                || self.repo_running(&repo),
                || stored_blob(&self.store, *digest, range, self.cfg.stall),
            )
            .await?;
        Ok(found.map(|b| Blob {
            source: SourceKind::Upstream,
            ..b
        }))
    }

    async fn blob_size(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        let repo = self.repo(name, ns);
        let found = self
            .wait_for(
                || self.repo_running(&repo),
                || stored_size(&self.store, digest),
            )
            .await?;
        Ok(found.map(|size| BlobStat {
            size,
            source: SourceKind::Upstream,
        }))
    }
}

/// The mirror's source with upstream fetches: a manifest the store does not have starts the
/// background fetch at once, while the swarm is still asked (`rest`), so the fetch's own tag
/// lookup and registry round trip overlap the swarm's; blobs go through `full`.
pub struct Prefetching {
    /// The store link alone.
    pub local: Arc<dyn Source>,
    pub upstream: Arc<UpstreamSource>,
    /// Every link after the store (swarm, upstream).
    pub rest: Chain,
    /// Every link.
    pub full: Chain,
}

#[async_trait]
impl Source for Prefetching {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        if let Some(m) = self.local.manifest(name, reference, ns).await? {
            return Ok(Some(m));
        }
        self.upstream.prefetch(name, reference, ns);
        self.rest.manifest(name, reference, ns).await
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        self.full.blob(name, digest, ns, range).await
    }

    async fn blob_size(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        self.full.blob_size(name, digest, ns).await
    }
}
