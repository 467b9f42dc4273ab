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
mod blob;
pub mod credentials;
mod error;
mod retry;
mod transport;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use preheat_core::manifest::{parse_manifest, select_platform, ImageManifest, Manifest, Platform};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode};

pub use blob::BlobStream;
pub use credentials::{Credential, DockerConfig};
pub use error::RegistryError;
pub use retry::{parse_retry_after, RetryPolicy};
pub use transport::is_insecure;

use auth::Authenticator;
use blob::{content_range_start, cut_at, skip_prefix};
use transport::{header_str, status_error};
pub(crate) use transport::{read_capped, Endpoint};

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
        self.blob_range(r, d, offset..u64::MAX).await
    }

    /// Streams bytes `range` of blob `d` (the end clamped to the blob; `u64::MAX`: to the end).
    /// A server that ignores the range is read from `range.start` and cut at `range.end`.
    pub async fn blob_range(
        &self,
        r: &Reference,
        d: &Digest,
        range: std::ops::Range<u64>,
    ) -> Result<BlobStream, RegistryError> {
        let (offset, end) = (range.start, range.end);
        let ep = self.endpoint(r);
        let url = ep.url(&format!("blobs/{d}"));
        let resp = self
            .retrying(&ep, || async {
                let resp = self
                    .send_once(&ep, |http| {
                        let req = http.get(&url);
                        match (offset, end) {
                            (0, u64::MAX) => req,
                            (o, u64::MAX) => req.header(RANGE, format!("bytes={o}-")),
                            (o, e) => req.header(RANGE, format!("bytes={o}-{}", e - 1)),
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
        // A 200 to a range request means the server ignored the range: drop the bytes before `offset`.
        let skip = if partial { 0 } else { offset };
        let remaining = resp
            .content_length()
            .map(|len| len.saturating_sub(skip).min(end - offset));
        let host = ep.host.clone();
        let body = resp
            .bytes_stream()
            .map_err(move |source| RegistryError::Transport {
                registry: host.clone(),
                source,
            });
        Ok(BlobStream {
            inner: Box::pin(cut_at(skip_prefix(body, skip), end - offset)),
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
        let digest = verify_manifest_digest(&bytes, expected, header_digest.as_deref(), r)?;
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

/// The sha256 of manifest `bytes`, checked against the digest the reference names and the
/// `Docker-Content-Digest` header (ignored when it is not a sha256 digest).
fn verify_manifest_digest(
    bytes: &[u8],
    expected: Option<Digest>,
    header: Option<&str>,
    r: &Reference,
) -> Result<Digest, RegistryError> {
    let actual = Digest::of(bytes);
    let header = header.and_then(|h| h.trim().parse::<Digest>().ok());
    for want in expected.into_iter().chain(header) {
        if want != actual {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {r}"),
                expected: want,
                actual,
            });
        }
    }
    Ok(actual)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_digests_are_checked_against_reference_and_header() {
        let r: Reference = "127.0.0.1:5000/a/b:1".parse().unwrap();
        let bytes = br#"{"schemaVersion":2}"#;
        let right = Digest::of(bytes);
        let wrong = Digest::of(b"other");
        assert_eq!(
            verify_manifest_digest(bytes, None, None, &r).unwrap(),
            right
        );
        assert_eq!(
            verify_manifest_digest(bytes, Some(right), Some(&right.to_string()), &r).unwrap(),
            right
        );
        assert_eq!(
            verify_manifest_digest(bytes, None, Some("sha512:abc"), &r).unwrap(),
            right
        );
        let err = verify_manifest_digest(bytes, Some(wrong), None, &r).unwrap_err();
        assert_eq!(err.kind(), "digest_mismatch");
        assert!(err.to_string().contains("127.0.0.1:5000/a/b:1"), "{err}");
        let err =
            verify_manifest_digest(bytes, Some(right), Some(&wrong.to_string()), &r).unwrap_err();
        assert!(matches!(err, RegistryError::DigestMismatch { expected, .. } if expected == wrong));
    }
}
