//! `ImageFetcher` on in-process nodes racing for one image: one registry pull per blob, everyone
//! complete. The registry is a real Debian docker-registry (its access log counts blob GETs); in
//! `LEASE=kube` the Lease API is `preheat_testkit::kube_api::KubeApi`, an in-test HTTP server
//! implementing the Lease REST subset with real semantics, because no Kubernetes API server can run
//! here (see `election_support`). Timeouts only guard against hangs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod election_support;

use std::time::Duration;

use election_support::{
    assert_complete, cluster, fetch_all, origin, spawn_fetch, Election, MIB, NS,
};
use image_preheat::fetch::{PullResult, ResolvedVia};
use preheat_core::election::contenders;
use preheat_testkit::kube_api::KubeApi;
use preheat_testkit::AccessLogEntry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_race_and_each_blob_leaves_the_registry_once() -> anyhow::Result<()> {
    let origin = origin(&[3 * MIB, 3 * MIB, 2 * MIB, 2 * MIB]).await?;
    let api = KubeApi::start().await?;
    let nodes = cluster(10, &origin, Election::Kube(&api, Duration::from_secs(30))).await?;

    let reports = fetch_all(&nodes, &origin).await?;
    origin.settle_log().await?;
    assert_eq!(
        origin.blob_gets()?,
        vec![1; origin.image.blobs().len()],
        "registry GETs per blob"
    );
    let pullers: Vec<_> = reports.iter().filter(|r| r.puller).collect();
    assert_eq!(pullers.len(), 1, "{reports:#?}");
    assert_eq!(pullers[0].registry_bytes, origin.image.total_size);
    for r in reports.iter().filter(|r| !r.puller) {
        assert_eq!(r.registry_bytes, 0);
        assert_eq!(r.peer_bytes, origin.image.total_size);
        assert_eq!(r.manifest, origin.image.manifest_digest);
    }
    // The holder deleted its Lease once the image was complete.
    assert!(api.lease_names(NS).is_empty(), "{:?}", api.lease_names(NS));
    let image = origin.reference.to_string();
    let holder = nodes
        .iter()
        .zip(&reports)
        .find(|(_, r)| r.puller)
        .map(|(n, _)| n)
        .unwrap();
    assert_eq!(holder.fetcher.metrics().pulls(&image, PullResult::Ok), 1);
    assert!(!holder.fetcher.metrics().pulling(&image, &holder.name));
    // Only the top-ranked contenders talk to the API server.
    let callers = nodes.iter().filter(|n| n.lease_metrics.total() > 0).count();
    assert!((1..=3).contains(&callers), "{callers} nodes called the API");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordination_free_five_nodes_pull_each_blob_once() -> anyhow::Result<()> {
    let origin = origin(&[2 * MIB, 2 * MIB, MIB]).await?;
    let nodes = cluster(5, &origin, Election::None).await?;
    let reports = fetch_all(&nodes, &origin).await?;
    origin.settle_log().await?;
    assert_eq!(origin.blob_gets()?, vec![1; origin.image.blobs().len()]);
    assert_eq!(
        reports.iter().filter(|r| r.puller).count(),
        1,
        "{reports:#?}"
    );
    assert!(nodes.iter().all(|n| n.lease_metrics.total() == 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn later_nodes_resolve_the_tag_through_the_swarm_without_the_registry() -> anyhow::Result<()>
{
    let origin = origin(&[MIB, MIB]).await?;
    let nodes = cluster(3, &origin, Election::None).await?;
    let first = spawn_fetch(&nodes[0], &origin.reference).await??;
    assert_eq!(first.resolved_via, ResolvedVia::Registry);
    origin.settle_log().await?;
    let manifest_gets = |log: &[AccessLogEntry]| {
        log.iter()
            .filter(|e| e.manifest_reference().is_some())
            .count()
    };
    let before = origin.registry.access_log()?;
    for node in &nodes[1..] {
        let r = spawn_fetch(node, &origin.reference).await??;
        assert_eq!(r.resolved_via, ResolvedVia::Swarm, "{}", node.name);
        assert_eq!(r.manifest, origin.image.manifest_digest);
        assert_eq!(r.registry_bytes, 0);
        assert_complete(node, &origin).await?;
    }
    let after = origin.registry.access_log()?;
    assert_eq!(
        manifest_gets(&after),
        manifest_gets(&before),
        "manifest requests"
    );
    assert_eq!(origin.blob_gets()?, vec![1; origin.image.blobs().len()]);
    Ok(())
}

/// `LEASE=none` during a rolling update: the member the whole swarm ranks first for the image
/// does not want it. Only the members that want it are ranked (their want records), so one of
/// them pulls and the rest stream from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordination_free_top_ranked_member_not_wanting_the_image_is_not_waited_for(
) -> anyhow::Result<()> {
    let origin = origin(&[2 * MIB, MIB, MIB]).await?;
    let nodes = cluster(6, &origin, Election::None).await?;
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.swarm.local_peer_id().to_string())
        .collect();
    let top = contenders(&origin.image.manifest_digest, &ids, 1)[0].clone();
    let wanting: Vec<&election_support::Node> = nodes
        .iter()
        .filter(|n| n.swarm.local_peer_id().to_string() != top)
        .collect();
    assert_eq!(wanting.len(), 5);
    let reports = fetch_all(wanting.iter().copied(), &origin).await?;
    origin.settle_log().await?;
    assert_eq!(origin.blob_gets()?, vec![1; origin.image.blobs().len()]);
    assert_eq!(
        reports.iter().filter(|r| r.puller).count(),
        1,
        "{reports:#?}"
    );
    Ok(())
}
