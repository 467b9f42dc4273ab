//! Parses distribution's combined access log lines:
//! `127.0.0.1 - - [22/Nov/2026:04:22:20 +0000] "GET /v2/a/blobs/sha256:.. HTTP/1.1" 200 157 "" "curl/7.88.1"`.
//! A line is written when the handler returns, so `bytes` is what the registry wrote (an aborted
//! transfer logs the bytes written before the client went away, including what sat in socket buffers).

use preheat_core::Digest;

/// One completed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// Request URI (path and query), e.g. `/v2/repo/blobs/sha256:...`.
    pub path: String,
    /// HTTP status code.
    pub status: u16,
    /// Response body bytes written.
    pub bytes: u64,
}

impl AccessLogEntry {
    /// The digest when this is a `/v2/<name>/blobs/<digest>` request.
    pub fn blob_digest(&self) -> Option<Digest> {
        let path = self.path.split('?').next()?;
        let (_, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
        digest.parse().ok()
    }

    /// The reference when this is a `/v2/<name>/manifests/<reference>` request.
    pub fn manifest_reference(&self) -> Option<&str> {
        let path = self.path.split('?').next()?;
        path.strip_prefix("/v2/")?
            .rsplit_once("/manifests/")
            .map(|(_, r)| r)
    }
}

/// Parses every access log line in `text`, skipping the application log lines.
pub fn parse(text: &str) -> Vec<AccessLogEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut req = request.split(' ');
    let method = req.next()?.to_owned();
    let path = req.next()?.to_owned();
    let mut fields = rest.split(' ');
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next()?.parse().unwrap_or(0);
    Some(AccessLogEntry {
        method,
        path,
        status,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_lines_and_skips_app_log() {
        let d = "sha256:".to_owned() + &"ab".repeat(32);
        let text = format!(
            "time=\"2026\" level=info msg=\"response completed\" http.request.uri=/v2/\n\
             127.0.0.1 - - [22/Nov/2026:04:22:20 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl\"\n\
             127.0.0.1 - - [22/Nov/2026:04:22:20 +0000] \"GET /v2/a/b/blobs/{d} HTTP/1.1\" 206 4096 \"\" \"x y\"\n\
             127.0.0.1 - - [22/Nov/2026:04:22:20 +0000] \"HEAD /v2/a/manifests/latest HTTP/1.1\" 200 - \"\" \"x\"\n"
        );
        let log = parse(&text);
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].path, "/v2/");
        assert_eq!(log[0].blob_digest(), None);
        assert_eq!(log[1].status, 206);
        assert_eq!(log[1].bytes, 4096);
        assert_eq!(log[1].blob_digest().map(|d| d.to_string()), Some(d));
        assert_eq!(log[2].method, "HEAD");
        assert_eq!(log[2].bytes, 0);
        assert_eq!(log[2].manifest_reference(), Some("latest"));
    }
}
