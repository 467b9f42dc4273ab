//! The Lease election with the real kube client against `preheat_testkit::kube_api`.
//!
//! No Kubernetes API server can be installed here; `KubeApi` is an in-test HTTP server that
//! implements the exact Lease REST subset the kube client uses, with real semantics
//! (resourceVersion moving on every write, 409 on a stale write or an existing create, 404 Status
//! objects, delete preconditions, 503 or reset connections when "down").
//! Timeouts below only guard against hangs; no assertion depends on timing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use image_preheat::lease::{
    client_from_config, new_lease, ApiResult, ApiVerb, ImageElection, LeaseApi, LeaseConfig,
    LeaseElector, LeaseMetrics, LeaseMode, Mode, Role, Snapshot, Status, SwarmView, DIGEST_LABEL,
    MANAGED_BY_LABEL,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use preheat_core::election::{contenders, digest_label, lease_name};
use preheat_core::Digest;
use preheat_testkit::kube_api::{ApiMode, KubeApi, Verb};

const NS: &str = "preheat";
const GUARD: Duration = Duration::from_secs(60);

fn client(api: &KubeApi) -> anyhow::Result<kube::Client> {
    let mut cfg = kube::Config::new(api.url().parse()?);
    cfg.default_namespace = NS.to_string();
    Ok(client_from_config(cfg)?)
}

fn config(node: &str) -> LeaseConfig {
    let mut c = LeaseConfig::new(LeaseMode::Kube, NS, node);
    c.lease_duration = Duration::from_secs(30);
    c.provider_wait = Duration::from_secs(30);
    c.stagger = Duration::from_millis(100);
    c.retry_min = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(200);
    c.clock_skew = Duration::from_millis(100);
    c
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// The swarm as a test sees it: fixed members; an image has providers once some node holds its
/// Lease (a puller announces as soon as it has chunks).
#[derive(Clone)]
struct TestView {
    members: Vec<String>,
    api: Arc<KubeApi>,
}

impl SwarmView for TestView {
    fn snapshot(&mut self, image: &Digest) -> impl Future<Output = Snapshot> + Send {
        let held = self
            .api
            .lease(NS, &lease_name(image))
            .is_some_and(|l| l["spec"]["holderIdentity"].is_string());
        let s = Snapshot {
            members: self.members.clone(),
            wanting: self.members.clone(),
            providers: if held {
                vec!["holder".into()]
            } else {
                Vec::new()
            },
        };
        async move { s }
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_millis(50))
    }
}

fn elector(api: &KubeApi, cfg: LeaseConfig) -> anyhow::Result<(LeaseElector, LeaseMetrics)> {
    let metrics = LeaseMetrics::default();
    let member = cfg.node_name.clone();
    Ok((
        LeaseElector::new(cfg, member, Some(client(api)?), metrics.clone())?,
        metrics,
    ))
}

async fn decided(e: &mut ImageElection) -> anyhow::Result<Status> {
    tokio::time::timeout(GUARD, e.acquire_or_follow())
        .await
        .context("no decision")
}

async fn until(e: &mut ImageElection, f: impl FnMut(&Status) -> bool) -> anyhow::Result<Status> {
    tokio::time::timeout(GUARD, e.wait_for(f))
        .await
        .context("status never reached")
}

fn image(n: u8) -> Digest {
    Digest::of(&[n, 42])
}

#[tokio::test]
async fn create_makes_a_holder_and_a_second_contender_follows() -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let img = image(1);
    let m = names(2);
    let view = TestView {
        members: m.clone(),
        api: api.clone(),
    };
    let (a, am) = elector(&api, config(&m[0]))?;
    let mut ea = a.start(img, view.clone());
    let s = decided(&mut ea).await?;
    assert_eq!((s.role, s.mode, s.holder), (Role::Pull, Mode::Lease, true));
    let lease = api.lease(NS, &lease_name(&img)).context("lease stored")?;
    assert_eq!(lease["spec"]["holderIdentity"], "node-0");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 30);
    assert_eq!(
        lease["metadata"]["labels"][MANAGED_BY_LABEL],
        "image-preheat"
    );
    assert_eq!(
        lease["metadata"]["labels"][DIGEST_LABEL],
        digest_label(&img)
    );
    assert_eq!(
        (
            am.calls(ApiVerb::Get, ApiResult::NotFound),
            am.calls(ApiVerb::Create, ApiResult::Ok)
        ),
        (1, 1)
    );

    let (b, bm) = elector(&api, config(&m[1]))?;
    let mut eb = b.start(img, view);
    let s = decided(&mut eb).await?;
    assert_eq!(
        (s.role, s.mode, s.holder),
        (Role::Follow, Mode::Lease, false)
    );
    assert_eq!(bm.calls(ApiVerb::Get, ApiResult::Ok), 1);
    assert_eq!(
        bm.calls(ApiVerb::Create, ApiResult::Ok) + bm.calls(ApiVerb::Create, ApiResult::Conflict),
        0
    );
    assert_eq!(
        api.lease(NS, &lease_name(&img)).context("still there")?["spec"]["holderIdentity"],
        "node-0"
    );

    // Release deletes the Lease (with its resourceVersion as precondition).
    ea.complete().await;
    assert!(api.lease(NS, &lease_name(&img)).is_none());
    assert_eq!(
        (
            api.calls(Verb::Delete, 200),
            am.calls(ApiVerb::Delete, ApiResult::Ok)
        ),
        (1, 1)
    );
    eb.complete().await;
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let img = image(2);
    let raw = LeaseApi::new(client(&api)?, NS, LeaseMetrics::default());
    let stale = Timestamp::now() - SignedDuration::from_secs(60);
    let created = raw
        .create(&new_lease(
            &img,
            Some("dead-node"),
            Duration::from_secs(5),
            stale,
            None,
        )?)
        .await?;
    let old_rv = created.metadata.resource_version.clone().context("rv")?;

    let m = names(3);
    let (e, metrics) = elector(&api, config(&m[0]))?;
    let mut ie = e.start(
        img,
        TestView {
            members: m,
            api: api.clone(),
        },
    );
    let s = decided(&mut ie).await?;
    assert_eq!((s.role, s.holder), (Role::Pull, true));
    let lease = api.lease(NS, &lease_name(&img)).context("lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], "node-0");
    assert_ne!(lease["metadata"]["resourceVersion"], old_rv.as_str());
    assert_eq!(
        lease["metadata"]["uid"],
        created.metadata.uid.clone().context("uid")?.as_str()
    );
    assert_eq!(
        (
            metrics.calls(ApiVerb::Replace, ApiResult::Ok),
            metrics.calls(ApiVerb::Create, ApiResult::Ok)
        ),
        (1, 0)
    );
    ie.complete().await;
    Ok(())
}

#[tokio::test]
async fn two_racing_takeovers_exactly_one_wins() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    let img = image(3);
    let raw = LeaseApi::new(client(&api)?, NS, LeaseMetrics::default());
    let stale = Timestamp::now() - SignedDuration::from_secs(60);
    let created = raw
        .create(&new_lease(
            &img,
            Some("dead-node"),
            Duration::from_secs(5),
            stale,
            None,
        )?)
        .await?;
    let rv = created.metadata.resource_version.clone();
    let now = Timestamp::now();
    let x = new_lease(
        &img,
        Some("node-x"),
        Duration::from_secs(5),
        now,
        rv.clone(),
    )?;
    let y = new_lease(&img, Some("node-y"), Duration::from_secs(5), now, rv)?;
    let (rx, ry) = tokio::join!(raw.replace(&x), raw.replace(&y));
    let wins = [rx.is_ok(), ry.is_ok()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{rx:?} {ry:?}");
    let loser = if wins[0] { ry } else { rx };
    assert!(
        matches!(
            loser,
            Err(image_preheat::lease::LeaseError::Conflict { .. })
        ),
        "{loser:?}"
    );
    assert_eq!(
        (api.calls(Verb::Replace, 200), api.calls(Verb::Replace, 409)),
        (1, 1)
    );
    assert_eq!(
        (
            raw.metrics().calls(ApiVerb::Replace, ApiResult::Ok),
            raw.metrics().calls(ApiVerb::Replace, ApiResult::Conflict)
        ),
        (1, 1)
    );
    // Deleting with the stale resourceVersion conflicts too; the winner's deletes it.
    let name = lease_name(&img);
    let stale_rv = created.metadata.resource_version.clone().context("rv")?;
    let del = raw.delete(&name, &stale_rv).await;
    assert!(
        matches!(del, Err(image_preheat::lease::LeaseError::Conflict { .. })),
        "{del:?}"
    );
    let current = raw.get(&name).await?.context("still there")?;
    raw.delete(
        &name,
        current.metadata.resource_version.as_deref().unwrap_or(""),
    )
    .await?;
    assert!(raw.get(&name).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_killed_holder_is_replaced_after_expiry_and_an_abandoned_lease_has_no_holder(
) -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let img = image(4);
    let m = names(2);
    let view = TestView {
        members: m.clone(),
        api: api.clone(),
    };
    let short = |n: &str| {
        let mut c = config(n);
        c.lease_duration = Duration::from_secs(1);
        c
    };
    let (a, _) = elector(&api, short(&m[0]))?;
    let (b, _) = elector(&api, short(&m[1]))?;
    let mut ea = a.start(img, view.clone());
    assert_eq!(decided(&mut ea).await?.role, Role::Pull);
    let mut eb = b.start(img, view.clone());
    assert_eq!(decided(&mut eb).await?.role, Role::Follow);
    ea.kill();
    let s = until(&mut eb, |s| s.holder).await?;
    assert_eq!(s.role, Role::Pull);
    let lease = api.lease(NS, &lease_name(&img)).context("lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert!(api.calls(Verb::Replace, 200) >= 1);
    // Giving up before completion leaves a holder-less Lease, not a deleted one.
    eb.abandon().await;
    let lease = api.lease(NS, &lease_name(&img)).context("lease kept")?;
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    Ok(())
}

#[tokio::test]
async fn api_server_down_falls_back_to_the_ranking_and_recovers() -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let img = image(5);
    let m = names(3);
    let ranked: Vec<String> = contenders(&img, &m, 3).into_iter().cloned().collect();
    let view = TestView {
        members: m.clone(),
        api: api.clone(),
    };
    preheat_testkit::init_tracing();
    for mode in [ApiMode::Unavailable, ApiMode::Refuse] {
        api.set_mode(mode);
        let (first, _) = elector(&api, config(&ranked[0]))?;
        let (second, _) = elector(&api, config(&ranked[1]))?;
        let mut e1 = first.start(img, view.clone());
        let mut e2 = second.start(img, view.clone());
        let fell_back = |s: &Status| s.mode == Mode::Fallback && s.role != Role::Undecided;
        let s1 = until(&mut e1, fell_back)
            .await
            .context("first falls back")?;
        let s2 = until(&mut e2, fell_back)
            .await
            .context("second falls back")?;
        assert_eq!((s1.role, s1.holder), (Role::Pull, false), "{mode:?}");
        assert_eq!((s2.role, s2.holder), (Role::Follow, false), "{mode:?}");
        // The API server answers again: back to the Lease, exactly one holder pulls.
        api.set_mode(ApiMode::Up);
        let holder = tokio::time::timeout(GUARD, async {
            loop {
                if let Some(h) = api
                    .lease(NS, &lease_name(&img))
                    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
                {
                    return h;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?;
        for (e, name) in [(&mut e1, &ranked[0]), (&mut e2, &ranked[1])] {
            let mine = *name == holder;
            let want = if mine { Role::Pull } else { Role::Follow };
            until(e, |s| {
                s.mode == Mode::Lease && s.holder == mine && s.role == want
            })
            .await
            .with_context(|| format!("{name} recovers, holder {holder}: {:?}", e.status()))?;
        }
        e1.complete().await;
        e2.complete().await;
        assert!(api.lease(NS, &lease_name(&img)).is_none());
    }
    assert!(api.calls(Verb::Get, 503) >= 1);
    Ok(())
}

/// Runs `n` nodes for one image; returns (Lease API calls seen by the server, calls per node).
/// `stagger` zero makes the contenders race into the same create (409 for the losers).
async fn race(n: usize, img: Digest, stagger: Duration) -> anyhow::Result<(u64, Vec<u64>)> {
    let api = Arc::new(KubeApi::start().await?);
    let m = names(n);
    let view = TestView {
        members: m.clone(),
        api: api.clone(),
    };
    let mut runs = Vec::new();
    for node in &m {
        let mut cfg = config(node);
        cfg.stagger = stagger;
        let (e, metrics) = elector(&api, cfg)?;
        runs.push((e.start(img, view.clone()), metrics));
    }
    let mut statuses = Vec::new();
    for (e, _) in &mut runs {
        statuses.push(decided(e).await?);
    }
    let pullers: Vec<usize> = (0..n).filter(|i| statuses[*i].role == Role::Pull).collect();
    assert_eq!(pullers.len(), 1, "{statuses:?}");
    assert!(statuses[pullers[0]].holder);
    assert_eq!(statuses.iter().filter(|s| s.holder).count(), 1);
    let lease = api.lease(NS, &lease_name(&img)).context("lease")?;
    assert_eq!(lease["spec"]["holderIdentity"], m[pullers[0]].as_str());
    let per_node: Vec<u64> = runs.iter().map(|(_, metrics)| metrics.total()).collect();
    let total = api.total_calls();
    for (e, _) in runs {
        e.complete().await;
    }
    Ok((total, per_node))
}

#[tokio::test]
async fn ten_nodes_race_one_holder_and_api_calls_do_not_grow_with_nodes() -> anyhow::Result<()> {
    let img = image(6);
    for stagger in [Duration::from_millis(100), Duration::ZERO] {
        let (calls10, per10) = race(10, img, stagger).await?;
        let (calls30, per30) = race(30, img, stagger).await?;
        check_api_load(img, (calls10, &per10), (calls30, &per30));
    }
    Ok(())
}

fn check_api_load(img: Digest, (calls10, per10): (u64, &[u64]), (calls30, per30): (u64, &[u64])) {
    for (n, per) in [(10, per10), (30, per30)] {
        let m = names(n);
        let top: Vec<String> = contenders(&img, &m, 3).into_iter().cloned().collect();
        for (i, calls) in per.iter().enumerate() {
            if !top.contains(&m[i]) {
                assert_eq!(*calls, 0, "non-contender {} of {n} called the API", m[i]);
            }
        }
    }
    // Each of the 3 contenders makes at most get + create + get before deciding.
    assert!(calls10 <= 9 && calls30 <= 9, "{calls10} vs {calls30}");
    assert_eq!(calls10, per10.iter().sum::<u64>());
    assert_eq!(calls30, per30.iter().sum::<u64>());
}

#[tokio::test]
async fn different_digests_never_share_a_lease() -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let m = names(1);
    let view = TestView {
        members: m.clone(),
        api: api.clone(),
    };
    let (e, _) = elector(&api, config(&m[0]))?;
    let imgs: Vec<Digest> = (10..14).map(image).collect();
    let mut runs = Vec::new();
    for img in &imgs {
        let mut ie = e.start(*img, view.clone());
        assert!(
            decided(&mut ie).await?.holder,
            "each image gets its own Lease"
        );
        runs.push(ie);
    }
    let mut want: Vec<String> = imgs.iter().map(lease_name).collect();
    want.sort();
    assert_eq!(api.lease_names(NS), want);
    for img in &imgs {
        let l = api.lease(NS, &lease_name(img)).context("lease")?;
        assert_eq!(l["metadata"]["labels"][DIGEST_LABEL], digest_label(img));
    }
    let managed = LeaseApi::new(client(&api)?, NS, LeaseMetrics::default())
        .list_managed()
        .await?;
    assert_eq!(managed.len(), imgs.len());
    for ie in runs {
        ie.complete().await;
    }
    assert!(api.lease_names(NS).is_empty());
    Ok(())
}

#[tokio::test]
async fn garbage_collection_deletes_only_long_expired_leases() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    let raw = LeaseApi::new(client(&api)?, NS, LeaseMetrics::default());
    let now = Timestamp::now();
    let old = now - SignedDuration::from_secs(3600);
    raw.create(&new_lease(
        &image(20),
        Some("dead"),
        Duration::from_secs(300),
        old,
        None,
    )?)
    .await?;
    raw.create(&new_lease(
        &image(21),
        Some("alive"),
        Duration::from_secs(300),
        now,
        None,
    )?)
    .await?;
    let deleted = raw.delete_expired(now, Duration::from_secs(900)).await?;
    assert_eq!(deleted, 1);
    assert_eq!(api.lease_names(NS), vec![lease_name(&image(21))]);
    assert_eq!(raw.delete_expired(now, Duration::from_secs(900)).await?, 0);
    Ok(())
}

/// Members that a test can change: the swarm losing a node.
#[derive(Clone)]
struct Members(Arc<std::sync::Mutex<Vec<String>>>);

impl SwarmView for Members {
    fn snapshot(&mut self, _image: &Digest) -> impl Future<Output = Snapshot> + Send {
        let members = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        async move {
            Snapshot {
                wanting: members.clone(),
                members,
                providers: Vec::new(),
            }
        }
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_millis(20))
    }
}

#[tokio::test]
async fn coordination_free_the_top_member_pulls_then_the_next_one() -> anyhow::Result<()> {
    let img = image(30);
    let m = names(4);
    let ranked: Vec<String> = contenders(&img, &m, 4).into_iter().cloned().collect();
    let members = Members(Arc::new(std::sync::Mutex::new(m.clone())));
    let mut runs = Vec::new();
    for node in &ranked {
        let cfg = LeaseConfig::new(LeaseMode::None, NS, node.as_str());
        let e = LeaseElector::new(cfg, node.as_str(), None, LeaseMetrics::default())?;
        runs.push(e.start(img, members.clone()));
    }
    for (i, e) in runs.iter_mut().enumerate() {
        let s = decided(e).await?;
        let want = if i == 0 { Role::Pull } else { Role::Follow };
        assert_eq!(
            (s.role, s.mode, s.holder),
            (want, Mode::CoordinationFree, false)
        );
    }
    // The puller leaves the swarm: the next in the ranking pulls, the rest keep following.
    if let Ok(mut g) = members.0.lock() {
        g.retain(|x| *x != ranked[0]);
    }
    runs.remove(0).kill();
    until(&mut runs[0], |s| s.role == Role::Pull).await?;
    assert_eq!(runs[1].status().role, Role::Follow);
    for e in runs {
        e.complete().await;
    }
    Ok(())
}

#[tokio::test]
async fn the_holder_renews_every_third_of_the_duration_keeping_its_acquire_time(
) -> anyhow::Result<()> {
    let api = Arc::new(KubeApi::start().await?);
    let img = image(40);
    let m = names(1);
    let mut cfg = config(&m[0]);
    cfg.lease_duration = Duration::from_secs(3);
    let (e, metrics) = elector(&api, cfg)?;
    let mut ie = e.start(
        img,
        TestView {
            members: m,
            api: api.clone(),
        },
    );
    assert!(decided(&mut ie).await?.holder);
    let first = api.lease(NS, &lease_name(&img)).context("lease")?;
    let renewed = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(l) = api.lease(NS, &lease_name(&img)) {
                if l["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"] {
                    return l;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert_eq!(renewed["spec"]["holderIdentity"], "node-0");
    assert_eq!(renewed["spec"]["acquireTime"], first["spec"]["acquireTime"]);
    let t = |l: &serde_json::Value| {
        l["spec"]["renewTime"]
            .as_str()
            .unwrap_or("")
            .parse::<Timestamp>()
    };
    assert!(t(&renewed)? > t(&first)?);
    assert!(metrics.calls(ApiVerb::Replace, ApiResult::Ok) >= 1);
    ie.complete().await;
    Ok(())
}
