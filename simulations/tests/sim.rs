//! The simulator against physics and itself: never faster than the Kumar–Ross bound, equal
//! results for equal seeds, every live node finishes despite churn, rolling waves in order.

#![allow(clippy::unwrap_used)] // test code

use preheat_simulations::{run, Churn, Links, SimConfig, StartPattern, Victim};
use proptest::prelude::*;

const MB: f64 = 1e6;

fn small(n: usize, origin_mb: f64) -> SimConfig {
    let links = Links {
        up: 10.0 * MB,
        down: 10.0 * MB,
    };
    let mut cfg = SimConfig::uniform(n, links, origin_mb * MB, vec![3 << 20, 5 << 20]);
    cfg.chunk_size = 256 << 10;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn completions_are_at_or_above_the_bound(
        links in proptest::collection::vec((0.5f64..50.0, 0.5f64..50.0), 1..12),
        origin in 0.5f64..200.0,
        layers in proptest::collection::vec(64u64 << 10..4 << 20, 1..4),
        chunk_kib in 64u32..1024,
        rtt_ms in 0u64..20,
        seed in any::<u64>(),
    ) {
        let nodes: Vec<Links> = links.iter().map(|&(u, d)| Links { up: u * MB, down: d * MB }).collect();
        let mut cfg = SimConfig::uniform(nodes.len(), nodes[0], origin * MB, layers);
        cfg.nodes = nodes;
        cfg.chunk_size = chunk_kib << 10;
        cfg.rtt = std::time::Duration::from_millis(rtt_ms);
        cfg.seed = seed;
        let res = run(&cfg).unwrap();
        let bound = cfg.bound();
        prop_assert_eq!(res.unfinished, 0);
        let f = cfg.image_bytes() as f64;
        let slack = 1.0 - 1e-9;
        for (n, l) in res.per_node.iter().zip(&cfg.nodes) {
            let done = n.done.unwrap();
            prop_assert!(done >= f / cfg.origin_up * slack, "{done} < origin term");
            prop_assert!(done >= f / l.down * slack, "{done} < own download term");
        }
        prop_assert!(res.p100.unwrap() >= bound.seconds() * slack,
            "p100 {:?} below bound {}", res.p100, bound.seconds());
        prop_assert!(res.origin_bytes >= cfg.image_bytes());
        let received: u64 = res.per_node.iter().map(|n| n.received).sum();
        prop_assert!(received >= cfg.image_bytes() * cfg.nodes.len() as u64);
    }
}

#[test]
fn a_seed_gives_one_result_and_another_seed_another() {
    let mut cfg = small(12, 5.0);
    cfg.seed = 42;
    let a = run(&cfg).unwrap();
    let b = run(&cfg).unwrap();
    assert_eq!(a, b);
    cfg.seed = 43;
    let c = run(&cfg).unwrap();
    assert_ne!(
        a.per_node, c.per_node,
        "the seed picks the puller and breaks ties"
    );
}

#[test]
fn the_origin_sends_the_image_once_and_peers_send_the_rest() {
    let cfg = small(10, 5.0);
    let res = run(&cfg).unwrap();
    assert_eq!(res.origin_bytes, cfg.image_bytes());
    let peers: u64 = res.per_node.iter().map(|n| n.sent).sum();
    assert!(peers >= 9 * cfg.image_bytes(), "peers sent {peers}");
    assert_eq!(res.per_node.iter().filter(|n| n.puller).count(), 1);
}

#[test]
fn every_live_node_finishes_when_the_puller_and_another_node_die() {
    let mut cfg = small(8, 1.0);
    cfg.takeover = std::time::Duration::from_secs(2);
    cfg.churn = vec![
        Churn {
            at: 2.0,
            victim: Victim::Puller,
        },
        Churn {
            at: 3.0,
            victim: Victim::Other,
        },
    ];
    let res = run(&cfg).unwrap();
    assert_eq!(res.per_node.iter().filter(|n| n.killed).count(), 2);
    assert_eq!(res.unfinished, 0, "{res:?}");
    assert!(res.puller_killed);
    // The new puller resumes: the origin sends at most one image plus the dead puller's share.
    assert!(res.origin_bytes < 2 * cfg.image_bytes());
}

#[test]
fn rolling_waves_start_after_the_previous_wave_completed() {
    let mut cfg = small(10, 5.0);
    cfg.start = StartPattern::Rolling { fraction: 0.2 };
    let res = run(&cfg).unwrap();
    assert_eq!(res.unfinished, 0);
    let mut starts: Vec<f64> = res.per_node.iter().map(|n| n.start).collect();
    starts.sort_by(f64::total_cmp);
    starts.dedup();
    assert_eq!(starts.len(), 5, "five waves of two: {starts:?}");
    for n in &res.per_node {
        let earlier_done = res
            .per_node
            .iter()
            .filter(|m| m.start < n.start)
            .all(|m| m.done.unwrap() <= n.start);
        assert!(
            earlier_done,
            "a wave started before the previous one completed"
        );
    }
    assert!(res.makespan.unwrap() > res.p100.unwrap());
}

#[test]
fn invalid_configs_are_rejected() {
    let mut cfg = small(2, 5.0);
    cfg.layers.clear();
    assert!(run(&cfg).is_err());
    let mut cfg = small(2, 5.0);
    cfg.origin_up = 0.0;
    assert!(run(&cfg).is_err());
}
