//! In-process swarm harness: nodes on 127.0.0.1 with private temp stores.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_swarm::{Multiaddr, Swarm, SwarmConfig, SwarmHandle};
use prometheus_client::registry::Registry;
use rand::RngCore;

pub const CHUNK: u32 = 1024 * 1024;

pub struct Node {
    pub handle: SwarmHandle,
    pub store: Store,
    pub addr: Multiaddr,
    pub registry: Registry,
    _dir: tempfile::TempDir,
}

pub fn config(peers: Vec<Multiaddr>) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        peers,
        discovery_interval: Duration::from_secs(1),
        chunk_timeout: Duration::from_secs(10),
        ..SwarmConfig::default()
    }
}

pub async fn store(dir: &std::path::Path) -> Store {
    let cfg = StoreConfig {
        chunk_size: CHUNK,
        ..StoreConfig::new(dir)
    };
    Store::open(cfg).await.unwrap()
}

/// Starts a node; `seed` blobs are written into its store before the swarm starts (so the start-up
/// re-announcement is what advertises them).
pub async fn node(cfg: SwarmConfig, seed: &[&[u8]]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    for data in seed {
        put(&store, data).await;
    }
    let mut registry = Registry::default();
    let handle = Swarm::spawn(cfg, store.clone(), &mut registry)
        .await
        .unwrap();
    let addr = handle.listen_addrs().await.unwrap()[0].clone();
    Node {
        handle,
        store,
        addr,
        registry,
        _dir: dir,
    }
}

pub async fn put(store: &Store, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = store.writer(d, data.len() as u64).await.unwrap();
    w.write(data).await.unwrap();
    w.finish().await.unwrap();
    d
}

pub fn random_blob(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A seeder plus `n` leechers; every node dials all nodes started before it (as DNS discovery of a
/// headless Service would give every node every address).
pub async fn cluster(
    seed: &[u8],
    n: usize,
    tweak: impl Fn(usize, &mut SwarmConfig),
) -> (Node, Vec<Node>) {
    let mut cfg = config(vec![]);
    tweak(0, &mut cfg);
    let seeder = node(cfg, &[seed]).await;
    let mut addrs = vec![seeder.addr.clone()];
    let mut leechers = Vec::new();
    for i in 1..=n {
        let mut cfg = config(addrs.clone());
        tweak(i, &mut cfg);
        let l = node(cfg, &[]).await;
        addrs.push(l.addr.clone());
        leechers.push(l);
    }
    (seeder, leechers)
}

/// Waits (bounded) until every node sees at least `min` peers.
pub async fn wait_connected(nodes: &[&SwarmHandle], min: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    for h in nodes {
        loop {
            let n = h.connected_peers().await.unwrap().len();
            if n >= min {
                break;
            }
            assert!(Instant::now() < until, "node has {n} peers, wanted {min}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// sha256 of the complete blob as stored.
pub async fn stored_digest(store: &Store, d: &Digest) -> Digest {
    let len = store.blob_len(d).await.unwrap().expect("blob is complete");
    let mut h = preheat_core::digest::Hasher::new();
    let ix = store.chunk_index(d).await.unwrap().unwrap();
    assert_eq!(ix.layout.size, len);
    for i in 0..ix.layout.count() {
        h.update(&store.read_chunk(d, i).await.unwrap());
    }
    h.finish()
}
