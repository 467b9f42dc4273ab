//! Writing, resuming, reading and verifying blobs.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use common::*;
use preheat_core::chunk::chunk_hash;
use preheat_core::Digest;
use preheat_store::{ImageRecord, StoreError};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn roundtrip_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(5 * CS as usize - 1234, 1);
    let d = Digest::of(&blob);
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    for piece in blob.chunks(10_007) {
        w.write(piece).await.unwrap();
    }
    assert_eq!(w.bytes_done(), blob.len() as u64);
    w.finish().await.unwrap();

    assert!(store.contains(&d).await);
    assert_eq!(store.blob_len(&d).await.unwrap(), Some(blob.len() as u64));
    let mut back = Vec::new();
    store
        .open_blob(&d)
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, blob);
    assert_eq!(store.chunk_index(&d).await.unwrap(), Some(index_of(&blob)));
    for i in 0..5 {
        assert_eq!(&store.read_chunk(&d, i).await.unwrap()[..], chunk(&blob, i));
    }
    assert_eq!(store.read_small(&d).await.unwrap(), blob);
    assert_eq!(store.usage(), blob.len() as u64);
    assert!(store.partial(&d).await.unwrap().is_none());
    assert!(!dir.path().join("partial").join(d.hex()).exists());
    assert!(dir
        .path()
        .join(format!("blobs/sha256/{}.index", d.hex()))
        .exists());
    assert!(matches!(
        store.writer(d, 1).await,
        Err(StoreError::Exists(_))
    ));

    drop(store);
    let store = open(dir.path()).await;
    assert!(store.contains(&d).await);
    assert_eq!(store.chunk_index(&d).await.unwrap(), Some(index_of(&blob)));
}

#[tokio::test]
async fn empty_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let d = Digest::of(b"");
    store.writer(d, 0).await.unwrap().finish().await.unwrap();
    assert_eq!(store.read_small(&d).await.unwrap().len(), 0);
}

#[tokio::test]
async fn resume_after_drop_mid_chunk_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(5 * CS as usize, 2);
    let d = Digest::of(&blob);
    let cut = 2 * CS as usize + CS as usize / 2;
    {
        let store = open(dir.path()).await;
        let mut w = store.writer(d, blob.len() as u64).await.unwrap();
        w.write(&blob[..cut]).await.unwrap();
        assert_eq!(w.resume_offset(), cut as u64);
        assert_eq!(w.verified_offset(), 2 * u64::from(CS));
        drop(w);
        // Same process: the buffered half chunk is gone.
        let w = store.writer(d, blob.len() as u64).await.unwrap();
        assert_eq!(w.resume_offset(), 2 * u64::from(CS));
        assert_eq!(w.done(), &[true, true, false, false, false]);
    }
    let store = open(dir.path()).await;
    let info = store.partial(&d).await.unwrap().unwrap();
    assert_eq!(info.done, vec![true, true, false, false, false]);
    assert_eq!(store.partial_blobs(), vec![d]);
    assert!(store.complete_blobs().is_empty());
    assert_eq!(info.bytes_done, 2 * u64::from(CS));
    assert!(!store.contains(&d).await);
    assert!(matches!(
        store.writer(d, 7).await,
        Err(StoreError::SizeMismatch { .. })
    ));
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    let off = w.resume_offset() as usize;
    w.write(&blob[off..]).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(store.read_small(&d).await.unwrap(), blob);
    assert_eq!(store.complete_blobs(), vec![d]);
    assert!(store.partial_blobs().is_empty());
}

#[tokio::test]
async fn lying_log_and_torn_record_are_caught_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(4 * CS as usize, 3);
    let d = Digest::of(&blob);
    {
        let store = open(dir.path()).await;
        let mut w = store.writer(d, blob.len() as u64).await.unwrap();
        w.write(&blob[..3 * CS as usize]).await.unwrap();
    }
    let pdir = dir.path().join("partial").join(d.hex());
    // Flip a byte inside chunk 1 and append a torn record.
    let mut raw = std::fs::read(pdir.join("data")).unwrap();
    raw[CS as usize + 5] ^= 0xff;
    std::fs::write(pdir.join("data"), raw).unwrap();
    let mut log = std::fs::read(pdir.join("chunks.log")).unwrap();
    log.extend_from_slice(&[1, 0, 0]);
    std::fs::write(pdir.join("chunks.log"), log).unwrap();

    let store = open(dir.path()).await;
    let info = store.partial(&d).await.unwrap().unwrap();
    assert_eq!(info.done, vec![true, false, true, false]);
    assert_eq!(
        std::fs::metadata(pdir.join("chunks.log")).unwrap().len(),
        72
    );
    assert!(matches!(
        store.read_chunk(&d, 1).await,
        Err(StoreError::ChunkMissing { index: 1, .. })
    ));
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    assert_eq!(w.resume_offset(), u64::from(CS));
    w.write(&blob[CS as usize..]).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(store.read_small(&d).await.unwrap(), blob);
}

#[tokio::test]
async fn out_of_order_chunks_and_bad_data_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(5 * CS as usize + 100, 4);
    let ix = index_of(&blob);
    let d = ix.blob;
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    w.set_index(ix.clone()).await.unwrap();
    assert_eq!(store.chunk_index(&d).await.unwrap(), Some(ix.clone()));

    let mut bad = chunk(&blob, 3).to_vec();
    bad[0] ^= 1;
    // Right expected hash, wrong bytes.
    let err = w.write_chunk(3, &bad, &ix.hashes[3]).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkMismatch { index: 3, .. }),
        "{err}"
    );
    // Bytes consistent with `expected`, but not with the index.
    let err = w.write_chunk(3, &bad, &chunk_hash(&bad)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkMismatch { index: 3, .. }),
        "{err}"
    );
    // Wrong length.
    assert!(w
        .write_chunk(5, chunk(&blob, 4), &ix.hashes[4])
        .await
        .is_err());
    assert_eq!(w.bytes_done(), 0);

    for i in [3, 5, 1, 4] {
        w.write_chunk(i, chunk(&blob, i), &ix.hashes[i as usize])
            .await
            .unwrap();
    }
    // Rewriting a stored chunk with the same bytes is a no-op.
    w.write_chunk(1, chunk(&blob, 1), &ix.hashes[1])
        .await
        .unwrap();
    assert_eq!(w.done(), &[false, true, false, true, true, true]);
    assert!(matches!(
        w.finish().await,
        Err(StoreError::Incomplete { missing: 2, .. })
    ));

    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    assert_eq!(w.index(), Some(ix.clone()));
    // Sequential writes skip over chunks already there.
    w.write(&blob).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(store.read_small(&d).await.unwrap(), blob);
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(3 * CS as usize, 5);
    let claimed = Digest::of(b"something else");
    let mut w = store.writer(claimed, blob.len() as u64).await.unwrap();
    w.write(&blob).await.unwrap();
    let err = w.finish().await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { expected, .. } if expected == claimed));
    assert!(!store.contains(&claimed).await);
    assert!(store.partial(&claimed).await.unwrap().is_none());
    assert!(!dir.path().join("partial").join(claimed.hex()).exists());
    assert!(!dir.path().join("blobs/sha256").join(claimed.hex()).exists());
    assert_eq!(store.usage(), 0);

    let err = store.put_small(claimed, b"not it").await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }));
    assert!(!store.contains(&claimed).await);
}

#[tokio::test]
async fn partial_chunks_are_readable_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(3 * CS as usize, 6);
    let ix = index_of(&blob);
    let d = ix.blob;
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    w.write_chunk(2, chunk(&blob, 2), &ix.hashes[2])
        .await
        .unwrap();
    assert_eq!(&store.read_chunk(&d, 2).await.unwrap()[..], chunk(&blob, 2));
    assert!(matches!(
        store.read_chunk(&d, 0).await,
        Err(StoreError::ChunkMissing { index: 0, .. })
    ));
    assert_eq!(store.chunk_index(&d).await.unwrap(), None);
    assert!(matches!(
        store.open_blob(&d).await,
        Err(StoreError::NotFound(_))
    ));
    w.write(&blob).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(&store.read_chunk(&d, 0).await.unwrap()[..], chunk(&blob, 0));
}

#[tokio::test]
async fn one_writer_per_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(CS as usize, 7);
    let d = Digest::of(&blob);
    let w = store.writer(d, blob.len() as u64).await.unwrap();
    let other = store.clone();
    let err = tokio::spawn(async move { other.writer(d, CS.into()).await.unwrap_err() })
        .await
        .unwrap();
    assert!(matches!(err, StoreError::Busy(x) if x == d));
    assert!(matches!(
        store.discard_partial(&d).await,
        Err(StoreError::Busy(_))
    ));
    drop(w);
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    w.write(&blob).await.unwrap();
    w.finish().await.unwrap();
}

#[tokio::test]
async fn small_blobs_and_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let manifest = br#"{"schemaVersion":2}"#;
    let d = Digest::of(manifest);
    store.put_small(d, manifest).await.unwrap();
    store.put_small(d, manifest).await.unwrap();
    assert_eq!(&store.read_small(&d).await.unwrap()[..], manifest);
    assert!(store.chunk_index(&d).await.unwrap().is_some());

    let big = data(4 * 1024 * 1024 + 1, 8);
    let bd = store_blob(&store, &big).await;
    assert!(matches!(
        store.read_small(&bd).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        store.read_small(&Digest::of(b"x")).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn crash_leftovers_are_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let good = data(2 * CS as usize, 9);
    let bad = data(2 * CS as usize, 10);
    let (gd, bd) = {
        let store = open(dir.path()).await;
        (
            store_blob(&store, &good).await,
            store_blob(&store, &bad).await,
        )
    };
    let blobs = dir.path().join("blobs/sha256");
    // A lost index is rebuilt; a blob whose bytes rotted (and lost its index) is dropped.
    std::fs::remove_file(blobs.join(format!("{}.index", gd.hex()))).unwrap();
    std::fs::remove_file(blobs.join(format!("{}.index", bd.hex()))).unwrap();
    let p = blobs.join(bd.hex());
    let mut raw = std::fs::read(&p).unwrap();
    raw[3] ^= 1;
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, raw).unwrap();
    // Stale leftovers: an orphan index, a temp file, a partial of a complete blob.
    let orphan = Digest::of(b"orphan");
    std::fs::write(blobs.join(format!("{}.index", orphan.hex())), b"{}").unwrap();
    std::fs::write(dir.path().join("tmp/blob.1.1"), b"junk").unwrap();
    std::fs::create_dir_all(dir.path().join("partial").join(gd.hex())).unwrap();
    // Names that are not digests are never turned into paths; they are left alone.
    std::fs::create_dir_all(dir.path().join("partial/not-a-digest")).unwrap();
    std::fs::write(blobs.join("README"), b"x").unwrap();

    let store = open(dir.path()).await;
    assert!(store.contains(&gd).await);
    assert_eq!(store.chunk_index(&gd).await.unwrap(), Some(index_of(&good)));
    assert!(!store.contains(&bd).await);
    assert!(!blobs.join(bd.hex()).exists());
    assert!(!blobs.join(format!("{}.index", orphan.hex())).exists());
    assert!(!dir.path().join("tmp/blob.1.1").exists());
    assert!(!dir.path().join("partial").join(gd.hex()).exists());
    assert_eq!(store.usage(), good.len() as u64);
    assert!(dir.path().join("partial/not-a-digest").exists());
    assert!(blobs.join("README").exists());
}

#[tokio::test]
async fn images_report_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let config = br#"{"architecture":"amd64"}"#.to_vec();
    let layer = data(3 * CS as usize, 11);
    let manifest = br#"{"m":1}"#.to_vec();
    let (cd, ld, md) = (
        Digest::of(&config),
        Digest::of(&layer),
        Digest::of(&manifest),
    );
    store.put_small(md, &manifest).await.unwrap();
    store.put_small(cd, &config).await.unwrap();
    let rec = |reference: &str| ImageRecord {
        reference: reference.into(),
        manifest: md,
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        index: None,
        platform: Some("linux/amd64".into()),
        blobs: vec![(cd, config.len() as u64), (ld, layer.len() as u64)],
    };
    store.put_image(rec("r.example/b:1")).await.unwrap();
    store.put_image(rec("r.example/a:1")).await.unwrap();
    let mut w = store.writer(ld, layer.len() as u64).await.unwrap();
    w.write(&layer[..CS as usize]).await.unwrap();

    let imgs = store.images().await.unwrap();
    let refs: Vec<_> = imgs.iter().map(|s| s.record.reference.as_str()).collect();
    assert_eq!(refs, ["r.example/a:1", "r.example/b:1"]);
    assert_eq!(imgs[0].size, (config.len() + layer.len()) as u64);
    assert_eq!(imgs[0].stored_bytes, config.len() as u64 + u64::from(CS));
    assert!(!imgs[0].complete);

    w.write(&layer[CS as usize..]).await.unwrap();
    w.finish().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    let imgs = store.images().await.unwrap();
    assert_eq!(imgs.len(), 2);
    assert!(imgs.iter().all(|s| s.complete && s.stored_bytes == s.size));
    assert_eq!(imgs[1].record, rec("r.example/b:1"));
}
