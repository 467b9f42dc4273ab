//! containerd import against a real containerd started by the test (private root, state and
//! socket): the image record in `k8s.io` shows the digest `ctr images pull` of the same image gives,
//! for a single-platform image and for a multi-platform index; and the image is unpacked into the
//! configured snapshotter.

#![allow(clippy::unwrap_used)] // test code

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use image_preheat::pull::{pull_image, NoProgress};
use image_preheat::registry::{RegistryClient, RegistryConfig};
use image_preheat::runtime::{connect, ContainerdRuntime, Runtime, RuntimeConfig, RuntimeKind};
use preheat_core::manifest::Platform;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{Containerd, ImageBuilder, ManifestFormat, Registry};

const STEP: Duration = Duration::from_secs(300);
const NS: &str = "k8s.io";

async fn pull(reg: &Registry, store: &Store, reference: &str) -> Result<Digest> {
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![reg.host()],
        ..RegistryConfig::default()
    })?;
    let reference: Reference = reference.parse()?;
    Ok(pull_image(&client, store, &reference, &NoProgress)
        .await?
        .manifest)
}

async fn runtime(ctd: &Containerd) -> Result<std::sync::Arc<dyn Runtime>> {
    let cfg = RuntimeConfig {
        kind: RuntimeKind::Containerd,
        containerd_address: ctd.socket(),
        ..RuntimeConfig::default()
    };
    let rts = connect(&cfg).await?;
    ensure!(rts.len() == 1 && rts[0].name() == "containerd");
    // overlayfs (kubelet's default) may not mount inside a test container; native always does.
    let rt = ContainerdRuntime::connect(&ctd.socket(), NS)
        .await?
        .with_snapshotter(Some("native".into()));
    Ok(std::sync::Arc::new(rt))
}

/// The digest `ctr images pull --plain-http` records for `reference` (in a separate namespace).
async fn ctr_pull_digest(ctd: &Containerd, reference: &str) -> Result<String> {
    ctd.ctr(
        "pulled",
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            reference,
        ],
    )
    .await?;
    let listing = ctd.images("pulled").await?;
    listing
        .into_iter()
        .find(|(name, _)| name == reference)
        .map(|(_, d)| d)
        .context("ctr pull recorded nothing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_matches_ctr_pull_for_a_single_platform_image() -> Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layers(&[(1 << 20) + 9, 200_000])
        .format(ManifestFormat::Docker)
        .push(&reg, "team/app:v1")
        .await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let manifest = pull(&reg, &store, &img.reference).await?;
    let ctd = Containerd::start().await?;
    let rt = runtime(&ctd).await?;
    let reference: Reference = img.reference.parse()?;
    assert!(!rt.has_image(&reference, &manifest).await?);

    tokio::time::timeout(STEP, rt.import(&store, &reference, &manifest))
        .await
        .context("import timed out")??;

    let images = ctd.images(NS).await?;
    let digest = img.manifest_digest.to_string();
    let pinned = img.digest_reference();
    assert!(
        images.contains(&(img.reference.clone(), digest.clone())),
        "{images:?}"
    );
    assert!(images.contains(&(pinned, digest.clone())), "{images:?}");
    assert_eq!(ctr_pull_digest(&ctd, &img.reference).await?, digest);
    assert!(rt.has_image(&reference, &manifest).await?);

    // Every blob is there, and the image is complete and unpacked as containerd sees it.
    let ready = ctd
        .ctr(NS, &["images", "check", "-q", "--snapshotter", "native"])
        .await?;
    assert!(ready.lines().any(|l| l == img.reference), "{ready}");
    let content = ctd.ctr(NS, &["content", "ls", "-q"]).await?;
    for (d, _) in img.blobs() {
        assert!(content.contains(&d.to_string()), "{d} not in {content}");
    }
    // No lease is left, and a synchronous garbage collection (triggered by removing another
    // record) keeps every blob and snapshot: the GC labels hold them.
    let leases = ctd.ctr(NS, &["leases", "ls"]).await?;
    assert!(!leases.contains("image-preheat-"), "{leases}");
    ctd.ctr(
        NS,
        &["images", "tag", &img.reference, "example.org/gc/probe:1"],
    )
    .await?;
    ctd.ctr(NS, &["images", "rm", "--sync", "example.org/gc/probe:1"])
        .await?;
    let ready = ctd
        .ctr(NS, &["images", "check", "-q", "--snapshotter", "native"])
        .await?;
    assert!(ready.lines().any(|l| l == img.reference), "{ready}");

    // Importing again (content present, records present) is fine.
    rt.import(&store, &reference, &manifest).await?;

    // What containerd exports (an OCI layout tarball) ingests back with the same manifest digest.
    let mount = tempfile::tempdir()?;
    let export = mount.path().join("exported.tar");
    ctd.ctr(
        NS,
        &[
            "images",
            "export",
            &export.display().to_string(),
            &img.reference,
        ],
    )
    .await?;
    let fresh = Store::open(StoreConfig::new(tmp.path().join("fresh"))).await?;
    let found = image_preheat::runtime::ingest_dir(&fresh, mount.path()).await?;
    assert_eq!(found, vec![(reference, manifest)]);
    let images = fresh.images().await?;
    ensure!(images.len() == 1 && images[0].complete, "{images:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_a_multi_platform_tag_targets_the_index() -> Result<()> {
    let reg = Registry::start().await?;
    let host = Platform::host();
    let host_spec = (
        host.os.as_str(),
        host.architecture.as_str(),
        host.variant.as_deref(),
    );
    let other = if host.architecture == "arm64" {
        ("linux", "amd64", None)
    } else {
        ("linux", "arm64", Some("v8"))
    };
    let index = ImageBuilder::new()
        .layers(&[100_000, 50_000])
        .push_index(&reg, "team/multi:v3", &[other, host_spec])
        .await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let manifest = pull(&reg, &store, &index.reference).await?;
    ensure!(manifest == index.per_platform[1].1.manifest_digest);
    let ctd = Containerd::start().await?;
    let rt = runtime(&ctd).await?;
    let reference: Reference = index.reference.parse()?;

    tokio::time::timeout(STEP, rt.import(&store, &reference, &manifest))
        .await
        .context("import timed out")??;

    let images = ctd.images(NS).await?;
    let digest = index.index_digest.to_string();
    assert!(
        images.contains(&(index.reference.clone(), digest.clone())),
        "{images:?}"
    );
    assert_eq!(ctr_pull_digest(&ctd, &index.reference).await?, digest);
    assert!(rt.has_image(&reference, &manifest).await?);
    let ready = ctd
        .ctr(NS, &["images", "check", "-q", "--snapshotter", "native"])
        .await?;
    assert!(ready.lines().any(|l| l == index.reference), "{ready}");
    Ok(())
}
