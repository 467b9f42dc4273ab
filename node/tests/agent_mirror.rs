//! The agent serves the node-local registry mirror (MIRROR_ADDR): a listed image is served from
//! its store byte for byte, an unlisted one is fetched upstream by the agent's own fetcher on the
//! first pull, and `--mirror false` leaves the port closed. Real docker-registry, real skopeo.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;
#[path = "mirror_support/mod.rs"]
mod mirror_support;

use agent_support::{canonical, Agent, Spec, MIB};
use preheat_testkit::{ImageBuilder, Registry};
use sha2::{Digest as _, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_its_store_and_the_upstream_through_the_mirror() {
    let reg = Registry::start().await.unwrap();
    let listed = ImageBuilder::new()
        .seed(71)
        .layers(&[MIB, MIB / 3])
        .push(&reg, "mirror/listed:1")
        .await
        .unwrap();
    let other = ImageBuilder::new()
        .seed(72)
        .layers(&[MIB / 2])
        .push(&reg, "mirror/other:1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{}\n", listed.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-m", &store, &list, &host);
    // skopeo sends no `ns` parameter: requests without one are for the test registry.
    spec.env.push(("MIRROR_DEFAULT_REGISTRY", host.clone()));
    let mut agent = Agent::start(spec).await;
    agent.wait_complete(&canonical(&listed.reference)).await;
    let mirror = agent.status().await["mirrorAddr"]
        .as_str()
        .expect("status names the mirror address")
        .to_owned();

    // The listed image from the store: manifest byte-exact, a layer with its digest; the
    // registry sees no request for it.
    let before = reg.access_log().unwrap().len();
    let http = reqwest::Client::new();
    let url = format!(
        "http://{mirror}/v2/mirror/listed/manifests/1?ns={}",
        urlencode(&host)
    );
    let r = http
        .get(&url)
        .header("accept", &listed.manifest_media_type)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        listed.manifest_digest.to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), listed.manifest_bytes);
    let (layer, size) = listed.layers[0];
    let blob = http
        .get(format!("http://{mirror}/v2/mirror/listed/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    let body = blob.bytes().await.unwrap();
    assert_eq!(body.len() as u64, size);
    assert_eq!(hex::encode(Sha256::digest(&body)), layer.hex());
    // The credential check may ask the registry whether the repository is public (`/v2/`
    // or a HEAD of the manifest); nothing of the image's content comes from it.
    let asked: Vec<_> = reg.access_log().unwrap().split_off(before);
    assert!(
        asked
            .iter()
            .all(|e| e.method == "HEAD" || e.path == "/v2/" || e.bytes == 0),
        "content came from the registry: {asked:?}"
    );

    // An unlisted image: the first pull goes upstream through the agent's fetcher; skopeo's copy
    // equals a copy straight from the registry.
    let via_mirror = dir.path().join("via-mirror");
    let direct = dir.path().join("direct");
    mirror_support::skopeo_copy(&format!("{mirror}/mirror/other:1"), &via_mirror).unwrap();
    mirror_support::skopeo_copy(&other.reference, &direct).unwrap();
    assert!(mirror_support::same_dir(&via_mirror, &direct).unwrap() >= 3);
    for (d, _) in &other.layers {
        assert_eq!(
            reg.blob_gets(d).unwrap().len(),
            2,
            "{d}: once by the agent, once by the direct copy"
        );
    }
    assert!(agent.sigterm().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_can_be_switched_off() {
    let reg = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, "").unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-off", &store, &list, &host);
    spec.env.push(("MIRROR_ENABLED", "false".into()));
    let mut agent = Agent::start(spec).await;
    assert!(agent.status().await["mirrorAddr"].is_null());
    assert!(agent.sigterm().await.success());
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A")
}
