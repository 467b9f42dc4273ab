//! Real network-namespace lab tests (root, iproute2, dnsmasq, ping, python3).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use preheat_testkit::netns::{self, Direction, Lab, Shaping};

const NAME: &str = "image-preheat.default.svc.cluster.local";
const BOUND: Duration = Duration::from_secs(30);

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn resolve(lab: &Lab, from: usize, name: &str) -> anyhow::Result<BTreeSet<IpAddr>> {
    let host = lab.host(from);
    let out = host.output(host.command("getent").args(["ahostsv4", name]), BOUND)?;
    // getent exits 2 for an unknown name: that is the empty set.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

#[test]
fn three_hosts_ping_each_other() {
    let lab = Lab::builder().hosts(3).build().unwrap();
    assert_eq!(lab.hosts().len(), 3);
    let ips: BTreeSet<IpAddr> = lab.host_ips().into_iter().collect();
    assert_eq!(ips.len(), 3, "addresses are distinct");
    for a in lab.hosts() {
        for b in lab.hosts() {
            if a.index() == b.index() {
                continue;
            }
            let out = a
                .output(
                    a.command("ping")
                        .args(["-n", "-c", "1", "-W", "2"])
                        .arg(b.ip().to_string()),
                    BOUND,
                )
                .unwrap();
            assert!(
                out.status.success(),
                "{} cannot ping {}: {}",
                a.name(),
                b.ip(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn lab_dns_answers_the_headless_name_with_every_host() {
    let lab = Lab::builder().hosts(3).build().unwrap();
    let dns = lab.start_dns().unwrap();
    assert_eq!(dns.listen_ip(), lab.dns_ip());
    let all = lab.host_ips();
    dns.set_records(NAME, &all).unwrap();
    assert_eq!(
        resolve(&lab, 2, NAME).unwrap(),
        all.iter().copied().collect()
    );

    // A peer leaves: the next lookup no longer returns it.
    dns.set_records(NAME, &all[..2]).unwrap();
    assert_eq!(
        resolve(&lab, 0, NAME).unwrap(),
        all[..2].iter().copied().collect()
    );
    assert_eq!(
        resolve(&lab, 0, "other.default.svc.cluster.local").unwrap(),
        BTreeSet::new()
    );

    dns.set_records(NAME, &[]).unwrap();
    assert_eq!(resolve(&lab, 1, NAME).unwrap(), BTreeSet::new());
    assert!(dns.log().unwrap().contains(&format!("query[A] {NAME}")));
}

#[test]
fn dnsmasq_runs_on_a_host_address_too() {
    let lab = Lab::builder().hosts(2).build().unwrap();
    let dns = preheat_testkit::dnsmasq::Dnsmasq::start_on_host(lab.host(0)).unwrap();
    dns.set_records(NAME, &lab.host_ips()).unwrap();
    // Ask that server directly (resolv.conf points at the switch): python's resolver-free UDP query.
    let host = lab.host(1);
    let out = host
        .output(
            host.command("python3")
                .arg("-c")
                .arg(DNS_QUERY)
                .arg(dns.listen_ip().to_string())
                .arg(NAME),
            BOUND,
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeSet<IpAddr> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, lab.host_ips().into_iter().collect());
}

/// A minimal DNS A query over UDP: prints every A record of the answer.
const DNS_QUERY: &str = r#"
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (server, 53))
r, _ = s.recvfrom(4096)
ancount = struct.unpack('>H', r[6:8])[0]
i = len(q)
for _ in range(ancount):
    i += 2  # compressed name pointer
    typ, _cls, _ttl, rdlen = struct.unpack('>HHIH', r[i:i + 10])
    i += 10
    if typ == 1:
        print(socket.inet_ntoa(r[i:i + rdlen]))
    i += rdlen
"#;

const RECEIVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
print(n)
"#;

const SENDER: &str = r#"
import socket, sys, time
for _ in range(200):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(3)
c.settimeout(60)
c.sendall(b'\0' * int(sys.argv[3]))
c.close()
"#;

#[test]
fn shaped_link_carries_traffic_through_its_token_bucket() {
    const PAYLOAD: u64 = 5_000_000;
    let origin = Shaping {
        upload_bps: Some(50_000_000),
        download_bps: Some(20_000_000),
        ..Shaping::default()
    };
    let lab = Lab::builder()
        .hosts(2)
        .upload_rate_bps(20_000_000)
        .download_rate_bps(20_000_000)
        .host_shaping(1, origin)
        .build()
        .unwrap();
    let (rx_host, tx_host) = (lab.host(0), lab.host(1));
    assert!(tx_host
        .qdisc_show(Direction::Upload)
        .unwrap()
        .contains("rate 50Mbit"));
    assert!(rx_host
        .qdisc_show(Direction::Upload)
        .unwrap()
        .contains("rate 20Mbit"));
    let down = rx_host.qdisc_show(Direction::Download).unwrap();
    assert!(
        down.contains("tbf") && down.contains("rate 20Mbit"),
        "{down}"
    );

    let tx_before = tx_host.tx_bytes().unwrap();
    let rx_before = rx_host.rx_bytes().unwrap();
    let shaped_before = qdisc_bytes(rx_host, Direction::Download).unwrap();
    let port = "9000";
    let mut receiver = rx_host
        .spawn(
            rx_host
                .command("python3")
                .arg("-c")
                .arg(RECEIVER)
                .arg(rx_host.ip().to_string())
                .arg(port)
                .stdout(Stdio::piped()),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let sent = tx_host
        .output(
            tx_host
                .command("python3")
                .arg("-c")
                .arg(SENDER)
                .arg(rx_host.ip().to_string())
                .arg(port)
                .arg(PAYLOAD.to_string()),
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let status = receiver.wait_timeout(Duration::from_secs(120)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "receiver: {status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(receiver.child_mut().stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(out.trim(), PAYLOAD.to_string());
    // Informational only (no timed assertion): 20 Mbit/s gives about 2 s for 5 MB.
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "5 MB through 20 Mbit/s links in {secs:.2} s ({:.1} Mbit/s)",
        PAYLOAD as f64 * 8e-6 / secs
    );

    assert!(tx_host.tx_bytes().unwrap() - tx_before >= PAYLOAD);
    assert!(rx_host.rx_bytes().unwrap() - rx_before >= PAYLOAD);
    // The bytes went through the receiver's download token bucket.
    assert!(qdisc_bytes(rx_host, Direction::Download).unwrap() - shaped_before >= PAYLOAD);
}

fn qdisc_bytes(host: &netns::Host, direction: Direction) -> anyhow::Result<u64> {
    let qdiscs = host.qdiscs(direction)?;
    let tbf = qdiscs.iter().find(|q| q.kind == "tbf");
    tbf.map(|q| q.bytes).context("no tbf qdisc")
}

#[test]
fn shaping_can_change_while_the_lab_runs() {
    let lab = Lab::builder().hosts(1).build().unwrap();
    let host = lab.host(0);
    assert!(!host.qdisc_show(Direction::Upload).unwrap().contains("tbf"));
    host.set_shaping(&Shaping {
        upload_bps: Some(1_000_000_000),
        download_bps: Some(10_000_000),
        ..Shaping::default()
    })
    .unwrap();
    assert!(host
        .qdisc_show(Direction::Upload)
        .unwrap()
        .contains("rate 1Gbit"));
    assert!(host
        .qdisc_show(Direction::Download)
        .unwrap()
        .contains("rate 10Mbit"));
    host.set_shaping(&Shaping::default()).unwrap();
    assert!(!host.qdisc_show(Direction::Upload).unwrap().contains("tbf"));
    assert!(!host
        .qdisc_show(Direction::Download)
        .unwrap()
        .contains("tbf"));
}

#[test]
fn delay_and_loss_use_netem_or_fail_clearly() {
    let built = Lab::builder()
        .hosts(1)
        .upload_rate_bps(10_000_000)
        .delay(Duration::from_millis(5))
        .loss(1.0)
        .build();
    match built {
        Ok(lab) => {
            let up = lab.host(0).qdisc_show(Direction::Upload).unwrap();
            assert!(up.contains("netem") && up.contains("tbf"), "{up}");
        }
        // Kernels without sch_netem (like this machine's) must say so; the half-built lab is dropped.
        Err(e) => {
            let text = format!("{e:#}");
            assert!(text.contains("netem qdisc is not available"), "{text}");
        }
    }
}

#[test]
fn invalid_configuration_is_rejected_before_anything_is_created() {
    assert!(Lab::builder().hosts(0).build().is_err());
    assert!(Lab::builder().hosts(netns::MAX_HOSTS + 1).build().is_err());
    assert!(Lab::builder().hosts(2).upload_rate_bps(0).build().is_err());
    assert!(Lab::builder().hosts(2).loss(101.0).build().is_err());
    assert!(Lab::builder()
        .hosts(2)
        .host_shaping(2, Shaping::default())
        .build()
        .is_err());
}

#[test]
fn drop_removes_namespaces_dirs_and_processes() {
    let lab = Lab::builder().hosts(2).build().unwrap();
    let dns = lab.start_dns().unwrap();
    let names = lab.namespaces().to_vec();
    assert_eq!(names.len(), 3);
    assert!(names
        .iter()
        .all(|n| n.starts_with(netns::PREFIX) && netns_exists(n)));
    let host = lab.host(0);
    assert!(Path::new("/etc/netns")
        .join(host.name())
        .join("resolv.conf")
        .exists());
    // A process whose handle outlives the lab, and a grandchild the lab never saw.
    let mut sleeper = host.spawn(host.command("sleep").arg("600")).unwrap();
    let mut shell = lab
        .host(1)
        .spawn(lab.host(1).command("sh").args(["-c", "sleep 600 & wait"]))
        .unwrap();
    drop(lab);
    assert!(sleeper.try_wait().unwrap().is_some(), "sleeper still runs");
    assert!(shell.try_wait().unwrap().is_some(), "shell still runs");
    for n in &names {
        assert!(!netns_exists(n), "{n} still exists");
        assert!(
            !Path::new("/etc/netns").join(n).exists(),
            "/etc/netns/{n} remains"
        );
    }
    drop(dns);
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::builder().hosts(2).build().unwrap();
        names
            .lock()
            .unwrap()
            .extend(lab.namespaces().iter().cloned());
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| !netns_exists(n)));
}

#[test]
fn cleanup_stale_removes_dead_runs_and_spares_live_labs() {
    let live = Lab::builder().hosts(1).build().unwrap();
    // Above the kernel's PID_MAX_LIMIT (2^22): no process can have this pid.
    let dead_pid = 4_200_000;
    let stale = format!("{}-{dead_pid}-t{}-h0", netns::PREFIX, std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir_all(Path::new("/etc/netns").join(&stale)).unwrap();

    let removed = netns::cleanup_stale().unwrap();
    assert!(removed >= 1);
    assert!(!netns_exists(&stale));
    assert!(!Path::new("/etc/netns").join(&stale).exists());
    assert!(
        live.namespaces().iter().all(|n| netns_exists(n)),
        "a live lab was removed"
    );
}

#[test]
fn sixteen_hosts_with_an_origin_override_reach_each_other() {
    let started = std::time::Instant::now();
    let lab = Lab::builder()
        .hosts(17)
        .upload_rate_bps(100_000_000)
        .download_rate_bps(100_000_000)
        .host_shaping(
            16,
            Shaping {
                upload_bps: Some(50_000_000),
                ..Shaping::default()
            },
        )
        .build()
        .unwrap();
    eprintln!("17-host lab built in {:?}", started.elapsed());
    let origin = lab.host(16);
    assert!(origin
        .qdisc_show(Direction::Upload)
        .unwrap()
        .contains("rate 50Mbit"));
    assert!(!origin
        .qdisc_show(Direction::Download)
        .unwrap()
        .contains("tbf"));
    for host in &lab.hosts()[..16] {
        let out = origin
            .output(
                origin
                    .command("ping")
                    .args(["-n", "-c", "1", "-W", "2"])
                    .arg(host.ip().to_string()),
                BOUND,
            )
            .unwrap();
        assert!(out.status.success(), "origin cannot reach {}", host.ip());
    }
}
