//! The node HTTP API of a real agent against a real docker-registry: health, readiness, per-image
//! state, on-demand preheat, status, JSON errors, metrics that `promtool check metrics` accepts
//! (per-peer fetch metrics named by the peers' NODE_NAME, or without the name when switched off),
//! and the rate limit of `/images/download`.

#![allow(clippy::unwrap_used)] // test code

mod agent_support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::{canonical, write_list, Agent, Spec, MIB};
use preheat_testkit::{free_port, ImageBuilder, Registry};
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

async fn metrics_text(agent: &Agent) -> String {
    let r = agent.get("/metrics").await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The `peer` label values of the `peer_fetch_total` samples of `image`.
fn fetch_peers(text: &str, image: &str) -> Vec<String> {
    let prefix = format!("peer_fetch_total{{image=\"{image}\",peer=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('"').map(|(p, _)| p.to_owned()))
        .collect()
}

/// Three store directories with fresh identities, ordered by their rendezvous rank for `image`
/// (the election's ranking of live members).
fn ranked_stores(dir: &std::path::Path, image: &str) -> Vec<std::path::PathBuf> {
    let mut stores: Vec<(String, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let store = dir.join(format!("store-{i}"));
            std::fs::create_dir_all(&store).unwrap();
            let key = preheat_swarm::identity::load_or_create(&store).unwrap();
            (key.public().to_peer_id().to_string(), store)
        })
        .collect();
    let ids: Vec<String> = stores.iter().map(|(id, _)| id.clone()).collect();
    let order: Vec<String> = preheat_core::rendezvous::rank(image.as_bytes(), &ids)
        .into_iter()
        .cloned()
        .collect();
    stores.sort_by_key(|(id, _)| order.iter().position(|o| o == id));
    stores.into_iter().map(|(_, s)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_fetch_metrics_name_the_peer_unless_switched_off() {
    let reg = Registry::start().await.unwrap();
    let img = ImageBuilder::new()
        .seed(14)
        .layers(&[MIB, MIB / 2])
        .push(&reg, "http/peers:1")
        .await
        .unwrap();
    let ci = canonical(&img.reference);
    let dir = tempfile::tempdir().unwrap();
    let host = reg.host();
    let names = ["node-seed", "node-named", "node-anon"];
    // With LEASE=none the top-ranked live member pulls an image: create the identities first and
    // hand them out so that the seed ranks first and the others follow (fetch from peers).
    let stores = ranked_stores(dir.path(), &img.manifest_digest.to_string());
    let ports: Vec<u16> = names.iter().map(|_| free_port().unwrap()).collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let mut agents = Vec::new();
    let mut lists = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let list = dir.path().join(format!("{name}.list"));
        std::fs::write(&list, "# nothing yet\n").unwrap();
        let mut spec = Spec::new(name, &stores[i], &list, &host);
        spec.swarm_port = ports[i];
        spec.peers = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        if *name == "node-anon" {
            spec.env.push(("PEER_METRICS_LABEL", "false".into()));
        }
        agents.push(Agent::start(spec).await);
        lists.push(list);
    }
    for ag in &agents {
        ag.wait_status("connected to the other agents", |s| {
            s["peers"]
                .as_array()
                .is_some_and(|p| p.len() == names.len() - 1)
        })
        .await;
    }
    // The seed pulls from the registry; the others then fetch from the swarm, one after the other.
    for (ag, list) in agents.iter().zip(&lists) {
        write_list(list, &format!("{}\n", img.reference));
        let e = ag.wait_complete(&ci).await;
        if ag.name != "node-seed" {
            assert!(e["peerBytes"].as_u64().unwrap() > 0, "{e}");
        }
    }

    let named = metrics_text(&agents[1]).await;
    let peers = fetch_peers(&named, &ci);
    assert_eq!(
        peers,
        ["node-seed"],
        "peer_fetch_total of node-named:\n{named}"
    );
    for needle in [
        format!("peer_fetch_bytes_total{{image=\"{ci}\",peer=\"node-seed\"}} "),
        format!("peer_fetch_duration_seconds_count{{image=\"{ci}\",peer=\"node-seed\"}} "),
        format!("image_preheat_total{{image=\"{ci}\",source=\"peer\"}} 1"),
        "image_preheat_bytes_total{source=\"peer\"} ".to_owned(),
    ] {
        assert!(named.contains(&needle), "{needle} in:\n{named}");
    }
    promtool_accepts(&named).await;

    let anon = metrics_text(&agents[2]).await;
    assert_eq!(
        fetch_peers(&anon, &ci),
        [""],
        "peer_fetch_total of node-anon:\n{anon}"
    );
    assert!(
        !anon.contains("peer=\"node-") && !anon.contains("peer=\"12D3"),
        "no peer names or ids with PEER_METRICS_LABEL=false:\n{anon}"
    );
    promtool_accepts(&anon).await;
    for ag in &mut agents {
        assert_eq!(ag.sigterm().await.code(), Some(0));
    }
}

/// Bytes of `/images/download` never run ahead of `DOWNLOAD_RATE_LIMIT`: at every point of the
/// body, bytes ≤ burst + rate × elapsed (with slack). A one-sided bound: a slow machine only
/// delivers fewer bytes, while an unlimited download (the whole archive in milliseconds on
/// loopback) breaks it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_never_runs_ahead_of_the_rate_limit() {
    const RATE: u64 = MIB;
    let reg = Registry::start().await.unwrap();
    let a = ImageBuilder::new()
        .seed(15)
        .layers(&[3 * MIB])
        .push(&reg, "http/rate:1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, format!("{}\n", a.reference)).unwrap();
    let store = dir.path().join("store");
    let host = reg.host();
    let mut spec = Spec::new("node-rate", &store, &list, &host);
    spec.env.push(("DOWNLOAD_RATE_LIMIT", "1MiB".into()));
    let mut agent = Agent::start(spec).await;
    agent.wait_complete(&canonical(&a.reference)).await;

    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut r = client
        .get(agent.url(&format!("/images/download?image={}", a.reference)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The agent's burst is a tenth of a second of data (at least 64 KiB); allow 4x that and
    // a quarter more than the rate.
    let allowance = |elapsed: Duration| {
        u128::from(4 * RATE / 10) + u128::from(RATE) * 5 * elapsed.as_millis() / 4000
    };
    let mut got = 0u64;
    let until = Instant::now() + agent_support::BOUND;
    while let Some(chunk) = tokio::time::timeout_at(until.into(), r.chunk())
        .await
        .expect("download bounded")
        .unwrap()
    {
        got += chunk.len() as u64;
        let elapsed = started.elapsed();
        assert!(
            u128::from(got) <= allowance(elapsed),
            "{got} bytes after {elapsed:?} with DOWNLOAD_RATE_LIMIT=1MiB"
        );
    }
    assert!(
        got > a.total_size,
        "the whole archive arrived ({got} bytes)"
    );
    println!(
        "{got} bytes in {:?} at DOWNLOAD_RATE_LIMIT=1MiB",
        started.elapsed()
    );
    assert_eq!(agent.sigterm().await.code(), Some(0));
}
