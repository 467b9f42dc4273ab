//! In-process nodes for the election tests: each has its own store, swarm node on 127.0.0.1 and
//! [`ImageFetcher`]; the registry is a real Debian docker-registry behind a `CountingProxy`.
//!
//! No Kubernetes API server can run here: `KubeApi` is an in-test HTTP server implementing the
//! Lease REST subset the kube client uses with real semantics (resourceVersion moving on every
//! write, 409 on a stale write or an existing create, 404, delete preconditions). Each node talks to
//! it through its own `CountingProxy`, so one node can lose the API (as a crashed node does) while
//! the others keep it.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use image_preheat::fetch::{FetchConfig, FetchMetrics, FetchReport, ImageFetcher};
use image_preheat::lease::{
    client_from_config, LeaseConfig, LeaseElector, LeaseMetrics, LeaseMode,
};
use image_preheat::pull::NoProgress;
use image_preheat::registry::{RegistryClient, RegistryConfig, RetryPolicy};
use preheat_core::reference::Reference;
use preheat_store::{Store, StoreConfig};
use preheat_swarm::{Multiaddr, Swarm, SwarmConfig, SwarmHandle};
use preheat_testkit::kube_api::KubeApi;
use preheat_testkit::{CountingProxy, ImageBuilder, PushedImage, Registry};
use prometheus_client::registry::Registry as Metrics;

pub const NS: &str = "preheat";
pub const MIB: u64 = 1024 * 1024;
/// Bound on any single wait; no assertion depends on timing.
pub const GUARD: Duration = Duration::from_secs(120);

pub struct Node {
    pub name: String,
    pub store: Store,
    pub swarm: SwarmHandle,
    pub fetcher: ImageFetcher,
    pub lease_metrics: LeaseMetrics,
    /// This node's way to the Lease API (kube mode).
    pub api_proxy: Option<CountingProxy>,
    pub metrics: Metrics,
    _dir: tempfile::TempDir,
}

/// The election side of a test cluster.
#[derive(Clone, Copy)]
pub enum Election<'a> {
    /// `LEASE=kube` against this server, with this lease duration.
    Kube(&'a KubeApi, Duration),
    /// `LEASE=none`.
    None,
}

pub struct Origin {
    pub registry: Registry,
    pub proxy: CountingProxy,
    pub image: PushedImage,
    /// The image through the proxy.
    pub reference: Reference,
}

/// A registry with a generated image of `layers` (bytes each), behind a counting proxy.
pub async fn origin(layers: &[u64]) -> anyhow::Result<Origin> {
    let registry = Registry::start().await?;
    let image = ImageBuilder::new()
        .layers(layers)
        .seed(7)
        .push(&registry, "test/app:v1")
        .await?;
    let proxy = CountingProxy::start(registry.addr()).await?;
    let reference = image.reference_via(&proxy.host()).parse()?;
    Ok(Origin {
        registry,
        proxy,
        image,
        reference,
    })
}

impl Origin {
    /// Registry `GET`s per blob of the image (config and layers).
    pub fn blob_gets(&self) -> anyhow::Result<Vec<usize>> {
        self.image
            .blobs()
            .iter()
            .map(|(d, _)| Ok(self.registry.blob_gets(d)?.len()))
            .collect()
    }

    /// Blob body bytes the registry served for the image.
    pub fn blob_bytes(&self) -> anyhow::Result<u64> {
        self.image
            .blobs()
            .iter()
            .map(|(d, _)| self.registry.blob_bytes_served(d))
            .sum()
    }

    /// Waits until the access log shows every blob fetched to its end (the log line is written
    /// after the response, racing with the client).
    pub async fn settle_log(&self) -> anyhow::Result<()> {
        let blobs = self.image.blobs();
        self.registry
            .wait_access_log(Duration::from_secs(10), |log| {
                blobs.iter().all(|(d, size)| {
                    log.iter()
                        .filter(|e| e.method == "GET" && e.blob_digest() == Some(*d))
                        .map(|e| e.bytes)
                        .sum::<u64>()
                        >= *size
                })
            })
            .await?;
        Ok(())
    }
}

fn lease_config(name: &str, mode: LeaseMode, duration: Duration) -> LeaseConfig {
    let mut c = LeaseConfig::new(mode, NS, name);
    c.lease_duration = duration;
    c.provider_wait = Duration::from_secs(5);
    c.stagger = Duration::from_millis(100);
    c.retry_min = Duration::from_millis(100);
    c.retry_max = Duration::from_millis(500);
    c.clock_skew = Duration::from_millis(100);
    c
}

async fn node(
    i: usize,
    peers: Vec<Multiaddr>,
    origin: &Origin,
    election: Election<'_>,
) -> anyhow::Result<(Node, Multiaddr)> {
    let name = format!("node-{i}");
    let dir = tempfile::tempdir()?;
    let store = Store::open(StoreConfig {
        chunk_size: 256 * 1024,
        ..StoreConfig::new(dir.path())
    })
    .await?;
    let cfg = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        peers,
        discovery_interval: Duration::from_secs(1),
        chunk_timeout: Duration::from_secs(10),
        query_timeout: Duration::from_secs(3),
        upload_rate: None,
        download_rate: None,
        ..SwarmConfig::default()
    };
    let mut metrics = Metrics::default();
    let swarm = Swarm::spawn(cfg, store.clone(), &mut metrics).await?;
    let addr = swarm.listen_addrs().await?[0].clone();
    let lease_metrics = LeaseMetrics::register(&mut metrics);
    let member = swarm.local_peer_id().to_string();
    let (elector, api_proxy) = match election {
        Election::Kube(api, d) => {
            let proxy = CountingProxy::start(api.addr()).await?;
            let mut kc = kube::Config::new(format!("http://{}", proxy.host()).parse()?);
            kc.default_namespace = NS.to_string();
            let client = client_from_config(kc)?;
            let cfg = lease_config(&name, LeaseMode::Kube, d);
            let el = LeaseElector::new(cfg, member, Some(client), lease_metrics.clone())?;
            (el, Some(proxy))
        }
        Election::None => {
            let cfg = lease_config(&name, LeaseMode::None, Duration::from_secs(30));
            (
                LeaseElector::new(cfg, member, None, lease_metrics.clone())?,
                None,
            )
        }
    };
    let registry = RegistryClient::new(RegistryConfig {
        insecure: vec![origin.proxy.host()],
        // Patient enough to outlast a registry the takeover test keeps down for a while.
        retry: RetryPolicy {
            max_attempts: 30,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        },
        ..RegistryConfig::default()
    })?;
    let fetch_cfg = FetchConfig {
        swarm_find_timeout: Duration::from_secs(2),
        tag_timeout: Duration::from_secs(1),
        pulling_timeout: Duration::from_secs(60),
        ..FetchConfig::new(name.clone())
    };
    let fetch_metrics = FetchMetrics::register(&mut metrics);
    let fetcher = ImageFetcher::new(
        store.clone(),
        registry,
        Some(swarm.clone()),
        Some(elector),
        fetch_cfg,
        fetch_metrics,
    );
    Ok((
        Node {
            name,
            store,
            swarm,
            fetcher,
            lease_metrics,
            api_proxy,
            metrics,
            _dir: dir,
        },
        addr,
    ))
}

/// `n` nodes, each dialling every node started before it (as discovery of a headless Service
/// gives every node every address), returned once all are connected to each other.
pub async fn cluster(
    n: usize,
    origin: &Origin,
    election: Election<'_>,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let (node, addr) = node(i, addrs.clone(), origin, election).await?;
        addrs.push(addr);
        nodes.push(node);
    }
    let until = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let peers = node.swarm.connected_peers().await?.len();
            if peers + 1 >= n {
                break;
            }
            anyhow::ensure!(Instant::now() < until, "{} sees {peers} peers", node.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

/// Starts `node`'s fetch of `reference` in a task.
pub fn spawn_fetch(
    node: &Node,
    reference: &Reference,
) -> tokio::task::JoinHandle<anyhow::Result<FetchReport>> {
    let fetcher = node.fetcher.clone();
    let reference = reference.clone();
    let name = node.name.clone();
    tokio::spawn(async move {
        let r = tokio::time::timeout(GUARD, fetcher.fetch(&reference, Arc::new(NoProgress)))
            .await
            .with_context(|| format!("{name}: fetch did not finish"))?
            .with_context(|| format!("{name}: fetch failed"))?;
        Ok(r)
    })
}

/// Fetches `origin`'s image on every node at once, then checks each stores all of it; returns
/// the reports in node order.
pub async fn fetch_all<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    origin: &Origin,
) -> anyhow::Result<Vec<FetchReport>> {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| spawn_fetch(n, &origin.reference))
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await??);
    }
    for n in nodes {
        assert_complete(n, origin).await?;
    }
    Ok(reports)
}

/// Asserts that `node` stores the whole image with the right digests (the store verified each
/// blob's sha256 on completion; the image status says all are complete).
pub async fn assert_complete(node: &Node, origin: &Origin) -> anyhow::Result<()> {
    for (d, size) in origin.image.blobs() {
        anyhow::ensure!(
            node.store.contains(&d).await,
            "{}: blob {d} missing",
            node.name
        );
        assert_eq!(
            node.store.blob_len(&d).await?,
            Some(size),
            "{}: {d}",
            node.name
        );
    }
    let images = node.store.images().await?;
    let img = images
        .iter()
        .find(|s| s.record.manifest == origin.image.manifest_digest)
        .with_context(|| format!("{}: no image record", node.name))?;
    anyhow::ensure!(img.complete, "{}: image not complete", node.name);
    Ok(())
}
