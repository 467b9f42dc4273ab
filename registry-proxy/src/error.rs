//! The mirror's one error type and its one table from error to HTTP status and OCI error code
//! (as distribution's `errcode` does). Every error response body is
//! `{"errors":[{"code":..,"message":..,"detail":..}]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use preheat_core::digest::DigestError;
use preheat_core::Digest;

/// Boxed error of a [`crate::Source`] implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything the mirror can answer with instead of content.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid repository name: {reason}")]
    NameInvalid { reason: &'static str },
    #[error("invalid tag: {reason}")]
    TagInvalid { reason: &'static str },
    #[error("invalid digest")]
    DigestInvalid(#[source] DigestError),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("no such endpoint")]
    RouteUnknown,
    #[error("method {method} is not supported by a read-only mirror")]
    Unsupported { method: axum::http::Method },
    #[error("too many concurrent requests")]
    TooManyRequests,
    /// `size` is the blob size when known (for `Content-Range: bytes */size`).
    #[error("requested range not satisfiable")]
    RangeInvalid { size: Option<u64> },
    #[error("request path of {len} bytes is longer than the limit")]
    PathTooLong { len: usize },
    #[error("request headers are larger than the limit")]
    HeadersTooLarge,
    /// The repository needs credentials the upstream accepts (see [`crate::Access`]).
    #[error("authentication required")]
    Unauthorized,
    /// A source returned a manifest whose bytes do not hash to the digest it claimed.
    #[error("manifest content hashes to {actual}, not {expected}")]
    ManifestMismatch { expected: Digest, actual: Digest },
    /// A source returned a manifest larger than [`crate::MANIFEST_MAX_BYTES`].
    #[error("manifest of {size} bytes is larger than the limit")]
    ManifestTooLarge { size: usize },
    /// A source failed; the chain skips it, so this only reaches a client from a lone source.
    #[error("source failed")]
    Source(#[source] BoxError),
}

/// One row of the table: status and OCI code.
struct Row {
    status: StatusCode,
    code: &'static str,
}

const fn row(status: StatusCode, code: &'static str) -> Row {
    Row { status, code }
}

impl ProxyError {
    /// Wraps any source error.
    pub fn source(e: impl Into<BoxError>) -> Self {
        Self::Source(e.into())
    }

    /// The one table from error to status and OCI error code.
    fn row(&self) -> Row {
        match self {
            Self::NameInvalid { .. } => row(StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Self::TagInvalid { .. } => row(StatusCode::BAD_REQUEST, "TAG_INVALID"),
            Self::DigestInvalid(_) => row(StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            Self::ManifestUnknown => row(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Self::BlobUnknown => row(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Self::RouteUnknown => row(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Self::Unsupported { .. } => row(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Self::TooManyRequests => row(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Self::RangeInvalid { .. } => row(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            Self::PathTooLong { .. } => row(StatusCode::URI_TOO_LONG, "NAME_INVALID"),
            Self::HeadersTooLarge => {
                row(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "UNSUPPORTED")
            }
            Self::Unauthorized => row(StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::ManifestMismatch { .. } | Self::ManifestTooLarge { .. } | Self::Source(_) => {
                row(StatusCode::BAD_GATEWAY, "UNKNOWN")
            }
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// OCI error code of this error, e.g. `BLOB_UNKNOWN`.
    pub fn code(&self) -> &'static str {
        self.row().code
    }

    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NameInvalid { .. } => "name_invalid",
            Self::TagInvalid { .. } => "tag_invalid",
            Self::DigestInvalid(_) => "digest_invalid",
            Self::ManifestUnknown => "manifest_unknown",
            Self::BlobUnknown => "blob_unknown",
            Self::RouteUnknown => "route_unknown",
            Self::Unsupported { .. } => "unsupported",
            Self::TooManyRequests => "too_many_requests",
            Self::RangeInvalid { .. } => "range_invalid",
            Self::PathTooLong { .. } => "path_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Unauthorized => "unauthorized",
            Self::ManifestMismatch { .. } => "manifest_mismatch",
            Self::ManifestTooLarge { .. } => "manifest_too_large",
            Self::Source(_) => "source",
        }
    }

    /// True for errors caused by the request rather than by a source.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }
}

impl From<DigestError> for ProxyError {
    fn from(e: DigestError) -> Self {
        Self::DigestInvalid(e)
    }
}

/// Escapes `s` as a JSON string literal (the body is built by hand to avoid a serde dependency).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The full Display chain, sources included, for the `detail` field.
fn detail(e: &ProxyError) -> String {
    let mut s = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = cur {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let Row { status, code } = self.row();
        let body = format!(
            r#"{{"errors":[{{"code":"{code}","message":{},"detail":{}}}]}}"#,
            json_string(&self.to_string()),
            json_string(&detail(&self)),
        );
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            crate::router::API_VERSION_HEADER,
            HeaderValue::from_static("registry/2.0"),
        );
        if let Self::RangeInvalid { size: Some(size) } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        if let Self::Unauthorized = self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"image-preheat mirror\""),
            );
        }
        if let Self::Unsupported { .. } = self {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_is_oci_error_json() {
        let resp = ProxyError::DigestInvalid(DigestError::Hex).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(v["errors"][0]["message"], "invalid digest");
        assert!(v["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("64 lowercase hex"));
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn table_codes() {
        let cases = [
            (ProxyError::BlobUnknown, 404, "BLOB_UNKNOWN"),
            (ProxyError::ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (ProxyError::NameInvalid { reason: "x" }, 400, "NAME_INVALID"),
            (
                ProxyError::Unsupported {
                    method: axum::http::Method::PUT,
                },
                405,
                "UNSUPPORTED",
            ),
            (ProxyError::TooManyRequests, 429, "TOOMANYREQUESTS"),
            (
                ProxyError::RangeInvalid { size: None },
                416,
                "RANGE_INVALID",
            ),
            (ProxyError::Unauthorized, 401, "UNAUTHORIZED"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
