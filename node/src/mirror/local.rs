//! The local store as a mirror [`Source`]: manifests byte-exact by digest, tags from the store's
//! image records, blobs complete or still being written (streamed as their chunks are stored).
//!
//! A partial blob nobody writes (left for a later resume) is a miss: its missing chunks would never
//! come, and the next link (the swarm) resumes it instead.

use std::time::Duration;

use async_trait::async_trait;
use preheat_core::manifest::parse_manifest;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{Store, StoreError};
use registry_proxy::{
    Blob, BlobStat, Manifest, ProxyError, RangeSpec, RepoName, Source, SourceKind, TagOrDigest,
    MANIFEST_MAX_BYTES,
};

use super::stream;

/// The canonical reference a request names: `ns` (or `default_registry`) / `name` : tag or
/// @digest; `None` when it does not parse (the request then misses).
pub fn request_reference(
    default_registry: &str,
    name: &RepoName,
    reference: &TagOrDigest,
    ns: Option<&str>,
) -> Option<Reference> {
    let registry = ns.unwrap_or(default_registry);
    let s = match reference {
        TagOrDigest::Tag(t) => format!("{registry}/{name}:{t}"),
        TagOrDigest::Digest(d) => format!("{registry}/{name}@{d}"),
    };
    s.parse().ok()
}

/// Serves what the node's store holds.
#[derive(Clone)]
pub struct StoreSource {
    store: Store,
    default_registry: String,
    stall: Duration,
}

impl StoreSource {
    /// `default_registry` is the registry of requests without `ns`; a blob being written whose
    /// body gets no new chunk for `stall` is aborted.
    pub fn new(store: Store, default_registry: impl Into<String>, stall: Duration) -> Self {
        Self {
            store,
            default_registry: default_registry.into(),
            stall,
        }
    }
}

/// The manifest the store's image record for `reference` names (its index when it has one).
pub async fn tagged(store: &Store, reference: &Reference) -> Result<Option<Digest>, ProxyError> {
    let canonical = reference.to_string();
    let images = store.images().await.map_err(ProxyError::source)?;
    Ok(images
        .into_iter()
        .find(|s| s.record.reference == canonical)
        .map(|s| s.record.index.unwrap_or(s.record.manifest)))
}

/// Manifest `d` from `store`, if it holds one (a stored blob that parses as a manifest or index).
pub async fn stored_manifest(store: &Store, d: Digest) -> Result<Option<Manifest>, ProxyError> {
    match store.blob_len(&d).await.map_err(ProxyError::source)? {
        Some(len) if len <= MANIFEST_MAX_BYTES as u64 => {}
        _ => return Ok(None),
    }
    let bytes = match store.read_small(&d).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(ProxyError::source(e)),
    };
    // The recorded media type first (the registry's Content-Type), else the document's own.
    let recorded = store
        .images()
        .await
        .map_err(ProxyError::source)?
        .into_iter()
        .find(|s| s.record.manifest == d)
        .map(|s| s.record.manifest_media_type);
    let media_type = match recorded {
        Some(mt) => mt,
        None => match parse_manifest(&bytes, None) {
            Ok(m) => m.media_type().to_owned(),
            // A config or other small blob: not a manifest.
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(Manifest {
        digest: d,
        media_type,
        bytes,
        source: SourceKind::Local,
    }))
}

/// Blob `d` from `store`: the complete blob, or a partial one some writer is filling. Its size
/// comes from the store; `range` is resolved against it.
pub async fn stored_blob(
    store: &Store,
    d: Digest,
    range: Option<RangeSpec>,
    stall: Duration,
) -> Result<Option<Blob>, ProxyError> {
    let Some(size) = stored_size(store, &d).await? else {
        return Ok(None);
    };
    let range = range
        .map(|s| {
            s.resolve(size)
                .ok_or(ProxyError::RangeInvalid { size: Some(size) })
        })
        .transpose()?;
    if size == 0 {
        return Ok(Some(Blob {
            size,
            range: None,
            body: Box::pin(futures::stream::empty()),
            source: SourceKind::Local,
        }));
    }
    let (start, end) = range.map_or((0, size - 1), |r| (r.start, r.end));
    Ok(Some(Blob {
        size,
        range,
        body: stream::body(store.clone(), d, start, end, stall),
        source: SourceKind::Local,
    }))
}

/// Size of blob `d` when it is complete or being written.
pub async fn stored_size(store: &Store, d: &Digest) -> Result<Option<u64>, ProxyError> {
    if let Some(size) = store.blob_len(d).await.map_err(ProxyError::source)? {
        return Ok(Some(size));
    }
    if !store.being_written(d) {
        return Ok(None);
    }
    let partial = store.partial(d).await.map_err(ProxyError::source)?;
    Ok(partial.map(|p| p.layout.size))
}

#[async_trait]
impl Source for StoreSource {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let d = match reference {
            TagOrDigest::Digest(d) => *d,
            TagOrDigest::Tag(_) => {
                let Some(r) = request_reference(&self.default_registry, name, reference, ns) else {
                    return Ok(None);
                };
                match tagged(&self.store, &r).await? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            }
        };
        stored_manifest(&self.store, d).await
    }

    async fn blob(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        stored_blob(&self.store, *digest, range, self.stall).await
    }

    async fn blob_size(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        Ok(stored_size(&self.store, digest)
            .await?
            .map(|size| BlobStat {
                size,
                source: SourceKind::Local,
            }))
    }
}
