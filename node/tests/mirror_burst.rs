//! A burst of cold pulls through two nodes' mirrors reaches the registry once: each mirror starts
//! a background fetch through the election (coordination-free mode: one node pulls, the other
//! follows it through the swarm) and streams the blobs from its store as they are written.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "election_support/mod.rs"]
mod election_support;
mod mirror_support;

use std::sync::Arc;

use anyhow::Result;
use election_support::{cluster, origin, Election, GUARD, MIB};
use image_preheat::mirror::{MirrorArgs, Upstream, UpstreamFetch};
use image_preheat::registry::RegistryConfig;
use mirror_support::{clap_defaults, metric, same_dir, skopeo_copy, start_mirror};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_pulls_through_two_mirrors_reach_the_registry_once() -> Result<()> {
    let origin = origin(&[2 * MIB + 77, 900_000]).await?;
    let nodes = cluster(2, &origin, Election::None).await?;
    // Default timeouts: the first manifest waits for the background fetch's registry round trip
    // within --mirror-upstream-timeout.
    let args = MirrorArgs {
        default_registry: origin.proxy.host(),
        ..clap_defaults()
    };
    let mut mirrors = Vec::new();
    for n in &nodes {
        let fetcher: Arc<dyn UpstreamFetch> = Arc::new(n.fetcher.clone());
        let upstream = Upstream {
            fetcher: Some(fetcher),
            registry: RegistryConfig {
                insecure: vec![origin.proxy.host()],
                ..RegistryConfig::default()
            },
        };
        mirrors.push(start_mirror(&args, n.store.clone(), Some(n.swarm.clone()), upstream).await?);
    }

    // Both pulls at once, through each node's own mirror.
    let tmp = tempfile::tempdir()?;
    let repo = origin.image.repository.clone();
    let mut copies = Vec::new();
    for (i, (addr, _)) in mirrors.iter().enumerate() {
        let dest = tmp.path().join(format!("node-{i}"));
        let reference = format!("{addr}/{repo}:v1");
        copies.push((
            dest.clone(),
            tokio::task::spawn_blocking(move || skopeo_copy(&reference, &dest)),
        ));
    }
    for (_, copy) in &mut copies {
        tokio::time::timeout(GUARD, copy).await???;
    }
    assert_eq!(
        same_dir(&copies[0].0, &copies[1].0)?,
        3 + origin.image.layers.len()
    );
    assert_eq!(
        std::fs::read(copies[0].0.join("manifest.json"))?,
        origin.image.manifest_bytes
    );

    // Each blob left the registry once, although both nodes pulled every blob.
    origin.settle_log().await?;
    let gets = origin.blob_gets()?;
    assert!(gets.iter().all(|n| *n == 1), "registry blob GETs: {gets:?}");
    let served: f64 = mirrors
        .iter()
        .map(|(_, m)| {
            ["local", "peer", "upstream"]
                .iter()
                .map(|r| {
                    metric(
                        m,
                        &format!("mirror_requests_total{{kind=\"blob\",result=\"{r}\"}}"),
                    )
                })
                .sum::<f64>()
        })
        .sum();
    assert!(served >= 2.0 * origin.image.blobs().len() as f64);
    for n in &nodes {
        n.swarm.shutdown().await;
    }
    Ok(())
}
