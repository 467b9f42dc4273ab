//! The agent with a real containerd (started by the test on a private socket): a listed image pulled
//! from the real registry through the agent is listed by `ctr -n k8s.io images ls` under its
//! reference with the manifest digest, and `/images/check` says it is in the runtime.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use agent_support::{canonical, Agent, Spec, MIB};
use preheat_testkit::{Containerd, ImageBuilder, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_image_lands_in_containerd_k8s_namespace() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(61)
        .layers(&[MIB, MIB / 2])
        .push(&reg, "ctd/app:1")
        .await
        .unwrap();
    let ctd = Containerd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{}\n", img.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-c", &store, &list, &host);
    spec.env.push(("RUNTIME", "containerd".into()));
    spec.env
        .push(("CONTAINERD_ADDRESS", ctd.socket().display().to_string()));
    let mut agent = Agent::start(spec).await;
    let e = agent.wait_complete(&canonical(&img.reference)).await;
    assert_eq!(e["inRuntime"], true, "{e}");
    let images = ctd.images("k8s.io").await.unwrap();
    assert!(
        images.contains(&(img.reference.clone(), img.manifest_digest.to_string())),
        "{images:?}"
    );
    assert_eq!(agent.sigterm().await.code(), Some(0));
}
