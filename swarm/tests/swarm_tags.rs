//! Tag records through the swarm: publish on one node, resolve on others; forged records dropped.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use preheat_core::Digest;
use preheat_swarm::{Error, SwarmHandle, TagRecord};

const NGINX: &str = "docker.io/library/nginx:latest";
const MEDIA: &str = "application/vnd.oci.image.index.v1+json";

fn record(body: &str) -> TagRecord {
    TagRecord {
        manifest: Digest::of(body.as_bytes()),
        media_type: MEDIA.into(),
        bytes: Bytes::from(body.to_owned()),
    }
}

/// Resolves until `want` says yes (the provider record takes a moment to spread), bounded.
async fn resolve_until(
    h: &SwarmHandle,
    reference: &str,
    want: impl Fn(&Option<TagRecord>) -> bool,
) -> Option<TagRecord> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = h
            .resolve_tag(reference, Duration::from_secs(2))
            .await
            .unwrap();
        if want(&r) {
            return r;
        }
        assert!(
            Instant::now() < until,
            "tag never resolved as wanted: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_tag_resolves_on_other_nodes_and_the_newest_record_wins() {
    let a = node(config(vec![]), &[]).await;
    let b = node(config(vec![a.addr.clone()]), &[]).await;
    let c = node(config(vec![a.addr.clone(), b.addr.clone()]), &[]).await;
    wait_connected(&[&a.handle, &b.handle, &c.handle], 2).await;

    let v1 = record(r#"{"schemaVersion":2,"v":1}"#);
    a.handle.publish_tag(NGINX, v1.clone()).await.unwrap();
    let got = resolve_until(&b.handle, NGINX, Option::is_some).await;
    assert_eq!(got, Some(v1.clone()));
    assert_eq!(
        a.handle
            .resolve_tag(NGINX, Duration::from_secs(1))
            .await
            .unwrap(),
        Some(v1.clone()),
        "the publisher resolves its own record"
    );

    // The tag moved: C publishes a newer record; resolvers see it over A's older one.
    tokio::time::sleep(Duration::from_millis(5)).await; // a later publish time, in ms
    let v2 = record(r#"{"schemaVersion":2,"v":2}"#);
    c.handle.publish_tag(NGINX, v2.clone()).await.unwrap();
    let got = resolve_until(&b.handle, NGINX, |r| r.as_ref() != Some(&v1)).await;
    assert_eq!(got, Some(v2.clone()));
    let got = resolve_until(&a.handle, NGINX, |r| r.as_ref() != Some(&v1)).await;
    assert_eq!(got, Some(v2));

    // A resolver that starts before the tag is published keeps looking until it appears.
    let late = "docker.io/library/redis:7";
    let h = b.handle.clone();
    let waiter = tokio::spawn(async move { h.resolve_tag(late, Duration::from_secs(20)).await });
    let v3 = record(r#"{"schemaVersion":2,"redis":7}"#);
    c.handle.publish_tag(late, v3.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(25), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(v3));

    for n in [&a, &b, &c] {
        n.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unknown_tags_resolve_to_nothing() {
    let honest = node(config(vec![]), &[]).await;
    let mut fcfg = config(vec![honest.addr.clone()]);
    fcfg.test_forge_tags = true;
    let forger = node(fcfg, &[]).await;
    let b = node(config(vec![honest.addr.clone(), forger.addr.clone()]), &[]).await;
    wait_connected(&[&honest.handle, &forger.handle, &b.handle], 2).await;

    // Bytes that do not hash to the digest are refused at publish time.
    let mut bad = record("{}");
    bad.bytes = Bytes::from_static(b"{ }");
    let err = honest.handle.publish_tag(NGINX, bad).await.unwrap_err();
    assert!(matches!(err, Error::BadTag { .. }), "{err}");

    // The forger answers with bytes that do not match its record's digest: dropped.
    let forged_ref = "registry.example.com/team/app:1.4";
    forger
        .handle
        .publish_tag(forged_ref, record(r#"{"forged":true}"#))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !b
        .handle
        .tag_providers(forged_ref)
        .await
        .unwrap()
        .contains(&forger.handle.local_peer_id())
    {
        assert!(
            Instant::now() < until,
            "the forged tag was never advertised"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = b
        .handle
        .resolve_tag(forged_ref, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r, None);

    // An honest record of the same reference is taken even though the forged one is newer.
    let honest_rec = record(r#"{"honest":true}"#);
    honest
        .handle
        .publish_tag(forged_ref, honest_rec.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // a later publish time, in ms
    forger
        .handle
        .publish_tag(forged_ref, record(r#"{"forged":2}"#))
        .await
        .unwrap();
    let got = resolve_until(&b.handle, forged_ref, Option::is_some).await;
    assert_eq!(got, Some(honest_rec));

    // Nobody publishes this one: `None`, within the timeout.
    let timeout = Duration::from_secs(2);
    let r = tokio::time::timeout(
        timeout + Duration::from_secs(5),
        b.handle.resolve_tag("docker.io/library/unknown:1", timeout),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r, None);
    for n in [&honest, &forger, &b] {
        n.handle.shutdown().await;
    }
}
