//! Shared by the `agent_*` tests: start the real `image-preheat agent` binary on loopback with a
//! private store, image list and ports, talk to its HTTP API, stop it with SIGTERM.

#![allow(clippy::unwrap_used, dead_code)] // test support: a failed setup should panic

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use preheat_testkit::free_port;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_image-preheat");
/// Bound on every wait for the agents (network, registry, startup).
pub const BOUND: Duration = Duration::from_secs(90);
pub const MIB: u64 = 1024 * 1024;

/// The binary with a clean environment (no host DOCKER_HOST, STORE_DIR, …).
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "text")
        .env("LOG_LEVEL", "info")
        .kill_on_drop(true);
    cmd
}

/// A running agent.
pub struct Agent {
    pub name: String,
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub swarm: SocketAddr,
    pub store: PathBuf,
    client: reqwest::Client,
}

/// How to start one agent.
pub struct Spec<'a> {
    pub name: &'a str,
    pub store: &'a Path,
    pub list: &'a Path,
    pub registry_host: &'a str,
    pub swarm_port: u16,
    pub peers: Vec<SocketAddr>,
    pub env: Vec<(&'a str, String)>,
}

impl<'a> Spec<'a> {
    pub fn new(name: &'a str, store: &'a Path, list: &'a Path, registry_host: &'a str) -> Self {
        Self {
            name,
            store,
            list,
            registry_host,
            swarm_port: free_port().unwrap(),
            peers: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Agent {
    /// Starts the agent and waits until `/health` answers.
    pub async fn start(spec: Spec<'_>) -> Agent {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let swarm: SocketAddr = format!("127.0.0.1:{}", spec.swarm_port).parse().unwrap();
        let peers: Vec<String> = spec.peers.iter().map(ToString::to_string).collect();
        let mut cmd = command();
        cmd.arg("agent")
            .env("NODE_NAME", spec.name)
            .env("STORE_DIR", spec.store)
            .env("CHUNK_SIZE", "256KiB")
            .env("IMAGE_LIST_PATH", spec.list)
            .env("MOUNT_DIR", spec.store.join("mount"))
            .env("HTTP_ADDR", http.to_string())
            .env("MIRROR_ADDR", "127.0.0.1:0")
            .env("SWARM_ADDR", swarm.to_string())
            .env("PEERS", peers.join(","))
            .env("INSECURE_REGISTRIES", spec.registry_host)
            .env("RUNTIME", "none")
            .env("LEASE", "none")
            .env("SWARM_TIMEOUT", "2s")
            .env("INTERVAL", "5m");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let agent = Agent {
            name: spec.name.to_owned(),
            child: Some(child),
            http,
            swarm,
            store: spec.store.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        let until = tokio::time::Instant::now() + BOUND;
        loop {
            if let Ok(r) = agent.get("/health").await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < until,
                "agent {} never answered /health on {http}",
                spec.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.client.get(self.url(path)).send().await
    }

    /// GET `path`, expecting JSON; returns (status, body).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap())
    }

    pub async fn status(&self) -> Value {
        let (code, v) = self.get_json("/api/v1/status").await;
        assert_eq!(code, 200, "{v}");
        v
    }

    /// The status entry of `image` (canonical reference), if any.
    pub async fn image(&self, image: &str) -> Option<Value> {
        let s = self.status().await;
        s["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == image)
            .cloned()
    }

    /// Polls `/api/v1/status` until `pred` holds, within [`BOUND`].
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + BOUND;
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{}: {what} did not happen; status {s:#}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `image` is complete and returns its entry.
    pub async fn wait_complete(&self, image: &str) -> Value {
        let s = self
            .wait_status(&format!("{image} complete"), |s| {
                entry(s, image).is_some_and(|e| e["state"] == "complete")
            })
            .await;
        entry(&s, image).unwrap()
    }

    /// Sends SIGTERM and waits (at most 10 s, the bound) for the exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
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
}

/// The entry of `image` in a status document.
pub fn entry(status: &Value, image: &str) -> Option<Value> {
    status["images"]
        .as_array()?
        .iter()
        .find(|i| i["image"] == image)
        .cloned()
}

/// The canonical form of a test reference (`127.0.0.1:PORT/repo:tag` is already canonical).
pub fn canonical(reference: &str) -> String {
    reference
        .parse::<preheat_core::reference::Reference>()
        .unwrap()
        .to_string()
}

/// Writes `text` to `path` atomically (temp file + rename), as an editor or a script would.
pub fn write_list(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A mounted ConfigMap the way the kubelet writes it:
/// `dir/images.list -> ..data/images.list`, `..data -> ..<timestamp>`.
pub struct ConfigMapDir {
    pub dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    pub fn new(dir: &Path, text: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        c.update(text);
        std::os::unix::fs::symlink("..data/images.list", dir.join("images.list")).unwrap();
        c
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("images.list")
    }

    /// The kubelet's atomic update: a new timestamped directory, a `..data_tmp` symlink to it
    /// renamed over `..data`, then the old directory removed.
    pub fn update(&mut self, text: &str) {
        self.generation += 1;
        let name = format!(
            "..2026_01_01_00_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let new = self.dir.join(&name);
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("images.list"), text).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// A TCP proxy that forwards server→client bytes at about `rate` bytes/s (a slow registry), so a
/// test can act while a transfer is running. Dropped with its task.
pub struct SlowProxy {
    pub addr: SocketAddr,
    rate: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: SocketAddr, rate: u64) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(rate));
        let r = rate.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, r.clone()));
            }
        });
        SlowProxy { addr, rate, task }
    }

    /// Changes the rate of every connection, open or new.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, rate: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let piece = 16 * 1024;
    let mut buf = vec![0u8; piece];
    loop {
        match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let rate = rate.load(Ordering::Relaxed).max(1);
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
    }
    up.abort();
}
