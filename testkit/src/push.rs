//! Low-level pushes through the distribution HTTP API: monolithic blob upload, chunked (streamed)
//! blob upload, manifest PUT. Memory stays bounded by the chunk size for streamed uploads.

use anyhow::{bail, Context, Result};
use preheat_core::digest::Hasher;
use preheat_core::Digest;
use reqwest::{Method, Response, StatusCode};

use crate::registry::Registry;

/// Size of one PATCH in a chunked upload.
pub const UPLOAD_CHUNK: usize = 8 << 20;

async fn expect(resp: Response, want: StatusCode, what: &str) -> Result<Response> {
    if resp.status() != want {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("{what}: registry answered {status} (expected {want}): {body}");
    }
    Ok(resp)
}

fn location(resp: &Response) -> Result<String> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .context("upload response without Location")?
        .to_str()
        .context("non-ascii Location")?;
    // Relative or absolute; join handles both.
    Ok(resp.url().join(loc).context("bad Location")?.to_string())
}

fn with_digest(url: &str, digest: &Digest) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn start_upload(reg: &Registry, repo: &str) -> Result<String> {
    let resp = reg
        .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .context("starting blob upload")?;
    let resp = expect(resp, StatusCode::ACCEPTED, "start upload").await?;
    location(&resp)
}

/// Uploads `bytes` as one blob (POST, then PUT with the digest) and returns its digest.
pub async fn push_blob(reg: &Registry, repo: &str, bytes: &[u8]) -> Result<Digest> {
    let digest = Digest::of(bytes);
    let url = start_upload(reg, repo).await?;
    let resp = reg
        .request(Method::PUT, &with_digest(&url, &digest))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .context("uploading blob")?;
    expect(resp, StatusCode::CREATED, "finish upload").await?;
    Ok(digest)
}

/// Uploads a blob whose bytes come from `chunks` (each at most a few MiB), one PATCH per chunk,
/// hashing on the way; returns `(digest, size)`.
pub async fn push_blob_chunks<I>(reg: &Registry, repo: &str, chunks: I) -> Result<(Digest, u64)>
where
    I: IntoIterator<Item = Vec<u8>>,
{
    let mut url = start_upload(reg, repo).await?;
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    for chunk in chunks {
        if chunk.is_empty() {
            continue;
        }
        hasher.update(&chunk);
        let end = size + chunk.len() as u64 - 1;
        let resp = reg
            .request(Method::PATCH, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_RANGE, format!("{size}-{end}"))
            .body(chunk)
            .send()
            .await
            .context("uploading blob chunk")?;
        let resp = expect(resp, StatusCode::ACCEPTED, "upload chunk").await?;
        url = location(&resp)?;
        size = end + 1;
    }
    let digest = hasher.finish();
    let resp = reg
        .request(Method::PUT, &with_digest(&url, &digest))
        .send()
        .await
        .context("finishing chunked upload")?;
    expect(resp, StatusCode::CREATED, "finish chunked upload").await?;
    Ok((digest, size))
}

/// PUTs a manifest under `reference` (a tag or its digest) and returns the manifest digest.
pub async fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<Digest> {
    let digest = Digest::of(bytes);
    let resp = reg
        .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
        .header(reqwest::header::CONTENT_TYPE, media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .context("pushing manifest")?;
    let resp = expect(resp, StatusCode::CREATED, "push manifest").await?;
    if let Some(got) = resp.headers().get("docker-content-digest") {
        let got = got.to_str().unwrap_or_default();
        if got != digest.to_string() {
            bail!("registry computed manifest digest {got}, expected {digest}");
        }
    }
    Ok(digest)
}
