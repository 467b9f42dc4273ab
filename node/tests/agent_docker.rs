//! The agent with a real dockerd (started by the test on a private socket): a listed image pulled
//! from the real registry through the agent shows in `docker image inspect` with the image ID a
//! pull gives, `/images/check` says it is in the runtime, and the `/images/download` archive loads
//! with `docker load` after the image was removed.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use agent_support::{canonical, Agent, Spec, MIB};
use preheat_testkit::{Dockerd, ImageBuilder, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_image_lands_in_docker_and_the_download_loads() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(51)
        .layers(&[MIB, MIB / 2])
        .push(&reg, "docker/app:1")
        .await
        .unwrap();
    let dockerd = Dockerd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{}\n", img.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-d", &store, &list, &host);
    spec.env.push(("RUNTIME", "docker".into()));
    spec.env.push(("DOCKER_HOST", dockerd.host()));
    let mut agent = Agent::start(spec).await;
    let e = agent.wait_complete(&canonical(&img.reference)).await;
    assert_eq!(e["inRuntime"], true, "{e}");
    let inspect = dockerd.inspect(&img.reference).await.unwrap().unwrap();
    assert_eq!(inspect["Id"], img.config_digest.to_string());
    // DOCKER_REPO_DIGESTS (default on): the RepoDigest a `docker pull` records.
    let repo = img.reference.rsplit_once(':').unwrap().0;
    assert_eq!(
        inspect["RepoDigests"],
        serde_json::json!([format!("{repo}@{}", img.manifest_digest)])
    );

    let (code, check) = agent
        .get_json(&format!("/images/check?image={}", img.reference))
        .await;
    assert_eq!((code, &check["inRuntime"]), (200, &true.into()), "{check}");

    let body = agent
        .get(&format!("/images/download?image={}", img.reference))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let tarball = dir.path().join("app.tar");
    std::fs::write(&tarball, &body).unwrap();
    dockerd.docker(&["rmi", &img.reference]).await.unwrap();
    assert!(dockerd.inspect(&img.reference).await.unwrap().is_none());
    dockerd
        .docker(&["load", "-i", tarball.to_str().unwrap()])
        .await
        .unwrap();
    let loaded = dockerd.inspect(&img.reference).await.unwrap().unwrap();
    assert_eq!(loaded["Id"], img.config_digest.to_string());
    assert_eq!(agent.sigterm().await.code(), Some(0));
}
