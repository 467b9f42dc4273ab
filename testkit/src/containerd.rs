//! A real containerd (Debian's `containerd`) with a private config, root, state and socket in a
//! temp dir; the CRI plugin is off and nothing listens on TCP. Killed and reaped on drop.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let ctd = preheat_testkit::Containerd::start().await?;
//! let listing = ctd.ctr("k8s.io", &["images", "ls"]).await?;
//! # let _ = listing; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

/// Bound for start-up and for each `ctr` command.
pub const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(120);

/// A containerd process; see the module docs.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    _tmp: Option<TempDir>,
}

impl Containerd {
    /// Starts containerd in a fresh temp dir and waits until it answers.
    pub async fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("preheat-ctd-")
            .tempdir()
            .context("creating containerd temp dir")?;
        let dir = tmp.path().to_owned();
        let mut ctd = tokio::task::spawn_blocking(move || Self::start_in(&dir)).await??;
        ctd._tmp = Some(tmp);
        Ok(ctd)
    }

    /// Starts containerd with everything under `dir` (created if needed; left in place on drop) and
    /// waits until it answers. Blocking.
    pub fn start_in(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        let ctd = Self {
            child,
            dir: dir.to_owned(),
            _tmp: None,
        };
        let deadline = Instant::now() + CONTAINERD_TIMEOUT;
        while ctd.ctr_blocking("default", &["version"]).is_err() {
            if Instant::now() > deadline {
                bail!("containerd did not start: {}", ctd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(ctd)
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command aimed at this containerd and `namespace`.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr --namespace NS ARGS…` (blocking); stdout on success.
    pub fn ctr_blocking(&self, namespace: &str, args: &[&str]) -> Result<String> {
        let out = self
            .ctr_command(namespace)
            .args(args)
            .output()
            .context("running ctr")?;
        ensure!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ctr --namespace NS ARGS…` off the async threads, bounded by [`CONTAINERD_TIMEOUT`].
    pub async fn ctr(&self, namespace: &str, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::from(self.ctr_command(namespace));
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(CONTAINERD_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("ctr {args:?} timed out"))?
            .context("running ctr")?;
        ensure!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `(name, digest)` of each image `ctr images ls` shows in `namespace`.
    pub async fn images(&self, namespace: &str) -> Result<Vec<(String, String)>> {
        let out = self.ctr(namespace, &["images", "ls"]).await?;
        Ok(parse_image_list(&out))
    }
}

/// Parses `ctr images ls` output (`REF TYPE DIGEST SIZE PLATFORMS LABELS`).
pub fn parse_image_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?;
            let _media_type = cols.next()?;
            let digest = cols.next()?;
            Some((name.to_owned(), digest.to_owned()))
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
