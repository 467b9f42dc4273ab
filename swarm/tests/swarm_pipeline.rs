//! Pipelining: leechers follow a node that is still writing a blob through a `BlobWriter` (as a
//! registry pull does), on real TCP on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use preheat_core::Digest;
use preheat_store::{BlobWriter, Store};
use preheat_swarm::Error;

const LEECHERS: usize = 5;
const CHUNKS: usize = 12;
/// The writer streams in slices smaller than a chunk, pausing between them like a network read.
const SLICE: usize = 256 * 1024;

/// A puller node and `LEECHERS` leechers, each dialling every node started before it.
async fn cluster_around_puller(stall: Option<Duration>) -> (Node, Vec<Node>) {
    let puller = node(config(vec![]), &[]).await;
    let mut addrs = vec![puller.addr.clone()];
    let mut leechers = Vec::new();
    for _ in 0..LEECHERS {
        let mut cfg = config(addrs.clone());
        if let Some(s) = stall {
            cfg.stall_timeout = s;
        }
        let l = node(cfg, &[]).await;
        addrs.push(l.addr.clone());
        leechers.push(l);
    }
    let all: Vec<_> = std::iter::once(&puller)
        .chain(&leechers)
        .map(|n| &n.handle)
        .collect();
    wait_connected(&all, 1).await;
    (puller, leechers)
}

/// Writes chunks `from..to` of `data` sequentially, in slices with short pauses.
async fn stream(w: &mut BlobWriter, data: &[u8], from: usize, to: usize) {
    let c = CHUNK as usize;
    for slice in data[from * c..to * c].chunks(SLICE) {
        w.write(slice).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Waits (bounded) until every leecher stored at least one chunk of `d`.
async fn every_leecher_has_a_chunk(leechers: &[Node], d: &Digest, writer: &BlobWriter) {
    let until = Instant::now() + Duration::from_secs(30);
    for (i, l) in leechers.iter().enumerate() {
        loop {
            let p = l.store.partial(d).await.unwrap();
            if p.is_some_and(|p| p.bytes_done > 0) {
                break;
            }
            assert!(
                Instant::now() < until,
                "leecher {i} got no chunk while the writer was at {} of {} bytes",
                writer.bytes_done(),
                writer.layout().size
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn spawn_fetches(
    leechers: &[Node],
    d: Digest,
    size: u64,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<Result<preheat_swarm::FetchReport, Error>>> {
    leechers
        .iter()
        .map(|l| {
            let h = l.handle.clone();
            tokio::spawn(async move { h.fetch_blob(d, size, deadline).await })
        })
        .collect()
}

/// Every chunk `store` holds of `d` (partial or complete) equals the same chunk of `data`.
async fn chunks_match(store: &Store, d: &Digest, data: &[u8]) -> usize {
    let Some(known) = store.chunk_hashes(d).await.unwrap() else {
        return 0;
    };
    let mut n = 0;
    for (i, stored) in (0u32..).zip(&known.stored) {
        if *stored {
            let chunk = store.read_chunk(d, i).await.unwrap();
            let (c, i) = (CHUNK as usize, i as usize);
            assert_eq!(&chunk[..], &data[i * c..(i + 1) * c], "chunk {i} differs");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leechers_stream_a_blob_while_a_registry_pull_is_still_writing_it() {
    let data = random_blob(CHUNKS * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let (puller, leechers) = cluster_around_puller(None).await;

    // The node creates the writer, then announces at once (before any chunk exists).
    let mut w = puller.store.writer(d, size).await.unwrap();
    puller.handle.announce(d).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let jobs = spawn_fetches(&leechers, d, size, deadline);

    stream(&mut w, &data, 0, CHUNKS / 2).await;
    // Proof of pipelining: with the blob half written, every leecher already holds chunks.
    every_leecher_has_a_chunk(&leechers, &d, &w).await;
    assert!(!puller.store.contains(&d).await);
    stream(&mut w, &data, CHUNKS / 2, CHUNKS).await;
    w.finish().await.unwrap();

    for (i, j) in jobs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(65), j)
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|e| panic!("leecher {i}: {e:?}"));
        assert!(!r.already_local);
        assert_eq!(stored_digest(&leechers[i].store, &d).await, d);
    }
    let sent = puller.handle.bytes_sent();
    println!(
        "puller uploaded {:.2}x the blob to {LEECHERS} leechers",
        sent as f64 / size as f64
    );
    assert!(sent > 0, "the leechers never fetched from the puller");
    for n in std::iter::once(&puller).chain(&leechers) {
        n.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_discarded_halfway_stalls_the_leechers_without_a_corrupt_blob() {
    let data = random_blob(CHUNKS * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let stall = Duration::from_secs(3);
    let (puller, leechers) = cluster_around_puller(Some(stall)).await;

    let mut w = puller.store.writer(d, size).await.unwrap();
    puller.handle.announce(d).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let jobs = spawn_fetches(&leechers, d, size, deadline);
    stream(&mut w, &data, 0, CHUNKS / 2).await;
    every_leecher_has_a_chunk(&leechers, &d, &w).await;
    // The registry pull fails: the node discards the partial and withdraws the advertisement.
    w.discard().await.unwrap();
    puller.handle.withdraw(d).await.unwrap();

    for (i, j) in jobs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(65), j)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Err(Error::Stalled { digest, .. }) if digest == d),
            "leecher {i}: {r:?}"
        );
        let l = &leechers[i];
        assert!(!l.store.contains(&d).await, "leecher {i} has a blob");
        let kept = chunks_match(&l.store, &d, &data).await;
        assert!(kept <= CHUNKS / 2, "leecher {i} holds {kept} chunks");
    }
    for n in std::iter::once(&puller).chain(&leechers) {
        n.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_re_announces_its_partial_and_leechers_follow_the_resumed_pull() {
    let data = random_blob(CHUNKS * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    // A pull interrupted by a restart: a third of the blob is in the store, no swarm ran yet.
    let dir = tempfile::tempdir().unwrap();
    let store = common::store(dir.path()).await;
    let mut w = store.writer(d, size).await.unwrap();
    stream(&mut w, &data, 0, CHUNKS / 3).await;
    drop(w);
    let mut registry = prometheus_client::registry::Registry::default();
    let puller = preheat_swarm::Swarm::spawn(config(vec![]), store.clone(), &mut registry)
        .await
        .unwrap();
    let addr = puller.listen_addrs().await.unwrap()[0].clone();
    let leecher = node(config(vec![addr]), &[]).await;
    wait_connected(&[&leecher.handle], 1).await;

    let until = Instant::now() + Duration::from_secs(20);
    while !leecher
        .handle
        .providers(d)
        .await
        .unwrap()
        .contains(&puller.local_peer_id())
    {
        assert!(Instant::now() < until, "the partial was not re-announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = leecher.handle.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = tokio::spawn(async move { h.fetch_blob(d, size, deadline).await });
    // The leecher takes the stored third from the restarted node before the pull resumes.
    let until = Instant::now() + Duration::from_secs(30);
    while chunks_match(&leecher.store, &d, &data).await < CHUNKS / 3 {
        assert!(
            Instant::now() < until,
            "the leecher never got the partial's chunks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut w = store.writer(d, size).await.unwrap();
    assert_eq!(w.resume_offset(), (CHUNKS / 3) as u64 * u64::from(CHUNK));
    stream(&mut w, &data, CHUNKS / 3, CHUNKS).await;
    w.finish().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(65), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.bytes_from_peers, size);
    assert_eq!(stored_digest(&leecher.store, &d).await, d);
    puller.shutdown().await;
    leecher.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leechers_with_another_chunk_size_adopt_the_pullers_layout() {
    let data = random_blob(CHUNKS * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let big = 2 * CHUNK;
    let cfg = preheat_store::StoreConfig {
        chunk_size: big,
        ..preheat_store::StoreConfig::new(dir.path())
    };
    let store = Store::open(cfg).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let puller = preheat_swarm::Swarm::spawn(config(vec![]), store.clone(), &mut registry)
        .await
        .unwrap();
    let addr = puller.listen_addrs().await.unwrap()[0].clone();
    let a = node(config(vec![addr.clone()]), &[]).await;
    let b = node(config(vec![addr, a.addr.clone()]), &[]).await;
    wait_connected(&[&a.handle, &b.handle], 2).await;

    let mut w = store.writer(d, size).await.unwrap();
    puller.announce(d).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let leechers = [a, b];
    let jobs = spawn_fetches(&leechers, d, size, deadline);
    stream(&mut w, &data, 0, CHUNKS / 2).await;
    every_leecher_has_a_chunk(&leechers, &d, &w).await;
    stream(&mut w, &data, CHUNKS / 2, CHUNKS).await;
    w.finish().await.unwrap();
    for (i, j) in jobs.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(65), j)
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|e| panic!("leecher {i}: {e:?}"));
        let l = &leechers[i];
        assert_eq!(stored_digest(&l.store, &d).await, d);
        let ix = l.store.chunk_index(&d).await.unwrap().unwrap();
        assert_eq!(
            ix.layout.chunk_size, big,
            "leecher {i} kept its own chunk size"
        );
    }
    puller.shutdown().await;
    for l in &leechers {
        l.handle.shutdown().await;
    }
}
