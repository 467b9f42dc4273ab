//! The swarm across real hosts: 8 network namespaces on a bridge with tc-shaped 200 Mbit/s links,
//! dnsmasq answering the headless Service name with every host. Host 0 runs `image-preheat agent`
//! with a 64 MiB blob in its store; hosts 1-7 run `image-preheat fetch-blob` at the same time. Every
//! host must end with the blob (sha256 checked on disk) while host 0 sends less than twice its size.
//! Needs root (CI runs as root), iproute2 and dnsmasq.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::netns::{Host, Lab, LabProcess};
use rand::{RngCore, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_image-preheat");
const NAME: &str = "image-preheat.test.svc.cluster.local";
const HOSTS: usize = 8;
const LINK_BPS: u64 = 200_000_000;
const BLOB: usize = 64 << 20;
const CHUNK: u32 = 1 << 20;
/// Bound on the whole download phase (every fetcher exits within it, linger included).
const FETCH_BOUND: Duration = Duration::from_secs(60);
const LINGER: &str = "10s";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK,
        ..StoreConfig::new(dir)
    }
}

/// Writes a random blob of `len` bytes into a fresh store at `dir`.
fn seed(dir: &Path, len: usize) -> Digest {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(64).fill_bytes(&mut data);
    let digest = Digest::of(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(store_config(dir)).await.unwrap();
        let mut w = store.writer(digest, data.len() as u64).await.unwrap();
        w.write(&data).await.unwrap();
        w.finish().await.unwrap();
    });
    digest
}

/// sha256 of the complete blob file in the store at `dir`.
fn stored_digest(dir: &Path, digest: &Digest) -> Option<Digest> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = rt.block_on(async {
        let store = Store::open(store_config(dir)).await.unwrap();
        store
            .contains(digest)
            .await
            .then(|| store.blob_path(digest))
    })?;
    Some(Digest::of(&std::fs::read(path).unwrap()))
}

/// Starts `image-preheat <args>` on `host` (swarm on :4001, peers from the lab DNS), output to
/// `<log>.out` / `<log>.err`.
fn start(host: &Host, args: &[&str], log: &Path) -> LabProcess {
    start_with_dns(host, args, NAME, log)
}

fn start_with_dns(host: &Host, args: &[&str], dns_name: &str, log: &Path) -> LabProcess {
    let ip = host.ip().to_string();
    let mut cmd = host.command(BIN);
    cmd.args(args)
        .args(["--swarm-addr", "0.0.0.0:4001", "--peers-dns", dns_name])
        .args(["--external-addr", &ip, "--peer-discovery-interval", "1s"])
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        // What `agent` needs beyond a swarm node (ignored by `fetch-blob`).
        .env("NODE_NAME", &ip)
        .env("RUNTIME", "none")
        .stdin(Stdio::null())
        .stdout(File::create(log.with_extension("out")).unwrap())
        .stderr(File::create(log.with_extension("err")).unwrap());
    host.spawn(&mut cmd).unwrap()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` contains `needle`, at most `bound`.
fn wait_for_text(path: &Path, needle: &str, bound: Duration) {
    let until = Instant::now() + bound;
    while !read(path.to_path_buf()).contains(needle) {
        assert!(
            Instant::now() < until,
            "{needle:?} not in {} within {bound:?}:\n{}",
            path.display(),
            read(path.to_path_buf())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn eight_hosts_get_a_64_mib_blob_while_the_seeder_sends_it_less_than_twice() {
    assert!(
        is_root(),
        "this test builds network namespaces and needs root (CI runs it as root); run it with sudo"
    );
    let started = Instant::now();
    let lab = Lab::builder()
        .hosts(HOSTS)
        .upload_rate_bps(LINK_BPS)
        .download_rate_bps(LINK_BPS)
        .build()
        .unwrap();
    let dns = lab.start_dns().unwrap();
    dns.set_records(NAME, &lab.host_ips()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..HOSTS)
        .map(|i| tmp.path().join(format!("h{i}")))
        .collect();
    let digest = seed(&dirs[0], BLOB);
    let size = BLOB.to_string();
    let digest_arg = digest.to_string();

    let seeder_log = tmp.path().join("agent");
    let mut seeder = start(
        lab.host(0),
        &["agent", "--store", dirs[0].to_str().unwrap()],
        &seeder_log,
    );
    wait_for_text(
        &seeder_log.with_extension("err"),
        "agent started",
        Duration::from_secs(20),
    );
    let seeder_tx = lab.host(0).tx_bytes().unwrap();

    let fetch_started = Instant::now();
    let mut fetchers: Vec<(usize, LabProcess, PathBuf)> = (1..HOSTS)
        .map(|i| {
            let log = tmp.path().join(format!("fetch{i}"));
            let p = start(
                lab.host(i),
                &[
                    "fetch-blob",
                    &digest_arg,
                    "--size",
                    &size,
                    "--store",
                    dirs[i].to_str().unwrap(),
                    "--timeout",
                    "45s",
                    "--linger",
                    LINGER,
                ],
                &log,
            );
            (i, p, log)
        })
        .collect();
    for (i, p, log) in &mut fetchers {
        let left = FETCH_BOUND.saturating_sub(fetch_started.elapsed());
        let status = p.wait_timeout(left).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "fetch-blob on host {i}: {status:?}\nstdout: {}\nstderr: {}",
            read(log.with_extension("out")),
            read(log.with_extension("err"))
        );
    }
    let seeder_sent = lab.host(0).tx_bytes().unwrap() - seeder_tx;

    for (i, _, log) in &fetchers {
        let line = read(log.with_extension("out"));
        eprintln!("host {i}: {}", line.trim());
        assert!(line.contains(&format!("fetched {digest}")), "{line}");
        assert_eq!(
            stored_digest(&dirs[*i], &digest),
            Some(digest),
            "host {i} stored the blob intact"
        );
    }
    let factor = seeder_sent as f64 / BLOB as f64;
    eprintln!(
        "seeder sent {seeder_sent} bytes = {factor:.2} x the blob; all {} fetchers done {:.1} s after start (linger {LINGER} included); test {:.1} s",
        HOSTS - 1,
        fetch_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        seeder_sent < 2 * BLOB as u64,
        "the seeder sent {factor:.2} x the blob size"
    );

    seeder.signal("TERM").unwrap();
    let status = seeder.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "agent after SIGTERM: {status:?}\n{}",
        read(seeder_log.with_extension("err"))
    );
    // Informational: chunk payload the agent counted (the link counter adds TCP/noise/yamux framing).
    let log = read(seeder_log.with_extension("err"));
    if let Some(line) = log.lines().find(|l| l.contains("agent stopped")) {
        eprintln!("seeder: {line}");
    }
}

/// PEERS_DNS is resolved again every PEER_DISCOVERY_INTERVAL: a fetcher whose first lookup found
/// only itself finds the seeder once the seeder's address is added to the name.
#[test]
fn a_peer_added_to_the_dns_name_later_is_found_by_the_next_discovery_round() {
    assert!(
        is_root(),
        "this test builds network namespaces and needs root (CI runs it as root); run it with sudo"
    );
    let lab = Lab::builder().hosts(2).build().unwrap();
    let dns = lab.start_dns().unwrap();
    let (seeder_host, fetcher_host) = (lab.host(0), lab.host(1));
    dns.set_records(NAME, &[fetcher_host.ip()]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (seed_dir, fetch_dir) = (tmp.path().join("h0"), tmp.path().join("h1"));
    let digest = seed(&seed_dir, 4 << 20);

    // The seeder looks for peers under a name nobody answers, so it never dials the fetcher.
    let seeder_log = tmp.path().join("agent");
    let _seeder = start_with_dns(
        seeder_host,
        &["agent", "--store", seed_dir.to_str().unwrap()],
        "nobody.test.svc.cluster.local",
        &seeder_log,
    );
    wait_for_text(
        &seeder_log.with_extension("err"),
        "agent started",
        Duration::from_secs(20),
    );
    let log = tmp.path().join("fetch");
    let mut fetcher = start(
        fetcher_host,
        &[
            "fetch-blob",
            &digest.to_string(),
            "--size",
            &(4u64 << 20).to_string(),
            "--store",
            fetch_dir.to_str().unwrap(),
            "--timeout",
            "40s",
            "--linger",
            "0s",
        ],
        &log,
    );
    // The fetcher's first lookup has been answered (with itself only); now the seeder joins.
    let query = format!("query[A] {NAME} from {}", fetcher_host.ip());
    let until = Instant::now() + Duration::from_secs(20);
    while !dns.log().unwrap().contains(&query) {
        assert!(
            Instant::now() < until,
            "the fetcher never looked up {NAME}:\n{}",
            dns.log().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dns.set_records(NAME, &[fetcher_host.ip(), seeder_host.ip()])
        .unwrap();
    let status = fetcher.wait_timeout(Duration::from_secs(50)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "fetch-blob: {status:?}\nstdout: {}\nstderr: {}",
        read(log.with_extension("out")),
        read(log.with_extension("err"))
    );
    assert_eq!(stored_digest(&fetch_dir, &digest), Some(digest));
}
