//! Bad peers and missing blobs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use preheat_core::Digest;
use preheat_swarm::Error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flipping_bits_is_detected_banned_and_the_download_completes() {
    let data = random_blob(12 * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let honest = node(config(vec![]), &[&data]).await;
    let mut bad_cfg = config(vec![honest.addr.clone()]);
    bad_cfg.test_corrupt_uploads = true;
    let bad = node(bad_cfg, &[&data]).await;
    let mut leechers = Vec::new();
    for _ in 0..4 {
        leechers.push(node(config(vec![honest.addr.clone(), bad.addr.clone()]), &[]).await);
    }
    let hs: Vec<_> = leechers.iter().map(|n| &n.handle).collect();
    wait_connected(&hs, 2).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bad_total = 0;
    for l in &leechers {
        let r = tokio::time::timeout(
            Duration::from_secs(35),
            l.handle.fetch_blob(d, size, deadline),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(stored_digest(&l.store, &d).await, d);
        // Banned at the first bad chunk: only requests already in flight can fail too.
        let per_peer = config(vec![]).max_requests_per_peer as u64;
        assert!(
            r.bad_chunks <= per_peer,
            "{} bad chunks: the ban did not stop requests",
            r.bad_chunks
        );
        bad_total += r.bad_chunks;
    }
    println!("bad chunks detected across leechers: {bad_total}");
    assert!(bad_total > 0, "nobody asked the corrupting peer");
    assert!(bad.handle.bytes_sent() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_is_a_clear_error_at_the_deadline() {
    let a = node(config(vec![]), &[]).await;
    let b = node(config(vec![a.addr.clone()]), &[]).await;
    wait_connected(&[&a.handle, &b.handle], 1).await;
    let missing = Digest::of(b"nobody has this");
    let deadline = Instant::now() + Duration::from_secs(2);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        b.handle.fetch_blob(missing, 1 << 20, deadline),
    )
    .await
    .unwrap();
    assert!(
        matches!(r, Err(Error::NoProviders { digest }) if digest == missing),
        "{r:?}"
    );
    assert!(!b.store.contains(&missing).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_announce_withdraw_and_local_blobs() {
    let data = random_blob(3 * CHUNK as usize);
    let a = node(config(vec![]), &[&data]).await;
    let b = node(config(vec![a.addr.clone()]), &[]).await;
    wait_connected(&[&a.handle, &b.handle], 1).await;
    let d = Digest::of(&data);
    // Re-announced at start-up from the store.
    let until = Instant::now() + Duration::from_secs(10);
    while !b
        .handle
        .providers(d)
        .await
        .unwrap()
        .contains(&a.handle.local_peer_id())
    {
        assert!(Instant::now() < until, "seeded blob was never advertised");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = a
        .handle
        .fetch_blob(
            d,
            data.len() as u64,
            Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(r.already_local);
    a.handle.withdraw(d).await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &b.registry).unwrap();
    for name in [
        "swarm_bad_chunks_total",
        "swarm_connected_peers",
        "swarm_provider_lookups_total",
        "libp2p_",
    ] {
        assert!(text.contains(name), "{name} missing from metrics");
    }
    b.handle.shutdown().await;
    assert!(matches!(
        b.handle.connected_peers().await,
        Err(Error::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_index_fails_the_digest_and_another_source_completes_the_blob() {
    let data = random_blob(4 * CHUNK as usize);
    let d = Digest::of(&data);
    let size = data.len() as u64;
    // A consistent forger: its chunks match its own index, but not the blob's sha256.
    let mut fcfg = config(vec![]);
    fcfg.test_corrupt_uploads = true;
    fcfg.test_forge_index = true;
    let forger = node(fcfg, &[&data]).await;
    let leecher = node(config(vec![forger.addr.clone()]), &[]).await;
    wait_connected(&[&leecher.handle], 1).await;

    let h = leecher.handle.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = tokio::spawn(async move { h.fetch_blob(d, size, deadline).await });
    // The leecher takes the whole forged blob from the forger...
    let until = Instant::now() + Duration::from_secs(20);
    while forger.handle.bytes_sent() < size {
        assert!(Instant::now() < until, "the forger never served the blob");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and only then does an honest seeder appear.
    let honest = node(
        config(vec![forger.addr.clone(), leecher.addr.clone()]),
        &[&data],
    )
    .await;
    let r = tokio::time::timeout(Duration::from_secs(35), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.forged_indexes, 1, "{r:?}");
    assert_eq!(stored_digest(&leecher.store, &d).await, d);
    assert!(honest.handle.bytes_sent() >= size);
}
