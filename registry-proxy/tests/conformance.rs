//! The [`registry_proxy::conformance`] suite against every `Source` this crate and its tests have.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use bytes::Bytes;
use common::StoreSource;
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use registry_proxy::conformance::{check_source, Expected};
use std::sync::Arc;
use std::time::Duration;

use registry_proxy::{Chain, MemorySource, RepoName, SourceKind};

const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn expected(ns: Option<&str>) -> Expected {
    let manifest_bytes = Bytes::from_static(b"{\"schemaVersion\":2,  \"layers\":[]}\n");
    Expected {
        name: RepoName::parse("conf/repo").unwrap(),
        tag: "v1".into(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest_media_type: MEDIA_TYPE.into(),
        manifest_bytes,
        // Larger than one streamed piece of either source.
        blob: (0..300_000u32).map(|i| (i % 253) as u8).collect(),
        ns: ns.map(Into::into),
    }
}

#[tokio::test]
async fn memory_source_conforms() {
    let e = expected(Some("docker.io"));
    let src = MemorySource::new();
    src.put_manifest(
        e.name.as_str(),
        Some(&e.tag),
        MEDIA_TYPE,
        e.manifest_bytes.clone(),
    );
    src.put_blob(e.blob.clone());
    check_source(&src, &e).await.unwrap();
}

#[tokio::test]
async fn store_source_conforms() {
    let e = expected(None);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(tmp.path())).await.unwrap();
    store
        .put_small(e.manifest_digest, &e.manifest_bytes)
        .await
        .unwrap();
    let d = Digest::of(&e.blob);
    let mut w = store.writer(d, e.blob.len() as u64).await.unwrap();
    w.write(&e.blob).await.unwrap();
    w.finish().await.unwrap();
    let mut src = StoreSource::new(store);
    src.tags
        .insert((e.name.to_string(), e.tag.clone()), e.manifest_digest);
    src.media_types.insert(e.manifest_digest, MEDIA_TYPE.into());
    check_source(&src, &e).await.unwrap();
}

#[tokio::test]
async fn a_source_missing_content_fails_the_suite() {
    let e = expected(None);
    let src = MemorySource::new();
    src.put_manifest(
        e.name.as_str(),
        Some(&e.tag),
        MEDIA_TYPE,
        e.manifest_bytes.clone(),
    );
    let err = check_source(&src, &e).await.unwrap_err();
    assert_eq!(err.check, "blob_size");
}

#[tokio::test]
async fn chain_conforms() {
    let e = expected(Some("registry.example:5000"));
    let full = MemorySource::new();
    full.put_manifest(
        e.name.as_str(),
        Some(&e.tag),
        MEDIA_TYPE,
        e.manifest_bytes.clone(),
    );
    full.put_blob(e.blob.clone());
    let chain = Chain::new(Duration::from_secs(5))
        .with(SourceKind::Local, Arc::new(MemorySource::new()))
        .with(SourceKind::Peer, Arc::new(full));
    check_source(&chain, &e).await.unwrap();
}
