use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{rngs::StdRng, SeedableRng};

use super::*;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bits(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut b = Bitfield::new(len);
    for i in ones {
        b.set(i);
    }
    b
}

pub(super) fn layout(chunks: u32) -> ChunkLayout {
    ChunkLayout::new(u64::from(chunks) * 100 - 30, 100)
}

fn fresh(chunks: u32, cfg: TransferConfig) -> Transfer<u8> {
    Transfer::new(layout(chunks), Bitfield::new(chunks), cfg).unwrap()
}

pub(super) fn requests(acts: &[Action<u8>]) -> Vec<(u8, u32)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Request { peer, chunk } => Some((*peer, *chunk)),
            _ => None,
        })
        .collect()
}

/// Mirrors the outstanding requests from the actions and checks every invariant after a poll.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) out: BTreeSet<(u8, u32)>,
    completes: u32,
}

impl Checker {
    pub(super) fn apply(&mut self, t: &Transfer<u8>, acts: &[Action<u8>]) {
        let cfg = t.config().clone();
        for a in acts {
            match *a {
                Action::Request { peer, chunk } => {
                    assert!(!t.have().get(chunk), "requested a chunk we have: {a:?}");
                    assert!(
                        t.banned_until(&peer).is_none(),
                        "requested from banned peer: {a:?}"
                    );
                    assert!(
                        t.peer_has(&peer).is_some_and(|h| h.get(chunk)),
                        "peer lacks chunk: {a:?}"
                    );
                    assert!(
                        self.out.insert((peer, chunk)),
                        "same chunk twice to one peer: {a:?}"
                    );
                }
                Action::Cancel { peer, chunk } => {
                    assert!(self.out.remove(&(peer, chunk)), "cancel of nothing: {a:?}");
                }
                Action::Ban { peer, .. } => {
                    assert!(t.banned_until(&peer).is_some(), "ban not recorded: {a:?}");
                }
                Action::Complete => {
                    self.completes += 1;
                    assert!(
                        t.is_complete() && self.completes == 1,
                        "complete twice or early"
                    );
                }
            }
        }
        for &(p, _) in &self.out {
            assert!(
                t.banned_until(&p).is_none(),
                "banned peer {p} still has requests"
            );
        }
        let actual: BTreeSet<(u8, u32)> = t.in_flight().collect();
        assert_eq!(
            actual, self.out,
            "state machine and driver disagree on what is in flight"
        );
        assert_eq!(t.in_flight_count() as usize, self.out.len());
        assert!(t.in_flight_count() <= cfg.max_in_flight_total);
        let mut per_peer: BTreeMap<u8, u32> = BTreeMap::new();
        let mut per_chunk: BTreeMap<u32, u32> = BTreeMap::new();
        for &(p, c) in &self.out {
            assert!(!t.have().get(c), "in flight but verified: {c}");
            *per_peer.entry(p).or_default() += 1;
            *per_chunk.entry(c).or_default() += 1;
        }
        assert!(per_peer.values().all(|&n| n <= cfg.max_in_flight_per_peer));
        assert!(per_chunk.values().all(|&n| n <= 1 + cfg.endgame_duplicates));
    }

    /// The driver answered or dropped a request itself.
    pub(super) fn answered(&mut self, peer: u8, chunk: u32) {
        self.out.remove(&(peer, chunk));
    }

    pub(super) fn peer_gone(&mut self, peer: u8) {
        self.out.retain(|&(p, _)| p != peer);
    }
}

#[test]
fn bounds_hold_with_one_full_peer() {
    let mut rng = StdRng::seed_from_u64(1);
    let now = Instant::now();
    let mut t = fresh(10, TransferConfig::default());
    t.add_peer(1, Bitfield::full(10)).unwrap();
    let acts = t.poll(now, &mut rng);
    let r = requests(&acts);
    assert_eq!(r.len(), 4);
    assert_eq!(r.iter().map(|x| x.1).collect::<BTreeSet<_>>().len(), 4);
    assert!(requests(&t.poll(now, &mut rng)).is_empty(), "no new slots");
}

#[test]
fn rarest_chunks_are_requested_first() {
    let mut rng = StdRng::seed_from_u64(2);
    let now = Instant::now();
    let cfg = TransferConfig {
        max_in_flight_per_peer: 2,
        ..TransferConfig::default()
    };
    let mut t = fresh(10, cfg);
    t.add_peer(0, Bitfield::full(10)).unwrap(); // seeder
    t.add_peer(1, bits(10, 0..8)).unwrap();
    t.add_peer(2, bits(10, 0..5)).unwrap();
    // Availability: chunks 0..5 -> 3, 5..8 -> 2, 8..10 -> 1.
    let mut got: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
    for (p, c) in requests(&t.poll(now, &mut rng)) {
        got.entry(p).or_default().insert(c);
    }
    assert_eq!(
        got[&0],
        BTreeSet::from([8, 9]),
        "the seeder serves the chunks only it has"
    );
    assert!(got[&1].len() == 2 && got[&1].iter().all(|c| (5..8).contains(c)));
    assert!(got[&2].len() == 2 && got[&2].iter().all(|&c| c < 5));
}

#[test]
fn endgame_duplicates_then_cancel_and_complete_once() {
    let mut rng = StdRng::seed_from_u64(3);
    let now = Instant::now();
    let mut t = fresh(2, TransferConfig::default());
    let mut chk = Checker::default();
    t.add_peer(1, Bitfield::full(2)).unwrap();
    t.add_peer(2, Bitfield::full(2)).unwrap();
    t.add_peer(3, Bitfield::full(2)).unwrap();
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    // Both chunks in flight, each duplicated to the two other peers: 3 copies each.
    assert_eq!(requests(&acts).len(), 6);
    let (p, _) = *chk.out.iter().find(|x| x.1 == 0).unwrap();
    t.on_chunk_ok(p, 0, 100, now + ms(10));
    chk.answered(p, 0);
    let acts = t.poll(now + ms(10), &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Cancel { chunk: 0, .. }))
            .count(),
        2
    );
    let (p, _) = *chk.out.iter().find(|x| x.1 == 1).unwrap();
    t.on_chunk_ok(p, 1, 70, now + ms(20));
    chk.answered(p, 1);
    let acts = t.poll(now + ms(20), &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(acts.last(), Some(&Action::Complete));
    assert!(t.poll(now + ms(30), &mut rng).is_empty());
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.stats().bytes_have, 170);
}

#[test]
fn bad_chunk_bans_once_and_until_expiry() {
    let mut rng = StdRng::seed_from_u64(4);
    let now = Instant::now();
    let cfg = TransferConfig::default();
    let ban = cfg.ban_duration;
    let mut t = fresh(20, cfg);
    let mut chk = Checker::default();
    t.add_peer(7, Bitfield::full(20)).unwrap();
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    let (_, c) = requests(&acts)[0];
    t.on_chunk_bad(7, c, now);
    chk.answered(7, c);
    t.on_chunk_bad(7, c, now); // a second report does not ban twice
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Ban { .. }))
            .count(),
        1
    );
    assert!(acts.contains(&Action::Ban {
        peer: 7,
        until: now + ban
    }));
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Cancel { .. }))
            .count(),
        3
    );
    assert!(t.in_flight().next().is_none());
    assert_eq!(t.next_deadline(), Some(now + ban));
    // Reconnecting does not lift the ban.
    t.remove_peer(7);
    t.add_peer(7, Bitfield::full(20)).unwrap();
    assert!(requests(&t.poll(now + ban - ms(1), &mut rng)).is_empty());
    let acts = t.poll(now + ban, &mut rng);
    assert_eq!(requests(&acts).len(), 4, "ban expired");
}

#[test]
fn timeout_cancels_and_retries_elsewhere() {
    let mut rng = StdRng::seed_from_u64(5);
    let now = Instant::now();
    let cfg = TransferConfig {
        max_in_flight_per_peer: 1,
        ..TransferConfig::default()
    };
    let timeout = cfg.chunk_timeout;
    let mut t = fresh(1, cfg);
    let mut chk = Checker::default();
    t.add_peer(1, Bitfield::full(1)).unwrap();
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(requests(&acts), vec![(1, 0)]);
    assert_eq!(t.next_deadline(), Some(now + timeout));
    t.add_peer(2, Bitfield::full(1)).unwrap();
    let acts = t.poll(now + ms(1), &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(requests(&acts), vec![(2, 0)], "endgame duplicate");
    let acts = t.poll(now + timeout, &mut rng);
    chk.apply(&t, &acts);
    assert_eq!(
        acts,
        vec![Action::Cancel { peer: 1, chunk: 0 }],
        "peer 1 backs off"
    );
    assert_eq!(t.stats().timeouts, 1);
    assert!(t.peer_score(&1).is_some());
}

#[test]
fn busy_peer_is_left_alone_for_the_backoff() {
    let mut rng = StdRng::seed_from_u64(6);
    let now = Instant::now();
    let cfg = TransferConfig::default();
    let backoff = cfg.busy_backoff;
    let mut t = fresh(8, cfg);
    t.add_peer(1, Bitfield::full(8)).unwrap();
    let acts = t.poll(now, &mut rng);
    for (p, c) in requests(&acts) {
        t.on_busy(p, c, now);
    }
    assert!(t.poll(now, &mut rng).is_empty());
    assert_eq!(t.next_deadline(), Some(now + backoff));
    assert!(t.poll(now + backoff - ms(1), &mut rng).is_empty());
    assert_eq!(requests(&t.poll(now + backoff, &mut rng)).len(), 4);
}

#[test]
fn declined_chunk_is_asked_elsewhere_and_the_peer_for_others() {
    let mut rng = StdRng::seed_from_u64(9);
    let now = Instant::now();
    let cfg = TransferConfig {
        max_in_flight_per_peer: 1,
        ..TransferConfig::default()
    };
    let backoff = cfg.decline_backoff;
    let mut t = fresh(4, cfg);
    t.add_peer(1, bits(4, [0, 1])).unwrap();
    let r = requests(&t.poll(now, &mut rng));
    assert_eq!(r.len(), 1);
    let (p, c) = r[0];
    t.on_declined(p, c, now);
    assert_eq!(t.stats().declined, 1);
    // At once the other chunk of peer 1, never the declined one.
    let r = requests(&t.poll(now, &mut rng));
    assert_eq!(r, vec![(1, 1 - c)]);
    t.on_chunk_ok(1, 1 - c, 100, now);
    assert!(requests(&t.poll(now, &mut rng)).is_empty());
    // A new holder of the declined chunk is asked for it.
    t.add_peer(2, bits(4, [c])).unwrap();
    assert_eq!(requests(&t.poll(now, &mut rng)), vec![(2, c)]);
    t.remove_peer(2);
    // After the backoff, peer 1 is asked again.
    assert_eq!(t.next_deadline(), Some(now + backoff));
    assert_eq!(requests(&t.poll(now + backoff, &mut rng)), vec![(1, c)]);
}

#[test]
fn removed_peer_chunks_go_back_to_the_pool() {
    let mut rng = StdRng::seed_from_u64(7);
    let now = Instant::now();
    let cfg = TransferConfig {
        max_in_flight_per_peer: 3,
        ..TransferConfig::default()
    };
    let mut t = fresh(3, cfg);
    t.add_peer(1, Bitfield::full(3)).unwrap();
    assert_eq!(requests(&t.poll(now, &mut rng)).len(), 3);
    t.remove_peer(1);
    assert_eq!(t.in_flight_count(), 0);
    assert_eq!(t.availability(), &[0, 0, 0]);
    t.add_peer(2, Bitfield::full(3)).unwrap();
    let got: BTreeSet<u32> = requests(&t.poll(now, &mut rng))
        .iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(got, BTreeSet::from([0, 1, 2]));
}

#[test]
fn faster_peer_gets_the_scarce_slot() {
    let mut rng = StdRng::seed_from_u64(8);
    let t0 = Instant::now();
    let cfg = TransferConfig {
        max_in_flight_total: 1,
        ..TransferConfig::default()
    };
    let mut t = fresh(10, cfg);
    t.add_peer(1, Bitfield::full(10)).unwrap();
    t.add_peer(2, Bitfield::full(10)).unwrap();
    // Let each peer deliver one chunk: peer 1 in 10 ms, peer 2 in 1 s. When the slot goes to the
    // other peer, it answers busy (which leaves its score unknown) and time moves past the backoff.
    let mut now = t0;
    for (p, took) in [(1u8, 10), (2, 1000)] {
        loop {
            let r = requests(&t.poll(now, &mut rng));
            now += ms(2000);
            let (q, c) = r[0];
            if q == p {
                t.on_chunk_ok(p, c, 100, now - ms(2000) + ms(took));
                break;
            }
            t.on_busy(q, c, now - ms(2000));
        }
    }
    assert!(t.peer_score(&1) > t.peer_score(&2));
    for _ in 0..5 {
        let r = requests(&t.poll(now, &mut rng));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 1, "the faster peer is served first");
        t.on_chunk_ok(1, r[0].1, 100, now);
    }
}

#[test]
fn malformed_input_is_rejected() {
    let err = Transfer::<u8>::new(layout(3), Bitfield::new(2), TransferConfig::default());
    assert_eq!(
        err.unwrap_err(),
        TransferError::BitfieldLength { got: 2, want: 3 }
    );
    let mut t = fresh(3, TransferConfig::default());
    assert_eq!(
        t.add_peer(1, Bitfield::new(4)).unwrap_err().kind(),
        "bitfield_length"
    );
    assert_eq!(
        t.peer_have(1, 3),
        Err(TransferError::ChunkOutOfRange { chunk: 3, count: 3 })
    );
    t.peer_have(9, 1).unwrap(); // unknown peer: ignored
    t.on_chunk_ok(1, 99, 1, Instant::now()); // out of range: ignored
    assert!(t.have().is_clear());
}

#[test]
fn empty_blob_and_already_complete_finish_at_once() {
    let mut rng = StdRng::seed_from_u64(9);
    let now = Instant::now();
    let mut t = Transfer::<u8>::new(
        ChunkLayout::new(0, 100),
        Bitfield::new(0),
        TransferConfig::default(),
    )
    .unwrap();
    assert_eq!(t.poll(now, &mut rng), vec![Action::Complete]);
    let mut t =
        Transfer::<u8>::new(layout(4), Bitfield::full(4), TransferConfig::default()).unwrap();
    t.add_peer(1, Bitfield::full(4)).unwrap();
    assert_eq!(t.poll(now, &mut rng), vec![Action::Complete]);
}

#[test]
fn an_answer_racing_a_queued_cancel_drops_the_cancel() {
    let mut rng = StdRng::seed_from_u64(10);
    let now = Instant::now();
    let mut t = fresh(6, TransferConfig::default());
    let mut chk = Checker::default();
    t.add_peer(1, Bitfield::full(6)).unwrap();
    t.add_peer(2, Bitfield::full(6)).unwrap();
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    let mine: Vec<u32> = chk.out.iter().filter(|x| x.0 == 1).map(|x| x.1).collect();
    // The ban queues a Cancel for peer 1's other requests; one of them is answered before the
    // driver sees that Cancel, so the Cancel must not be emitted.
    t.on_chunk_bad(1, mine[0], now);
    chk.answered(1, mine[0]);
    t.on_chunk_ok(1, mine[1], 100, now);
    chk.answered(1, mine[1]);
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    assert!(!acts.contains(&Action::Cancel {
        peer: 1,
        chunk: mine[1]
    }));
    assert!(acts.contains(&Action::Cancel {
        peer: 1,
        chunk: mine[2]
    }));
    // A peer that leaves takes its queued Cancels with it.
    let theirs: Vec<u32> = chk.out.iter().filter(|x| x.0 == 2).map(|x| x.1).collect();
    t.on_chunk_ok(1, theirs[0], 100, now); // delivered unrequested: queues Cancel{2, ..}
    t.remove_peer(2);
    chk.peer_gone(2);
    let acts = t.poll(now, &mut rng);
    chk.apply(&t, &acts);
    assert!(acts.is_empty(), "{acts:?}");
}
