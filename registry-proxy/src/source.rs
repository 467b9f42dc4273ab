//! What the mirror serves from: the [`Source`] trait and the [`Chain`] combinator.
//!
//! ```text
//!  router ──► Chain ──► local store ─┐ each link bounded by the per-source resolve timeout;
//!                  ├──► swarm ───────┤ a miss, an error or a timeout moves on to the next link;
//!                  └──► upstream ────┘ the first hit answers, tagged with its SourceKind
//! ```
//!
//! Invariants: a source never buffers a whole blob (bodies are streams the client pulls); a
//! [`Manifest`] fetched by digest hashes to that digest ([`check_manifest`]); the chain answers
//! `None` (404, so containerd falls back to upstream itself) when no link hits in time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use preheat_core::Digest;

use crate::error::ProxyError;
use crate::name::{RepoName, TagOrDigest};
use crate::range::{ByteRange, RangeSpec};

/// Largest manifest the mirror serves (distribution's limit).
pub const MANIFEST_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Which kind of source answered: the `source` / `result` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// The node's own store.
    Local,
    /// Another node, through the swarm.
    Peer,
    /// The origin registry (through the single-puller election).
    Upstream,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::Upstream => "upstream",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manifest, byte-exact as its registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// sha256 of `bytes`.
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub source: SourceKind,
}

/// The streamed content of a blob (or of a range of it). The stream must yield exactly the bytes
/// announced (`range.len()` or `size`); an error mid-stream aborts the response.
pub type BlobBody = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A blob being served.
pub struct Blob {
    /// Size of the whole blob.
    pub size: u64,
    /// `Some` when `body` holds only this range (206); `None` when it holds the whole blob (200,
    /// also allowed when a range was asked for).
    pub range: Option<ByteRange>,
    pub body: BlobBody,
    pub source: SourceKind,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("size", &self.size)
            .field("range", &self.range)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Size and origin of a blob, for `HEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    pub source: SourceKind,
}

/// Where manifests and blobs come from. `Ok(None)` is a miss; `ns` is the upstream registry host
/// from containerd's `?ns=` parameter (already validated), `None` when the client sent none.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError>;

    /// The blob, or the part selected by `range`. A range that does not fit the blob is
    /// [`ProxyError::RangeInvalid`] (use [`RangeSpec::resolve`]).
    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError>;

    async fn blob_size(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError>;
}

/// Checks what a source returned for `reference`: size cap, `digest` is the hash of the bytes,
/// and equals the requested digest when fetched by digest.
pub fn check_manifest(reference: &TagOrDigest, m: &Manifest) -> Result<(), ProxyError> {
    if m.bytes.len() > MANIFEST_MAX_BYTES {
        return Err(ProxyError::ManifestTooLarge {
            size: m.bytes.len(),
        });
    }
    let actual = Digest::of(&m.bytes);
    let expected = match reference {
        TagOrDigest::Digest(d) => *d,
        TagOrDigest::Tag(_) => m.digest,
    };
    if actual != expected || actual != m.digest {
        return Err(ProxyError::ManifestMismatch { expected, actual });
    }
    Ok(())
}

/// Tries sources in order, each bounded by `timeout`; the first hit wins and is tagged with the
/// link's [`SourceKind`]. Misses, errors and timeouts fall through to the next link. A
/// [`ProxyError::RangeInvalid`] is an answer (the blob exists), not a failure.
#[derive(Clone)]
pub struct Chain {
    links: Vec<Link>,
    timeout: Duration,
}

#[derive(Clone)]
struct Link {
    kind: SourceKind,
    source: Arc<dyn Source>,
    /// Overrides the chain's timeout for this link.
    timeout: Option<Duration>,
}

impl Chain {
    /// An empty chain (always a miss) with a per-source resolve `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            links: Vec::new(),
            timeout,
        }
    }

    /// Appends a link bounded by the chain's timeout.
    pub fn with(mut self, kind: SourceKind, source: Arc<dyn Source>) -> Self {
        self.links.push(Link {
            kind,
            source,
            timeout: None,
        });
        self
    }

    /// Appends a link with its own resolve timeout (e.g. short for the swarm, longer upstream).
    pub fn with_timeout(
        mut self,
        kind: SourceKind,
        source: Arc<dyn Source>,
        timeout: Duration,
    ) -> Self {
        self.links.push(Link {
            kind,
            source,
            timeout: Some(timeout),
        });
        self
    }

    /// Appends every link of `other`, each keeping the timeout it had there.
    pub fn then(mut self, other: &Chain) -> Self {
        for link in &other.links {
            self.links.push(Link {
                timeout: Some(link.timeout.unwrap_or(other.timeout)),
                ..link.clone()
            });
        }
        self
    }

    /// Runs `f` against each link in order until one hits.
    async fn first_hit<'a, T, F>(
        &'a self,
        what: &'static str,
        f: F,
    ) -> Result<Option<T>, ProxyError>
    where
        F: Fn(
            &'a dyn Source,
            SourceKind,
        ) -> futures::future::BoxFuture<'a, Result<Option<T>, ProxyError>>,
    {
        for link in &self.links {
            let (kind, timeout) = (link.kind, link.timeout.unwrap_or(self.timeout));
            match tokio::time::timeout(timeout, f(link.source.as_ref(), kind)).await {
                Ok(Ok(Some(hit))) => return Ok(Some(hit)),
                Ok(Ok(None)) => {}
                Ok(Err(e @ ProxyError::RangeInvalid { .. })) => return Err(e),
                Ok(Err(e)) => {
                    tracing::warn!(source = kind.as_str(), what, error = %e, kind = e.kind(), "mirror source failed");
                }
                Err(_) => {
                    tracing::debug!(source = kind.as_str(), what, "mirror source timed out");
                }
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Source for Chain {
    async fn manifest(
        &self,
        name: &RepoName,
        reference: &TagOrDigest,
        ns: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        self.first_hit("manifest", |s, kind| {
            Box::pin(async move {
                let Some(mut m) = s.manifest(name, reference, ns).await? else {
                    return Ok(None);
                };
                check_manifest(reference, &m)?;
                m.source = kind;
                Ok(Some(m))
            })
        })
        .await
    }

    async fn blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
        range: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        self.first_hit("blob", |s, kind| {
            Box::pin(async move {
                let blob = s.blob(name, digest, ns, range).await?;
                Ok(blob.map(|b| Blob { source: kind, ..b }))
            })
        })
        .await
    }

    async fn blob_size(
        &self,
        name: &RepoName,
        digest: &Digest,
        ns: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        self.first_hit("blob_size", |s, kind| {
            Box::pin(async move {
                let stat = s.blob_size(name, digest, ns).await?;
                Ok(stat.map(|b| BlobStat { source: kind, ..b }))
            })
        })
        .await
    }
}
