use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn queue(
    max_uploads: usize,
    resend_ms: u64,
    wait_ms: u64,
    max_waiting: usize,
) -> UploadQueue<u8, u32> {
    UploadQueue::new(UploadConfig {
        max_uploads,
        resend_after: Duration::from_millis(resend_ms),
        max_wait: Duration::from_millis(wait_ms),
        max_waiting,
    })
}

fn ms(t: Instant, n: u64) -> Instant {
    t + Duration::from_millis(n)
}

#[test]
fn a_busy_request_waits_for_a_slot_in_arrival_order() {
    let t = Instant::now();
    let mut q = queue(1, 0, 500, 8);
    q.request(1, 0, 0, t);
    q.request(2, 0, 1, t);
    q.request(3, 0, 2, t);
    assert_eq!(q.poll(t), vec![(1, Answer::Serve)]);
    assert_eq!(q.waiting(), 2);
    // Nothing changes before the slot frees or the wait ends.
    assert_eq!(q.poll(ms(t, 100)), vec![]);
    q.finished(0, 0);
    assert_eq!(q.poll(ms(t, 100)), vec![(2, Answer::Serve)]);
    q.finished(0, 1);
    assert_eq!(q.poll(ms(t, 200)), vec![(3, Answer::Serve)]);
    assert_eq!(q.active(), 1);
    assert_eq!(q.next_deadline(), None);
}

#[test]
fn a_wait_that_ends_without_a_slot_is_answered_busy() {
    let t = Instant::now();
    let mut q = queue(1, 0, 500, 8);
    q.request(1, 0, 0, t);
    q.request(2, 0, 1, ms(t, 10));
    assert_eq!(q.poll(ms(t, 10)), vec![(1, Answer::Serve)]);
    assert_eq!(q.next_deadline(), Some(ms(t, 510)));
    assert_eq!(q.poll(ms(t, 509)), vec![]);
    assert_eq!(q.poll(ms(t, 510)), vec![(2, Answer::Busy)]);
    assert_eq!(q.waiting(), 0);
}

#[test]
fn a_chunk_in_its_resend_window_is_sent_when_the_window_ends() {
    let t = Instant::now();
    let mut q = queue(4, 200, 500, 8);
    q.request(1, 0, 7, t);
    assert_eq!(q.poll(t), vec![(1, Answer::Serve)]);
    q.finished(0, 7);
    // Sent 50 ms ago: waits for the window (200 ms from the send), not for `max_wait`.
    q.request(2, 0, 7, ms(t, 50));
    assert_eq!(q.poll(ms(t, 50)), vec![]);
    assert_eq!(q.next_deadline(), Some(ms(t, 200)));
    assert_eq!(q.poll(ms(t, 200)), vec![(2, Answer::Serve)]);
}

#[test]
fn a_chunk_still_being_sent_when_the_wait_ends_is_declined() {
    let t = Instant::now();
    let mut q = queue(4, 200, 300, 8);
    q.request(1, 0, 7, t);
    q.request(2, 0, 7, t);
    assert_eq!(q.poll(t), vec![(1, Answer::Serve)]);
    // Being sent: no window end to wait for, only the end of the wait.
    assert_eq!(q.next_deadline(), Some(ms(t, 300)));
    assert_eq!(q.poll(ms(t, 300)), vec![(2, Answer::Declined)]);
}

#[test]
fn a_full_queue_and_a_zero_wait_refuse_at_once() {
    let t = Instant::now();
    let mut q = queue(1, 1000, 500, 1);
    q.request(1, 0, 0, t);
    q.request(2, 0, 1, t);
    q.request(3, 0, 2, t);
    assert_eq!(q.poll(t), vec![(1, Answer::Serve), (3, Answer::Busy)]);
    let mut z = queue(1, 1000, 0, 8);
    z.request(1, 0, 0, t);
    z.finished(0, 0);
    z.request(2, 0, 0, t);
    z.request(3, 0, 1, t);
    z.request(4, 0, 2, t);
    assert_eq!(
        z.poll(t),
        vec![
            (1, Answer::Serve),
            (2, Answer::Declined),
            (3, Answer::Serve),
            (4, Answer::Busy)
        ]
    );
}

#[test]
fn a_cancelled_request_is_never_answered() {
    let t = Instant::now();
    let mut q = queue(1, 0, 500, 8);
    q.request(1, 0, 0, t);
    q.request(2, 0, 1, t);
    q.request(3, 0, 2, t);
    assert_eq!(q.poll(t), vec![(1, Answer::Serve)]);
    assert!(q.cancel(&2));
    assert!(!q.cancel(&2));
    q.finished(0, 0);
    assert_eq!(q.poll(t), vec![(3, Answer::Serve)]);
}

#[derive(Debug, Clone)]
enum Op {
    Request(u8, u32),
    Finish(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u32..6).prop_map(|(b, c)| Op::Request(b, c)),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => (0u64..400).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Every request is answered once, by the end of its wait, unless cancelled first; slots are
    /// never over-granted; a served chunk was not sent within the window before (super-seeding).
    #[test]
    fn every_request_is_answered_once_in_time(
        max_uploads in 1usize..4,
        resend in 0u64..300,
        wait in 0u64..500,
        max_waiting in 0usize..6,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut q = queue(max_uploads, resend, wait, max_waiting);
        let mut now = Instant::now();
        let mut next = 0u32;
        let mut pending: HashMap<u32, (u8, u32, Instant)> = HashMap::new();
        let mut serving: Vec<(u8, u32)> = Vec::new();
        let mut cancelled: HashSet<u32> = HashSet::new();
        let mut last_send: HashMap<(u8, u32), Instant> = HashMap::new();
        for o in ops {
            match o {
                Op::Request(b, c) => {
                    pending.insert(next, (b, c, now));
                    q.request(next, b, c, now);
                    next += 1;
                }
                Op::Finish(i) if !serving.is_empty() => {
                    let (b, c) = serving.swap_remove(i % serving.len());
                    q.finished(b, c);
                }
                Op::Cancel(i) if !pending.is_empty() => {
                    let mut ids: Vec<u32> = pending.keys().copied().collect();
                    ids.sort_unstable();
                    let id = ids[i % ids.len()];
                    if q.cancel(&id) {
                        pending.remove(&id);
                        cancelled.insert(id);
                    }
                }
                Op::Advance(d) => {
                    let to = now + Duration::from_millis(d);
                    // Visit each deadline on the way, as a driver would.
                    while let Some(dl) = q.next_deadline().filter(|&dl| dl <= to) {
                        prop_assert!(dl >= now);
                        now = dl;
                        for (id, a) in q.poll(now) {
                            let (b, c, _) = pending.remove(&id).expect("answered once");
                            if a == Answer::Serve {
                                serving.push((b, c));
                            }
                        }
                    }
                    now = to;
                }
                _ => {}
            }
            for (id, a) in q.poll(now) {
                prop_assert!(!cancelled.contains(&id));
                let (b, c, _) = pending.remove(&id).expect("answered once");
                if a == Answer::Serve {
                    if resend > 0 {
                        let recent = last_send.get(&(b, c)).is_some_and(|&s| {
                            now.saturating_duration_since(s) < Duration::from_millis(resend)
                        });
                        prop_assert!(!recent && !serving.contains(&(b, c)));
                        last_send.insert((b, c), now);
                    }
                    serving.push((b, c));
                }
            }
            prop_assert!(serving.len() <= max_uploads);
            prop_assert_eq!(q.active(), serving.len());
            for (id, (_, _, at)) in &pending {
                prop_assert!(
                    now < *at + Duration::from_millis(wait),
                    "request {} unanswered after its wait", id
                );
            }
        }
    }
}
