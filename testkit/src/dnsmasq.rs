//! A real dnsmasq answering chosen names (e.g. a headless Service name) inside a network namespace.
//!
//! Runs `dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=IP`
//! on port 53 of one address, with no upstream and no config file: it answers only the records of its
//! private hosts file. [`Dnsmasq::set_records`] rewrites that file, sends SIGHUP and waits until the
//! log shows the file re-read, so a lookup right after it sees the new records. Log, pid file and
//! hosts file live in a private temp dir; the process is killed and reaped on drop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::{netns_command, Host, LabProcess};

/// Where Debian installs dnsmasq.
pub const DNSMASQ_BINARY: &str = "/usr/sbin/dnsmasq";
/// Bound for start-up and for a reload after [`Dnsmasq::set_records`].
pub const DNSMASQ_TIMEOUT: Duration = Duration::from_secs(10);

/// A dnsmasq process serving the records given to [`Dnsmasq::set_records`].
#[derive(Debug)]
pub struct Dnsmasq {
    process: Mutex<LabProcess>,
    listen: IpAddr,
    netns: String,
    hosts_file: PathBuf,
    log_file: PathBuf,
    records: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq in namespace `netns` on `listen`:53 (an address of that namespace) and waits
    /// until it serves (bounded by [`DNSMASQ_TIMEOUT`]). It starts with no records.
    pub fn start(netns: &str, listen: IpAddr) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("preheat-dnsmasq-")
            .tempdir()
            .context("creating dnsmasq temp dir")?;
        let hosts_file = dir.path().join("hosts");
        let log_file = dir.path().join("dnsmasq.log");
        let pid_file = dir.path().join("dnsmasq.pid");
        write_atomic(&hosts_file, "")?;
        let mut cmd = netns_command(netns, DNSMASQ_BINARY);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            .arg("--bind-interfaces")
            .arg(format!("--listen-address={listen}"))
            .arg("--port=53")
            // Stay root so the re-read after SIGHUP can open the private (0700) temp dir.
            .arg("--user=root")
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg(format!("--log-facility={}", log_file.display()))
            .arg("--log-queries")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = LabProcess::spawn(&mut cmd, format!("dnsmasq in {netns}"))?;
        let dns = Self {
            process: Mutex::new(process),
            listen,
            netns: netns.to_owned(),
            hosts_file,
            log_file,
            records: Mutex::new(BTreeMap::new()),
            dir,
        };
        dns.wait_for_reads(1, &pid_file)?;
        Ok(dns)
    }

    /// Starts dnsmasq on a lab host's own address (its traffic then counts on that host's link;
    /// [`crate::netns::Lab::start_dns`] avoids that by using the switch namespace).
    pub fn start_on_host(host: &Host) -> Result<Self> {
        Self::start(host.name(), host.ip())
    }

    /// The address it listens on (port 53).
    pub fn listen_ip(&self) -> IpAddr {
        self.listen
    }

    /// The namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.lock_process().id()
    }

    /// The private directory holding hosts file, log and pid file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Makes `name` answer with exactly `ips` (A and AAAA records); an empty list removes the name.
    /// Returns once dnsmasq has re-read its hosts file.
    pub fn set_records(&self, name: &str, ips: &[IpAddr]) -> Result<()> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if ips.is_empty() {
            records.remove(name);
        } else {
            records.insert(name.to_owned(), ips.to_vec());
        }
        let mut text = String::new();
        for (name, ips) in records.iter() {
            for ip in ips {
                // Writing into a String cannot fail.
                let _ = writeln!(text, "{ip} {name}");
            }
        }
        write_atomic(&self.hosts_file, &text)?;
        let before = self.reads()?;
        self.lock_process().signal("HUP")?;
        self.wait_for_reads(before + 1, &self.dir.path().join("dnsmasq.pid"))
    }

    /// The records currently served, by name.
    pub fn records(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The dnsmasq log so far (start-up, reloads, one line per query and answer).
    pub fn log(&self) -> Result<String> {
        std::fs::read_to_string(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))
    }

    fn lock_process(&self) -> std::sync::MutexGuard<'_, LabProcess> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times the log says the hosts file was read.
    fn reads(&self) -> Result<usize> {
        let needle = format!("read {} - ", self.hosts_file.display());
        match std::fs::read_to_string(&self.log_file) {
            Ok(log) => Ok(log.matches(&needle).count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.log_file.display())),
        }
    }

    /// Waits until the hosts file was read `n` times and the pid file exists; fails early, with the
    /// log, if dnsmasq exits.
    fn wait_for_reads(&self, n: usize, pid_file: &Path) -> Result<()> {
        let deadline = Instant::now() + DNSMASQ_TIMEOUT;
        loop {
            if let Some(status) = self.lock_process().try_wait()? {
                bail!(
                    "dnsmasq in {} exited ({status}); log:\n{}",
                    self.netns,
                    self.log().unwrap_or_default()
                );
            }
            if self.reads()? >= n && pid_file.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "dnsmasq in {} not ready within {DNSMASQ_TIMEOUT:?}; log:\n{}",
                    self.netns,
                    self.log().unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
