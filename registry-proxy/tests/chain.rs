//! `Chain`: order, per-source timeout, errors and bad manifests skipped, hit source reported.
//! Virtual time: the hanging source is skipped by the timeout without real waiting.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use futures::TryStreamExt;
use preheat_core::Digest;
use prometheus_client::registry::Registry;
use registry_proxy::{
    router, Blob, BlobStat, Chain, Manifest, MemorySource, Metrics, ProxyConfig, ProxyError,
    RangeSpec, RepoName, Source, SourceKind, TagOrDigest,
};
use tower::ServiceExt;

/// Never answers.
struct Hang;
/// Always fails.
struct Fail;
/// Returns a manifest whose bytes do not hash to its digest.
struct Liar;

#[async_trait]
impl Source for Hang {
    async fn manifest(
        &self,
        _: &RepoName,
        _: &TagOrDigest,
        _: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        std::future::pending().await
    }
    async fn blob(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
        _: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        std::future::pending().await
    }
    async fn blob_size(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        std::future::pending().await
    }
}

#[async_trait]
impl Source for Fail {
    async fn manifest(
        &self,
        _: &RepoName,
        _: &TagOrDigest,
        _: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        Err(ProxyError::source("boom"))
    }
    async fn blob(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
        _: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        Err(ProxyError::source("boom"))
    }
    async fn blob_size(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        Err(ProxyError::source("boom"))
    }
}

#[async_trait]
impl Source for Liar {
    async fn manifest(
        &self,
        _: &RepoName,
        reference: &TagOrDigest,
        _: Option<&str>,
    ) -> Result<Option<Manifest>, ProxyError> {
        let digest = match reference {
            TagOrDigest::Digest(d) => *d,
            TagOrDigest::Tag(_) => Digest::of(b"something else"),
        };
        Ok(Some(Manifest {
            digest,
            media_type: "application/json".into(),
            bytes: Bytes::from_static(b"{\"forged\":true}"),
            source: SourceKind::Local,
        }))
    }
    async fn blob(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
        _: Option<RangeSpec>,
    ) -> Result<Option<Blob>, ProxyError> {
        Ok(None)
    }
    async fn blob_size(
        &self,
        _: &RepoName,
        _: &Digest,
        _: Option<&str>,
    ) -> Result<Option<BlobStat>, ProxyError> {
        Ok(None)
    }
}

fn good() -> (Arc<MemorySource>, Digest, Digest) {
    let m = MemorySource::new();
    let md = m.put_manifest(
        "r",
        Some("t"),
        "application/json",
        Bytes::from_static(b"{}"),
    );
    let bd = m.put_blob(Bytes::from_static(b"blob bytes"));
    (Arc::new(m), md, bd)
}

#[tokio::test(start_paused = true)]
async fn first_hit_after_hang_error_and_forgery() {
    let (mem, md, bd) = good();
    let chain = Chain::new(Duration::from_secs(1))
        .with(SourceKind::Local, Arc::new(Hang))
        .with(SourceKind::Peer, Arc::new(Fail))
        .with(SourceKind::Peer, Arc::new(Liar))
        .with(SourceKind::Upstream, mem);
    let name = RepoName::parse("r").unwrap();

    for reference in [TagOrDigest::Tag("t".into()), TagOrDigest::Digest(md)] {
        let m = chain
            .manifest(&name, &reference, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.source, SourceKind::Upstream);
        assert_eq!(m.digest, md);
        assert_eq!(&m.bytes[..], b"{}");
    }

    let b = chain
        .blob(&name, &bd, Some("docker.io"), Some(RangeSpec::From(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.source, SourceKind::Upstream);
    assert_eq!(b.size, 10);
    let got: Vec<Bytes> = b.body.try_collect().await.unwrap();
    assert_eq!(got.concat(), b"bytes");

    let stat = chain.blob_size(&name, &bd, None).await.unwrap().unwrap();
    assert_eq!(
        stat,
        BlobStat {
            size: 10,
            source: SourceKind::Upstream
        }
    );

    let missing = Digest::of(b"missing");
    assert!(chain
        .blob(&name, &missing, None, None)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn range_error_is_an_answer_and_empty_chain_misses() {
    let (mem, _, bd) = good();
    let chain = Chain::new(Duration::from_secs(1))
        .with(SourceKind::Local, mem)
        .with(SourceKind::Upstream, Arc::new(Fail));
    let name = RepoName::parse("r").unwrap();
    let err = chain
        .blob(&name, &bd, None, Some(RangeSpec::From(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::RangeInvalid { size: Some(10) }));

    let empty = Chain::new(Duration::from_secs(1));
    let tag = TagOrDigest::Tag("t".into());
    assert!(empty.manifest(&name, &tag, None).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn router_turns_timeout_into_404() {
    let cfg = ProxyConfig {
        resolve_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    };
    let mut registry = Registry::default();
    let app = router(Arc::new(Hang), cfg, Metrics::new(&mut registry));
    let blob = format!("/v2/r/blobs/{}", Digest::of(b"x"));
    for uri in ["/v2/r/manifests/t", blob.as_str()] {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{uri}");
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("mirror_requests_total{kind=\"blob\",result=\"miss\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn lone_failing_source_is_502_unknown() {
    let mut registry = Registry::default();
    let app = router(
        Arc::new(Fail),
        ProxyConfig::default(),
        Metrics::new(&mut registry),
    );
    let req = Request::get("/v2/r/manifests/t")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test(start_paused = true)]
async fn per_link_timeout_overrides_the_chain_timeout() {
    let (mem, _, bd) = good();
    let name = RepoName::parse("r").unwrap();
    // The chain-wide timeout is longer than the test allows; the link's own short one applies.
    let chain = Chain::new(Duration::from_secs(3600))
        .with_timeout(SourceKind::Peer, Arc::new(Hang), Duration::from_millis(50))
        .with(SourceKind::Upstream, mem);
    let started = tokio::time::Instant::now();
    let stat = chain.blob_size(&name, &bd, None).await.unwrap().unwrap();
    assert_eq!(stat.source, SourceKind::Upstream);
    // Virtual time: exactly the link timeout elapsed, not the chain's.
    assert!(started.elapsed() < Duration::from_secs(1));
}
