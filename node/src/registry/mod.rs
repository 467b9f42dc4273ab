//! Registry client: resolves references to byte-exact, digest-verified manifests and streams blobs.
//!
//! ```text
//!  Reference ─► GET /v2/<repo>/manifests/<tag|digest> ─► index? ─► select platform ─► child manifest
//!                                                                         │
//!  (digest, offset) ─► GET /v2/<repo>/blobs/<digest> (Range: bytes=<offset>-) ─► BlobStream of Bytes
//! ```
//!
//! Invariants: manifest bytes are returned exactly as served and their sha256 matches the reference digest
//! and `Docker-Content-Digest` when either is given; manifests are capped at 4 MiB, blobs are never buffered
//! whole. Plain HTTP is used only for hosts listed as insecure. Requests are retried on 429, 5xx and
//! connection errors (see [`RetryPolicy`]); a refused cached token is renewed once.

mod auth;
pub mod credentials;
mod error;
mod retry;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use preheat_core::manifest::{parse_manifest, select_platform, ImageManifest, Manifest, Platform};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER,
};
use reqwest::{RequestBuilder, Response, StatusCode};

pub use credentials::{Credential, DockerConfig};
pub use error::RegistryError;
pub use retry::{parse_retry_after, RetryPolicy};

use auth::Authenticator;

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No bytes for this long on an open connection counts as a connection failure (and is retried).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("image-preheat/", env!("CARGO_PKG_VERSION"));

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries spoken to over plain HTTP: `host:port` (that port) or `host` (any port).
    pub insecure: Vec<String>,
    /// Extra PEM CA certificates trusted for TLS, in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// A Docker `config.json` with credentials; anonymous access when `None`.
    pub docker_config: Option<PathBuf>,
    /// The platform chosen from multi-platform indexes.
    pub platform: Platform,
    pub retry: RetryPolicy,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            docker_config: None,
            platform: Platform::host(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A manifest or index exactly as the registry served it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// sha256 of `bytes`, verified against the reference digest and `Docker-Content-Digest` when given.
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A reference resolved to one image manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The index or manifest list, when the reference named one.
    pub index: Option<RawManifest>,
    pub manifest: RawManifest,
    pub image: ImageManifest,
    /// The platform selected from the index (`None` for a single-platform reference).
    pub platform: Option<Platform>,
}

/// Whether `host` (`name` or `name:port`) is listed in `insecure` (`name:port` exactly, or `name` for all ports).
pub fn is_insecure(insecure: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = host_without_port(&host);
    insecure.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let entry = entry
            .strip_prefix("http://")
            .or_else(|| entry.strip_prefix("https://"))
            .unwrap_or(&entry)
            .trim_end_matches('/');
        entry == host || (entry == name && host_without_port(entry) == entry)
    })
}

/// `a:5000` → `a`, `[::1]:5000` → `[::1]`, `a` → `a`.
fn host_without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// Where one repository's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The reference's registry (the credential key), e.g. `docker.io`.
    pub registry: String,
    /// The API host, e.g. `registry-1.docker.io` or `127.0.0.1:5000`.
    pub host: String,
    pub repository: String,
    pub scheme: &'static str,
}

impl Endpoint {
    fn url(&self, tail: &str) -> String {
        format!(
            "{}://{}/v2/{}/{}",
            self.scheme, self.host, self.repository, tail
        )
    }
}

/// A blob's bytes from the requested offset on, as they arrive.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
    offset: u64,
    remaining: Option<u64>,
}

impl BlobStream {
    /// The blob offset of the first byte this stream yields.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of bytes the server announced from `offset` on, if it did.
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("offset", &self.offset)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// A registry client shared by all pulls (cheap to share behind an `Arc`).
pub struct RegistryClient {
    cfg: RegistryConfig,
    http: reqwest::Client,
    auth: Authenticator,
}

impl RegistryClient {
    /// Builds the client: reads the CA files and the Docker config, installs the ring crypto provider.
    pub fn new(cfg: RegistryConfig) -> Result<Self, RegistryError> {
        // Fails only when a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        let mut oci_roots = Vec::new();
        for path in &cfg.ca_files {
            let pem = std::fs::read(path).map_err(|e| RegistryError::Config {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Config {
                    path: path.clone(),
                    reason: format!("not a pem certificate bundle: {e}"),
                })?;
            if certs.is_empty() {
                return Err(RegistryError::Config {
                    path: path.clone(),
                    reason: "no certificate in the file".into(),
                });
            }
            roots.extend(certs);
            oci_roots.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem,
            });
        }
        let creds = match &cfg.docker_config {
            Some(path) => DockerConfig::load(path)?,
            None => DockerConfig::default(),
        };
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|source| RegistryError::Client { source })?;
        let auth = Authenticator::new(creds, oci_roots, http.clone());
        Ok(Self { cfg, http, auth })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Fetches the manifest `r` names; for an index, selects the configured platform and fetches its manifest.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved, RegistryError> {
        let ep = self.endpoint(r);
        let (raw, manifest) = self.fetch_manifest(&ep, r, r.digest().copied()).await?;
        let index = match manifest {
            Manifest::Image(image) => {
                return Ok(Resolved {
                    index: None,
                    manifest: raw,
                    image,
                    platform: None,
                })
            }
            Manifest::Index(index) => index,
        };
        let want = &self.cfg.platform;
        let desc = select_platform(&index, want).ok_or_else(|| RegistryError::NoPlatform {
            reference: r.to_string(),
            platform: want.to_string(),
            available: available_platforms(&index.manifests),
        })?;
        let child_ref = r.with_digest(desc.digest);
        let platform = desc.platform.clone();
        let (child_raw, child) = self
            .fetch_manifest(&ep, &child_ref, Some(desc.digest))
            .await?;
        match child {
            Manifest::Image(image) => Ok(Resolved {
                index: Some(raw),
                manifest: child_raw,
                image,
                platform,
            }),
            Manifest::Index(_) => Err(RegistryError::Unsupported {
                reference: child_ref.to_string(),
                reason: "an index nested in an index",
            }),
        }
    }

    /// Streams blob `d` of `r`'s repository from byte `offset` on. The request is retried per the policy;
    /// failures while reading the stream are the caller's to retry (from its new offset).
    pub async fn blob_stream(
        &self,
        r: &Reference,
        d: &Digest,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let ep = self.endpoint(r);
        let url = ep.url(&format!("blobs/{d}"));
        let resp = self
            .retrying(&ep, || async {
                let resp = self
                    .send_once(&ep, |http| {
                        let req = http.get(&url);
                        if offset > 0 {
                            req.header(RANGE, format!("bytes={offset}-"))
                        } else {
                            req
                        }
                    })
                    .await?;
                match resp.status() {
                    StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(resp),
                    StatusCode::NOT_FOUND => Err(RegistryError::BlobNotFound {
                        reference: r.to_string(),
                        digest: *d,
                    }),
                    status => Err(status_error(
                        &ep,
                        status,
                        resp.headers(),
                        format!("blob {d}"),
                    )),
                }
            })
            .await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        if partial {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start.is_some_and(|s| s != offset) {
                return Err(RegistryError::Unsupported {
                    reference: r.to_string(),
                    reason: "the registry answered a range request with another range",
                });
            }
        }
        let mut skip = if partial { 0 } else { offset };
        let remaining = resp.content_length().map(|len| len.saturating_sub(skip));
        let host = ep.host.clone();
        let inner = resp
            .bytes_stream()
            .map_err(move |source| RegistryError::Transport {
                registry: host.clone(),
                source,
            })
            .try_filter_map(move |mut bytes| {
                if skip > 0 {
                    let n = usize::try_from(skip).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = bytes.slice(n..);
                    skip -= n as u64;
                }
                futures::future::ready(Ok((!bytes.is_empty()).then_some(bytes)))
            });
        Ok(BlobStream {
            inner: Box::pin(inner),
            offset,
            remaining,
        })
    }

    fn endpoint(&self, r: &Reference) -> Endpoint {
        let host = r.api_host().to_string();
        let scheme = if is_insecure(&self.cfg.insecure, &host)
            || is_insecure(&self.cfg.insecure, r.registry())
        {
            "http"
        } else {
            "https"
        };
        Endpoint {
            registry: r.registry().to_string(),
            host,
            repository: r.repository().to_string(),
            scheme,
        }
    }

    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        r: &Reference,
        expected: Option<Digest>,
    ) -> Result<(RawManifest, Manifest), RegistryError> {
        let url = ep.url(&format!("manifests/{}", r.tag_or_digest()));
        let (bytes, content_type, header_digest) = self
            .retrying(ep, || async {
                let resp = self
                    .send_once(ep, |http| http.get(&url).header(ACCEPT, MANIFEST_ACCEPT))
                    .await?;
                match resp.status() {
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND => {
                        return Err(RegistryError::NotFound {
                            reference: r.to_string(),
                        })
                    }
                    status => {
                        return Err(status_error(
                            ep,
                            status,
                            resp.headers(),
                            format!("manifest {r}"),
                        ))
                    }
                }
                let headers = resp.headers();
                let content_type = header_str(headers, CONTENT_TYPE.as_str());
                let header_digest = header_str(headers, "docker-content-digest");
                let bytes =
                    read_capped(resp, MAX_MANIFEST_BYTES, &ep.host, &format!("manifest {r}"))
                        .await?;
                Ok((bytes, content_type, header_digest))
            })
            .await?;
        let digest = Digest::of(&bytes);
        let claimed = expected.or_else(|| header_digest.as_deref().and_then(|h| h.parse().ok()));
        if let Some(want) = claimed {
            if want != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {r}"),
                    expected: want,
                    actual: digest,
                });
            }
        }
        let content_type =
            content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_string());
        let manifest = parse_manifest(&bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                reference: r.to_string(),
                source,
            }
        })?;
        let media_type = match &manifest {
            Manifest::Image(m) => m.media_type.clone(),
            Manifest::Index(i) => i.media_type.clone(),
        };
        Ok((
            RawManifest {
                digest,
                media_type,
                bytes,
            },
            manifest,
        ))
    }

    /// Runs `op` until it succeeds, fails for good, or the retry policy is exhausted.
    async fn retrying<T, F, Fut>(&self, ep: &Endpoint, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let policy = self.cfg.retry;
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && policy.may_retry(failures + 1) => {
                    failures += 1;
                    let delay = policy.delay(failures, e.retry_after(), &mut rand::thread_rng());
                    tracing::debug!(registry = %ep.host, error = %e, failures, ?delay, "registry request failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One authorized request; a 401/403 with a cached credential renews it once. Retryable statuses
    /// (429, 5xx) become errors, everything else is returned for the caller to interpret.
    async fn send_once(
        &self,
        ep: &Endpoint,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let mut renewed = false;
        loop {
            let header = self.auth.header(ep).await?;
            let mut req = build(&self.http);
            if let Some(h) = header {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req
                .send()
                .await
                .map_err(|source| RegistryError::Transport {
                    registry: ep.host.clone(),
                    source,
                })?;
            let status = resp.status();
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                self.auth.invalidate(ep);
                if !renewed {
                    renewed = true;
                    continue;
                }
                return Err(RegistryError::Unauthorized {
                    registry: ep.host.clone(),
                    status: status.as_u16(),
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(status_error(
                    ep,
                    status,
                    resp.headers(),
                    resp.url().path().to_string(),
                ));
            }
            return Ok(resp);
        }
    }
}

fn status_error(
    ep: &Endpoint,
    status: StatusCode,
    headers: &HeaderMap,
    what: String,
) -> RegistryError {
    let retry_after = if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    RegistryError::Status {
        registry: ep.host.clone(),
        status: status.as_u16(),
        what,
        retry_after,
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `bytes 100-199/200` → 100.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

fn available_platforms(descs: &[preheat_core::manifest::Descriptor]) -> String {
    let list: Vec<String> = descs
        .iter()
        .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
        .collect();
    if list.is_empty() {
        "none declared".into()
    } else {
        list.join(", ")
    }
}

/// Reads a whole response body, refusing more than `limit` bytes (announced or actual).
pub(crate) async fn read_capped(
    resp: Response,
    limit: u64,
    host: &str,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|source| RegistryError::Transport {
            registry: host.to_string(),
            source,
        })?;
        if (buf.len() + piece.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn insecure_matches_host_and_port() {
        let insecure = list(&[
            "reg.local:5000",
            "plain.local",
            "[::1]:5000",
            "HTTP://Mixed.Case:80/",
        ]);
        assert!(is_insecure(&insecure, "reg.local:5000"));
        assert!(!is_insecure(&insecure, "reg.local:5001"));
        assert!(!is_insecure(&insecure, "reg.local"));
        assert!(is_insecure(&insecure, "plain.local"));
        assert!(is_insecure(&insecure, "plain.local:8080"));
        assert!(is_insecure(&insecure, "[::1]:5000"));
        assert!(!is_insecure(&insecure, "[::1]:5001"));
        assert!(is_insecure(&insecure, "mixed.case:80"));
        assert!(!is_insecure(&insecure, "other.local"));
        assert!(!is_insecure(&[], "reg.local:5000"));
        assert!(!is_insecure(&list(&["reg"]), "reg.local"));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(host_without_port("a:5000"), "a");
        assert_eq!(host_without_port("a"), "a");
        assert_eq!(host_without_port("[::1]:5000"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("items 1-2"), None);
    }
}
