//! The access hook: who may read a repository through the mirror. The router asks it before any
//! source for every manifest and blob request, with the client's `Authorization` header; the node
//! implements it (credentials checked against the upstream registry).

use async_trait::async_trait;
use axum::http::HeaderValue;
use preheat_core::Digest;

use crate::error::ProxyError;
use crate::name::{RepoName, TagOrDigest};

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    Manifest(&'a TagOrDigest),
    Blob(&'a Digest),
}

/// One request as the access check sees it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    pub name: &'a RepoName,
    /// The validated `ns` parameter, `None` when the client sent none.
    pub ns: Option<&'a str>,
    pub object: Object<'a>,
    /// The client's `Authorization` header, if any.
    pub authorization: Option<&'a HeaderValue>,
}

/// Decides whether a request may be served. `Err` is the answer sent instead of content:
/// [`ProxyError::Unauthorized`] (401 with a Basic challenge, so a client holding credentials for
/// the mirror sends them), or a miss (404, so the client asks the origin itself). With an access
/// check the router also answers `GET /v2/` without `Authorization` with that 401 challenge.
#[async_trait]
pub trait Access: Send + Sync + 'static {
    async fn check(&self, req: AccessRequest<'_>) -> Result<(), ProxyError>;
}
