//! The mirror's store source: the conformance suite, tags from image records, and a blob served
//! while its writer is still storing it (first bytes reach the client before the writer finished).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use image_preheat::mirror::StoreSource;
use preheat_core::Digest;
use preheat_store::{ImageRecord, Store, StoreConfig};
use prometheus_client::registry::Registry;
use registry_proxy::conformance::{check_source, Expected};
use registry_proxy::{router, Metrics, ProxyConfig, RepoName, Source, TagOrDigest};

const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CHUNK: u32 = 64 * 1024;
/// Bound on every wait; no assertion depends on timing.
const GUARD: Duration = Duration::from_secs(30);

async fn store(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig {
        chunk_size: CHUNK,
        ..StoreConfig::new(dir)
    })
    .await
    .unwrap()
}

fn data(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn store_source_conforms_with_tags_from_image_records() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path()).await;
    let manifest_bytes = Bytes::from_static(b"{\"schemaVersion\":2,\"config\":{},\"layers\":[]}\n");
    let manifest_digest = Digest::of(&manifest_bytes);
    let blob = data(300_000, 3);
    store
        .put_small(manifest_digest, &manifest_bytes)
        .await
        .unwrap();
    let mut w = store
        .writer(Digest::of(&blob), blob.len() as u64)
        .await
        .unwrap();
    w.write(&blob).await.unwrap();
    w.finish().await.unwrap();
    store
        .put_image(ImageRecord {
            reference: "registry.example:5000/conf/repo:v1".into(),
            manifest: manifest_digest,
            manifest_media_type: MEDIA_TYPE.into(),
            index: None,
            platform: None,
            blobs: vec![(Digest::of(&blob), blob.len() as u64)],
        })
        .await
        .unwrap();
    let expected = |ns: Option<&str>| Expected {
        name: RepoName::parse("conf/repo").unwrap(),
        tag: "v1".into(),
        manifest_digest,
        manifest_media_type: MEDIA_TYPE.into(),
        manifest_bytes: manifest_bytes.clone(),
        blob: blob.clone(),
        ns: ns.map(Into::into),
    };
    // With `ns`, and without it (the default registry applies).
    let src = StoreSource::new(store.clone(), "docker.io", GUARD);
    check_source(&src, &expected(Some("registry.example:5000")))
        .await
        .unwrap();
    let src = StoreSource::new(store.clone(), "registry.example:5000", GUARD);
    check_source(&src, &expected(None)).await.unwrap();

    // The tag belongs to that registry and repository only.
    let name = RepoName::parse("conf/repo").unwrap();
    let other = RepoName::parse("conf/other").unwrap();
    let tag = TagOrDigest::Tag("v1".into());
    let src = StoreSource::new(store.clone(), "docker.io", GUARD);
    assert!(src.manifest(&name, &tag, None).await.unwrap().is_none());
    assert!(src
        .manifest(&other, &tag, Some("registry.example:5000"))
        .await
        .unwrap()
        .is_none());
    // A stored blob that is not a manifest is not served as one.
    let not_manifest = TagOrDigest::Digest(Digest::of(&blob));
    assert!(src
        .manifest(&name, &not_manifest, None)
        .await
        .unwrap()
        .is_none());
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A mirror over `source` on 127.0.0.1; the task ends with the test's runtime.
async fn mirror(source: Arc<dyn Source>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(
        source,
        ProxyConfig::default(),
        Metrics::new(&mut Registry::default()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_streams_while_its_writer_is_storing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path()).await;
    let blob = data(5 * CHUNK as usize + 1234, 9);
    let d = Digest::of(&blob);
    let url = mirror(Arc::new(StoreSource::new(
        store.clone(),
        "docker.io",
        GUARD,
    )))
    .await;
    let client = http();
    let blob_url = format!("{url}/v2/some/app/blobs/{d}");

    // Nothing stored yet: a miss.
    let resp = client.get(&blob_url).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // The writer has stored two chunks and is still open.
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    let split = 2 * CHUNK as usize;
    w.write(&blob[..split]).await.unwrap();
    let resp = tokio::time::timeout(GUARD, client.get(&blob_url).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.content_length(),
        Some(blob.len() as u64),
        "the size is announced before the blob is complete"
    );
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < split {
        let piece = tokio::time::timeout(GUARD, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend_from_slice(&piece);
    }
    // The event: the first two chunks reached the client while the writer is still open with the
    // rest unwritten (it cannot have finished: the test holds it).
    assert_eq!(got.len(), split);
    assert_eq!(got[..], blob[..split]);
    assert!(!store.contains(&d).await);

    // The rest is written and the blob installed; the body completes, byte for byte.
    w.write(&blob[split..]).await.unwrap();
    w.finish().await.unwrap();
    while let Some(piece) = tokio::time::timeout(GUARD, body.next()).await.unwrap() {
        got.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(got.len(), blob.len());
    assert!(got[..] == blob[..], "body differs from the blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_blob_being_written_and_a_partial_nobody_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path()).await;
    let blob = data(4 * CHUNK as usize, 5);
    let d = Digest::of(&blob);
    let url = mirror(Arc::new(StoreSource::new(
        store.clone(),
        "docker.io",
        GUARD,
    )))
    .await;
    let client = http();
    let blob_url = format!("{url}/v2/some/app/blobs/{d}");

    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    w.write(&blob[..CHUNK as usize]).await.unwrap();
    // Bytes inside the second chunk: answered once that chunk is stored.
    let (start, end) = (CHUNK as u64 + 10, CHUNK as u64 + 5000);
    let req = client
        .get(&blob_url)
        .header("Range", format!("bytes={start}-{end}"))
        .send();
    let pending = tokio::spawn(async move {
        let resp = req.await.unwrap();
        assert_eq!(resp.status(), 206);
        resp.bytes().await.unwrap()
    });
    w.write(&blob[CHUNK as usize..2 * CHUNK as usize])
        .await
        .unwrap();
    let got = tokio::time::timeout(GUARD, pending).await.unwrap().unwrap();
    assert_eq!(got[..], blob[start as usize..=end as usize]);
    assert!(
        !store.contains(&d).await,
        "served before the blob was complete"
    );

    // The writer goes away, leaving the partial for a resume: nothing to follow, a miss.
    drop(w);
    let resp = client.get(&blob_url).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
