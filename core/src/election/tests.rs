use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

fn cfg() -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_secs(30),
        provider_wait: Duration::from_secs(5),
        // Want records settled before these elections start (tests of `settle` set it).
        settle: Duration::ZERO,
        ..ElectionConfig::default()
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// One Lease object with the API server's semantics: resourceVersion moves on every write,
/// writes based on another resourceVersion get 409, create on an existing Lease gets 409.
#[derive(Default)]
struct SimLease {
    lease: Option<LeaseRecord>,
    next_rv: u64,
    calls: usize,
    /// Writes take effect but their answer is lost (the caller sees an API error).
    lose_answers: bool,
}

impl SimLease {
    fn write(&mut self, holder: &str, now: Instant, d: Duration) -> Written {
        self.next_rv += 1;
        let rec = LeaseRecord {
            holder: Some(holder.to_string()),
            renew_time: Some(now),
            duration: Some(d),
            resource_version: self.next_rv.to_string(),
        };
        self.lease = Some(rec.clone());
        Written::Ok(rec)
    }

    fn answer(&self, w: Written) -> Written {
        if self.lose_answers {
            Written::ApiError
        } else {
            w
        }
    }

    fn matches(&self, rv: &str) -> Result<(), Written> {
        match &self.lease {
            None => Err(Written::NotFound),
            Some(l) if l.resource_version != rv => Err(Written::Conflict),
            Some(_) => Ok(()),
        }
    }

    /// Performs the API actions of `out` for `e` until none is left; returns the other actions.
    fn drive(
        &mut self,
        e: &mut Election<String>,
        now: Instant,
        view: View<'_, String>,
        rng: &mut StdRng,
    ) -> Vec<Action> {
        let mut seen = Vec::new();
        let mut out = e.poll(now, view, rng);
        for _ in 0..16 {
            let mut api = false;
            for a in out.drain(..) {
                let me = e.holder_identity().to_string();
                let d = e.cfg.lease_duration;
                match a {
                    Action::Get => {
                        api = true;
                        self.calls += 1;
                        let obs = self.lease.clone().map_or(Observed::Absent, Observed::Lease);
                        e.on_get(now, obs, rng);
                    }
                    Action::Create => {
                        api = true;
                        self.calls += 1;
                        let w = if self.lease.is_some() {
                            Written::Conflict
                        } else {
                            self.write(&me, now, d)
                        };
                        e.on_write(now, self.answer(w), rng);
                    }
                    Action::Renew {
                        resource_version: rv,
                    }
                    | Action::TakeOver {
                        resource_version: rv,
                    } => {
                        api = true;
                        self.calls += 1;
                        let w = match self.matches(&rv) {
                            Ok(()) => self.write(&me, now, d),
                            Err(w) => w,
                        };
                        e.on_write(now, self.answer(w), rng);
                    }
                    Action::Yield {
                        resource_version: rv,
                    } => {
                        api = true;
                        self.calls += 1;
                        let w = match self.matches(&rv) {
                            Ok(()) => {
                                let w = self.write(&me, now, d);
                                if let Some(l) = self.lease.as_mut() {
                                    l.holder = None;
                                }
                                w
                            }
                            Err(w) => w,
                        };
                        e.on_write(now, self.answer(w), rng);
                    }
                    Action::Release {
                        resource_version: rv,
                    } => {
                        api = true;
                        self.calls += 1;
                        let w = match self.matches(&rv) {
                            Ok(()) => Written::Ok(self.lease.take().expect("matched")),
                            Err(w) => w,
                        };
                        e.on_write(now, self.answer(w), rng);
                    }
                    other => seen.push(other),
                }
            }
            if !api {
                break;
            }
            out = e.poll(now, view, rng);
        }
        seen
    }
}

/// A view where `providers` says whether a node outside `members` (a seeder) provides the image.
fn view(members: &[String], providers: bool) -> View<'_, String> {
    let seeder: &'static [String] = Box::leak(vec!["seeder".to_string()].into_boxed_slice());
    View {
        members,
        wanting: members,
        providers: if providers { seeder } else { &[] },
    }
}

fn election(image: Digest, me: &str, cfg: ElectionConfig, now: Instant) -> Election<String> {
    Election::new(image, me.to_string(), me.to_string(), cfg, now)
}

/// Members ordered by rank for `image`.
fn ranked(image: &Digest, members: &[String]) -> Vec<String> {
    contenders(image, members, members.len())
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn lease_names_are_valid_deterministic_and_prefix_injective() {
    let d = digest(1);
    let name = lease_name(&d);
    assert_eq!(name, lease_name(&d));
    assert_eq!(name.len(), LEASE_NAME_PREFIX.len() + LEASE_NAME_HEX);
    assert!(is_dns1123_label(&name), "{name}");
    assert!(name.ends_with(&d.hex()[..LEASE_NAME_HEX]));
    let label = digest_label(&d);
    assert_eq!(label.len(), 63);
    assert!(is_dns1123_label(&label));
    // Flip each kept hex position in turn: every variant gets its own name.
    let base = d.hex();
    let mut seen = std::collections::HashSet::new();
    for i in 0..LEASE_NAME_HEX {
        let mut h = base.clone().into_bytes();
        h[i] = if h[i] == b'0' { b'1' } else { b'0' };
        let other = Digest::from_hex(std::str::from_utf8(&h).expect("ascii")).expect("hex");
        assert_ne!(lease_name(&other), name, "position {i}");
        assert!(seen.insert(lease_name(&other)));
    }
}

#[test]
fn contenders_are_the_top_of_the_ranking() {
    let m = names(10);
    let c = contenders(&digest(2), &m, 3);
    assert_eq!(c.len(), 3);
    assert_eq!(
        c,
        rendezvous::top_k(digest(2).to_string().as_bytes(), &m, 3)
    );
    assert_eq!(contenders(&digest(2), &m[..2], 3).len(), 2);
}

#[test]
fn first_contender_creates_pulls_renews_and_releases() {
    let t0 = Instant::now();
    let img = digest(3);
    let m = names(5);
    let first = ranked(&img, &m)[0].clone();
    let mut rng = StdRng::seed_from_u64(1);
    let mut sim = SimLease::default();
    let mut e = election(img, &first, cfg(), t0);
    let acts = sim.drive(&mut e, t0, view(&m, false), &mut rng);
    assert_eq!(acts[0], Action::PullFromRegistry);
    assert!(e.is_holder());
    assert_eq!(sim.calls, 2, "get + create");
    assert_eq!(
        sim.lease.as_ref().unwrap().holder.as_deref(),
        Some(first.as_str())
    );
    let Some(Action::Wait { until }) = acts.last().cloned() else {
        panic!("{acts:?}")
    };
    assert_eq!(
        until,
        t0 + Duration::from_secs(10),
        "renew after a third of 30 s"
    );
    sim.drive(&mut e, until, view(&m, true), &mut rng);
    assert_eq!(sim.calls, 3);
    assert_eq!(sim.lease.as_ref().unwrap().resource_version, "2");
    e.complete();
    sim.drive(&mut e, until, view(&m, true), &mut rng);
    assert!(sim.lease.is_none());
    assert!(e.is_done());
}

#[test]
fn second_contender_follows_then_takes_over_an_expired_lease() {
    let t0 = Instant::now();
    let img = digest(4);
    let m = names(6);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(2);
    let mut sim = SimLease::default();
    let mut a = election(img, &r[0], cfg(), t0);
    let mut b = election(img, &r[1], cfg(), t0);
    sim.drive(&mut a, t0, view(&m, false), &mut rng);
    // Rank 1 waits its stagger first.
    let acts = sim.drive(&mut b, t0, view(&m, false), &mut rng);
    assert!(matches!(acts[..], [Action::Wait { .. }]), "{acts:?}");
    let t1 = t0 + Duration::from_secs(1);
    let acts = sim.drive(&mut b, t1, view(&m, true), &mut rng);
    assert_eq!(acts[0], Action::FeedFromSwarm);
    let Some(Action::Wait { until }) = acts.last().cloned() else {
        panic!("{acts:?}")
    };
    assert_eq!(
        until,
        t0 + Duration::from_secs(32),
        "renew time + duration + skew"
    );
    // `a` dies (no more polls). At expiry `b` reads the same Lease and replaces it.
    let rv = sim.lease.as_ref().unwrap().resource_version.clone();
    let acts = sim.drive(&mut b, until, view(&m, true), &mut rng);
    assert_eq!(acts[0], Action::PullFromRegistry);
    let l = sim.lease.as_ref().unwrap();
    assert_eq!(l.holder.as_deref(), Some(r[1].as_str()));
    assert_ne!(l.resource_version, rv);
    // `a` wakes up and renews with its old resourceVersion: 409, it stops pulling.
    let acts = sim.drive(&mut a, until, view(&m, true), &mut rng);
    assert_eq!(acts[0], Action::FeedFromSwarm, "{acts:?}");
    assert!(!a.is_holder() && b.is_holder());
}

#[test]
fn non_contenders_wait_for_providers_without_api_calls() {
    let t0 = Instant::now();
    let img = digest(5);
    let m = names(20);
    let last = ranked(&img, &m)[19].clone();
    let mut rng = StdRng::seed_from_u64(3);
    let mut sim = SimLease::default();
    let mut e = election(img, &last, cfg(), t0);
    let acts = sim.drive(&mut e, t0, view(&m, false), &mut rng);
    assert_eq!(
        acts,
        vec![Action::Wait {
            until: t0 + Duration::from_secs(5)
        }]
    );
    let acts = sim.drive(
        &mut e,
        t0 + Duration::from_secs(1),
        view(&m, true),
        &mut rng,
    );
    assert_eq!(acts, vec![Action::FeedFromSwarm]);
    sim.drive(
        &mut e,
        t0 + Duration::from_secs(100),
        view(&m, true),
        &mut rng,
    );
    assert_eq!(sim.calls, 0);
    // Providers vanish: it waits again; rank 19 of 20 contends only once the widening contender
    // set (3 → 6 → 12 → 24) reaches it, then creates the Lease itself.
    for t in [101, 106, 111] {
        let acts = sim.drive(
            &mut e,
            t0 + Duration::from_secs(t),
            view(&m, false),
            &mut rng,
        );
        assert!(matches!(acts[..], [Action::Wait { .. }]), "{t}: {acts:?}");
        assert_eq!(sim.calls, 0, "{t}");
    }
    sim.drive(
        &mut e,
        t0 + Duration::from_secs(116),
        view(&m, false),
        &mut rng,
    );
    let acts = sim.drive(
        &mut e,
        t0 + Duration::from_secs(117),
        view(&m, false),
        &mut rng,
    );
    assert_eq!(acts[0], Action::PullFromRegistry);
    assert_eq!(sim.calls, 2);
}

#[test]
fn a_slow_puller_brings_a_doubling_set_of_nodes_to_the_api() {
    let t0 = Instant::now();
    let img = digest(11);
    let m = names(40);
    let mut rng = StdRng::seed_from_u64(8);
    let mut sim = SimLease::default();
    let mut nodes: Vec<Election<String>> = m.iter().map(|x| election(img, x, cfg(), t0)).collect();
    let mut called = vec![false; m.len()];
    // The puller never shows up in the swarm (no providers); poll everyone every 100 ms.
    let mut callers_at = Vec::new();
    for tick in 0..=170u64 {
        let now = t0 + Duration::from_millis(tick * 100);
        for (i, e) in nodes.iter_mut().enumerate() {
            let before = sim.calls;
            sim.drive(e, now, view(&m, false), &mut rng);
            called[i] |= sim.calls > before;
        }
        if tick % 50 == 49 {
            callers_at.push(called.iter().filter(|c| **c).count());
        }
    }
    // Before the 5 s deadline: the top 3; then at most 6, 12, 24 nodes.
    assert_eq!(callers_at, vec![3, 6, 12], "{callers_at:?}");
    let holders = nodes.iter().filter(|e| e.is_holder()).count();
    assert_eq!(holders, 1);
}

#[test]
fn api_errors_fall_back_to_the_ranking_and_recover() {
    let t0 = Instant::now();
    let img = digest(6);
    let m = names(4);
    let first = ranked(&img, &m)[0].clone();
    let mut rng = StdRng::seed_from_u64(4);
    let mut e = election(img, &first, cfg(), t0);
    assert_eq!(e.poll(t0, view(&m, false), &mut rng), vec![Action::Get]);
    e.on_get(t0, Observed::ApiError, &mut rng);
    let acts = e.poll(t0, view(&m, false), &mut rng);
    assert_eq!(
        acts[..2],
        [Action::FallbackCoordinationFree, Action::PullFromRegistry]
    );
    assert!(e.in_fallback());
    let Some(Action::Wait { until }) = acts.last().cloned() else {
        panic!("{acts:?}")
    };
    assert!(until > t0 && until <= t0 + cfg().retry_min);
    // Still failing: the retry delay grows, the fallback is not announced twice.
    assert_eq!(e.poll(until, view(&m, false), &mut rng), vec![Action::Get]);
    e.on_get(until, Observed::ApiError, &mut rng);
    let acts = e.poll(until, view(&m, false), &mut rng);
    assert!(matches!(acts[..], [Action::Wait { .. }]), "{acts:?}");
    // The API answers again: normal election, still the puller.
    let mut sim = SimLease::default();
    let acts = sim.drive(&mut e, until + cfg().retry_max, view(&m, false), &mut rng);
    assert!(e.is_holder() && !e.in_fallback(), "{acts:?}");
    assert!(!acts.contains(&Action::FeedFromSwarm));
}

fn cf_config() -> ElectionConfig {
    ElectionConfig {
        mode: ElectionMode::CoordinationFree,
        settle: Duration::from_millis(500),
        ..cfg()
    }
}

/// The role-change actions among `acts`.
fn role_actions(acts: &[Action]) -> Vec<Action> {
    acts.iter()
        .filter(|a| matches!(a, Action::PullFromRegistry | Action::FeedFromSwarm))
        .cloned()
        .collect()
}

#[test]
fn coordination_free_mode_top_member_pulls_then_the_next() {
    let t0 = Instant::now();
    let img = digest(7);
    let m = names(5);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(5);
    let c = cf_config();
    let mut first = Election::new(img, r[0].clone(), r[0].clone(), c.clone(), t0);
    let mut second = Election::new(img, r[1].clone(), r[1].clone(), c.clone(), t0);
    // Until want records settle, nobody decides.
    let acts = first.poll(t0, view(&m, false), &mut rng);
    assert_eq!(
        acts,
        vec![Action::Wait {
            until: t0 + c.settle
        }]
    );
    let t1 = t0 + c.settle;
    assert_eq!(
        role_actions(&first.poll(t1, view(&m, false), &mut rng)),
        vec![Action::PullFromRegistry]
    );
    assert_eq!(
        role_actions(&second.poll(t1, view(&m, false), &mut rng)),
        vec![Action::FeedFromSwarm]
    );
    // The first announces itself as provider; the second keeps following, past any deadline.
    let pulling = [r[0].clone()];
    let later = t1 + c.provider_wait * 3;
    let acts = second.poll(
        later,
        View {
            members: &m,
            wanting: &m,
            providers: &pulling,
        },
        &mut rng,
    );
    assert!(role_actions(&acts).is_empty(), "{acts:?}");
    assert_eq!(second.role(), Role::Follow);
    // The first leaves the swarm (its provider record stops counting with it): the next pulls.
    let rest: Vec<String> = m.iter().filter(|x| **x != r[0]).cloned().collect();
    assert_eq!(
        role_actions(&second.poll(later, view(&rest, false), &mut rng)),
        vec![Action::PullFromRegistry]
    );
}

#[test]
fn coordination_free_ranks_only_members_that_want_the_image() {
    let t0 = Instant::now();
    let img = digest(14);
    let m = names(10);
    let r = ranked(&img, &m);
    let c = cf_config();
    let mut rng = StdRng::seed_from_u64(14);
    // A rolling update: only ranks 3 and 7 of the whole swarm want the image.
    let wanting = [r[7].clone(), r[3].clone()];
    let v = View {
        members: &m,
        wanting: &wanting,
        providers: &[],
    };
    let t1 = t0 + c.settle;
    let mut a = Election::new(img, r[3].clone(), r[3].clone(), c.clone(), t0);
    let mut b = Election::new(img, r[7].clone(), r[7].clone(), c, t0);
    assert_eq!(
        role_actions(&a.poll(t1, v, &mut rng)),
        vec![Action::PullFromRegistry]
    );
    assert_eq!(
        role_actions(&b.poll(t1, v, &mut rng)),
        vec![Action::FeedFromSwarm]
    );
}

#[test]
fn coordination_free_a_provider_at_start_is_followed_without_settling() {
    let t0 = Instant::now();
    let img = digest(10);
    let m = names(3);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(10);
    // The top-ranked member wants the image, but a node that has it already provides it.
    let mut e = Election::new(img, r[0].clone(), r[0].clone(), cf_config(), t0);
    assert_eq!(
        role_actions(&e.poll(t0, view(&m, true), &mut rng)),
        vec![Action::FeedFromSwarm]
    );
}

#[test]
fn coordination_free_widens_while_nobody_provides() {
    let t0 = Instant::now();
    let img = digest(11);
    let m = names(8);
    let r = ranked(&img, &m);
    let c = cf_config();
    let mut rng = StdRng::seed_from_u64(11);
    // The top-ranked's want record is stale: it never pulls (it is not among the elections).
    let mut nodes: Vec<Election<String>> = r[1..]
        .iter()
        .map(|me| Election::new(img, me.clone(), me.clone(), c.clone(), t0))
        .collect();
    let pullers_at = |nodes: &mut Vec<Election<String>>, now: Instant, rng: &mut StdRng| {
        for e in nodes.iter_mut() {
            e.poll(now, view(&m, false), rng);
        }
        nodes.iter().filter(|e| e.role() == Role::Pull).count()
    };
    let t1 = t0 + c.settle;
    assert_eq!(pullers_at(&mut nodes, t1, &mut rng), 0);
    // Each missed deadline lets the next ranks pull: top 2 (one of them stale), then top 4.
    let d1 = t1 + c.provider_wait;
    assert_eq!(pullers_at(&mut nodes, d1, &mut rng), 1);
    assert_eq!(nodes[0].role(), Role::Pull);
    // With a provider in view the others stop widening and follow.
    let providing = [r[1].clone()];
    for e in nodes.iter_mut().skip(1) {
        e.poll(
            d1,
            View {
                members: &m,
                wanting: &m,
                providers: &providing,
            },
            &mut rng,
        );
    }
    for e in nodes.iter_mut().skip(1) {
        e.poll(
            d1 + c.provider_wait * 4,
            View {
                members: &m,
                wanting: &m,
                providers: &providing,
            },
            &mut rng,
        );
        assert_eq!(e.role(), Role::Follow);
    }
    // Without it (a second deadline missed from scratch), ranks up to 4 pull.
    let mut fresh: Vec<Election<String>> = r[1..]
        .iter()
        .map(|me| Election::new(img, me.clone(), me.clone(), c.clone(), t0))
        .collect();
    pullers_at(&mut fresh, d1, &mut rng);
    assert_eq!(pullers_at(&mut fresh, d1 + c.provider_wait, &mut rng), 3);
}

#[test]
fn coordination_free_two_pullers_keep_the_higher_ranked() {
    let t0 = Instant::now();
    let img = digest(12);
    let m = names(2);
    let r = ranked(&img, &m);
    let c = cf_config();
    let mut rng = StdRng::seed_from_u64(12);
    let mut hi = Election::new(img, r[0].clone(), r[0].clone(), c.clone(), t0);
    let mut lo = Election::new(img, r[1].clone(), r[1].clone(), c.clone(), t0);
    let t1 = t0 + c.settle;
    // Each saw only itself when it decided: both pull.
    hi.poll(t1, view(&m[..0], false), &mut rng);
    lo.poll(t1, view(&m[..0], false), &mut rng);
    assert_eq!((hi.role(), lo.role()), (Role::Pull, Role::Pull));
    // Then each sees the other providing: the lower-ranked follows, the other keeps pulling.
    let acts = lo.poll(
        t1,
        View {
            members: &m,
            wanting: &m,
            providers: &r[..1],
        },
        &mut rng,
    );
    assert_eq!(role_actions(&acts), vec![Action::FeedFromSwarm]);
    let acts = hi.poll(
        t1,
        View {
            members: &m,
            wanting: &m,
            providers: &r[1..],
        },
        &mut rng,
    );
    assert!(role_actions(&acts).is_empty(), "{acts:?}");
    assert_eq!((hi.role(), lo.role()), (Role::Pull, Role::Follow));
}

#[test]
fn renew_errors_retry_until_expiry_then_fall_back() {
    let t0 = Instant::now();
    let img = digest(8);
    let m = names(3);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(6);
    let mut sim = SimLease::default();
    let mut e = election(img, &r[1], cfg(), t0);
    // Rank 1 with no one else around creates it after its stagger.
    sim.drive(&mut e, t0, view(&m, false), &mut rng);
    assert!(!e.is_holder());
    sim.drive(
        &mut e,
        t0 + Duration::from_secs(1),
        view(&m, false),
        &mut rng,
    );
    assert!(e.is_holder());
    let mut now = t0 + Duration::from_secs(11);
    let mut fell_back = false;
    for _ in 0..200 {
        let acts = e.poll(now, view(&m, false), &mut rng);
        if acts.iter().any(|a| matches!(a, Action::Renew { .. })) {
            e.on_write(now, Written::ApiError, &mut rng);
        }
        if acts.contains(&Action::Get) {
            e.on_get(now, Observed::ApiError, &mut rng);
            continue;
        }
        if acts.contains(&Action::FallbackCoordinationFree) {
            fell_back = true;
            // Rank 1 is not first: it stops pulling.
            assert!(acts.contains(&Action::FeedFromSwarm), "{acts:?}");
            break;
        }
        assert!(e.holds_at(now));
        now += Duration::from_millis(700);
    }
    assert!(fell_back && now >= t0 + Duration::from_secs(31));
}

#[test]
fn a_holder_that_gives_up_hands_over_at_once() {
    let t0 = Instant::now();
    let img = digest(10);
    let m = names(3);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(7);
    let mut sim = SimLease::default();
    let mut a = election(img, &r[0], cfg(), t0);
    let mut b = election(img, &r[1], cfg(), t0);
    sim.drive(&mut a, t0, view(&m, false), &mut rng);
    sim.drive(&mut b, t0, view(&m, false), &mut rng);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        sim.drive(&mut b, t1, view(&m, true), &mut rng)[0],
        Action::FeedFromSwarm
    );
    a.abandon();
    sim.drive(&mut a, t1, view(&m, true), &mut rng);
    assert!(a.is_done());
    assert_eq!(sim.lease.as_ref().and_then(|l| l.holder.clone()), None);
    // `b` next reads the Lease at the old expiry and takes over the holder-less Lease.
    let acts = sim.drive(
        &mut b,
        t0 + Duration::from_secs(32),
        view(&m, true),
        &mut rng,
    );
    assert_eq!(acts[0], Action::PullFromRegistry);
    // A deleted Lease after a holder, with providers around, means complete: no new pull.
    let mut c = election(img, &r[2], cfg(), t0);
    let mut sim2 = SimLease::default();
    c.on_get(
        t1,
        Observed::Lease(sim.lease.clone().expect("held")),
        &mut rng,
    );
    sim2.lease = None;
    let acts = sim2.drive(
        &mut c,
        t0 + Duration::from_secs(70),
        view(&m, true),
        &mut rng,
    );
    assert_eq!(sim2.calls, 1);
    assert_eq!(acts, vec![Action::FeedFromSwarm]);
    assert!(sim2.lease.is_none());
}

#[test]
fn create_into_a_missing_namespace_backs_off_instead_of_looping() {
    let t0 = Instant::now();
    let img = digest(12);
    let m = names(1);
    let mut rng = StdRng::seed_from_u64(9);
    let mut e = election(img, &m[0], cfg(), t0);
    assert_eq!(e.poll(t0, view(&m, false), &mut rng), vec![Action::Get]);
    e.on_get(t0, Observed::Absent, &mut rng);
    assert_eq!(e.poll(t0, view(&m, false), &mut rng), vec![Action::Create]);
    e.on_write(t0, Written::NotFound, &mut rng);
    let acts = e.poll(t0, view(&m, false), &mut rng);
    assert_eq!(
        acts[..2],
        [Action::FallbackCoordinationFree, Action::PullFromRegistry]
    );
    assert!(matches!(acts[2], Action::Wait { until } if until > t0));
}

/// A step of the many-node simulation.
#[derive(Debug, Clone)]
enum Step {
    Poll {
        node: usize,
        advance_ms: u64,
        api_fails: bool,
        lose_answers: bool,
    },
    Kill(usize),
    Complete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0usize..12, 0u64..4000, prop::bool::weighted(0.1), prop::bool::weighted(0.05)).prop_map(|(node, advance_ms, api_fails, lose_answers)| Step::Poll { node, advance_ms, api_fails, lose_answers }),
        1 => (0usize..12).prop_map(Step::Kill),
        1 => (0usize..12).prop_map(Step::Complete),
    ]
}

/// The live nodes other than `me` that pull (and so provide the image).
fn pullers(m: &[String], nodes: &[Option<Election<String>>], me: usize) -> Vec<String> {
    m.iter()
        .zip(nodes)
        .enumerate()
        .filter(|(i, (_, e))| *i != me && e.as_ref().is_some_and(|e| e.role() == Role::Pull))
        .map(|(_, (x, _))| x.clone())
        .collect()
}

proptest! {
    /// Many nodes share one Lease object; nodes die, answers fail, time jumps. At any time at most
    /// one live node believes it holds an unexpired Lease, and it is the one the object names.
    #[test]
    fn at_most_one_holder(n in 2usize..12, seed in any::<u64>(), steps in prop::collection::vec(step(), 1..300)) {
        let t0 = Instant::now();
        let img = digest(9);
        let m = names(n);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = SimLease::default();
        let mut nodes: Vec<Option<Election<String>>> =
            m.iter().map(|me| Some(election(img, me, cfg(), t0))).collect();
        let mut now = t0;
        let mut completed = false;
        for s in steps {
            match s {
                Step::Kill(i) => { if let Some(x) = nodes.get_mut(i % n) { *x = None; } }
                Step::Complete(i) => {
                    if let Some(Some(e)) = nodes.get_mut(i % n) { e.complete(); completed = true; }
                }
                Step::Poll { node, advance_ms, api_fails, lose_answers } => {
                    now += Duration::from_millis(advance_ms);
                    let live: Vec<String> = m.iter().zip(&nodes).filter(|(_, e)| e.is_some()).map(|(x, _)| x.clone()).collect();
                    let pulling = pullers(&m, &nodes, node % n);
                    let v = View { members: &live, wanting: &live, providers: &pulling };
                    let Some(Some(e)) = nodes.get_mut(node % n) else { continue };
                    if api_fails {
                        for a in e.poll(now, v, &mut rng) {
                            match a {
                                Action::Get => e.on_get(now, Observed::ApiError, &mut rng),
                                Action::Create | Action::Renew { .. } | Action::TakeOver { .. } | Action::Release { .. } | Action::Yield { .. } => e.on_write(now, Written::ApiError, &mut rng),
                                _ => {}
                            }
                        }
                    } else {
                        sim.lose_answers = lose_answers;
                        sim.drive(e, now, v, &mut rng);
                        sim.lose_answers = false;
                    }
                }
            }
            let holders: Vec<&Election<String>> = nodes.iter().flatten().filter(|e| e.holds_at(now)).collect();
            prop_assert!(holders.len() <= 1, "{} holders at {:?}", holders.len(), now - t0);
            if let Some(h) = holders.first() {
                let named = sim.lease.as_ref().and_then(|l| l.holder.clone());
                prop_assert_eq!(named.as_deref(), Some(h.holder_identity()));
            }
        }
        // Liveness: once faults stop (and no image was completed), within a few lease durations
        // exactly one live node holds the Lease and it is the only one pulling.
        let live: Vec<String> = m.iter().zip(&nodes).filter(|(_, e)| e.is_some()).map(|(x, _)| x.clone()).collect();
        if !completed && !live.is_empty() {
            for _ in 0..100 {
                now += Duration::from_secs(1);
                for i in 0..n {
                    let pulling = pullers(&m, &nodes, i);
                    let v = View { members: &live, wanting: &live, providers: &pulling };
                    if let Some(e) = nodes[i].as_mut() {
                        sim.drive(e, now, v, &mut rng);
                    }
                }
            }
            let holders = nodes.iter().flatten().filter(|e| e.holds_at(now)).count();
            let pullers = nodes.iter().flatten().filter(|e| e.role() == Role::Pull).count();
            prop_assert_eq!((holders, pullers), (1, 1));
        }
    }

    #[test]
    fn different_kept_prefixes_give_different_valid_names(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
        let (da, db) = (Digest::from_bytes(a), Digest::from_bytes(b));
        prop_assert!(is_dns1123_label(&lease_name(&da)));
        prop_assert!(is_dns1123_label(&digest_label(&da)));
        if da.hex()[..LEASE_NAME_HEX] != db.hex()[..LEASE_NAME_HEX] {
            prop_assert_ne!(lease_name(&da), lease_name(&db));
        } else {
            prop_assert_eq!(lease_name(&da), lease_name(&db));
        }
    }
}

proptest! {
    /// Coordination-free mode: nodes that want the image start at random times with partial
    /// views (members they see, stale want records of nodes that never pull), pullers die. Once
    /// views agree, exactly one live wanting node pulls.
    #[test]
    fn coordination_free_converges_to_one_puller(
        n in 2usize..10,
        seed in any::<u64>(),
        stale in 0usize..3,
        starts in prop::collection::vec(0u64..3000, 10),
        partial in prop::collection::vec(any::<u16>(), 10),
        kills in prop::collection::vec(0usize..10, 0..3),
    ) {
        let t0 = Instant::now();
        let img = digest(13);
        let all = names(n + stale);
        let c = cf_config();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes: Vec<Option<Election<String>>> = all[..n]
            .iter()
            .map(|me| Some(Election::new(img, me.clone(), me.clone(), c.clone(), t0)))
            .collect();
        let step = Duration::from_millis(250);
        let sync = t0 + Duration::from_secs(4);
        let mut now = t0;
        let mut killed = 0;
        for round in 0..400u32 {
            now += step;
            // A puller dies every 40 steps while kills remain (the next one must take over).
            if round % 40 == 39 && killed < kills.len() {
                if let Some(i) = (0..n).find(|i| nodes[*i].as_ref().is_some_and(|e| e.role() == Role::Pull)) {
                    nodes[i] = None;
                }
                killed += 1;
            }
            let pullers: Vec<String> = (0..n)
                .filter(|i| nodes[*i].as_ref().is_some_and(|e| e.role() == Role::Pull))
                .map(|i| all[i].clone())
                .collect();
            let alive: Vec<bool> = nodes.iter().map(Option::is_some).collect();
            for i in 0..n {
                if now < t0 + Duration::from_millis(starts[i]) {
                    continue;
                }
                let Some(e) = nodes[i].as_mut() else { continue };
                let members: Vec<String> = (0..n + stale)
                    .filter(|j| *j >= n || alive[*j])
                    .map(|j| all[j].clone())
                    .collect();
                // Before `sync` a node sees a random subset of the want records.
                let wanting: Vec<String> = (0..n + stale)
                    .filter(|j| *j >= n || alive[*j])
                    .filter(|j| now >= sync || *j == i || partial[i] & (1 << (j % 16)) != 0)
                    .map(|j| all[j].clone())
                    .collect();
                let providers: Vec<String> = pullers
                    .iter()
                    .filter(|p| **p != all[i])
                    .cloned()
                    .collect();
                e.poll(now, View { members: &members, wanting: &wanting, providers: &providers }, &mut rng);
            }
        }
        let live = nodes.iter().flatten().count();
        let pullers = nodes.iter().flatten().filter(|e| e.role() == Role::Pull).count();
        prop_assert_eq!(pullers, usize::from(live > 0), "{} live", live);
    }
}

#[test]
fn a_contender_arriving_after_the_release_follows_the_swarm() {
    let t0 = Instant::now();
    let img = digest(15);
    let m = names(3);
    let r = ranked(&img, &m);
    let mut rng = StdRng::seed_from_u64(15);
    let mut sim = SimLease::default();
    // The top-ranked arrives after another node pulled, completed and deleted the Lease; that
    // node provides the image now.
    let mut e = election(img, &r[0], cfg(), t0);
    let acts = sim.drive(&mut e, t0, view(&m, true), &mut rng);
    assert_eq!(acts, vec![Action::FeedFromSwarm]);
    assert!(sim.lease.is_none() && !e.is_holder());
    assert_eq!(sim.calls, 1, "one read, no create");
    // It stays off the API while the provider is there.
    let later = t0 + Duration::from_secs(60);
    assert_eq!(sim.drive(&mut e, later, view(&m, true), &mut rng), vec![]);
    assert_eq!(sim.calls, 1);
}
