//! Chunk notices and provisional hashes of blobs being written, by any writer.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod common;

use common::*;
use preheat_core::chunk::chunk_hash;
use preheat_core::{ChunkLayout, Digest};
use preheat_store::{ChunkWritten, StoreError};

#[tokio::test]
async fn a_sequential_writer_notifies_each_chunk_and_exposes_its_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(3 * CS as usize + 100, 7);
    let d = Digest::of(&blob);
    let mut rx = store.subscribe_chunks();
    let mut w = store.writer(d, blob.len() as u64).await.unwrap();
    let hashes: Vec<[u8; 32]> = blob.chunks(CS as usize).map(chunk_hash).collect();

    assert_eq!(
        store.chunk_hashes(&d).await.unwrap().unwrap().stored,
        [false; 4]
    );
    w.write(&blob[..2 * CS as usize + 5]).await.unwrap();
    for i in 0..2 {
        assert_eq!(
            rx.try_recv().unwrap(),
            ChunkWritten {
                digest: d,
                chunk: i,
                hash: hashes[i as usize]
            }
        );
    }
    assert!(rx.try_recv().is_err(), "an unfinished chunk was announced");
    let known = store.chunk_hashes(&d).await.unwrap().unwrap();
    assert!(!known.complete);
    assert_eq!(known.stored, [true, true, false, false]);
    assert_eq!(known.hashes[1], Some(hashes[1]));
    assert_eq!(known.hashes[2], None);
    assert!(known.to_index().is_none());
    // Readers get verified chunks of the partial while the writer holds it.
    assert_eq!(
        &store.read_chunk(&d, 1).await.unwrap()[..],
        &blob[CS as usize..2 * CS as usize]
    );

    w.write(&blob[2 * CS as usize + 5..]).await.unwrap();
    assert_eq!(rx.try_recv().unwrap().chunk, 2);
    assert_eq!(rx.try_recv().unwrap().chunk, 3);
    w.finish().await.unwrap();
    let known = store.chunk_hashes(&d).await.unwrap().unwrap();
    assert!(known.complete && known.stored.iter().all(|s| *s));
    assert_eq!(known.to_index().unwrap().hashes, hashes);
    assert!(store
        .chunk_hashes(&Digest::of(b"none"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_swarm_writer_adopts_a_peer_layout_only_before_its_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let blob = data(4 * CS as usize, 9);
    let d = Digest::of(&blob);
    let size = blob.len() as u64;
    let mut w = store.writer(d, size).await.unwrap();
    let theirs = ChunkLayout::new(size, 2 * CS);
    w.set_layout(theirs).await.unwrap();
    assert_eq!(w.layout(), theirs);
    assert_eq!(
        store.chunk_hashes(&d).await.unwrap().unwrap().layout,
        theirs
    );
    let c0 = &blob[..2 * CS as usize];
    w.write_chunk(0, c0, &chunk_hash(c0)).await.unwrap();
    let err = w.set_layout(ChunkLayout::new(size, CS)).await.unwrap_err();
    assert!(matches!(err, StoreError::IndexMismatch { .. }), "{err}");
    // The adopted layout survives a restart.
    drop(w);
    drop(store);
    let store = open(dir.path()).await;
    let known = store.chunk_hashes(&d).await.unwrap().unwrap();
    assert_eq!(known.layout, theirs);
    assert_eq!(known.stored, [true, false]);
}
