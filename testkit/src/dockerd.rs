//! A real dockerd (Debian's `docker.io`) with a private socket, data root, exec root (its managed
//! containerd lives there too), an empty daemon config, no iptables, no bridge and the `vfs` storage
//! driver, so it needs no kernel features beyond a plain directory. Stopped with SIGTERM (then
//! SIGKILL) on drop.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let d = preheat_testkit::Dockerd::start().await?;
//! let id = d.docker(&["image", "inspect", "--format", "{{.Id}}", "app:v1"]).await?;
//! # let _ = id; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

/// Where Debian installs dockerd.
pub const DOCKERD_BINARY: &str = "dockerd";
/// Debian's docker CLI (the same release as the daemon); `docker` from `PATH` when absent.
pub const DOCKER_CLI: &str = "/usr/bin/docker";
/// Bound for start-up and for each `docker` command.
pub const DOCKERD_TIMEOUT: Duration = Duration::from_secs(120);

/// A dockerd process; see the module docs.
#[derive(Debug)]
pub struct Dockerd {
    child: Child,
    dir: TempDir,
}

impl Dockerd {
    /// Starts dockerd in a fresh temp dir and waits (bounded by [`DOCKERD_TIMEOUT`]) until it answers.
    pub async fn start() -> Result<Self> {
        tokio::task::spawn_blocking(Self::start_blocking).await?
    }

    fn start_blocking() -> Result<Self> {
        // Short path: the socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("preheat-dockerd-")
            .tempdir()
            .context("creating dockerd temp dir")?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}")?;
        std::fs::create_dir_all(d.join("client"))?;
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let child = Command::new(DOCKERD_BINARY)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockerd (apt-get install docker.io)")?;
        let dockerd = Dockerd { child, dir };
        let deadline = Instant::now() + DOCKERD_TIMEOUT;
        loop {
            let ok = dockerd
                .command()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(dockerd);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not start: {}", dockerd.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `unix:///…/docker.sock`, a `DOCKER_HOST` value.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` CLI command aimed at this daemon (`DOCKER_HOST`), with a private `DOCKER_CONFIG`.
    pub fn command(&self) -> Command {
        let cli = if Path::new(DOCKER_CLI).exists() {
            DOCKER_CLI
        } else {
            "docker"
        };
        let mut cmd = Command::new(cli);
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker ARGS…` off the async threads, bounded by [`DOCKERD_TIMEOUT`]; stdout on success.
    pub async fn docker(&self, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::from(self.command());
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(DOCKERD_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("docker {args:?} timed out"))?
            .context("running docker")?;
        ensure!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `docker image inspect NAME` as JSON, `None` when Docker has no such image.
    pub async fn inspect(&self, name: &str) -> Result<Option<serde_json::Value>> {
        match self.docker(&["image", "inspect", name]).await {
            Ok(out) => {
                let mut v: Vec<serde_json::Value> =
                    serde_json::from_str(&out).context("parsing docker image inspect")?;
                ensure!(
                    v.len() == 1,
                    "docker image inspect {name} gave {} images",
                    v.len()
                );
                Ok(v.pop())
            }
            Err(e) if format!("{e:#}").contains("No such image") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image ID (`sha256:…`) of `name`, `None` when absent.
    pub async fn image_id(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .inspect(name)
            .await?
            .and_then(|v| v["Id"].as_str().map(str::to_owned)))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its managed containerd; SIGKILL if it does not exit in time.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
