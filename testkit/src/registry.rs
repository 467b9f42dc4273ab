//! A real `docker-registry` (distribution 2.8.2) process on 127.0.0.1:<free port> with private storage.
//!
//! Invariants: never the default port 5000; storage, config, certificates and the log live in a private
//! temp dir that outlives the process; the process is killed and reaped on `stop()` and on drop.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use preheat_core::Digest;
use tempfile::TempDir;

use crate::accesslog::{self, AccessLogEntry};
use crate::tls::{self, TlsFiles};

/// Path of the registry binary (Debian package `docker-registry`).
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// How long `start()`/`restart()` wait for `GET /v2/` to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for [`Registry`]; see [`Registry::builder`].
#[derive(Debug, Clone, Default)]
pub struct RegistryBuilder {
    tls: bool,
    htpasswd: Option<(String, String)>,
    dir: Option<PathBuf>,
}

impl RegistryBuilder {
    /// Serve HTTPS with a freshly generated CA ([`Registry::ca_pem_path`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Require HTTP basic auth (htpasswd, bcrypt) for this user. Use together with [`Self::tls`]:
    /// that is the combination distribution is meant to run and the one the kit tests.
    pub fn htpasswd(mut self, user: &str, password: &str) -> Self {
        self.htpasswd = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Keep config, certificates, log and storage in `dir` (created if missing, kept after drop)
    /// instead of a private temp dir, e.g. for a demo that outlives the process.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Starts the registry and waits until `GET /v2/` answers (bounded by [`READY_TIMEOUT`]).
    pub async fn start(self) -> Result<Registry> {
        crate::install_crypto_provider();
        let (root, temp) = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("preheat-registry-")
                    .tempdir()
                    .context("creating registry temp dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let tls = if self.tls {
            Some(tls::generate(&root.join("certs"))?)
        } else {
            None
        };
        let htpasswd = root.join("htpasswd");
        if let Some((user, password)) = &self.htpasswd {
            tls::write_htpasswd(&htpasswd, user, password)?;
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        let mut ca_pem = None;
        if let Some(files) = &tls {
            let pem = std::fs::read(&files.ca_pem).context("reading generated CA")?;
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&pem)?]);
            ca_pem = Some(pem);
        }
        let client = builder.build().context("building registry http client")?;
        let mut reg = Registry {
            storage: root.join("storage"),
            log_path: root.join("registry.log"),
            config_path: root.join("config.yml"),
            port: 0,
            tls,
            ca_pem,
            auth: self.htpasswd.clone(),
            client,
            child: Mutex::new(None),
            root,
            _temp: temp,
        };
        let htpasswd = self.htpasswd.as_ref().map(|_| htpasswd);
        // A free port can be taken by a parallel test between probe and bind: retry with a new one.
        let mut last_err = None;
        for _ in 0..3 {
            reg.port = crate::free_port()?;
            reg.write_config(htpasswd.as_deref())?;
            match reg.spawn_and_wait().await {
                Ok(()) => return Ok(reg),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }
}

/// A running `docker-registry`. Dropping it kills the process and deletes its storage.
#[derive(Debug)]
pub struct Registry {
    storage: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    port: u16,
    tls: Option<TlsFiles>,
    ca_pem: Option<Vec<u8>>,
    auth: Option<(String, String)>,
    client: reqwest::Client,
    child: Mutex<Option<Child>>,
    root: PathBuf,
    // Last field: dropped after `child` is killed in `Drop`; None when the caller chose the dir.
    _temp: Option<TempDir>,
}

impl Registry {
    /// Plain HTTP, anonymous access.
    pub async fn start() -> Result<Registry> {
        RegistryBuilder::default().start().await
    }

    /// Options: TLS, htpasswd.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `"127.0.0.1:PORT"`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `"http(s)://127.0.0.1:PORT"`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host())
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The CA certificate (PEM file) that signed the server certificate, when TLS is on.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_pem.as_path())
    }

    /// The CA certificate PEM bytes, when TLS is on.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// `(user, password)` when htpasswd auth is on.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Writes a Docker `config.json` (the `.dockerconfigjson` pull-secret format) with this registry's
    /// credentials for each of `hosts` (default: [`Self::host`]; add a proxy's host to pull through it).
    /// Returns its path inside the registry's temp dir.
    pub fn docker_config(&self, hosts: &[&str]) -> Result<PathBuf> {
        use base64::Engine as _;
        let (user, password) = self
            .credentials()
            .context("registry has no htpasswd credentials")?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let own = self.host();
        let hosts: Vec<&str> = if hosts.is_empty() {
            vec![own.as_str()]
        } else {
            hosts.to_vec()
        };
        let auths: serde_json::Map<String, serde_json::Value> = hosts
            .iter()
            .map(|h| ((*h).to_owned(), serde_json::json!({ "auth": auth })))
            .collect();
        let path = self.root.join("docker-config.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&serde_json::json!({ "auths": auths }))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A client trusting the registry's CA (no credentials attached; see [`Self::request`]).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to `base_url() + path` with the registry's credentials attached (if any).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base_url())
        };
        let req = self.client.request(method, url);
        match &self.auth {
            Some((user, password)) => req.basic_auth(user, Some(password)),
            None => req,
        }
    }

    /// The directory holding config, certificates, htpasswd, log and storage.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Root of the filesystem storage driver.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The file holding the registry's stdout and stderr (app log and access log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Where the filesystem driver keeps a blob's bytes.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// Flips bytes (first, middle, last) of a stored blob in place, keeping its size, so the registry
    /// serves bytes that do not match the digest.
    pub fn corrupt_blob(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        let mut data =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if data.is_empty() {
            bail!("blob {digest} is empty, nothing to corrupt");
        }
        let last = data.len() - 1;
        for i in [0, data.len() / 2, last] {
            data[i] ^= 0xff;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    }

    /// Kills the process (SIGKILL) and reaps it. Storage and port are kept for [`Self::restart`].
    pub fn stop(&self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running (not stopped and not exited).
    pub fn is_running(&self) -> bool {
        match self.lock_child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops (if running) and starts the registry again on the same port with the same storage.
    pub async fn restart(&self) -> Result<()> {
        self.stop();
        self.spawn_and_wait().await
    }

    /// The access log (one entry per completed request, written after the response was sent).
    pub fn access_log(&self) -> Result<Vec<AccessLogEntry>> {
        let text = std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        Ok(accesslog::parse(&text))
    }

    /// `GET` requests for a blob (any repository), in log order.
    pub fn blob_gets(&self, digest: &Digest) -> Result<Vec<AccessLogEntry>> {
        Ok(self
            .access_log()?
            .into_iter()
            .filter(|e| e.method == "GET" && e.blob_digest() == Some(*digest))
            .collect())
    }

    /// Body bytes the registry wrote for `GET`s of this blob, summed over all requests.
    pub fn blob_bytes_served(&self, digest: &Digest) -> Result<u64> {
        Ok(self.blob_gets(digest)?.iter().map(|e| e.bytes).sum())
    }

    /// Polls the access log (every 20 ms, at most `timeout`) until `pred` holds; returns the log.
    /// Needed because distribution writes a line after the response, racing with the client.
    pub async fn wait_access_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&[AccessLogEntry]) -> bool,
    ) -> Result<Vec<AccessLogEntry>> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.access_log()?;
            if pred(&log) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                bail!("access log condition not met within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        // A poisoned lock only means a panic elsewhere; the Option inside is still valid.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_config(&self, htpasswd: Option<&Path>) -> Result<()> {
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: preheat-testkit\n",
            storage = self.storage.display(),
            port = self.port,
        );
        if let Some(t) = &self.tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert_pem.display(),
                t.key_pem.display()
            ));
        }
        if let Some(path) = htpasswd {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: preheat-testkit\n    path: {}\n",
                path.display()
            ));
        }
        std::fs::write(&self.config_path, cfg)
            .with_context(|| format!("writing {}", self.config_path.display()))
    }

    async fn spawn_and_wait(&self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err: File = log.try_clone().context("cloning log handle")?;
        let mut cmd = Command::new(REGISTRY_BINARY);
        cmd.arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().with_context(|| {
            format!("spawning {REGISTRY_BINARY} (apt-get install docker-registry)")
        })?;
        *self.lock_child() = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/v2/", self.base_url());
        loop {
            if !self.is_running() {
                self.stop();
                bail!(
                    "docker-registry exited during start-up:\n{}",
                    self.log_tail(20)
                );
            }
            // Any HTTP answer (200, or 401 with auth) means it is serving.
            if let Ok(resp) = self.client.get(&url).send().await {
                tracing::debug!(
                    port = self.port,
                    status = resp.status().as_u16(),
                    "registry ready"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "docker-registry not ready within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
