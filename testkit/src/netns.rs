//! A multi-host network lab in Linux network namespaces (needs root, `ip`, `tc`).
//!
//! ```text
//!  namespace iph-<pid>-<rand>-sw ("switch")
//!  ┌────────────────────────────────────────────────────────────┐
//!  │  br0  10.A.B.1/24   (the lab's DNS address, see start_dns)  │
//!  │   ├── v0 ─┐   ├── v1 ─┐   …   (download shaping: tbf here)  │
//!  └───────────│───────────│────────────────────────────────────┘
//!          veth│       veth│
//!  ┌───────────┴──┐ ┌──────┴───────┐
//!  │ eth0 .10     │ │ eth0 .11     │  …  (upload shaping: tbf/netem on eth0)
//!  │ iph-…-h0     │ │ iph-…-h1     │
//!  └──────────────┘ └──────────────┘
//! ```
//!
//! - Created: one switch namespace holding bridge `br0` and the switch-side veths `v<i>`; one namespace
//!   per host with `lo` up and `eth0` (the other end); `/etc/netns/<host-ns>/resolv.conf` naming the lab
//!   DNS address, which `ip netns exec` bind-mounts over `/etc/resolv.conf`. The root namespace is never
//!   touched: veths are created directly inside their namespaces.
//! - Addressing: a random private `10.A.B.0/24` that exists only inside the lab (no default route, no
//!   link to the host); the bridge is `.1`, host `i` is `.(10 + i)`, up to [`MAX_HOSTS`] hosts.
//! - Shaping ([`Shaping`]): upload = egress of the host's `eth0`; download = egress of the switch-side
//!   veth `v<i>`; tbf with a burst of max(4 ms, 64 KiB) and 50 ms of queue. Delay/loss use netem on
//!   the upload side only (needs `sch_netem`; building fails with a clear error without it).
//! - Names: everything starts with `iph-<pid>-<4 random chars>`, unique per lab, so parallel tests and
//!   leftovers never collide; interface names are short (`eth0`, `br0`, `v<i>`) and per namespace.
//! - Cleanup: on drop (also while unwinding from a panic, and when `build` fails half-way) every
//!   process in the lab's namespaces is SIGKILLed, the `/etc/netns/<ns>` dirs are removed and the
//!   namespaces deleted, which destroys the bridge and veths. [`LabProcess`] handles reap their own
//!   child. After a crash (SIGKILL of the test binary) [`cleanup_stale`] removes what runs whose pid is
//!   gone left behind.

mod host;
mod process;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::Rng;

pub use host::{Direction, Host, LinkCounters, QdiscStats, Shaping, HOST_IFACE};
pub use process::{netns_command, output_within, LabProcess};

use crate::dnsmasq::Dnsmasq;
use process::admin_args;

/// Prefix of every namespace (and any link) the lab creates.
pub const PREFIX: &str = "iph";
/// Most hosts one lab holds (`.10` … `.249`).
pub const MAX_HOSTS: usize = 240;
/// Name of the bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// How long teardown waits for SIGKILLed processes to leave a namespace.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Builds a [`Lab`]; see [`Lab::builder`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    hosts: usize,
    default: Shaping,
    overrides: BTreeMap<usize, Shaping>,
}

impl LabBuilder {
    /// Number of hosts (default 2).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Upload rate of every host without an override, bits per second.
    pub fn upload_rate_bps(mut self, bps: u64) -> Self {
        self.default.upload_bps = Some(bps);
        self
    }

    /// Download rate of every host without an override, bits per second.
    pub fn download_rate_bps(mut self, bps: u64) -> Self {
        self.default.download_bps = Some(bps);
        self
    }

    /// One-way delay added on every host's upload (netem).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.default.delay = Some(delay);
        self
    }

    /// Packet loss in percent on every host's upload (netem).
    pub fn loss(mut self, pct: f64) -> Self {
        self.default.loss_pct = Some(pct);
        self
    }

    /// Shaping of every host without an override (replaces the rate/delay/loss set so far).
    pub fn shaping(mut self, shaping: Shaping) -> Self {
        self.default = shaping;
        self
    }

    /// Shaping of host `index` instead of the default (e.g. the origin's upload).
    pub fn host_shaping(mut self, index: usize, shaping: Shaping) -> Self {
        self.overrides.insert(index, shaping);
        self
    }

    /// Creates the namespaces, bridge, veths, addresses and qdiscs. On error everything created so
    /// far is removed again.
    pub fn build(self) -> Result<Lab> {
        ensure!(
            (1..=MAX_HOSTS).contains(&self.hosts),
            "a lab has 1..={MAX_HOSTS} hosts, not {}",
            self.hosts
        );
        if let Some(&i) = self.overrides.keys().find(|&&i| i >= self.hosts) {
            bail!(
                "shaping override for host {i}, but the lab has {} hosts",
                self.hosts
            );
        }
        self.default.validate()?;
        for shaping in self.overrides.values() {
            shaping.validate()?;
        }
        let mut rng = rand::thread_rng();
        let subnet = Ipv4Addr::new(10, rng.gen_range(64..=250), rng.gen_range(0..=255), 0);
        let mut lab = Lab::create_switch(subnet)?;
        for i in 0..self.hosts {
            let shaping = self.overrides.get(&i).unwrap_or(&self.default);
            lab.add_host(shaping)
                .with_context(|| format!("creating lab host {i}"))?;
        }
        Ok(lab)
    }
}

/// A running lab; dropping it removes everything (see the module docs).
#[derive(Debug)]
pub struct Lab {
    id: String,
    switch_ns: String,
    subnet: Ipv4Addr,
    hosts: Vec<Host>,
    /// Every namespace created so far, switch first; teardown works from this list.
    created: Vec<String>,
}

impl Lab {
    /// A builder with 2 unshaped hosts.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            hosts: 2,
            default: Shaping::default(),
            overrides: BTreeMap::new(),
        }
    }

    /// The unique name prefix of this lab (`iph-<pid>-<rand>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The switch namespace (holds `br0` and the switch-side veths).
    pub fn switch_netns(&self) -> &str {
        &self.switch_ns
    }

    /// Every namespace of the lab, switch first.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The lab subnet (network address; prefix length 24).
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// The bridge's address, where [`Self::start_dns`] listens and every host's resolv.conf points.
    pub fn dns_ip(&self) -> IpAddr {
        IpAddr::V4(offset(self.subnet, 1))
    }

    /// All hosts, by index.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index`. Panics if out of range, like slice indexing.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// Every host's address, by index.
    pub fn host_ips(&self) -> Vec<IpAddr> {
        self.hosts.iter().map(Host::ip).collect()
    }

    /// Starts dnsmasq in the switch namespace on [`Self::dns_ip`], the resolver of every host. It
    /// answers only the records given to [`Dnsmasq::set_records`].
    pub fn start_dns(&self) -> Result<Dnsmasq> {
        Dnsmasq::start(&self.switch_ns, self.dns_ip())
    }

    fn create_switch(subnet: Ipv4Addr) -> Result<Self> {
        let pid = std::process::id();
        let mut rng = rand::thread_rng();
        for _ in 0..8 {
            let tag: String = (0..4)
                .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
                .collect();
            let id = format!("{PREFIX}-{pid}-{tag}");
            let switch_ns = format!("{id}-sw");
            if Path::new("/run/netns").join(&switch_ns).exists() {
                continue;
            }
            admin_args("ip", &["netns", "add", &switch_ns])
                .context("creating the switch namespace (the lab needs root)")?;
            let lab = Self {
                id,
                switch_ns: switch_ns.clone(),
                subnet,
                hosts: Vec::new(),
                created: vec![switch_ns.clone()],
            };
            let ns = switch_ns.as_str();
            let bridge_addr = format!("{}/24", offset(subnet, 1));
            admin_args("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            admin_args("ip", &["-n", ns, "link", "add", BRIDGE, "type", "bridge"])?;
            admin_args(
                "ip",
                &["-n", ns, "addr", "add", &bridge_addr, "dev", BRIDGE],
            )?;
            admin_args("ip", &["-n", ns, "link", "set", BRIDGE, "up"])?;
            // With br_netfilter loaded (Docker loads it), every bridged packet would also run the
            // switch namespace's (empty) iptables chains: emulation cost, not the system's.
            for key in ["iptables", "ip6tables", "arptables"] {
                let k = format!("net.bridge.bridge-nf-call-{key}=0");
                let _ = admin_args("ip", &["netns", "exec", ns, "sysctl", "-qw", &k]);
            }
            return Ok(lab);
        }
        bail!("no unused lab name after 8 tries")
    }

    fn add_host(&mut self, shaping: &Shaping) -> Result<()> {
        let index = self.hosts.len();
        let netns = format!("{}-h{index}", self.id);
        admin_args("ip", &["netns", "add", &netns])?;
        self.created.push(netns.clone());
        let host = Host {
            index,
            ip: offset(self.subnet, 10 + u8::try_from(index).context("host index")?),
            netns,
            switch_ns: self.switch_ns.clone(),
            bridge_port: format!("v{index}"),
        };
        let (ns, sw, port) = (
            host.netns.as_str(),
            self.switch_ns.as_str(),
            host.bridge_port.as_str(),
        );
        admin_args(
            "ip",
            &[
                "link", "add", HOST_IFACE, "netns", ns, "type", "veth", "peer", "name", port,
                "netns", sw,
            ],
        )?;
        admin_args(
            "ip",
            &["-n", sw, "link", "set", port, "master", BRIDGE, "up"],
        )?;
        admin_args("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        let addr = format!("{}/24", host.ip);
        admin_args("ip", &["-n", ns, "addr", "add", &addr, "dev", HOST_IFACE])?;
        admin_args("ip", &["-n", ns, "link", "set", HOST_IFACE, "up"])?;
        let etc = etc_dir(ns);
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        let resolv = format!(
            "# written by preheat-testkit for lab {}\nnameserver {}\noptions timeout:1 attempts:2\n",
            self.id,
            self.dns_ip()
        );
        std::fs::write(etc.join("resolv.conf"), resolv).context("writing lab resolv.conf")?;
        host.set_shaping(shaping)?;
        self.hosts.push(host);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_namespaces(&self.created);
    }
}

/// Removes namespaces, `/etc/netns` dirs and root-namespace links with the lab prefix that belong to
/// runs whose process is gone (names embed the creating pid); labs of live processes, including this
/// one, are left alone. Returns how many namespaces were removed.
pub fn cleanup_stale() -> Result<usize> {
    let listed = admin_args("ip", &["netns", "list"])?;
    let stale: Vec<String> = listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| is_stale(name))
        .map(str::to_owned)
        .collect();
    remove_namespaces(&stale);
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_stale(&name) && !Path::new("/run/netns").join(&name).exists() {
                // Best effort: a dir that cannot be removed is reported by the next run again.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    // The lab never creates links in the root namespace; anything there with the prefix is debris.
    let links = admin_args("ip", &["-o", "link", "show"])?;
    for line in links.lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(PREFIX) {
            let _ = admin_args("ip", &["link", "del", name]);
        }
    }
    Ok(stale.len())
}

/// True for a prefixed name whose creating process no longer exists (or that has no pid in it).
fn is_stale(name: &str) -> bool {
    if !name.starts_with(PREFIX) {
        return false;
    }
    match name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => !Path::new("/proc").join(pid.to_string()).exists(),
        None => true,
    }
}

/// Kills every process in `namespaces`, then deletes their `/etc/netns` dirs and the namespaces.
/// Best effort: failures are logged, never raised (this runs in `Drop`).
fn remove_namespaces(namespaces: &[String]) {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids: Vec<String> = namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                ?pids,
                "lab processes survived SIGKILL; namespaces may linger"
            );
            break;
        }
        let mut args = vec!["-s", "KILL"];
        args.extend(pids.iter().map(String::as_str));
        // Fails for pids that ended meanwhile; the next round checks again.
        let _ = admin_args("kill", &args);
        thread::sleep(Duration::from_millis(20));
    }
    for ns in namespaces.iter().rev() {
        let etc = etc_dir(ns);
        if etc.exists() {
            if let Err(e) = std::fs::remove_dir_all(&etc) {
                tracing::warn!(dir = %etc.display(), error = %e, "could not remove lab etc dir");
            }
        }
        if let Err(e) = admin_args("ip", &["netns", "del", ns]) {
            tracing::warn!(netns = %ns, error = %e, "could not delete lab namespace");
        }
    }
}

fn pids_in(ns: &str) -> Vec<String> {
    admin_args("ip", &["netns", "pids", ns])
        .map(|out| out.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn etc_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

fn offset(subnet: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet.octets();
    Ipv4Addr::new(a, b, c, host)
}
