//! The serving side holds chunk requests it cannot serve yet (`upload_wait`) instead of answering
//! busy at once: real nodes over TCP on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use preheat_core::Digest;

/// `swarm_busy_answers_total` of a node.
fn busy_answers(n: &Node) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &n.registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("swarm_busy_answers_total "))
        .map(|v| v.trim().parse().unwrap())
        .expect("swarm_busy_answers_total is exported")
}

/// One seeder with a single upload slot and no super-seeding, four leechers at once; returns the
/// seeder's busy answers.
async fn four_leechers_one_slot(wait: Duration) -> u64 {
    let data = random_blob(8 * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let (seeder, leechers) = cluster(&data, 4, |_, c| {
        c.max_uploads = 1;
        c.resend_after = Duration::ZERO;
        c.upload_wait = wait;
    })
    .await;
    let all: Vec<_> = std::iter::once(&seeder)
        .chain(&leechers)
        .map(|n| &n.handle)
        .collect();
    wait_connected(&all, 1).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let jobs: Vec<_> = leechers
        .iter()
        .map(|l| {
            let h = l.handle.clone();
            tokio::spawn(async move { h.fetch_blob(d, size, deadline).await })
        })
        .collect();
    for (i, j) in jobs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(45), j)
            .await
            .unwrap()
            .unwrap();
        r.unwrap_or_else(|e| panic!("leecher {i}: {e:?}"));
        assert_eq!(stored_digest(&leechers[i].store, &d).await, d);
    }
    let busy = busy_answers(&seeder);
    for n in std::iter::once(&seeder).chain(&leechers) {
        n.handle.shutdown().await;
    }
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_upload_slots_wait_instead_of_bouncing() {
    // Up to 12 requests (3 per leecher) meet one slot: with a wait they queue and are served in
    // turn; without one most are answered busy at once.
    let waited = four_leechers_one_slot(Duration::from_secs(10)).await;
    assert_eq!(waited, 0, "busy answers despite a 10 s upload wait");
    let bounced = four_leechers_one_slot(Duration::ZERO).await;
    assert!(bounced > 0, "no busy answer with one slot and no wait");
}
