//! Random event sequences and simulated swarms in virtual time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::tests::{layout, ms, requests, Checker};
use super::*;
use crate::picker::Policy;

#[derive(Debug, Clone)]
enum Op {
    Add(u8, Vec<bool>),
    Remove(u8),
    Have(u8, u32),
    Advance(u64),
    Ok(usize),
    Bad(usize),
    Fail(usize),
    Busy(usize),
    Declined(usize),
    Unrequested(u8, u32),
}

fn op(chunks: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..6, proptest::collection::vec(any::<bool>(), chunks as usize)).prop_map(|(p, b)| Op::Add(p, b)),
        1 => (0u8..6).prop_map(Op::Remove),
        2 => (0u8..6, 0..chunks).prop_map(|(p, c)| Op::Have(p, c)),
        3 => prop_oneof![0u64..2000, 0u64..400_000].prop_map(Op::Advance),
        4 => any::<usize>().prop_map(Op::Ok),
        1 => any::<usize>().prop_map(Op::Bad),
        2 => any::<usize>().prop_map(Op::Fail),
        2 => any::<usize>().prop_map(Op::Busy),
        2 => any::<usize>().prop_map(Op::Declined),
        1 => (0u8..6, 0..chunks).prop_map(|(p, c)| Op::Unrequested(p, c)),
    ]
}

fn cfg_strategy() -> impl Strategy<Value = TransferConfig> {
    (
        1u32..5,
        1u32..12,
        0u32..3,
        prop_oneof![
            Just(Policy::RarestFirst),
            Just(Policy::Random),
            Just(Policy::Sequential)
        ],
    )
        .prop_map(|(per_peer, total, dups, policy)| TransferConfig {
            max_in_flight_per_peer: per_peer,
            max_in_flight_total: total,
            endgame_duplicates: dups,
            policy,
            ..TransferConfig::default()
        })
}

fn scenario() -> impl Strategy<Value = (u32, TransferConfig, Vec<bool>, Vec<Op>, u64)> {
    (1u32..40).prop_flat_map(|n| {
        (
            Just(n),
            cfg_strategy(),
            proptest::collection::vec(any::<bool>(), n as usize),
            proptest::collection::vec(op(n), 1..120),
            any::<u64>(),
        )
    })
}

proptest! {
    #[test]
    fn invariants_hold_after_every_step((n, cfg, have, ops, seed) in scenario()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = Instant::now();
        let mut t = Transfer::<u8>::new(layout(n), Bitfield::from_bools(&have), cfg).unwrap();
        let mut chk = Checker::default();
        for op in ops {
            let pick = |chk: &Checker, i: usize| chk.out.iter().nth(i % chk.out.len().max(1)).copied();
            match op {
                Op::Add(p, b) => t.add_peer(p, Bitfield::from_bools(&b)).unwrap(),
                Op::Remove(p) => { t.remove_peer(p); chk.peer_gone(p); }
                Op::Have(p, c) => {
                    t.peer_have(p, c).unwrap();
                    // A `Have` that `could_use` calls useless lets no new request out.
                    if !t.could_use(&p, c, now) {
                        let acts = t.poll(now, &mut rng);
                        prop_assert!(requests(&acts).is_empty(), "{:?} after a useless have", acts);
                        chk.apply(&t, &acts);
                    }
                }
                Op::Advance(d) => now += ms(d),
                Op::Ok(i) => if let Some((p, c)) = pick(&chk, i) { t.on_chunk_ok(p, c, 100, now); chk.answered(p, c); },
                Op::Bad(i) => if let Some((p, c)) = pick(&chk, i) { t.on_chunk_bad(p, c, now); chk.answered(p, c); },
                Op::Fail(i) => if let Some((p, c)) = pick(&chk, i) { t.on_failure(p, c, now); chk.answered(p, c); },
                Op::Busy(i) => if let Some((p, c)) = pick(&chk, i) { t.on_busy(p, c, now); chk.answered(p, c); },
                Op::Declined(i) => if let Some((p, c)) = pick(&chk, i) { t.on_declined(p, c, now); chk.answered(p, c); },
                Op::Unrequested(p, c) => { t.on_chunk_ok(p, c, 100, now); chk.answered(p, c); }
            }
            let acts = t.poll(now, &mut rng);
            chk.apply(&t, &acts);
            if let Some(d) = t.next_deadline() {
                prop_assert!(!t.is_complete());
                // Deadlines never lie in the past of the last poll.
                prop_assert!(d > now);
            }
        }
    }
}

/// How a simulated peer answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Honest,
    Flaky,
    Liar,
    Silent,
    Busy,
    Decliner,
    Leaves,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Honest),
        Just(Kind::Flaky),
        Just(Kind::Liar),
        Just(Kind::Silent),
        Just(Kind::Busy),
        Just(Kind::Decliner),
        Just(Kind::Leaves)
    ]
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Bad,
    Fail,
    Busy,
    Declined,
    Leave,
}

/// Runs a download against simulated peers in virtual time; panics unless it completes within
/// `20 n + 200` steps (one step = one poll and the events up to the next deadline; thousands of
/// random runs needed at most about 4 n).
fn simulate(n: u32, cfg: TransferConfig, others: &[(Kind, Vec<bool>)], seed: u64) -> u32 {
    let max_steps = 20 * n + 200;
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut now = t0;
    let mut t = Transfer::<u8>::new(layout(n), Bitfield::new(n), cfg).unwrap();
    let mut chk = Checker::default();
    // Peer 0 is the honest seeder; the rest have random parts of the blob.
    let mut kinds = vec![Kind::Honest];
    t.add_peer(0, Bitfield::full(n)).unwrap();
    for (i, (k, b)) in (1u8..).zip(others) {
        kinds.push(*k);
        t.add_peer(i, Bitfield::from_bools(b)).unwrap();
    }
    let mut gone = BTreeSet::new();
    let mut queue: BTreeMap<(Duration, u64), (u8, u32, Answer)> = BTreeMap::new();
    let mut seq = 0u64;
    for step in 0..max_steps {
        let acts = t.poll(now, &mut rng);
        chk.apply(&t, &acts);
        if acts.contains(&Action::Complete) {
            return step;
        }
        for (p, c) in requests(&acts) {
            let answer = match kinds[p as usize] {
                Kind::Honest => Answer::Ok,
                Kind::Flaky if rng.gen_bool(0.5) => Answer::Fail,
                Kind::Flaky => Answer::Ok,
                Kind::Liar => Answer::Bad,
                Kind::Silent => continue,
                Kind::Busy if rng.gen_bool(0.7) => Answer::Busy,
                Kind::Busy => Answer::Ok,
                Kind::Decliner if rng.gen_bool(0.7) => Answer::Declined,
                Kind::Decliner => Answer::Ok,
                Kind::Leaves if rng.gen_bool(0.2) => Answer::Leave,
                Kind::Leaves => Answer::Ok,
            };
            seq += 1;
            queue.insert((now - t0 + ms(rng.gen_range(5..3000)), seq), (p, c, answer));
        }
        let next_event = queue.keys().next().map(|&(d, _)| t0 + d);
        now = match (next_event, t.next_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a
                .or(b)
                .expect("stuck: nothing in flight, no deadline, not complete"),
        };
        while let Some(entry) = queue.first_entry() {
            if t0 + entry.key().0 > now {
                break;
            }
            let (p, c, answer) = entry.remove();
            if gone.contains(&p) {
                continue;
            }
            match answer {
                Answer::Ok => t.on_chunk_ok(p, c, 100, now),
                Answer::Bad => t.on_chunk_bad(p, c, now),
                Answer::Fail => t.on_failure(p, c, now),
                Answer::Busy => t.on_busy(p, c, now),
                Answer::Declined => t.on_declined(p, c, now),
                Answer::Leave => {
                    gone.insert(p);
                    t.remove_peer(p);
                    chk.peer_gone(p);
                    continue;
                }
            }
            chk.answered(p, c);
        }
    }
    panic!("no Complete after {max_steps} steps: {:?}", t.stats());
}

proptest! {
    // Few shrink steps: each one replays a whole simulation.
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 512, ..ProptestConfig::default() })]
    #[test]
    fn downloads_always_complete(
        (n, others) in (1u32..48).prop_flat_map(|n| (
            Just(n),
            proptest::collection::vec((kind(), proptest::collection::vec(any::<bool>(), n as usize)), 0..8),
        )),
        cfg in cfg_strategy(),
        seed in any::<u64>(),
    ) {
        simulate(n, cfg, &others, seed);
    }
}

#[test]
fn liar_and_silent_peers_do_not_stop_a_download() {
    let n = 40;
    let others = vec![
        (Kind::Liar, vec![true; 40]),
        (Kind::Silent, vec![true; 40]),
        (Kind::Flaky, vec![true; 40]),
        (Kind::Leaves, vec![true; 40]),
    ];
    simulate(n, TransferConfig::default(), &others, 42);
}
