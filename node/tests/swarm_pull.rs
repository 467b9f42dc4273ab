//! `image-preheat agent` and `pull --peer` on loopback, as separate processes, against a real
//! docker-registry: blobs a peer has never reach the registry's access log; the others still do.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use preheat_core::units::format_bytes;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{free_port, ImageBuilder, PushedImage, Registry};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_image-preheat");
const BOUND: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("LOG_FORMAT", "text")
        .env("LOG_LEVEL", "info")
        .env_remove("STORE_DIR")
        .env_remove("PEERS")
        .env_remove("PEERS_DNS")
        .env_remove("SWARM_ADDR")
        // What `agent` needs beyond a swarm node (ignored by `pull`): a name, a free HTTP port,
        // no container runtime.
        .env("NODE_NAME", "test-node")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("MIRROR_ADDR", "127.0.0.1:0")
        .env("RUNTIME", "none")
        .kill_on_drop(true);
    cmd
}

async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(BOUND, command(args).output())
        .await
        .expect("image-preheat did not finish in time")
        .expect("image-preheat could not be started")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn pull(reg: &Registry, img: &PushedImage, store: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "pull",
        &img.reference,
        "--store",
        store.to_str().unwrap(),
        "--chunk-size",
        "256KiB",
        "--insecure-registry",
    ];
    let host = reg.host();
    args.push(&host);
    args.extend_from_slice(extra);
    ok(&run(&args).await)
}

/// An agent serving `store` on 127.0.0.1:`port`, started and listening.
async fn agent(store: &Path, port: u16) -> Child {
    let addr = format!("127.0.0.1:{port}");
    let child = command(&[
        "agent",
        "--store",
        store.to_str().unwrap(),
        "--swarm-addr",
        &addr,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let until = tokio::time::Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < until,
            "agent never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

async fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("agent did not exit within 10 s of SIGTERM")
        .unwrap()
}

async fn blob_gets(reg: &Registry, img: &PushedImage) -> Vec<usize> {
    img.blobs()
        .iter()
        .map(|(d, _)| reg.blob_gets(d).unwrap().len())
        .collect()
}

async fn open(dir: &Path) -> Store {
    let cfg = StoreConfig {
        chunk_size: 256 * 1024,
        ..StoreConfig::new(dir)
    };
    Store::open(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_a_peer_has_come_from_the_peer_and_the_rest_from_the_registry() {
    let reg = Registry::start().await.unwrap();
    let app = ImageBuilder::new()
        .seed(7)
        .layers(&[3 * MIB, MIB])
        .push(&reg, "swarm/app:v1")
        .await
        .unwrap();
    // Same seed: the same two layers, plus one the peer never saw (and another config).
    let app2 = ImageBuilder::new()
        .seed(7)
        .layers(&[3 * MIB, MIB, MIB / 2])
        .push(&reg, "swarm/app:v2")
        .await
        .unwrap();
    assert_eq!(app.layers[..], app2.layers[..2], "layers are shared");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );

    // Without peers, pull is the plain registry pull (and says nothing about peers).
    let line = pull(&reg, &app, &a, &[]).await;
    assert!(line.contains("from the registry"), "{line}");
    assert!(!line.contains("from peers"), "{line}");

    let port = free_port().unwrap();
    let peer = format!("127.0.0.1:{port}");
    let seeder = agent(&a, port).await;
    let before = blob_gets(&reg, &app).await;
    let manifests_before = reg.access_log().unwrap().len();

    let line = pull(&reg, &app, &b, &["--peer", &peer, "--swarm-timeout", "20s"]).await;
    assert!(
        line.contains(&format!("{} from peers", format_bytes(app.total_size))),
        "{line}"
    );
    assert!(line.contains("0 B from the registry"), "{line}");
    // The manifest GETs of that pull are logged; not one blob GET was.
    reg.wait_access_log(BOUND, |log| log.len() > manifests_before)
        .await
        .unwrap();
    assert_eq!(
        blob_gets(&reg, &app).await,
        before,
        "no blob came from the registry"
    );
    let store_b = open(&b).await;
    for (d, _) in app.blobs() {
        assert!(store_b.contains(&d).await, "{d} is complete in store b");
    }
    assert_eq!(store_b.images().await.unwrap().len(), 1);
    drop(store_b);

    // Mixed: the shared layers from the peer, the new layer and config from the registry after a
    // short search.
    let before2 = blob_gets(&reg, &app2).await;
    let line = pull(&reg, &app2, &c, &["--peer", &peer, "--swarm-timeout", "2s"]).await;
    let shared: u64 = app.layers.iter().map(|(_, s)| s).sum();
    assert!(
        line.contains(&format!("{} from peers", format_bytes(shared))),
        "{line}"
    );
    let after2 = blob_gets(&reg, &app2).await;
    let (config, layers) = (after2[0] - before2[0], &after2[1..]);
    assert_eq!(config, 1, "the new config came from the registry");
    assert_eq!(layers[..2], before2[1..3], "shared layers did not");
    assert_eq!(
        layers[2] - before2[3],
        1,
        "the new layer came from the registry"
    );

    // The same through DNS discovery: `localhost` resolves to the agent's address.
    let d = dir.path().join("d");
    let dns = format!("localhost:{port}");
    let line = pull(
        &reg,
        &app,
        &d,
        &["--peers-dns", &dns, "--swarm-timeout", "20s"],
    )
    .await;
    assert!(
        line.contains(&format!("{} from peers", format_bytes(app.total_size))),
        "{line}"
    );

    let status = stop(seeder).await;
    assert_eq!(status.code(), Some(0), "agent exits 0 on SIGTERM");
}

#[tokio::test]
async fn bad_swarm_flags_are_usage_errors() {
    for args in [
        &["agent", "--upload-rate-limit", "fast"][..],
        &["agent", "--peer", "not a peer"],
        &["agent", "--peers-dns", "svc:notaport"],
        &["agent", "--peer-discovery-interval", "soon"],
        &["agent", "--max-uploads", "0"],
        &["agent", "--swarm-addr", "4001"],
        &["pull", "x:1", "--swarm-timeout", "-1s"],
        &["fetch-blob", "sha256:00", "--size", "1"],
        &["fetch-blob", "--size", "1"],
    ] {
        let out = run(args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let help = ok(&run(&["agent", "--help"]).await);
    for (flag, env) in [
        ("--swarm-addr", "SWARM_ADDR"),
        ("--peer", "PEERS"),
        ("--peers-dns", "PEERS_DNS"),
        ("--peer-discovery-interval", "PEER_DISCOVERY_INTERVAL"),
        ("--external-addr", "POD_IP"),
        ("--upload-rate-limit", "UPLOAD_RATE_LIMIT"),
        ("--download-rate-limit", "DOWNLOAD_RATE_LIMIT"),
        ("--max-uploads", "MAX_UPLOADS"),
    ] {
        assert!(help.contains(flag), "{flag} in agent --help");
        assert!(
            help.contains(&format!("env: {env}")),
            "{env} in agent --help"
        );
    }
}
