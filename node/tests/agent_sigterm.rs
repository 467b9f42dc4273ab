//! SIGTERM while a real agent is pulling from a (slowed) real docker-registry: the agent exits 0
//! within 10 s, the store it leaves opens cleanly with the image recorded and partly stored, and
//! the next agent resumes from the verified chunks instead of starting over.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use agent_support::{canonical, entry, Agent, SlowProxy, Spec, MIB};
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{ImageBuilder, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_transfer_exits_promptly_and_leaves_a_resumable_store() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(41)
        .layers(&[12 * MIB, 12 * MIB])
        .push(&reg, "term/app:1")
        .await
        .unwrap();
    // About 1 MiB/s: the 24 MiB pull is still running when the signal comes.
    let proxy = SlowProxy::start(reg.addr(), MIB).await;
    let reference = img.reference_via(&proxy.host());
    let image = canonical(&reference);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{reference}\n")).unwrap();
    let store = dir.path().join("store");
    let host = proxy.host();
    let mut agent = Agent::start(Spec::new("node-a", &store, &list, &host)).await;
    agent
        .wait_status("transfer under way", |s| {
            entry(s, &image)
                .is_some_and(|e| e["state"] == "fetching" && e["bytes"].as_u64().unwrap() > MIB)
        })
        .await;
    let status = agent.sigterm().await;
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");

    let opened = Store::open(StoreConfig {
        chunk_size: 256 * 1024,
        ..StoreConfig::new(&store)
    })
    .await
    .unwrap();
    let images = opened.images().await.unwrap();
    let rec = images.iter().find(|s| s.record.reference == image).unwrap();
    assert!(!rec.complete, "the pull was cut short");
    assert!(
        rec.stored_bytes > 0 && rec.stored_bytes < img.total_size,
        "{rec:?}"
    );
    let kept = rec.stored_bytes;
    drop(opened);

    proxy.set_rate(1 << 30);
    let mut agent = Agent::start(Spec::new("node-a", &store, &list, &host)).await;
    let e = agent.wait_complete(&image).await;
    assert_eq!(e["digest"], img.manifest_digest.to_string());
    assert!(
        e["presentBytes"].as_u64().unwrap() >= kept.min(MIB),
        "resumed from the stored chunks: {e}"
    );
    assert_eq!(agent.sigterm().await.code(), Some(0));
}

/// With `LEASE=kube` (an in-test Lease API reached through a kubeconfig) the agent holds the
/// image's Lease while it pulls; SIGTERM hands it over: after the exit no Lease names this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pull_releases_the_lease() {
    let api = preheat_testkit::kube_api::KubeApi::start().await.unwrap();
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(42)
        .layers(&[12 * MIB, 12 * MIB])
        .push(&reg, "term/leased:1")
        .await
        .unwrap();
    let proxy = SlowProxy::start(reg.addr(), MIB).await;
    let reference = img.reference_via(&proxy.host());
    let image = canonical(&reference);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: t\n    user: u\n\
             current-context: c\n",
            api.url()
        ),
    )
    .unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{reference}\n")).unwrap();
    let store = dir.path().join("store");
    let host = proxy.host();
    let mut spec = Spec::new("node-l", &store, &list, &host);
    spec.env.push(("LEASE", "kube".into()));
    spec.env.push(("K8S_NAMESPACE", "preheat".into()));
    spec.env
        .push(("KUBECONFIG", kubeconfig.display().to_string()));
    let mut agent = Agent::start(spec).await;
    agent
        .wait_status("transfer under way", |s| {
            entry(s, &image)
                .is_some_and(|e| e["state"] == "fetching" && e["bytes"].as_u64().unwrap() > MIB)
        })
        .await;
    let held = |api: &preheat_testkit::kube_api::KubeApi| {
        api.lease_names("preheat")
            .iter()
            .filter_map(|n| api.lease("preheat", n))
            .filter(|l| l["spec"]["holderIdentity"] == "node-l")
            .count()
    };
    assert_eq!(held(&api), 1, "the puller holds the image's Lease");
    assert_eq!(agent.sigterm().await.code(), Some(0));
    assert_eq!(held(&api), 0, "the Lease was handed over at shutdown");
}
