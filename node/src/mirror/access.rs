//! Who may read a repository through the mirror: content of a repository that needs credentials
//! upstream is served only to requests whose credentials the upstream accepts for it.
//!
//! ```text
//!  request ─► repository private? (anonymous HEAD of the object upstream refused; remembered
//!     │        per repository for `private_ttl`)
//!     ├ public ─► serve
//!     └ private ─► no Authorization ─► 401 (Basic challenge)
//!                  Authorization ─► verdict cached per (repository, sha256 of the header) for
//!                  `verdict_ttl`, else HEAD of the object upstream with it (token dance when the
//!                  registry answers with a Bearer challenge) ─► 2xx/3xx serve, else 401
//! ```
//!
//! Fails closed: when the upstream cannot be asked, the request misses (404, so the client asks
//! the origin itself). Both caches are bounded. The client's header is only ever sent to the
//! registry the request names (its `ns`, or the default registry) and that registry's token realm.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::HeaderValue;
use preheat_core::reference::{DOCKER_HUB, DOCKER_HUB_API};
use registry_proxy::{Access, AccessRequest, Object, ProxyError};
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use crate::registry::is_insecure;

/// Entries per cache at most.
const MAX_ENTRIES: usize = 4096;
/// Manifest types asked for when probing a manifest.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Settings of [`UpstreamAccess`].
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Registry of requests without `ns`.
    pub default_registry: String,
    /// Registries reached over plain HTTP (as the registry client's list).
    pub insecure: Vec<String>,
    /// Extra CA bundles (PEM) for the registries' TLS.
    pub ca_files: Vec<PathBuf>,
    /// Longest upstream check.
    pub probe_timeout: Duration,
    /// How long a verdict on a credential is kept.
    pub verdict_ttl: Duration,
    /// How long a repository's public/private status is kept.
    pub status_ttl: Duration,
}

/// Why the access check could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read CA bundle {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable PEM certificate")]
    CaPem { path: PathBuf },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// A bounded map whose entries expire.
struct TtlCache<K, V> {
    map: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash, V: Copy> TtlCache<K, V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        self.map
            .get(k)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| *v)
    }

    fn insert(&mut self, k: K, v: V, ttl: Duration) {
        if self.map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            self.map.retain(|_, (_, until)| *until > now);
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
        }
        self.map.insert(k, (v, Instant::now() + ttl));
    }
}

/// The credential check against the upstream registry.
pub struct UpstreamAccess {
    http: reqwest::Client,
    cfg: AccessConfig,
    /// repository → needs credentials.
    status: Mutex<TtlCache<String, bool>>,
    /// (repository, sha256 of the Authorization header) → accepted.
    verdicts: Mutex<TtlCache<(String, [u8; 32]), bool>>,
}

impl UpstreamAccess {
    pub fn new(cfg: AccessConfig) -> Result<Self, AccessError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        for path in &cfg.ca_files {
            let pem = std::fs::read(path).map_err(|source| AccessError::Ca {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| AccessError::CaPem { path: path.clone() })?;
            roots.extend(certs);
        }
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.probe_timeout)
            .build()
            .map_err(AccessError::Client)?;
        Ok(Self {
            http,
            cfg,
            status: Mutex::new(TtlCache::new()),
            verdicts: Mutex::new(TtlCache::new()),
        })
    }

    /// Whether the upstream serves `object` of `repo` with `auth` (none: anonymously).
    async fn probe(
        &self,
        registry: &str,
        repo: &str,
        object: Object<'_>,
        auth: Option<&HeaderValue>,
    ) -> Result<bool, reqwest::Error> {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let scheme = if is_insecure(&self.cfg.insecure, host) {
            "http"
        } else {
            "https"
        };
        let url = match object {
            Object::Manifest(r) => format!("{scheme}://{host}/v2/{repo}/manifests/{r}"),
            Object::Blob(d) => format!("{scheme}://{host}/v2/{repo}/blobs/{d}"),
        };
        let head = |auth: Option<HeaderValue>| {
            let mut req = self.http.head(&url).header(ACCEPT, MANIFEST_ACCEPT);
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            req.send()
        };
        let resp = head(auth.cloned()).await?;
        let ok = |s: StatusCode| s.is_success() || s.is_redirection();
        if ok(resp.status()) {
            return Ok(true);
        }
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(false);
        }
        // A token registry: trade the client's credentials (or none) for a pull token.
        let Some((realm, service)) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge)
        else {
            return Ok(false);
        };
        if auth.is_some_and(|a| !a.as_bytes().starts_with(b"Basic ")) {
            return Ok(false);
        }
        let mut query = vec![("scope", format!("repository:{repo}:pull"))];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self.http.get(&realm).query(&query);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            return Ok(false);
        }
        let body: serde_json::Value = resp.json().await?;
        let Some(token) = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
        else {
            return Ok(false);
        };
        let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return Ok(false);
        };
        Ok(ok(head(Some(bearer)).await?.status()))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Bearer realm="…",service="…"` → (realm, service).
fn bearer_challenge(v: &str) -> Option<(String, Option<String>)> {
    let rest = v.trim().strip_prefix("Bearer ")?;
    let (mut realm, mut service) = (None, None);
    for part in split_params(rest) {
        let (k, val) = part.split_once('=')?;
        let val = val.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(val),
            "service" => service = Some(val),
            _ => {}
        }
    }
    Some((realm?, service))
}

/// Splits `a="x,y",b=z` at commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn miss(object: Object<'_>) -> ProxyError {
    match object {
        Object::Manifest(_) => ProxyError::ManifestUnknown,
        Object::Blob(_) => ProxyError::BlobUnknown,
    }
}

#[async_trait]
impl Access for UpstreamAccess {
    async fn check(&self, req: AccessRequest<'_>) -> Result<(), ProxyError> {
        let registry = req.ns.unwrap_or(&self.cfg.default_registry);
        let name = req.name.as_str();
        let key = format!("{registry}/{name}");
        let cached = Self::lock(&self.status).get(&key);
        let private = match cached {
            Some(p) => p,
            None => match self.probe(registry, name, req.object, None).await {
                Ok(public) => {
                    Self::lock(&self.status).insert(key.clone(), !public, self.cfg.status_ttl);
                    !public
                }
                Err(e) => {
                    tracing::debug!(repository = %key, error = %e, "mirror access: upstream unreachable");
                    return Err(miss(req.object));
                }
            },
        };
        if !private {
            return Ok(());
        }
        let Some(auth) = req.authorization else {
            return Err(ProxyError::Unauthorized);
        };
        let hash: [u8; 32] = Sha256::digest(auth.as_bytes()).into();
        let vkey = (key, hash);
        let cached = Self::lock(&self.verdicts).get(&vkey);
        let accepted = match cached {
            Some(v) => v,
            None => match self.probe(registry, name, req.object, Some(auth)).await {
                Ok(v) => {
                    tracing::debug!(repository = %vkey.0, accepted = v, "mirror access: credentials checked");
                    Self::lock(&self.verdicts).insert(vkey, v, self.cfg.verdict_ttl);
                    v
                }
                Err(e) => {
                    tracing::debug!(repository = %vkey.0, error = %e, "mirror access: upstream unreachable");
                    return Err(miss(req.object));
                }
            },
        };
        if accepted {
            Ok(())
        } else {
            Err(ProxyError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a,b:pull""#
            ),
            Some((
                "https://auth.docker.io/token".into(),
                Some("registry.docker.io".into())
            ))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="x""#), None);
        assert_eq!(bearer_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let mut c = TtlCache::new();
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(i, true, Duration::from_secs(60));
        }
        assert!(c.map.len() <= MAX_ENTRIES);
        c.insert(usize::MAX, true, Duration::ZERO);
        assert_eq!(c.get(&usize::MAX), None);
    }
}
