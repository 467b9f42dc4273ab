//! The HTTP side: one handler that applies the limits, parses the raw path and answers from the
//! [`Source`]. Axum's own routing is not used for `/v2/...`, so nested names and percent-escapes
//! are handled by [`parse_v2_path`] alone and every refusal goes through the one error table.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures::TryStreamExt;
use preheat_core::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access::{Access, AccessRequest, Object};
use crate::error::ProxyError;
use crate::metrics::{Kind, Metrics, Outcome};
use crate::name::{parse_ns, parse_v2_path, RepoName, TagOrDigest, V2Path};
use crate::range::parse_range;
use crate::source::{check_manifest, Blob, Source};
use crate::ProxyConfig;

/// `Docker-Distribution-API-Version`, sent on every response.
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// `Docker-Content-Digest`.
pub const CONTENT_DIGEST_HEADER: HeaderName = HeaderName::from_static("docker-content-digest");
/// Longest request target (path and query) accepted.
pub const MAX_URI_LEN: usize = 2048;

#[derive(Clone)]
struct AppState {
    source: Arc<dyn Source>,
    cfg: Arc<ProxyConfig>,
    metrics: Metrics,
    permits: Arc<Semaphore>,
    access: Option<Arc<dyn Access>>,
}

/// The mirror's router: every path goes to one handler (no other routes are served).
pub fn router(source: Arc<dyn Source>, cfg: ProxyConfig, metrics: Metrics) -> Router {
    router_with_access(source, None, cfg, metrics)
}

/// [`router`] with an [`Access`] check asked before any source for manifests and blobs (`None`:
/// every request may read everything).
pub fn router_with_access(
    source: Arc<dyn Source>,
    access: Option<Arc<dyn Access>>,
    cfg: ProxyConfig,
    metrics: Metrics,
) -> Router {
    let permits = Arc::new(Semaphore::new(cfg.max_concurrent));
    let state = AppState {
        source,
        cfg: Arc::new(cfg),
        metrics,
        permits,
        access,
    };
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(st): State<AppState>, req: Request) -> Response {
    // The request body is never read: every served method is a read.
    let (req, _body) = req.into_parts();
    let kind = kind_of(req.uri.path());
    let mut resp = match st.permits.clone().try_acquire_owned() {
        Ok(permit) => match serve_request(&st, &req).await {
            Ok(resp) => resp.map(|body| Body::new(Guarded::new(body, permit))),
            Err(e) => reject(&st, kind, e),
        },
        Err(_) => reject(&st, kind, ProxyError::TooManyRequests),
    };
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

/// Errors raised before any source is asked.
fn reject(st: &AppState, kind: Kind, e: ProxyError) -> Response {
    st.metrics.request(kind, Outcome::Rejected);
    tracing::debug!(error = %e, kind = e.kind(), "mirror request rejected");
    e.into_response()
}

/// The metric kind of a path, from its shape alone (also for requests refused before parsing).
fn kind_of(path: &str) -> Kind {
    let Some((prefix, _)) = path.rsplit_once('/') else {
        return Kind::Other;
    };
    if prefix.ends_with("/manifests") {
        Kind::Manifest
    } else if prefix.ends_with("/blobs") {
        Kind::Blob
    } else {
        Kind::Other
    }
}

fn check_limits(cfg: &ProxyConfig, req: &Parts) -> Result<(), ProxyError> {
    let uri_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_LEN {
        return Err(ProxyError::PathTooLong { len: uri_len });
    }
    let headers = &req.headers;
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > cfg.max_headers || header_bytes > cfg.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// `Err` only for refusals before a source is asked; source outcomes are counted here.
async fn serve_request(st: &AppState, req: &Parts) -> Result<Response, ProxyError> {
    check_limits(&st.cfg, req)?;
    let method = &req.method;
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::Unsupported {
            method: method.clone(),
        });
    }
    let head = method == Method::HEAD;
    let path = parse_v2_path(req.uri.path())?;
    let ns = parse_ns(req.uri.query())?;
    let ns = ns.as_deref();
    match path {
        V2Path::Base => {
            // With an access check, the version check challenges clients that sent no
            // credentials: clients such as skopeo only send them after a challenge here (one
            // without credentials then goes on anonymously).
            if st.access.is_some() && !req.headers.contains_key(header::AUTHORIZATION) {
                return Err(ProxyError::Unauthorized);
            }
            // The version check is not a mirror hit: not counted, and not a "last success".
            let mut resp = (StatusCode::OK, "{}").into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        V2Path::Manifest { name, reference } => {
            if let TagOrDigest::Tag(tag) = &reference {
                if st.cfg.never_resolve_tags.iter().any(|t| t == tag) {
                    st.metrics.request(Kind::Manifest, Outcome::Miss);
                    return Ok(ProxyError::ManifestUnknown.into_response());
                }
            }
            check_access(st, req, &name, ns, Object::Manifest(&reference)).await?;
            Ok(manifest(st, &name, &reference, ns, head).await)
        }
        V2Path::Blob { name, digest } => {
            let range = match req.headers.get(header::RANGE) {
                Some(v) if !head => {
                    let v = v
                        .to_str()
                        .map_err(|_| ProxyError::RangeInvalid { size: None })?;
                    parse_range(v).map_err(|_| ProxyError::RangeInvalid { size: None })?
                }
                _ => None,
            };
            check_access(st, req, &name, ns, Object::Blob(&digest)).await?;
            Ok(blob(st, &name, &digest, ns, range, head).await)
        }
    }
}

/// Asks the access check, if any, with the client's `Authorization` header.
async fn check_access(
    st: &AppState,
    req: &Parts,
    name: &RepoName,
    ns: Option<&str>,
    object: Object<'_>,
) -> Result<(), ProxyError> {
    let Some(access) = &st.access else {
        return Ok(());
    };
    access
        .check(AccessRequest {
            name,
            ns,
            object,
            authorization: req.headers.get(header::AUTHORIZATION),
        })
        .await
}

/// Runs a source call under the overall resolve timeout; a timeout is a miss.
async fn resolve<T>(
    st: &AppState,
    kind: Kind,
    fut: impl std::future::Future<Output = Result<Option<T>, ProxyError>>,
) -> Result<Option<T>, ProxyError> {
    let started = Instant::now();
    let out = tokio::time::timeout(st.cfg.resolve_timeout, fut)
        .await
        .unwrap_or(Ok(None));
    st.metrics.resolved(kind, started.elapsed());
    out
}

/// A source error as a response: range errors are the client's, the rest are counted as errors.
fn source_error(st: &AppState, kind: Kind, e: ProxyError) -> Response {
    let outcome = if e.is_client_error() {
        Outcome::Rejected
    } else {
        tracing::warn!(error = %e, kind = e.kind(), "mirror source failed");
        Outcome::Error
    };
    st.metrics.request(kind, outcome);
    e.into_response()
}

async fn manifest(
    st: &AppState,
    name: &RepoName,
    reference: &TagOrDigest,
    ns: Option<&str>,
    head: bool,
) -> Response {
    let found = resolve(st, Kind::Manifest, st.source.manifest(name, reference, ns)).await;
    let m = match found {
        Ok(Some(m)) => m,
        Ok(None) => {
            st.metrics.request(Kind::Manifest, Outcome::Miss);
            return ProxyError::ManifestUnknown.into_response();
        }
        Err(e) => return source_error(st, Kind::Manifest, e),
    };
    if let Err(e) = check_manifest(reference, &m) {
        return source_error(st, Kind::Manifest, e);
    }
    let Ok(content_type) = HeaderValue::from_str(&m.media_type) else {
        return source_error(
            st,
            Kind::Manifest,
            ProxyError::source("manifest media type is not a valid header value"),
        );
    };
    st.metrics.request(Kind::Manifest, m.source.into());
    tracing::debug!(%name, digest = %m.digest, source = m.source.as_str(), head, "mirror manifest hit");
    let len = m.bytes.len() as u64;
    let body = if head {
        Body::empty()
    } else {
        st.metrics.bytes_counter(m.source).inc_by(len);
        Body::from(m.bytes)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    content_headers(h, &m.digest, len);
    resp
}

async fn blob(
    st: &AppState,
    name: &RepoName,
    digest: &Digest,
    ns: Option<&str>,
    range: Option<crate::range::RangeSpec>,
    head: bool,
) -> Response {
    if head {
        let found = resolve(st, Kind::Blob, st.source.blob_size(name, digest, ns)).await;
        return match found {
            Ok(Some(stat)) => {
                st.metrics.request(Kind::Blob, stat.source.into());
                let mut resp = Response::new(Body::empty());
                blob_headers(resp.headers_mut(), digest, stat.size);
                resp
            }
            Ok(None) => {
                st.metrics.request(Kind::Blob, Outcome::Miss);
                ProxyError::BlobUnknown.into_response()
            }
            Err(e) => source_error(st, Kind::Blob, e),
        };
    }
    let found = resolve(st, Kind::Blob, st.source.blob(name, digest, ns, range)).await;
    let Blob {
        size,
        range,
        body,
        source,
    } = match found {
        Ok(Some(b)) => b,
        Ok(None) => {
            st.metrics.request(Kind::Blob, Outcome::Miss);
            return ProxyError::BlobUnknown.into_response();
        }
        Err(e) => return source_error(st, Kind::Blob, e),
    };
    if range.is_some_and(|r| r.start > r.end || r.end >= size) {
        return source_error(
            st,
            Kind::Blob,
            ProxyError::source("source returned a range outside the blob"),
        );
    }
    st.metrics.request(Kind::Blob, source.into());
    tracing::debug!(%name, %digest, source = source.as_str(), size, ?range, "mirror blob hit");
    let counter = st.metrics.bytes_counter(source);
    let body = body.inspect_ok(move |b| {
        counter.inc_by(b.len() as u64);
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    match range {
        Some(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            blob_headers(h, digest, r.len());
            let cr = format!("bytes {}-{}/{size}", r.start, r.end);
            if let Ok(v) = HeaderValue::from_str(&cr) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        None => blob_headers(h, digest, size),
    }
    resp
}

fn content_headers(h: &mut HeaderMap, digest: &Digest, len: u64) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(CONTENT_DIGEST_HEADER, v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest, len: u64) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    content_headers(h, digest, len);
}

/// A response body that holds a concurrency permit until it is fully sent or dropped, so the
/// cap counts streaming responses, not only resolution.
struct Guarded {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(inner: Body, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
