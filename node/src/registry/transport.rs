//! Where requests go and how responses are read: scheme choice (insecure hosts), endpoints, bodies.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use std::time::SystemTime;

use super::error::RegistryError;
use super::retry::parse_retry_after;

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
    pub(super) fn url(&self, tail: &str) -> String {
        format!(
            "{}://{}/v2/{}/{}",
            self.scheme, self.host, self.repository, tail
        )
    }
}

pub(super) fn status_error(
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

pub(super) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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
}
