//! A real containerd on node B pulls, with a `hosts.toml` naming node B's mirror, an image whose
//! origin is a real docker-registry and which only node A has: every blob comes from node A
//! through the swarm, none from the origin.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "election_support/mod.rs"]
mod election_support;
mod mirror_support;

use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use election_support::{cluster, origin, Election, GUARD, MIB};
use image_preheat::mirror::{MirrorArgs, Upstream, UpstreamFetch};
use image_preheat::pull::NoProgress;
use image_preheat::registry::RegistryConfig;
use mirror_support::{clap_defaults, metric, start_mirror, unelected_fetcher};
use preheat_testkit::Containerd;

const NAMESPACE: &str = "preheat-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_on_b_pulls_node_a_image_through_b_mirror() -> Result<()> {
    let origin = origin(&[2 * MIB + 99, 400_000]).await?;
    let nodes = cluster(2, &origin, Election::None).await?;
    let (a, b) = (&nodes[0], &nodes[1]);
    let registry = RegistryConfig {
        insecure: vec![origin.proxy.host()],
        ..RegistryConfig::default()
    };
    let a_fetcher = unelected_fetcher(&a.store, &a.swarm, &registry, "node-a")?;
    tokio::time::timeout(
        GUARD,
        a_fetcher.fetch(&origin.reference, Arc::new(NoProgress)),
    )
    .await??;
    origin.settle_log().await?;
    let before = origin.blob_gets()?;

    let args = MirrorArgs {
        default_registry: origin.proxy.host(),
        ..clap_defaults()
    };
    let fetcher: Arc<dyn UpstreamFetch> =
        Arc::new(unelected_fetcher(&b.store, &b.swarm, &registry, "node-b")?);
    let upstream = Upstream {
        fetcher: Some(fetcher),
        registry,
    };
    let (mirror, metrics) =
        start_mirror(&args, b.store.clone(), Some(b.swarm.clone()), upstream).await?;

    // hosts.toml for the origin (as the chart's init container writes it): the mirror first.
    let tmp = tempfile::tempdir()?;
    let host = origin.proxy.host();
    let host_dir = tmp.path().join("hosts.d").join(&host);
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    let hosts_arg = tmp.path().join("hosts.d").display().to_string();
    let reference = origin.reference.to_string();
    let ctd = Containerd::start().await?;
    let args = [
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        &hosts_arg,
        &reference,
    ];
    match tokio::time::timeout(GUARD, ctd.ctr(NAMESPACE, &args)).await? {
        Ok(_) => {}
        Err(e) => bail!("{e}\ncontainerd log:\n{}", ctd.log()),
    }
    let listing = ctd.ctr(NAMESPACE, &["images", "ls"]).await?;
    let manifest = origin.image.manifest_digest.to_string();
    ensure!(listing.contains(&manifest), "{manifest} not in {listing}");

    // Every blob was answered with content by B's mirror; the origin log, flushed up to a
    // sentinel request, shows no new blob GET.
    let served: f64 = ["local", "peer", "upstream"]
        .iter()
        .map(|r| {
            metric(
                &metrics,
                &format!("mirror_requests_total{{kind=\"blob\",result=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(served >= origin.image.blobs().len() as f64);
    let sentinel = "/v2/sentinel/after-pull/manifests/none";
    let _ = origin
        .registry
        .request(reqwest::Method::GET, sentinel)
        .send()
        .await?;
    origin
        .registry
        .wait_access_log(GUARD, |log| log.iter().any(|e| e.path == sentinel))
        .await?;
    assert_eq!(origin.blob_gets()?, before);
    for n in &nodes {
        n.swarm.shutdown().await;
    }
    Ok(())
}
