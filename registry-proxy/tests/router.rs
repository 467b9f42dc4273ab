//! Router behaviour through `tower::ServiceExt::oneshot`, over a [`MemorySource`].

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use registry_proxy::{router, MemorySource, Metrics, ProxyConfig};
use tower::ServiceExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Fixture {
    app: Router,
    registry: Registry,
    manifest: Bytes,
    manifest_digest: String,
    blob: Bytes,
    blob_digest: String,
}

fn fixture(cfg: ProxyConfig) -> Fixture {
    let src = MemorySource::new();
    // Odd whitespace on purpose: the mirror must not re-serialise.
    let manifest = Bytes::from_static(b"{ \"schemaVersion\": 2,\n  \"mediaType\": \"x\" }");
    let md = src.put_manifest("a/b/c", Some("v1"), OCI_MANIFEST, manifest.clone());
    src.put_manifest("a/b/c", Some("latest"), OCI_MANIFEST, manifest.clone());
    let blob: Bytes = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let bd = src.put_blob(blob.clone());
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    Fixture {
        app: router(Arc::new(src), cfg, metrics),
        registry,
        manifest,
        manifest_digest: md.to_string(),
        blob,
        blob_digest: bd.to_string(),
    }
}

async fn send(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body(resp: Response) -> Bytes {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
}

async fn error_code(resp: Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&body(resp).await).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn base_endpoint() {
    let f = fixture(ProxyConfig::default());
    let resp = send(&f.app, Method::GET, "/v2/", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(body(resp).await, "{}");
}

#[tokio::test]
async fn manifests_by_tag_and_digest_are_byte_exact() {
    let f = fixture(ProxyConfig::default());
    for reference in ["v1", f.manifest_digest.as_str()] {
        let uri = format!("/v2/a/b/c/manifests/{reference}?ns=registry.example%3A5000");
        let resp = send(&f.app, Method::GET, &uri, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{reference}");
        assert_eq!(header(&resp, "docker-content-digest"), f.manifest_digest);
        assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
        assert_eq!(
            header(&resp, "content-length"),
            f.manifest.len().to_string()
        );
        assert_eq!(body(resp).await, f.manifest);

        let resp = send(&f.app, Method::HEAD, &uri, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "docker-content-digest"), f.manifest_digest);
        assert_eq!(
            header(&resp, "content-length"),
            f.manifest.len().to_string()
        );
        assert!(body(resp).await.is_empty());
    }
    let resp = send(&f.app, Method::GET, "/v2/other/manifests/v1", &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn never_resolved_tags_are_unknown() {
    let f = fixture(ProxyConfig {
        never_resolve_tags: vec!["latest".into()],
        ..ProxyConfig::default()
    });
    let resp = send(&f.app, Method::GET, "/v2/a/b/c/manifests/latest", &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = send(&f.app, Method::GET, "/v2/a/b/c/manifests/v1", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn blobs_whole_and_ranged() {
    let f = fixture(ProxyConfig::default());
    let uri = format!("/v2/a/b/c/blobs/{}", f.blob_digest);
    let size = f.blob.len();

    let resp = send(&f.app, Method::GET, &uri, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), size.to_string());
    assert_eq!(header(&resp, "docker-content-digest"), f.blob_digest);
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(body(resp).await, f.blob);

    let resp = send(&f.app, Method::HEAD, &uri, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), size.to_string());
    assert!(body(resp).await.is_empty());

    let cases = [
        ("bytes=10-19", 10, 19),
        ("bytes=199990-", 199_990, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=100-9999999", 100, size - 1),
    ];
    for (range, start, end) in cases {
        let resp = send(&f.app, Method::GET, &uri, &[("range", range)]).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&resp, "content-range"),
            format!("bytes {start}-{end}/{size}")
        );
        assert_eq!(
            header(&resp, "content-length"),
            (end - start + 1).to_string()
        );
        assert_eq!(body(resp).await, f.blob.slice(start..=end), "{range}");
    }

    let resp = send(&f.app, Method::GET, &uri, &[("range", "bytes=200000-")]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range"), format!("bytes */{size}"));
    assert_eq!(error_code(resp).await, "RANGE_INVALID");

    let resp = send(&f.app, Method::GET, &uri, &[("range", "bytes=9-1")]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Several ranges: ignored, the whole blob is sent.
    let resp = send(&f.app, Method::GET, &uri, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, f.blob);

    let missing = format!("/v2/a/blobs/sha256:{}", "0".repeat(64));
    let resp = send(&f.app, Method::GET, &missing, &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = send(&f.app, Method::HEAD, &missing, &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refusals_use_the_error_table() {
    let f = fixture(ProxyConfig::default());
    let blob_uri = format!("/v2/a/blobs/{}", f.blob_digest);
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let resp = send(&f.app, m.clone(), &blob_uri, &[]).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(header(&resp, "allow"), "GET, HEAD");
        assert_eq!(error_code(resp).await, "UNSUPPORTED");
    }
    let resp = send(&f.app, Method::POST, "/v2/a/blobs/uploads/", &[]).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    let cases = [
        (
            "/v2/a/blobs/sha256:1234",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/blobs/sha256:..%2F..%2Fetc",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/../b/manifests/x",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/Upper/manifests/x",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a/manifests/x?ns=a%2Fb",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        ("/v2/a/tags/list", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("/metrics", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
    ];
    for (uri, status, code) in cases {
        let resp = send(&f.app, Method::GET, uri, &[]).await;
        assert_eq!(resp.status(), status, "{uri}");
        assert_eq!(header(&resp, "content-type"), "application/json");
        assert_eq!(error_code(resp).await, code, "{uri}");
    }

    let long = format!("/v2/{}/manifests/x", "a/".repeat(1100));
    let resp = send(&f.app, Method::GET, &long, &[]).await;
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);

    let big = "x".repeat(17 * 1024);
    let resp = send(&f.app, Method::GET, "/v2/", &[("x-big", &big)]).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn concurrency_cap_answers_429_while_a_body_is_open() {
    let f = fixture(ProxyConfig {
        max_concurrent: 1,
        ..ProxyConfig::default()
    });
    let uri = format!("/v2/a/blobs/{}", f.blob_digest);
    let held = send(&f.app, Method::GET, &uri, &[]).await;
    assert_eq!(held.status(), StatusCode::OK);
    let resp = send(&f.app, Method::GET, &uri, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    // Finishing the first body frees the permit.
    assert_eq!(body(held).await, f.blob);
    let resp = send(&f.app, Method::GET, &uri, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_results_and_bytes() {
    let f = fixture(ProxyConfig::default());
    let blob_uri = format!("/v2/a/blobs/{}", f.blob_digest);
    body(send(&f.app, Method::GET, &blob_uri, &[]).await).await;
    body(send(&f.app, Method::GET, "/v2/a/b/c/manifests/v1", &[]).await).await;
    body(send(&f.app, Method::GET, "/v2/a/b/c/manifests/nope", &[]).await).await;
    body(send(&f.app, Method::PUT, "/v2/a/b/c/manifests/v1", &[]).await).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &f.registry).unwrap();
    let expect = [
        "mirror_requests_total{kind=\"blob\",result=\"local\"} 1".to_owned(),
        "mirror_requests_total{kind=\"manifest\",result=\"local\"} 1".to_owned(),
        "mirror_requests_total{kind=\"manifest\",result=\"miss\"} 1".to_owned(),
        "mirror_requests_total{kind=\"manifest\",result=\"rejected\"} 1".to_owned(),
        format!(
            "mirror_bytes_served_total{{source=\"local\"}} {}",
            f.blob.len() + f.manifest.len()
        ),
        "mirror_resolve_duration_seconds_count{kind=\"manifest\"} 2".to_owned(),
    ];
    for line in expect {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let last = text
        .lines()
        .find(|l| l.starts_with("mirror_last_success_timestamp_seconds "))
        .unwrap();
    let t: f64 = last.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(t > 1.6e9, "{last}");
}
