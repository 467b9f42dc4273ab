//! Size cap: LRU eviction, wanted-image protection, `Full`.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use common::*;
use preheat_core::Digest;
use preheat_store::{ImageRecord, Store, StoreError};

const S: u64 = 2 * CS as u64;

fn record(reference: &str, manifest: Digest, blobs: &[Digest]) -> ImageRecord {
    ImageRecord {
        reference: reference.into(),
        manifest,
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        index: None,
        platform: None,
        blobs: blobs.iter().map(|d| (*d, S)).collect(),
    }
}

fn gone(store: &Store, d: &Digest) -> bool {
    let blobs = store.dir().join("blobs/sha256");
    !blobs.join(d.hex()).exists() && !blobs.join(format!("{}.index", d.hex())).exists()
}

#[tokio::test]
async fn lru_eviction_spares_wanted_images() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path(), Some(3 * S + 100)))
        .await
        .unwrap();
    let mut evictions = store.subscribe_evictions();
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| data(S as usize, 100 + i)).collect();
    let a = store_blob(&store, &blobs[0]).await;
    let b = store_blob(&store, &blobs[1]).await;
    let c = store_blob(&store, &blobs[2]).await;
    store.read_chunk(&a, 0).await.unwrap(); // a is now more recent than b and c
    let m = Digest::of(b"manifest-x");
    store.put_small(m, b"manifest-x").await.unwrap();
    store.put_image(record("x:1", m, &[c])).await.unwrap();
    store.set_wanted([m]).await;
    assert_eq!(store.usage(), 3 * S + 10);

    // d needs room: b is the least recently used.
    let d = store_blob(&store, &blobs[3]).await;
    assert!(!store.contains(&b).await && gone(&store, &b));
    assert_eq!(evictions.try_recv().unwrap(), b);
    // e needs room: c is older than a but wanted, so a goes.
    let e = store_blob(&store, &blobs[4]).await;
    assert!(!store.contains(&a).await && gone(&store, &a));
    assert_eq!(evictions.try_recv().unwrap(), a);
    assert!(store.contains(&c).await && store.contains(&m).await);
    assert!(store.usage() <= 3 * S + 100);

    // Everything wanted: a new blob does not fit and nothing is evicted.
    let m2 = Digest::of(b"manifest-y");
    store.put_small(m2, b"manifest-y").await.unwrap();
    store.put_image(record("y:1", m2, &[d, e])).await.unwrap();
    store.set_wanted([m, m2]).await;
    let f = Digest::of(&blobs[5]);
    let err = store.writer(f, S).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Full { needed, max } if needed == S && max == 3 * S + 100),
        "{err}"
    );
    assert!(store.contains(&c).await && store.contains(&d).await && store.contains(&e).await);
    assert!(store.partial(&f).await.unwrap().is_none());
    assert!(matches!(
        store.writer(f, 4 * S).await,
        Err(StoreError::Full { .. })
    ));

    // No longer wanted: evictable again.
    store.set_wanted([m]).await;
    store_blob(&store, &blobs[5]).await;
    assert!(store.contains(&c).await);
    assert!(!store.contains(&d).await);
}

#[tokio::test]
async fn partials_reserve_their_size_and_idle_ones_can_be_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(cfg(dir.path(), Some(2 * S))).await.unwrap();
    let p1 = data(S as usize, 200);
    let p2 = data(S as usize, 201);
    let (d1, d2) = (Digest::of(&p1), Digest::of(&p2));
    let mut w1 = store.writer(d1, S).await.unwrap();
    w1.write(&p1[..CS as usize]).await.unwrap();
    assert_eq!(store.usage(), S, "the full size is reserved up front");
    let w2 = store.writer(d2, S).await.unwrap();
    // Both partials are being written: nothing can go.
    let p3 = data(S as usize, 202);
    let d3 = Digest::of(&p3);
    assert!(matches!(
        store.writer(d3, S).await,
        Err(StoreError::Full { .. })
    ));
    drop(w2);
    // The idle partial d2 is evicted; the one being written is not.
    let mut w3 = store.writer(d3, S).await.unwrap();
    assert!(store.partial(&d2).await.unwrap().is_none());
    assert!(!dir.path().join("partial").join(d2.hex()).exists());
    w3.write(&p3).await.unwrap();
    w3.finish().await.unwrap();
    w1.write(&p1[CS as usize..]).await.unwrap();
    w1.finish().await.unwrap();
    assert_eq!(store.usage(), 2 * S);

    // Usage is recomputed from disk on open.
    drop(store);
    let store = Store::open(cfg(dir.path(), Some(2 * S))).await.unwrap();
    assert_eq!(store.usage(), 2 * S);
}

#[tokio::test]
async fn lru_order_survives_restart_through_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(S as usize, 400 + i)).collect();
    let (a, b) = {
        let store = Store::open(cfg(dir.path(), None)).await.unwrap();
        (
            store_blob(&store, &blobs[0]).await,
            store_blob(&store, &blobs[1]).await,
        )
    };
    let hour = std::time::Duration::from_secs(3600);
    let set_mtime = |d: &Digest, age: u32| {
        let f = std::fs::File::open(dir.path().join("blobs/sha256").join(d.hex())).unwrap();
        f.set_modified(std::time::SystemTime::now() - hour * age)
            .unwrap();
    };
    set_mtime(&a, 2);
    set_mtime(&b, 1);
    {
        // a was persisted more than a minute ago, so this access is written to its mtime.
        let store = Store::open(cfg(dir.path(), None)).await.unwrap();
        store.read_chunk(&a, 0).await.unwrap();
    }
    let store = Store::open(cfg(dir.path(), Some(2 * S))).await.unwrap();
    store_blob(&store, &blobs[2]).await;
    assert!(store.contains(&a).await, "a was used most recently");
    assert!(!store.contains(&b).await);
}
