//! [`MemorySource`]: a [`Source`] over manifests and blobs held in memory — for small content
//! (tests, pinned manifests); large blobs belong in the store. Bodies are still streamed in
//! bounded pieces, as every source must.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use preheat_core::Digest;

use crate::error::ProxyError;
use crate::name::{RepoName, TagOrDigest};
use crate::range::RangeSpec;
use crate::source::{Blob, BlobStat, Manifest, Source, SourceKind};

/// Size of the pieces a [`MemorySource`] body is streamed in.
const PIECE: usize = 64 * 1024;

#[derive(Default)]
struct Content {
    /// `(repository, tag)` → manifest digest.
    tags: HashMap<(String, String), Digest>,
    /// digest → (media type, bytes).
    manifests: HashMap<Digest, (String, Bytes)>,
    blobs: HashMap<Digest, Bytes>,
}

/// Manifests and blobs in memory, answered for any repository name and `ns` (tags are per
/// repository). Reports itself as [`SourceKind::Local`].
#[derive(Default)]
pub struct MemorySource {
    content: Mutex<Content>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a manifest, tagged `tag` in `repository` when given; returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Bytes,
    ) -> Digest {
        let digest = Digest::of(&bytes);
        let mut c = self.content.lock().unwrap_or_else(PoisonError::into_inner);
        c.manifests.insert(digest, (media_type.to_owned(), bytes));
        if let Some(tag) = tag {
            c.tags
                .insert((repository.to_owned(), tag.to_owned()), digest);
        }
        digest
    }

    /// Adds a blob; returns its digest.
    pub fn put_blob(&self, bytes: Bytes) -> Digest {
        let digest = Digest::of(&bytes);
        let mut c = self.content.lock().unwrap_or_else(PoisonError::into_inner);
        c.blobs.insert(digest, bytes);
        digest
    }

    fn blob_bytes(&self, digest: &Digest) -> Option<Bytes> {
        let c = self.content.lock().unwrap_or_else(PoisonError::into_inner);
        c.blobs.get(digest).cloned()
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        _ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let c = self.content.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = match reference {
            TagOrDigest::Digest(d) => Some(*d),
            TagOrDigest::Tag(t) => c.tags.get(&(name.as_str().to_owned(), t.clone())).copied(),
        };
        Ok(digest.and_then(|digest| {
            c.manifests
                .get(&digest)
                .map(|(media_type, bytes)| Manifest {
                    digest,
                    media_type: media_type.clone(),
                    bytes: bytes.clone(),
                    source: SourceKind::Local,
                })
        }))
    }

    async fn blob(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        let Some(bytes) = self.blob_bytes(digest) else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        let range = match range {
            Some(spec) => Some(
                spec.resolve(size)
                    .ok_or(ProxyError::RangeInvalid { size: Some(size) })?,
            ),
            None => None,
        };
        let part = match range {
            Some(r) => {
                // A resolved range lies within bytes.len(), so both ends fit in usize.
                let start = usize::try_from(r.start).unwrap_or(usize::MAX);
                let end = usize::try_from(r.end).unwrap_or(usize::MAX);
                bytes.slice(start..=end)
            }
            None => bytes,
        };
        let pieces: Vec<Result<Bytes, std::io::Error>> = (0..part.len())
            .step_by(PIECE)
            .map(|i| Ok(part.slice(i..(i + PIECE).min(part.len()))))
            .collect();
        Ok(Some(Blob {
            size,
            range,
            body: Box::pin(futures::stream::iter(pieces)),
            source: SourceKind::Local,
        }))
    }

    async fn blob_size(
        &self,
        _name: &RepoName,
        digest: &Digest,
        _ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        Ok(self.blob_bytes(digest).map(|b| BlobStat {
            size: b.len() as u64,
            source: SourceKind::Local,
        }))
    }
}
