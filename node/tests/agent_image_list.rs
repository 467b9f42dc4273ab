//! The image list of a real agent changes at run time: a Kubernetes-style ConfigMap update (new
//! `..<timestamp>` directory, `..data_tmp` symlink renamed over `..data`) and a plain file replace
//! are both picked up by the directory watch (INTERVAL is 5m, so no poll can be what saw them);
//! invalid lines are reported without stopping the valid ones; removed images are forgotten.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use agent_support::{canonical, entry, write_list, Agent, ConfigMapDir, Spec, MIB};
use preheat_testkit::{ImageBuilder, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swaps_and_file_replaces_reload_the_list() {
    let reg = Registry::start().await.unwrap();
    let a = ImageBuilder::new()
        .seed(21)
        .layers(&[MIB])
        .push(&reg, "list/a:1")
        .await
        .unwrap();
    let b = ImageBuilder::new()
        .seed(22)
        .layers(&[MIB])
        .push(&reg, "list/b:1")
        .await
        .unwrap();
    let c = ImageBuilder::new()
        .seed(23)
        .layers(&[MIB])
        .push(&reg, "list/c:1")
        .await
        .unwrap();
    let (ca, cb, cc) = (
        canonical(&a.reference),
        canonical(&b.reference),
        canonical(&c.reference),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cm = ConfigMapDir::new(&dir.path().join("config"), &format!("{}\n", a.reference));
    let store = dir.path().join("store");
    let host = reg.host();
    let list = cm.path();
    let mut agent = Agent::start(Spec::new("node-a", &store, &list, &host)).await;
    agent.wait_complete(&ca).await;

    // The kubelet's atomic update, with one bad line among good ones.
    cm.update(&format!(
        "# v2\n{}\nthis is not a reference\n\n{}  # trailing comment\n",
        b.reference, c.reference
    ));
    let s = agent
        .wait_status("b and c complete, a forgotten", |s| {
            entry(s, &ca).is_none()
                && [&cb, &cc]
                    .iter()
                    .all(|i| entry(s, i).is_some_and(|e| e["state"] == "complete"))
        })
        .await;
    let bad = &s["imageList"]["invalidLines"];
    assert_eq!(bad.as_array().unwrap().len(), 1, "{bad}");
    assert_eq!(bad[0]["line"], 3);
    assert_eq!(bad[0]["text"], "this is not a reference");
    let metrics = agent.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("image_list_invalid_lines 1"), "{metrics}");
    assert!(metrics.contains("image_list_images 2"), "{metrics}");

    // A plain file (not a ConfigMap) replaced by rename, as an editor or a script does.
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    let plain = plain_dir.join("images.list");
    write_list(&plain, &format!("{}\n", b.reference));
    agent.sigterm().await;
    let mut agent = Agent::start(Spec::new("node-a", &store, &plain, &host)).await;
    agent.wait_complete(&cb).await;
    write_list(&plain, &format!("{}\n{}\n", b.reference, a.reference));
    let e = agent.wait_complete(&ca).await;
    // Still stored from before: complete without a fetch.
    assert_eq!(
        (&e["totalBytes"], &e["bytes"], &e["registryBytes"]),
        (&a.total_size.into(), &a.total_size.into(), &0.into()),
        "a was still stored: {e}"
    );
    let s = agent.status().await;
    assert!(entry(&s, &cc).is_none(), "c is not listed here: {s}");
    assert_eq!(agent.sigterm().await.code(), Some(0));
}
