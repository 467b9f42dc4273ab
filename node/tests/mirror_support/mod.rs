//! Shared by the mirror tests: skopeo, directory comparison, metrics, flag defaults.

#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use image_preheat::mirror::{serve_on, MirrorArgs, Upstream};
use preheat_store::Store;
use preheat_swarm::SwarmHandle;
use prometheus_client::registry::Registry as Metrics;

pub fn skopeo_copy(reference: &str, dest: &Path) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--retry-times=0"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .context("running skopeo")?;
    ensure!(
        out.status.success(),
        "skopeo copy {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every file of `a` equals the same file of `b`, and they hold the same names; returns how many.
pub fn same_dir(a: &Path, b: &Path) -> Result<usize> {
    let names = |d: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let (na, nb) = (names(a)?, names(b)?);
    ensure!(na == nb, "file names differ: {na:?} vs {nb:?}");
    for n in &na {
        ensure!(
            std::fs::read(a.join(n))? == std::fs::read(b.join(n))?,
            "{n} differs"
        );
    }
    Ok(na.len())
}

pub fn metric(metrics: &Metrics, sample: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, metrics).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The flag defaults, as the binary would parse them with no flag and no env.
pub fn clap_defaults() -> MirrorArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mirror: MirrorArgs,
    }
    Cli::try_parse_from(["x"]).unwrap().mirror
}

/// A mirror on 127.0.0.1:<free port> serving until the test's runtime ends; its address and
/// metrics.
pub async fn start_mirror(
    args: &MirrorArgs,
    store: Store,
    swarm: Option<SwarmHandle>,
    upstream: Upstream,
) -> Result<(std::net::SocketAddr, Metrics)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut metrics = Metrics::default();
    let server = serve_on(
        listener,
        args,
        store,
        swarm,
        upstream,
        &mut metrics,
        std::future::pending(),
    )?;
    tokio::spawn(server);
    Ok((addr, metrics))
}

/// An `ImageFetcher` without an election: each blob from the swarm when a peer offers it within
/// a second, else from the registry.
pub fn unelected_fetcher(
    store: &Store,
    swarm: &SwarmHandle,
    registry: &image_preheat::registry::RegistryConfig,
    name: &str,
) -> Result<image_preheat::fetch::ImageFetcher> {
    use image_preheat::fetch::{FetchConfig, FetchMetrics, ImageFetcher};
    Ok(ImageFetcher::new(
        store.clone(),
        image_preheat::registry::RegistryClient::new(registry.clone())?,
        Some(swarm.clone()),
        None,
        FetchConfig {
            swarm_find_timeout: std::time::Duration::from_secs(1),
            ..FetchConfig::new(name)
        },
        FetchMetrics::register(&mut Metrics::default()),
    ))
}
