//! Authorization headers per (registry, repository): anonymous, basic, or a bearer token.
//!
//! oci-client performs the challenge dance (`GET /v2/`, then the token realm named by `WWW-Authenticate`);
//! identity tokens (OAuth2 refresh tokens) are exchanged here, as oci-client does not support them.
//! Headers are cached until a request with them is refused (see `invalidate`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use oci_client::client::{Certificate, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::credentials::{Credential, DockerConfig};
use super::error::RegistryError;
use super::Endpoint;

type CacheKey = (String, String);

pub(crate) struct Authenticator {
    creds: DockerConfig,
    roots: Vec<Certificate>,
    http: reqwest::Client,
    oci: Mutex<HashMap<String, Arc<oci_client::Client>>>,
    cache: Mutex<HashMap<CacheKey, Option<HeaderValue>>>,
}

impl Authenticator {
    pub(crate) fn new(creds: DockerConfig, roots: Vec<Certificate>, http: reqwest::Client) -> Self {
        Self {
            creds,
            roots,
            http,
            oci: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` header for pulls from `ep`, or `None` for anonymous access.
    pub(crate) async fn header(&self, ep: &Endpoint) -> Result<Option<HeaderValue>, RegistryError> {
        let key = (ep.host.clone(), ep.repository.clone());
        if let Some(h) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(h.clone());
        }
        let header = match self.creds.lookup(&ep.registry) {
            Some(Credential::IdentityToken(token)) => {
                Some(self.exchange_identity_token(ep, token).await?)
            }
            Some(Credential::Basic { username, password }) => {
                let auth = RegistryAuth::Basic(username.clone(), password.clone());
                match self.oci_auth(ep, &auth).await? {
                    Some(token) => Some(bearer(&ep.host, &token)?),
                    None => Some(basic(&ep.host, username, password)?),
                }
            }
            None => match self.oci_auth(ep, &RegistryAuth::Anonymous).await? {
                Some(token) => Some(bearer(&ep.host, &token)?),
                None => None,
            },
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, header.clone());
        Ok(header)
    }

    /// Forgets the cached header of `ep` (it was refused, e.g. an expired token).
    pub(crate) fn invalidate(&self, ep: &Endpoint) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(ep.host.clone(), ep.repository.clone()));
    }

    fn oci_client(&self, ep: &Endpoint) -> Result<Arc<oci_client::Client>, RegistryError> {
        let mut clients = self.oci.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&ep.host) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            protocol: if ep.scheme == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: self.roots.clone(),
            connect_timeout: Some(super::CONNECT_TIMEOUT),
            read_timeout: Some(super::READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| RegistryError::Auth {
            registry: ep.host.clone(),
            reason: format!("cannot build the oci client: {e}"),
        })?;
        let client = Arc::new(client);
        clients.insert(ep.host.clone(), client.clone());
        Ok(client)
    }

    async fn oci_auth(
        &self,
        ep: &Endpoint,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, RegistryError> {
        let client = self.oci_client(ep)?;
        let reference = oci_client::Reference::with_tag(
            ep.host.clone(),
            ep.repository.clone(),
            "latest".into(),
        );
        client
            .auth(&reference, auth, RegistryOperation::Pull)
            .await
            .map_err(|e| match e {
                OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
                    registry: ep.host.clone(),
                    status: 401,
                },
                OciDistributionError::RequestError(source) => RegistryError::Transport {
                    registry: ep.host.clone(),
                    source,
                },
                other => RegistryError::Auth {
                    registry: ep.host.clone(),
                    reason: other.to_string(),
                },
            })
    }

    /// OAuth2 refresh-token grant at the realm the registry names (how Docker uses `identitytoken`).
    async fn exchange_identity_token(
        &self,
        ep: &Endpoint,
        token: &str,
    ) -> Result<HeaderValue, RegistryError> {
        let transport = |source| RegistryError::Transport {
            registry: ep.host.clone(),
            source,
        };
        let resp = self
            .http
            .get(format!("{}://{}/v2/", ep.scheme, ep.host))
            .send()
            .await
            .map_err(transport)?;
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer_challenge)
            .ok_or_else(|| RegistryError::Auth {
                registry: ep.host.clone(),
                reason: "an identity token needs a bearer challenge, the registry sent none".into(),
            })?;
        let scope = format!("repository:{}:pull", ep.repository);
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "image-preheat"),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = &challenge.service {
            form.push(("service", service));
        }
        let resp = self
            .http
            .post(&challenge.realm)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_urlencode(&form))
            .send()
            .await
            .map_err(transport)?;
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::Unauthorized {
                registry: ep.host.clone(),
                status: resp.status().as_u16(),
            });
        }
        if !resp.status().is_success() {
            return Err(RegistryError::Auth {
                registry: ep.host.clone(),
                reason: format!("token realm answered http {}", resp.status().as_u16()),
            });
        }
        let bytes = super::read_capped(resp, 1 << 20, &ep.host, "token response").await?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Auth {
                registry: ep.host.clone(),
                reason: format!("invalid token response: {e}"),
            })?;
        let token = body
            .access_token
            .or(body.token)
            .ok_or_else(|| RegistryError::Auth {
                registry: ep.host.clone(),
                reason: "token realm sent no token".into(),
            })?;
        bearer(&ep.host, &token)
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token: Option<String>,
}

fn bearer(host: &str, token: &str) -> Result<HeaderValue, RegistryError> {
    sensitive(host, format!("Bearer {token}"))
}

fn basic(host: &str, user: &str, pass: &str) -> Result<HeaderValue, RegistryError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    sensitive(host, format!("Basic {encoded}"))
}

fn sensitive(host: &str, value: String) -> Result<HeaderValue, RegistryError> {
    let mut v = HeaderValue::from_str(&value).map_err(|_| RegistryError::Auth {
        registry: host.to_string(),
        reason: "credential contains characters not allowed in a header".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// A `Bearer realm="…",service="…"` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
}

/// Parses a `WWW-Authenticate: Bearer k="v",…` value; `None` for other schemes or without a realm.
pub(crate) fn parse_bearer_challenge(value: &str) -> Option<BearerChallenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(val.to_string()),
            "service" => service = Some(val.to_string()),
            _ => {}
        }
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
    })
}

fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        let c = parse_bearer_challenge(r#"bearer realm="https://a/t, x", service=svc"#).unwrap();
        assert_eq!(c.realm, "https://a/t, x");
        assert_eq!(c.service.as_deref(), Some("svc"));
        assert_eq!(
            parse_bearer_challenge(r#"Basic realm="Registry Realm""#),
            None
        );
        assert_eq!(parse_bearer_challenge(r#"Bearer service="x""#), None);
        assert_eq!(
            parse_bearer_challenge(r#"Bearer realm="unterminated"#),
            None
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_urlencode(&[("scope", "repository:a/b:pull"), ("x", "a b&c")]),
            "scope=repository%3Aa%2Fb%3Apull&x=a+b%26c"
        );
    }

    #[test]
    fn credential_headers_are_sensitive() {
        let b = basic("h", "user", "pass").unwrap();
        assert!(b.is_sensitive());
        assert_eq!(b.to_str().unwrap(), "Basic dXNlcjpwYXNz");
        assert!(bearer("h", "line\nbreak").is_err());
    }
}
