//! Where the store hashes bytes again after they were verified once: a complete blob found on disk
//! is checked chunk by chunk on first read; a partial's chunks read back to extend the sha256 are
//! not re-hashed, so a chunk changed on disk shows as a failed sha256, which `finish` traces back
//! to the chunk instead of calling the index forged.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use preheat_store::StoreError;

#[tokio::test]
async fn a_complete_blob_changed_on_disk_is_caught_on_first_read_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(3 * CS as usize, 7);
    let d = {
        let store = open(dir.path()).await;
        store_blob(&store, &blob).await
    };
    let path = dir.path().join("blobs").join("sha256").join(d.hex());
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)] // test: simulate a disk fault
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0x5a; 8], u64::from(CS) + 100).unwrap();

    let store = open(dir.path()).await;
    assert_eq!(&store.read_chunk(&d, 0).await.unwrap()[..], chunk(&blob, 0));
    assert!(matches!(
        store.read_chunk(&d, 1).await,
        Err(StoreError::Corrupt { .. })
    ));
    // Still refused on the next read: a failed check marks nothing as verified.
    assert!(matches!(
        store.read_chunk(&d, 1).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_partial_chunk_changed_on_disk_fails_finish_as_corrupt_and_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(4 * CS as usize, 8);
    let ix = index_of(&blob);
    let d = ix.blob;
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    for i in [3, 2, 1] {
        w.write_chunk(i, chunk(&blob, i), &ix.hashes[i as usize])
            .await
            .unwrap();
    }
    // Chunk 2 changes on disk before the sha256 prefix reaches it (chunk 0 is still missing).
    let data_file = dir.path().join("partial").join(d.hex()).join("data");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&data_file)
        .unwrap();
    f.write_all_at(&[0xa5; 4], 2 * u64::from(CS) + 9).unwrap();
    let (res, buf) = w
        .write_chunk_owned(0, chunk(&blob, 0).to_vec(), &ix.hashes[0])
        .await;
    res.unwrap();
    assert_eq!(buf.unwrap(), chunk(&blob, 0), "the buffer comes back");
    let err = w.finish().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { .. }),
        "a local fault, not a digest mismatch: {err:?}"
    );
    assert_eq!(
        store.partial(&d).await.unwrap().unwrap().done,
        vec![true, true, false, true],
        "only the changed chunk is forgotten"
    );
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    w.write_chunk(2, chunk(&blob, 2), &ix.hashes[2])
        .await
        .unwrap();
    w.finish().await.unwrap();
    assert_eq!(store.read_small(&d).await.unwrap(), blob);
}
