//! Blob sizes the mirror has learned: a swarm download needs the size, and a blob request does not
//! carry it. Every manifest the mirror serves names its blobs (or child manifests) with their
//! sizes; [`Learning`] records them as manifests pass through. Image records in the store are the
//! fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use preheat_core::manifest::{parse_manifest, Manifest as Parsed};
use preheat_core::Digest;
use preheat_store::Store;
use registry_proxy::{
    Blob, BlobStat, Manifest, ProxyError, RangeSpec, RepoName, Source, TagOrDigest,
};

/// Sizes remembered at most; when full the map is emptied (it refills from the next manifests).
const MAX_SIZES: usize = 65_536;

/// digest → size, bounded; clones share it.
#[derive(Clone, Default)]
pub struct Sizes {
    map: Arc<Mutex<HashMap<Digest, u64>>>,
}

impl Sizes {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u64>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, d: Digest, size: u64) {
        let mut m = self.lock();
        if m.len() >= MAX_SIZES && !m.contains_key(&d) {
            m.clear();
        }
        m.insert(d, size);
    }

    /// Records the sizes a manifest or index names (config, layers, child manifests).
    pub fn learn(&self, m: &Manifest) {
        match parse_manifest(&m.bytes, Some(&m.media_type)) {
            Ok(Parsed::Image(img)) => {
                for desc in img.blobs() {
                    self.insert(desc.digest, desc.size);
                }
            }
            Ok(Parsed::Index(idx)) => {
                for desc in &idx.manifests {
                    self.insert(desc.digest, desc.size);
                }
            }
            Err(e) => tracing::debug!(digest = %m.digest, error = %e, "served manifest not parsed"),
        }
    }

    /// The size of `d`: learned, else from an image record of `store`.
    pub async fn get(&self, d: &Digest, store: &Store) -> Option<u64> {
        if let Some(s) = self.lock().get(d) {
            return Some(*s);
        }
        let images = store.images().await.ok()?;
        let size = images.iter().find_map(|s| {
            s.record
                .blobs
                .iter()
                .find(|(b, _)| b == d)
                .map(|(_, size)| *size)
        })?;
        self.insert(*d, size);
        Some(size)
    }
}

/// A [`Source`] that records the sizes named by every manifest `inner` serves.
pub struct Learning<S> {
    pub inner: S,
    pub sizes: Sizes,
}

#[async_trait]
impl<S: Source> Source for Learning<S> {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let m = self.inner.manifest(name, reference, ns).await?;
        if let Some(m) = &m {
            self.sizes.learn(m);
        }
        Ok(m)
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        self.inner.blob(name, digest, ns, range).await
    }

    async fn blob_size(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        self.inner.blob_size(name, digest, ns).await
    }
}
