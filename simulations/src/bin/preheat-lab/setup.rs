//! One profile's lab: N shaped hosts plus an origin host whose upload is the origin's link, a
//! real docker-registry serving the generated image from the origin's namespace, and dnsmasq
//! answering the headless name with every (non-origin) host.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use preheat_testkit::dnsmasq::Dnsmasq;
use preheat_testkit::netns::{Host, Lab, LabProcess, Shaping};
use preheat_testkit::{ImageBuilder, PushedImage, Registry};

/// The headless Service name the agents resolve.
pub const NAME: &str = "image-preheat.bench.svc.cluster.local";
/// Port of the registry in the origin namespace.
pub const REGISTRY_PORT: u16 = 5000;
const READY: Duration = Duration::from_secs(20);

/// Link speeds and image of one benchmark profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub hosts: usize,
    /// Host links, bits per second each way.
    pub host_bps: u64,
    /// Origin upload, bits per second.
    pub origin_bps: u64,
    pub image_bytes: u64,
    pub layers: u64,
}

impl Profile {
    pub fn layer_sizes(&self) -> Vec<u64> {
        let n = self.layers.max(1);
        let mut v = vec![self.image_bytes / n; usize::try_from(n).unwrap_or(1)];
        if let Some(last) = v.last_mut() {
            *last += self.image_bytes % n;
        }
        v
    }
}

/// A running profile lab. Field order is drop order: processes before the lab's namespaces.
pub struct Env {
    /// Held so the registry and DNS live as long as the lab; killed on drop.
    _registry: LabProcess,
    _dns: Dnsmasq,
    pub image: PushedImage,
    /// `IP:5000/repo:tag` as hosts reach the origin.
    pub reference: String,
    pub registry_log: PathBuf,
    pub registry_root: PathBuf,
    pub lab: Lab,
    pub dir: PathBuf,
    pub profile: Profile,
}

impl Env {
    pub async fn start(profile: &Profile, dir: &Path) -> Result<Env> {
        let origin_shaping = Shaping {
            upload_bps: Some(profile.origin_bps),
            ..Shaping::default()
        };
        let lab = Lab::builder()
            .hosts(profile.hosts + 1)
            .upload_rate_bps(profile.host_bps)
            .download_rate_bps(profile.host_bps)
            .host_shaping(profile.hosts, origin_shaping)
            .build()
            .context("building the netns lab")?;
        let dns = lab.start_dns()?;
        let ips: Vec<_> = lab.host_ips()[..profile.hosts].to_vec();
        dns.set_records(NAME, &ips)?;

        // Push through a loopback registry, then serve the same storage from the origin host.
        let root = dir.join("registry");
        let reg = Registry::builder().dir(&root).start().await?;
        let image = ImageBuilder::new()
            .seed(7)
            .layers(&profile.layer_sizes())
            .push(&reg, "bench/app:v1")
            .await
            .context("pushing the benchmark image")?;
        reg.stop();
        drop(reg);
        let origin = lab.host(profile.hosts);
        let config = root.join("lab-config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 0.0.0.0:{REGISTRY_PORT}\n  secret: preheat-lab\n",
                root.join("storage").display()
            ),
        )?;
        let registry_log = root.join("lab-registry.log");
        let log = File::create(&registry_log)?;
        let mut cmd = origin.command(preheat_testkit::registry::REGISTRY_BINARY);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let registry = origin.spawn(&mut cmd)?;
        let reference = image.reference_via(&format!("{}:{REGISTRY_PORT}", origin.ip()));
        let env = Env {
            _registry: registry,
            _dns: dns,
            image,
            reference,
            registry_log,
            registry_root: root,
            lab,
            dir: dir.to_path_buf(),
            profile: profile.clone(),
        };
        env.wait_registry()?;
        Ok(env)
    }

    fn wait_registry(&self) -> Result<()> {
        let url = format!("http://{}:{REGISTRY_PORT}/v2/", self.origin().ip());
        let until = Instant::now() + READY;
        let h = self.lab.host(0);
        loop {
            let out = h.output(
                h.command("curl").args(["-sf", "-o", "/dev/null", &url]),
                READY,
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("the origin registry did not answer {url} within {READY:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn origin(&self) -> &Host {
        self.lab.host(self.profile.hosts)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.lab.hosts()[..self.profile.hosts]
    }

    /// Blob body bytes the origin registry has served so far (from its access log).
    pub fn origin_body_bytes(&self) -> Result<u64> {
        let text = std::fs::read_to_string(&self.registry_log)?;
        Ok(preheat_testkit::accesslog::parse(&text)
            .iter()
            .filter(|e| e.method == "GET" && e.blob_digest().is_some())
            .map(|e| e.bytes)
            .sum())
    }

    /// The registry's file holding blob `digest`.
    pub fn blob_file(&self, digest: &preheat_core::Digest) -> PathBuf {
        let hex = digest.hex();
        self.registry_root
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }
}
