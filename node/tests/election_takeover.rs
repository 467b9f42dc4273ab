//! The puller dies halfway (its fetch aborted, its swarm node shut down, its way to the Lease API
//! cut, as a crashed node's would be): another node takes over and continues from the chunks the
//! swarm already has, so the registry sends less than 1.5× the image. And with the Lease API down
//! from the start, the coordination-free fallback still gets the image everywhere.
//!
//! The registry is a real Debian docker-registry behind a `CountingProxy`; the Lease API is
//! `preheat_testkit::kube_api::KubeApi`, an in-test HTTP server implementing the Lease REST subset
//! with real semantics, because no Kubernetes API server can run here (see `election_support`).
//! "Halfway" is made deterministic with the proxy: it cuts every registry connection once half the
//! image went through and refuses new ones until the puller is dead; the puller, retrying, is
//! killed once the others have streamed what it stored. Timeouts only guard hangs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod election_support;

use std::time::{Duration, Instant};

use anyhow::Context;
use election_support::{
    assert_complete, cluster, origin, spawn_fetch, Election, Node, Origin, MIB, NS,
};
use image_preheat::lease::{ApiResult, ApiVerb};
use preheat_core::election::lease_name;
use preheat_testkit::kube_api::{ApiMode, KubeApi};

/// Waits until some node reports pulling from the registry; its index.
async fn puller(nodes: &[Node], origin: &Origin) -> anyhow::Result<usize> {
    let image = origin.reference.to_string();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.fetcher.metrics().pulling(&image, &n.name))
        {
            return Ok(i);
        }
        anyhow::ensure!(Instant::now() < until, "nobody started pulling");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Blob bytes of the image `node` stores (complete blobs and verified chunks).
async fn stored(node: &Node, origin: &Origin) -> anyhow::Result<u64> {
    Ok(node
        .store
        .images()
        .await?
        .iter()
        .find(|s| s.record.manifest == origin.image.manifest_digest)
        .map_or(0, |s| s.stored_bytes))
}

/// Runs `n` nodes, kills the puller once half the image left the registry, and checks that the
/// others complete with registry blob bytes below 1.5× the image.
async fn puller_dies_halfway(n: usize, election: Election<'_>) -> anyhow::Result<Vec<Node>> {
    let origin = origin(&[4 * MIB, 4 * MIB, 4 * MIB, 4 * MIB]).await?;
    let nodes = cluster(n, &origin, election).await?;
    let total = origin.image.total_size;
    origin.proxy.cut_after(Some(total / 2));
    let mut tasks: Vec<_> = nodes
        .iter()
        .map(|n| Some(spawn_fetch(n, &origin.reference)))
        .collect();

    let until = Instant::now() + Duration::from_secs(60);
    while origin.proxy.bytes_to_client() < total / 2 {
        anyhow::ensure!(Instant::now() < until, "the pull never got halfway");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The cut fired: keep the registry away until the puller is dead (it keeps retrying).
    origin.proxy.set_down(true).await?;
    let dead = puller(&nodes, &origin).await?;
    if let Election::Kube(api, _) = election {
        let lease = api
            .lease(NS, &lease_name(&origin.image.manifest_digest))
            .context("no lease while pulling")?;
        assert_eq!(lease["spec"]["holderIdentity"], nodes[dead].name.as_str());
    }
    // The puller stores what reached it before the cut, then only retries: wait until its stored
    // bytes stop growing (a precondition, not an assertion).
    let until = Instant::now() + Duration::from_secs(60);
    let mut has = stored(&nodes[dead], &origin).await?;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) {
        anyhow::ensure!(Instant::now() < until, "the puller never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stored(&nodes[dead], &origin).await?;
        if now != has {
            (has, since) = (now, Instant::now());
        }
    }
    anyhow::ensure!(has > 0, "the puller stored nothing");
    // Pipelining: the others stream what the puller has stored while it is still pulling.
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != dead) {
        loop {
            let got = stored(node, &origin).await?;
            if got + MIB >= has {
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "node {i} streamed {got} of the puller's {has} bytes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Some(p) = &nodes[dead].api_proxy {
        p.set_down(true).await?;
    }
    tasks[dead].take().unwrap().abort();
    nodes[dead].swarm.shutdown().await;
    origin.proxy.set_down(false).await?;

    let mut reports = Vec::new();
    for t in tasks.into_iter().flatten() {
        reports.push(t.await??);
    }
    for (i, node) in nodes.iter().enumerate() {
        if i != dead {
            assert_complete(node, &origin).await?;
        }
    }
    assert_eq!(
        reports.iter().filter(|r| r.puller).count(),
        1,
        "one survivor took over: {reports:#?}"
    );
    // What reached the nodes through the proxy (blobs, manifests, headers): the registry's own
    // log would also count bytes it wrote into socket buffers the cut then dropped.
    let sent = origin.proxy.bytes_to_client();
    let pulled: Vec<u64> = reports.iter().map(|r| r.registry_bytes).collect();
    eprintln!("image {total} bytes; registry sent {sent}; survivors pulled {pulled:?}");
    assert!(
        sent * 2 < total * 3,
        "registry sent {sent} bytes for a {total}-byte image; survivors pulled {pulled:?}"
    );
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_holder_dies_halfway_and_another_node_finishes_the_pull() -> anyhow::Result<()> {
    let api = KubeApi::start().await?;
    puller_dies_halfway(6, Election::Kube(&api, Duration::from_secs(3))).await?;
    // The new holder deleted the Lease once the image was complete.
    assert!(api.lease_names(NS).is_empty(), "{:?}", api.lease_names(NS));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordination_free_puller_dies_halfway_and_the_next_ranked_finishes() -> anyhow::Result<()>
{
    puller_dies_halfway(5, Election::None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_api_down_falls_back_to_the_ranking_and_every_node_completes() -> anyhow::Result<()> {
    let origin = origin(&[2 * MIB, 2 * MIB, MIB]).await?;
    let api = KubeApi::start().await?;
    api.set_mode(ApiMode::Refuse);
    let nodes = cluster(5, &origin, Election::Kube(&api, Duration::from_secs(30))).await?;
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| spawn_fetch(n, &origin.reference))
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await??);
    }
    for n in &nodes {
        assert_complete(n, &origin).await?;
    }
    origin.settle_log().await?;
    assert_eq!(origin.blob_gets()?, vec![1; origin.image.blobs().len()]);
    assert_eq!(
        reports.iter().filter(|r| r.puller).count(),
        1,
        "{reports:#?}"
    );
    let failed: u64 = nodes
        .iter()
        .map(|n| n.lease_metrics.calls(ApiVerb::Get, ApiResult::Error))
        .sum();
    assert!(failed > 0, "the API was never asked");
    assert!(api.lease_names(NS).is_empty());
    Ok(())
}
