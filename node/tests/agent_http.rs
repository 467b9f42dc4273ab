//! The node HTTP API of a real agent against a real docker-registry: health, readiness, per-image
//! state, on-demand preheat, status, JSON errors, and metrics that `promtool check metrics` accepts.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use std::process::Stdio;

use agent_support::{canonical, Agent, Spec, MIB};
use preheat_testkit::{ImageBuilder, Registry};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_reports_state_preheats_on_demand_and_exports_metrics() {
    let reg = Registry::start().await.unwrap();
    let a = ImageBuilder::new()
        .seed(11)
        .layers(&[MIB, MIB / 2])
        .push(&reg, "http/a:1")
        .await
        .unwrap();
    let b = ImageBuilder::new()
        .seed(12)
        .layers(&[MIB / 2])
        .push(&reg, "http/b:1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("# test list\n{}\n", a.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut agent = Agent::start(Spec::new("node-a", &store, &list, &host)).await;
    let (ca, cb) = (canonical(&a.reference), canonical(&b.reference));

    let e = agent.wait_complete(&ca).await;
    assert_eq!(e["digest"], a.manifest_digest.to_string());
    assert_eq!(e["totalBytes"], a.total_size);
    assert_eq!(e["registryBytes"], a.total_size, "{e}");
    assert_eq!(e["listed"], true);

    assert_eq!(agent.get_json("/health").await.0, 200);
    let (code, ready) = agent.get_json("/ready").await;
    assert_eq!(
        (code, &ready["ready"]),
        (200, &serde_json::json!(true)),
        "{ready}"
    );

    let (code, check) = agent
        .get_json(&format!("/images/check?image={}", a.reference))
        .await;
    assert_eq!(code, 200);
    assert_eq!(check["state"], "complete");
    assert_eq!(check["progress"], 1.0);
    assert_eq!(check["bytes"], a.total_size);
    assert_eq!(check["inRuntime"], false, "RUNTIME=none");
    assert_eq!(check["image"], ca);

    let (code, check) = agent
        .get_json(&format!("/images/check?image={}", b.reference))
        .await;
    assert_eq!((code, &check["state"]), (200, &serde_json::json!("absent")));

    for bad in ["/images/check?image=Not%20A%20Ref", "/images/check"] {
        let (code, err) = agent.get_json(bad).await;
        assert_eq!(code, 400, "{bad}: {err}");
        assert!(err["message"].as_str().unwrap().contains("image"), "{err}");
    }
    let (code, err) = agent.get_json("/no/such/thing").await;
    assert_eq!(code, 404);
    assert!(err["message"].is_string());

    // On-demand preheat: answered at once with the image's state, then fetched.
    let body = format!(r#"{{"images": ["{}"]}}"#, b.reference);
    let (code, answer) = agent.post_json("/api/v1/preheat", &body).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["images"][0]["image"], cb);
    let e = agent.wait_complete(&cb).await;
    assert_eq!(e["onDemand"], true);
    assert_eq!(e["listed"], false);
    for bad in [
        r#"{"images": ["bad ref!"]}"#,
        "not json",
        r#"{"image": "x"}"#,
    ] {
        let (code, err) = agent.post_json("/api/v1/preheat", bad).await;
        assert_eq!(code, 400, "{bad}: {err}");
        assert!(err["message"].is_string(), "{err}");
    }

    let status = agent.status().await;
    assert_eq!(status["node"], "node-a");
    assert_eq!(status["imageList"]["images"], 1);
    assert!(status["peerId"].as_str().unwrap().starts_with("12D3"));
    assert_eq!(status["images"].as_array().unwrap().len(), 2);

    let r = agent.get("/metrics").await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for needle in [
        format!("image_preheat_total{{image=\"{ca}\",source=\"registry\"}} 1"),
        format!("image_preheat_total{{image=\"{cb}\",source=\"registry\"}} 1"),
        "image_list_images 1".to_owned(),
        "image_list_invalid_lines 0".to_owned(),
        "store_usage_bytes ".to_owned(),
        "registry_pull_total{".to_owned(),
        "image_preheat_bytes_total{source=\"registry\"}".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle} in:\n{text}");
    }
    promtool_accepts(&text).await;
    let om = reqwest::Client::new()
        .get(agent.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(om.ends_with("# EOF\n"), "OpenMetrics on request");
    assert_eq!(agent.sigterm().await.code(), Some(0));
}

/// `promtool check metrics` (Debian's prometheus package) on the exposition text.
async fn promtool_accepts(text: &str) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/install-deps.sh");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(agent_support::BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_streams_a_docker_archive_one_at_a_time() {
    let reg = Registry::start().await.unwrap();
    let a = ImageBuilder::new()
        .seed(13)
        .layers(&[MIB, MIB / 4])
        .push(&reg, "http/dl:1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{}\n", a.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-dl", &store, &list, &host);
    spec.env.push(("DOWNLOAD_API_CONCURRENCY", "1".into()));
    let mut agent = Agent::start(spec).await;
    let missing = format!("/images/download?image={host}/http/none:1");
    let (code, err) = agent.get_json(&missing).await;
    assert_eq!(code, 404, "{err}");
    agent.wait_complete(&canonical(&a.reference)).await;

    let path = format!("/images/download?image={}", a.reference);
    let first = agent.get(&path).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "application/x-tar");
    // The first response holds the only slot until its body is consumed or dropped.
    let (code, err) = agent.get_json(&path).await;
    assert_eq!(code, 429, "{err}");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("DOWNLOAD_API_CONCURRENCY"));
    let body = first.bytes().await.unwrap();
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(&body[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
    }
    assert!(names.iter().any(|n| n == "manifest.json"), "{names:?}");
    for (d, _) in &a.layers {
        assert!(
            names.iter().any(|n| n.contains(&d.hex())),
            "layer {d} in {names:?}"
        );
    }
    // The slot is free again.
    let again = agent.get(&path).await.unwrap();
    assert_eq!(again.status(), 200);
    drop(again);
    assert_eq!(agent.sigterm().await.code(), Some(0));
}
