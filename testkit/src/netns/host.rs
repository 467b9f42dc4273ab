//! One lab host: a namespace with `eth0` (veth to the switch), its shaping and its counters.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::process::{admin, admin_args, netns_command, output_within, runs_in, LabProcess};

/// Name of the host's interface inside its namespace.
pub const HOST_IFACE: &str = "eth0";

/// Link shaping of one host. `None` leaves that part unshaped.
///
/// - `upload_bps`: token bucket (tbf) on the host's `eth0` egress — what the host sends.
/// - `download_bps`: tbf on the switch-side veth's egress — what the host receives.
/// - `delay` / `loss_pct`: netem on the host's egress only, so a one-way path between two hosts gets
///   `delay` and `loss_pct` once (round trip: 2 × delay). Needs the kernel's `sch_netem`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shaping {
    pub upload_bps: Option<u64>,
    pub download_bps: Option<u64>,
    pub delay: Option<Duration>,
    pub loss_pct: Option<f64>,
}

impl Shaping {
    pub(crate) fn validate(&self) -> Result<()> {
        ensure!(self.upload_bps != Some(0), "upload rate must be positive");
        ensure!(
            self.download_bps != Some(0),
            "download rate must be positive"
        );
        if let Some(loss) = self.loss_pct {
            ensure!(
                (0.0..=100.0).contains(&loss),
                "loss {loss}% is not in 0..=100"
            );
        }
        Ok(())
    }
}

/// Which side of a host's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host → switch: egress of the host's `eth0`.
    Upload,
    /// Switch → host: egress of the switch-side veth.
    Download,
}

/// Byte and packet counters of a host's `eth0` (cumulative since the lab was built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCounters {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
}

/// One qdisc from `tc -s -j qdisc show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscStats {
    /// `tbf`, `netem`, `noqueue`, …
    pub kind: String,
    /// e.g. `8001:`.
    pub handle: String,
    /// Bytes sent through this qdisc.
    pub bytes: u64,
    pub drops: u64,
}

/// A host of a [`super::Lab`]: its own network namespace, `eth0` with one address on the lab subnet.
#[derive(Debug)]
pub struct Host {
    pub(crate) index: usize,
    pub(crate) netns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) switch_ns: String,
    pub(crate) bridge_port: String,
}

impl Host {
    /// Position in the lab (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The namespace name (`ip netns exec <name> …`).
    pub fn name(&self) -> &str {
        &self.netns
    }

    /// The host's address on the lab subnet.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }

    /// Name of the switch-side veth of this host (inside the switch namespace).
    pub fn bridge_port(&self) -> &str {
        &self.bridge_port
    }

    /// A command that runs `program` in this host's namespace (`ip netns exec <ns> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.netns, program)
    }

    /// Spawns a command made by [`Self::command`]. The process is killed and reaped when the returned
    /// handle drops, and killed at the latest when the lab drops.
    pub fn spawn(&self, cmd: &mut Command) -> Result<LabProcess> {
        if !runs_in(cmd, &self.netns) {
            bail!(
                "command for host {} was not built with Host::command (it would run outside the lab)",
                self.netns
            );
        }
        let label = format!(
            "{:?} in {}",
            cmd.get_args().nth(3).unwrap_or_default(),
            self.netns
        );
        LabProcess::spawn(cmd, label)
    }

    /// Runs a command made by [`Self::command`] to completion, at most `timeout` (killed after).
    pub fn output(&self, cmd: &mut Command, timeout: Duration) -> Result<Output> {
        if !runs_in(cmd, &self.netns) {
            bail!(
                "command for host {} was not built with Host::command (it would run outside the lab)",
                self.netns
            );
        }
        output_within(cmd, timeout)
    }

    /// Bytes and packets through `eth0`, from `ip -s -j link show`.
    pub fn counters(&self) -> Result<LinkCounters> {
        let out = admin_args(
            "ip",
            &[
                "-n",
                &self.netns,
                "-s",
                "-j",
                "link",
                "show",
                "dev",
                HOST_IFACE,
            ],
        )?;
        let json: Value = serde_json::from_str(&out).context("parsing ip -j link output")?;
        let stats = &json[0]["stats64"];
        let field = |dir: &str, name: &str| {
            stats[dir][name]
                .as_u64()
                .with_context(|| format!("no stats64.{dir}.{name} in ip -j link output"))
        };
        Ok(LinkCounters {
            tx_bytes: field("tx", "bytes")?,
            rx_bytes: field("rx", "bytes")?,
            tx_packets: field("tx", "packets")?,
            rx_packets: field("rx", "packets")?,
        })
    }

    /// Bytes sent by `eth0` since the lab was built.
    pub fn tx_bytes(&self) -> Result<u64> {
        Ok(self.counters()?.tx_bytes)
    }

    /// Bytes received by `eth0` since the lab was built.
    pub fn rx_bytes(&self) -> Result<u64> {
        Ok(self.counters()?.rx_bytes)
    }

    /// The qdiscs on one side of the link, root first, with their statistics.
    pub fn qdiscs(&self, direction: Direction) -> Result<Vec<QdiscStats>> {
        let (ns, dev) = self.side(direction);
        let out = admin_args("tc", &["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev])?;
        let json: Value = serde_json::from_str(&out).context("parsing tc -j qdisc output")?;
        let list = json
            .as_array()
            .context("tc -j qdisc output is not a list")?;
        Ok(list
            .iter()
            .map(|q| QdiscStats {
                kind: q["kind"].as_str().unwrap_or_default().to_owned(),
                handle: q["handle"].as_str().unwrap_or_default().to_owned(),
                bytes: q["bytes"].as_u64().unwrap_or_default(),
                drops: q["drops"].as_u64().unwrap_or_default(),
            })
            .collect())
    }

    /// `tc qdisc show` text for one side (e.g. `qdisc tbf 8001: root … rate 20Mbit burst …`).
    pub fn qdisc_show(&self, direction: Direction) -> Result<String> {
        let (ns, dev) = self.side(direction);
        admin_args("tc", &["-n", ns, "qdisc", "show", "dev", dev])
    }

    /// Replaces this host's shaping (both directions) while the lab runs.
    pub fn set_shaping(&self, shaping: &Shaping) -> Result<()> {
        shaping.validate()?;
        let (ns, dev) = self.side(Direction::Upload);
        apply(ns, dev, shaping.upload_bps, shaping.delay, shaping.loss_pct)?;
        let (ns, dev) = self.side(Direction::Download);
        apply(ns, dev, shaping.download_bps, None, None)
    }

    /// Takes the host's link down (as if unplugged) or up again; the host keeps its processes.
    pub fn set_link_up(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        admin_args("ip", &["-n", &self.netns, "link", "set", HOST_IFACE, state])?;
        Ok(())
    }

    fn side(&self, direction: Direction) -> (&str, &str) {
        match direction {
            Direction::Upload => (&self.netns, HOST_IFACE),
            Direction::Download => (&self.switch_ns, &self.bridge_port),
        }
    }
}

/// Token-bucket depth: 4 ms of line rate, at least 64 KiB so a full GSO segment (veth offloads up to
/// 64 KiB) always fits.
pub(crate) fn burst_bytes(rate_bps: u64) -> u64 {
    (rate_bps / 8 / 250).max(64 * 1024)
}

/// Installs the root qdisc(s) on `dev` in `ns`: tbf for `rate`, netem for delay/loss, netem with a tbf
/// child for both; none of them restores the default. Replaces whatever was there.
pub(crate) fn apply(
    ns: &str,
    dev: &str,
    rate_bps: Option<u64>,
    delay: Option<Duration>,
    loss_pct: Option<f64>,
) -> Result<()> {
    // Fails when only the default qdisc is installed, which is the state we want anyway.
    let _ = admin_args("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]);
    let tbf = rate_bps.map(|rate| {
        vec![
            "tbf".to_owned(),
            "rate".to_owned(),
            format!("{rate}bit"),
            "burst".to_owned(),
            burst_bytes(rate).to_string(),
            "latency".to_owned(),
            "50ms".to_owned(),
        ]
    });
    let netem = (delay.is_some() || loss_pct.is_some()).then(|| {
        let mut args = vec!["netem".to_owned()];
        if let Some(delay) = delay {
            args.extend(["delay".to_owned(), format!("{}us", delay.as_micros())]);
        }
        if let Some(loss) = loss_pct {
            args.extend(["loss".to_owned(), format!("{loss}%")]);
        }
        args
    });
    let base = ["-n", ns, "qdisc", "add", "dev", dev];
    match (netem, tbf) {
        (None, None) => Ok(()),
        (None, Some(tbf)) => tc(&base, &["root", "handle", "1:"], &tbf),
        (Some(netem), tbf) => {
            tc(&base, &["root", "handle", "1:"], &netem).map_err(netem_hint)?;
            match tbf {
                Some(tbf) => tc(&base, &["parent", "1:1", "handle", "10:"], &tbf),
                None => Ok(()),
            }
        }
    }
}

fn tc(base: &[&str], position: &[&str], qdisc: &[String]) -> Result<()> {
    let mut cmd = Command::new("tc");
    cmd.args(base).args(position).args(qdisc);
    admin(&mut cmd)?;
    Ok(())
}

fn netem_hint(e: anyhow::Error) -> anyhow::Error {
    if format!("{e:#}").contains("qdisc kind is unknown") {
        e.context("netem qdisc is not available in this kernel (delay and loss need sch_netem)")
    } else {
        e
    }
}
