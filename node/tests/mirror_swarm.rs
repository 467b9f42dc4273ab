//! Two nodes on loopback, each with its own store and swarm node: node A pulled an image from a
//! real docker-registry; node B's mirror serves it to `skopeo copy` through the swarm, byte for
//! byte equal to a copy straight from the origin, and the origin sees no blob request from B.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "election_support/mod.rs"]
mod election_support;
mod mirror_support;

use std::sync::Arc;

use anyhow::Result;
use election_support::{cluster, origin, Election, GUARD, MIB};
use image_preheat::fetch::{FetchConfig, FetchMetrics, ImageFetcher};
use image_preheat::mirror::{serve_on, MirrorArgs, Upstream, UpstreamFetch};
use image_preheat::pull::NoProgress;
use image_preheat::registry::{RegistryClient, RegistryConfig};
use mirror_support::{clap_defaults, metric, same_dir, skopeo_copy};
use prometheus_client::registry::Registry as Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_mirror_serves_node_a_image_through_the_swarm() -> Result<()> {
    let origin = origin(&[3 * MIB + 4321, 700_000]).await?;
    let nodes = cluster(2, &origin, Election::None).await?;
    let (a, b) = (&nodes[0], &nodes[1]);

    // Node A pulls from the origin without an election (B, never pulling itself, would win a
    // coordination-free one) and publishes the tag record.
    let registry = RegistryConfig {
        insecure: vec![origin.proxy.host()],
        ..RegistryConfig::default()
    };
    let a_fetcher = ImageFetcher::new(
        a.store.clone(),
        RegistryClient::new(registry.clone())?,
        Some(a.swarm.clone()),
        None,
        FetchConfig {
            // Nobody has it yet: ask the swarm briefly, then the registry.
            swarm_find_timeout: std::time::Duration::from_secs(1),
            ..FetchConfig::new("node-a")
        },
        FetchMetrics::register(&mut Metrics::default()),
    );
    tokio::time::timeout(
        GUARD,
        a_fetcher.fetch(&origin.reference, Arc::new(NoProgress)),
    )
    .await??;
    origin.settle_log().await?;
    let before = origin.blob_gets()?;

    // Node B's mirror: store, swarm and background fetches (swarm first, without an election, so
    // the test does not depend on which node the coordination-free rule ranks first), credential
    // check on.
    let args = MirrorArgs {
        default_registry: origin.proxy.host(),
        ..clap_defaults()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mirror = listener.local_addr()?;
    let mut metrics = Metrics::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let b_fetcher = ImageFetcher::new(
        b.store.clone(),
        RegistryClient::new(registry.clone())?,
        Some(b.swarm.clone()),
        None,
        FetchConfig::new("node-b"),
        FetchMetrics::register(&mut Metrics::default()),
    );
    let fetcher: Arc<dyn UpstreamFetch> = Arc::new(b_fetcher);
    let upstream = Upstream {
        fetcher: Some(fetcher),
        registry,
    };
    let server = serve_on(
        listener,
        &args,
        b.store.clone(),
        Some(b.swarm.clone()),
        upstream,
        &mut metrics,
        async {
            let _ = stopped.await;
        },
    )?;
    let server = tokio::spawn(server);

    let tmp = tempfile::tempdir()?;
    let (via_mirror, via_origin) = (tmp.path().join("mirror"), tmp.path().join("origin"));
    let repo = &origin.image.repository;
    let mirror_ref = format!("{mirror}/{repo}:v1");
    let origin_ref = origin.image.reference.clone();
    let copy = tokio::task::spawn_blocking({
        let (m, o) = (via_mirror.clone(), via_origin.clone());
        move || -> Result<()> {
            skopeo_copy(&mirror_ref, &m)?;
            skopeo_copy(&origin_ref, &o)
        }
    });
    tokio::time::timeout(GUARD, copy).await???;
    let files = same_dir(&via_mirror, &via_origin)?;
    assert_eq!(files, 3 + origin.image.layers.len());
    assert_eq!(
        std::fs::read(via_mirror.join("manifest.json"))?,
        origin.image.manifest_bytes,
        "manifest not byte-exact"
    );

    // Every blob was served with content (from a peer, or from B's store as B's background fetch
    // brought it from A). Then the origin log is flushed up to a sentinel request made
    // after the copy (lines are written in order), and B added no blob GET. The direct skopeo
    // copy from the origin added exactly one per blob.
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
    let sentinel = "/v2/sentinel/after-copy/manifests/none";
    let _ = origin
        .registry
        .request(reqwest::Method::GET, sentinel)
        .send()
        .await?;
    origin
        .registry
        .wait_access_log(GUARD, |log| log.iter().any(|e| e.path == sentinel))
        .await?;
    let after = origin.blob_gets()?;
    let expected: Vec<usize> = before.iter().map(|n| n + 1).collect();
    assert_eq!(after, expected, "blob GETs per blob: before {before:?}");

    stop.send(()).ok();
    tokio::time::timeout(GUARD, server).await???;
    for n in &nodes {
        n.swarm.shutdown().await;
    }
    Ok(())
}
