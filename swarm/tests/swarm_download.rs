//! Multi-node downloads in one process over real TCP on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::*;
use preheat_core::Digest;

const NODES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nineteen_leechers_share_the_load_of_one_seeder() {
    let data = random_blob(20 * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let (seeder, leechers) = cluster(&data, NODES - 1, |_, _| {}).await;
    let all: Vec<_> = std::iter::once(&seeder)
        .chain(&leechers)
        .map(|n| &n.handle)
        .collect();
    wait_connected(&all, 1).await;

    let deadline = Instant::now() + Duration::from_secs(50);
    let jobs: Vec<_> = leechers
        .iter()
        .map(|l| {
            let h = l.handle.clone();
            tokio::spawn(async move { h.fetch_blob(d, size, deadline).await })
        })
        .collect();
    for (i, j) in jobs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(55), j)
            .await
            .unwrap()
            .unwrap();
        let r = r.unwrap_or_else(|e| panic!("leecher {i}: {e:?}"));
        assert!(!r.already_local);
        assert_eq!(stored_digest(&leechers[i].store, &d).await, d);
    }
    let sent = seeder.handle.bytes_sent();
    let factor = sent as f64 / size as f64;
    println!(
        "seeder uploaded {sent} bytes = {factor:.2}x the blob for {} leechers",
        NODES - 1
    );
    assert!(sent < (NODES as u64 - 1) * size, "seeder sent {factor:.2}x");
    let received: u64 = leechers.iter().map(|l| l.handle.bytes_received()).sum();
    assert!(received >= (NODES as u64 - 1) * size);
    for n in std::iter::once(&seeder).chain(&leechers) {
        n.handle.shutdown().await;
    }
}
