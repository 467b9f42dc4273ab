//! Shared by the real-component tests: a `Source` over a preheat-store filled from a real
//! docker-registry, and a mirror served on a loopback port.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{ensure, Result};
use async_trait::async_trait;
use preheat_core::Digest;
use preheat_store::Store;
use preheat_testkit::image::PushedImage;
use preheat_testkit::registry::Registry as Origin;
use prometheus_client::registry::Registry;
use registry_proxy::{
    router, Blob, BlobStat, Manifest, Metrics, ProxyConfig, ProxyError, RangeSpec, RepoName,
    Source, SourceKind, TagOrDigest,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// A `Source` over a preheat-store: blobs and manifests by digest, tags from a map.
pub struct StoreSource {
    pub store: Store,
    /// `(repository, tag)` → manifest digest.
    pub tags: HashMap<(String, String), Digest>,
    pub media_types: HashMap<Digest, String>,
}

#[async_trait]
impl Source for StoreSource {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        _ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let digest = match reference {
            TagOrDigest::Digest(d) => *d,
            TagOrDigest::Tag(t) => match self.tags.get(&(name.to_string(), t.clone())) {
                Some(d) => *d,
                None => return Ok(None),
            },
        };
        let Some(media_type) = self.media_types.get(&digest) else {
            return Ok(None);
        };
        let bytes = self
            .store
            .read_small(&digest)
            .await
            .map_err(ProxyError::source)?;
        Ok(Some(Manifest {
            digest,
            media_type: media_type.clone(),
            bytes,
            source: SourceKind::Local,
        }))
    }

    async fn blob(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        let Some(size) = self
            .store
            .blob_len(digest)
            .await
            .map_err(ProxyError::source)?
        else {
            return Ok(None);
        };
        let range = range
            .map(|s| {
                s.resolve(size)
                    .ok_or(ProxyError::RangeInvalid { size: Some(size) })
            })
            .transpose()?;
        let mut file = self
            .store
            .open_blob(digest)
            .await
            .map_err(ProxyError::source)?;
        let (start, len) = range.map_or((0, size), |r| (r.start, r.len()));
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(ProxyError::source)?;
        let body = ReaderStream::with_capacity(file.take(len), 64 * 1024);
        Ok(Some(Blob {
            size,
            range,
            body: Box::pin(body),
            source: SourceKind::Local,
        }))
    }

    async fn blob_size(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        let size = self
            .store
            .blob_len(digest)
            .await
            .map_err(ProxyError::source)?;
        Ok(size.map(|size| BlobStat {
            size,
            source: SourceKind::Local,
        }))
    }
}

/// Copies an image's manifest and blobs from the origin into the store.
pub async fn copy_into_store(
    origin: &Origin,
    store: &Store,
    img: &PushedImage,
    src: &mut StoreSource,
    tag: &str,
) -> Result<()> {
    store
        .put_small(img.manifest_digest, &img.manifest_bytes)
        .await?;
    for (digest, size) in img.blobs() {
        let path = format!("/v2/{}/blobs/{digest}", img.repository);
        let bytes = origin
            .request(reqwest::Method::GET, &path)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        ensure!(bytes.len() as u64 == size, "blob {digest} size");
        let mut w = store.writer(digest, size).await?;
        w.write(&bytes).await?;
        w.finish().await?;
    }
    src.tags.insert(
        (img.repository.clone(), tag.to_owned()),
        img.manifest_digest,
    );
    src.media_types
        .insert(img.manifest_digest, img.manifest_media_type.clone());
    Ok(())
}

impl StoreSource {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tags: HashMap::new(),
            media_types: HashMap::new(),
        }
    }
}

/// A mirror on 127.0.0.1:<free port>, serving until dropped.
pub struct Mirror {
    pub addr: SocketAddr,
    pub registry: Registry,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Mirror {
    pub async fn start(source: Arc<dyn Source>, cfg: ProxyConfig) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut registry = Registry::default();
        let app = router(source, cfg, Metrics::new(&mut registry));
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            registry,
            task,
        })
    }

    /// The value of one metric sample line, e.g. `mirror_requests_total{kind="blob",result="local"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}
