//! Node-local, read-only OCI distribution v2 registry mirror of image-preheat, for containerd's
//! `hosts.toml` mirrors (and Docker's `registry-mirrors` for Docker Hub).
//!
//! ```text
//!  containerd ──GET /v2/<name>/{manifests,blobs}/<ref>?ns=<registry>──► serve (connection cap,
//!                                               header read timeout) ──► router
//!     router: concurrency permit (else 429) ─► size limits ─► method (else 405) ─► parse path
//!          ─► Source (the node composes a Chain: local store → swarm → upstream, each with a
//!             resolve timeout) ─► headers + streamed body, or 404 so containerd goes upstream
//! ```
//!
//! Invariants:
//! - The router only sees the [`Source`] trait, never the swarm or the store.
//! - Every refusal is a [`ProxyError`], mapped to status and OCI code by one table; no input
//!   panics or answers 5xx (only a failing source can give 502).
//! - Memory per request is bounded: bodies are streams pulled by the client; a concurrency permit
//!   is held until the body is sent, and further requests get 429 instead of queueing.
//! - Manifests are served byte-exact and only if they hash to their digest.
//! - Implementations of [`Source`] are checked by [`conformance::check_source`].

mod access;
pub mod conformance;
mod error;
mod memory;
mod metrics;
mod name;
mod range;
mod router;
mod server;
mod source;

use std::time::Duration;

pub use access::{Access, AccessRequest, Object};
pub use error::{BoxError, ProxyError};
pub use memory::MemorySource;
pub use metrics::Metrics;
pub use name::{parse_v2_path, RepoName, TagOrDigest, V2Path, NAME_MAX_LEN};
pub use range::{parse_range, ByteRange, RangeSpec, RangeSyntaxError};
pub use router::{
    router, router_with_access, API_VERSION_HEADER, CONTENT_DIGEST_HEADER, MAX_URI_LEN,
};
pub use server::{serve, serve_app};
pub use source::{
    check_manifest, Blob, BlobBody, BlobStat, Chain, Manifest, Source, SourceKind,
    MANIFEST_MAX_BYTES,
};

/// Settings of the mirror.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Longest wait for the source to answer (headers, not the whole body); then 404.
    pub resolve_timeout: Duration,
    /// Requests served at once (bodies included); more get 429 `TOOMANYREQUESTS`.
    pub max_concurrent: usize,
    /// Tags never resolved by the mirror (e.g. `latest`): 404 `MANIFEST_UNKNOWN`, so the runtime
    /// asks the origin. Digests are unaffected.
    pub never_resolve_tags: Vec<String>,
    /// Cap on the number of request headers.
    pub max_headers: usize,
    /// Cap on the summed size of request header names and values.
    pub max_header_bytes: usize,
    /// Open connections at most ([`serve`] only); more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a connection may take to send a request head ([`serve`] only).
    pub header_read_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            resolve_timeout: Duration::from_secs(3),
            max_concurrent: 64,
            never_resolve_tags: Vec::new(),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}
