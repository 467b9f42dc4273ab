//! Errors of the registry client, with the registry, reference, digest and HTTP status they concern.

use std::path::PathBuf;

use preheat_core::manifest::ManifestError;
use preheat_core::Digest;

/// A failed registry operation. `kind()` gives a stable label for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest unknown: {reference}")]
    NotFound { reference: String },
    #[error("blob unknown: {digest} of {reference}")]
    BlobNotFound { reference: String, digest: Digest },
    #[error(
        "unauthorized at registry {registry} (http {status}); check the credentials for {registry}"
    )]
    Unauthorized { registry: String, status: u16 },
    #[error("token authentication at registry {registry} failed: {reason}")]
    Auth { registry: String, reason: String },
    #[error("registry {registry} answered http {status} for {what}")]
    Status {
        registry: String,
        status: u16,
        what: String,
        /// The server's `Retry-After`, when it sent one with a 429 or 503.
        retry_after: Option<std::time::Duration>,
    },
    #[error("cannot talk to registry {registry}")]
    Transport {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("blob {digest} ended at byte {at} of {size}")]
    ShortBlob { digest: Digest, at: u64, size: u64 },
    #[error("content of {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("invalid manifest for {reference}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("{reference} has no image for platform {platform} (available: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{what} is larger than the {limit} byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("cannot use {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{reference}: unsupported: {reason}")]
    Unsupported {
        reference: String,
        reason: &'static str,
    },
    #[error("cannot build the http client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

impl RegistryError {
    /// A stable, low-cardinality name of the error class.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::BlobNotFound { .. } => "blob_not_found",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Auth { .. } => "auth",
            Self::Status { .. } => "http_status",
            Self::Transport { .. } => "transport",
            Self::ShortBlob { .. } => "short_blob",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::Manifest { .. } => "invalid_manifest",
            Self::NoPlatform { .. } => "no_platform",
            Self::TooLarge { .. } => "too_large",
            Self::Config { .. } => "config",
            Self::Unsupported { .. } => "unsupported",
            Self::Client { .. } => "client",
        }
    }

    /// Whether repeating the request may succeed: 429, 5xx, connection errors and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || (500..600).contains(status),
            Self::Transport { .. } | Self::ShortBlob { .. } => true,
            _ => false,
        }
    }

    /// The server-requested wait, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> RegistryError {
        RegistryError::Status {
            registry: "r:5000".into(),
            status: code,
            what: "manifest".into(),
            retry_after: None,
        }
    }

    #[test]
    fn retry_classes() {
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(416).is_retryable());
        let unauthorized = RegistryError::Unauthorized {
            registry: "r".into(),
            status: 401,
        };
        assert!(!unauthorized.is_retryable());
        assert!(!RegistryError::NotFound {
            reference: "x".into()
        }
        .is_retryable());
    }

    #[test]
    fn messages_name_their_subject() {
        let e = RegistryError::NotFound {
            reference: "127.0.0.1:5000/a/b:1".into(),
        };
        assert_eq!(e.to_string(), "manifest unknown: 127.0.0.1:5000/a/b:1");
        assert_eq!(e.kind(), "not_found");
        let e = RegistryError::Unauthorized {
            registry: "reg:443".into(),
            status: 401,
        };
        assert!(e
            .to_string()
            .starts_with("unauthorized at registry reg:443"));
    }
}
