//! The seeder dies mid-way: the leechers finish from each other (real TCP on 127.0.0.1).

mod common;

use std::time::{Duration, Instant};

use common::*;
use preheat_core::Digest;

const NODES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downloads_complete_after_the_seeder_dies() {
    let data = random_blob(12 * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    // A slow seeder, so that the leechers are mid-way when it dies.
    let (seeder, leechers) = cluster(&data, NODES - 1, |i, c| {
        if i == 0 {
            c.upload_rate = Some(6 * u64::from(CHUNK));
        }
    })
    .await;
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
    // Kill the seeder once the leechers together hold every chunk, before anyone finished.
    let until = Instant::now() + Duration::from_secs(40);
    let partial_at_kill = loop {
        let mut union = [false; 12];
        let mut partial = 0;
        for l in &leechers {
            if let Some(p) = l.store.partial(&d).await.unwrap() {
                partial += 1;
                for (u, done) in union.iter_mut().zip(&p.done) {
                    *u |= *done;
                }
            } else if l.store.contains(&d).await {
                union.iter_mut().for_each(|u| *u = true);
            }
        }
        if union.iter().all(|u| *u) {
            break partial;
        }
        assert!(Instant::now() < until, "leechers never covered the blob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    seeder.handle.shutdown().await;
    let sent = seeder.handle.bytes_sent();
    println!(
        "seeder killed after sending {:.2}x the blob; {partial_at_kill} leechers were still partial",
        sent as f64 / size as f64
    );
    assert!(
        partial_at_kill > 0,
        "every leecher finished before the seeder died"
    );
    for (i, j) in jobs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(55), j)
            .await
            .unwrap()
            .unwrap();
        r.unwrap_or_else(|e| panic!("leecher {i}: {e:?}"));
        assert_eq!(stored_digest(&leechers[i].store, &d).await, d);
    }
    for l in &leechers {
        l.handle.shutdown().await;
    }
}
