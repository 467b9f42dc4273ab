//! Property test: malformed paths, queries, methods and headers through the router never give a
//! 5xx and never panic.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use bytes::Bytes;
use preheat_core::Digest;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use registry_proxy::{router, MemorySource, Metrics, ProxyConfig};
use tower::ServiceExt;

const BLOB: [u8; 3] = *b"abc";

fn app() -> (axum::Router, String) {
    let src = MemorySource::new();
    src.put_manifest(
        "a/b",
        Some("t"),
        "application/json",
        Bytes::from_static(b"{}"),
    );
    let d = src.put_blob(Bytes::from_static(&BLOB));
    let mut registry = Registry::default();
    let cfg = ProxyConfig {
        never_resolve_tags: vec!["latest".into()],
        ..ProxyConfig::default()
    };
    (
        router(Arc::new(src), cfg, Metrics::new(&mut registry)),
        d.to_string(),
    )
}

/// Path-ish strings built from pieces that matter to the parser.
fn path_strategy(digest: String) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("v2".to_owned()),
        Just("manifests".to_owned()),
        Just("blobs".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2F".to_owned()),
        Just("%00".to_owned()),
        Just("%".to_owned()),
        Just("sha256:".to_owned()),
        Just(digest),
        Just("?ns=".to_owned()),
        Just("&".to_owned()),
        Just("latest".to_owned()),
        "[a-zA-Z0-9._:@~+-]{0,12}",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| format!("/v2/{}", v.concat()))
}

fn method_strategy() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::TRACE),
        Just(Method::CONNECT),
    ]
}

fn range_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "bytes=[0-9]{0,22}-[0-9]{0,22}",
        "bytes=-?[0-9]{0,5}(,[0-9]{0,5}-[0-9]{0,5}){0,3}",
        "[ -~]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_5xx_never_panic(
        path in path_strategy(Digest::of(&BLOB).to_string()),
        method in method_strategy(),
        range in proptest::option::of(range_strategy()),
        extra in proptest::collection::vec(("[a-z-]{1,20}", "[ -~]{0,200}"), 0..80),
        raw in "\\PC{0,300}",
    ) {
        let (app, digest) = app();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for uri in [path, raw, format!("/v2/a/b/blobs/{digest}")] {
            let mut req = Request::builder().method(method.clone()).uri(uri.as_str());
            if let Some(r) = &range {
                req = req.header("range", r.as_str());
            }
            for (k, v) in &extra {
                req = req.header(k.as_str(), v.as_str());
            }
            // The HTTP layer refuses what does not even build as a request.
            let Ok(req) = req.body(Body::empty()) else { continue };
            let status = rt.block_on(async {
                let resp = app.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
                status
            });
            prop_assert!(!status.is_server_error(), "{uri} -> {status}");
        }
    }
}
