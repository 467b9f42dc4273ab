//! MOUNT_DIR ingest: image tarballs into the store with no network access — a `docker save` of a
//! real dockerd (classic docker-archive) with the registry stopped, then imported back into Docker;
//! and our own `docker_archive` stream (OCI layout), plain and gzip-compressed, which keeps the
//! registry's manifest digest.

#![allow(clippy::unwrap_used)] // test code

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use image_preheat::pull::{pull_image, NoProgress};
use image_preheat::registry::{RegistryClient, RegistryConfig};
use image_preheat::runtime::{connect, docker_archive, ingest_dir, RuntimeConfig, RuntimeKind};
use preheat_core::reference::Reference;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{Dockerd, ImageBuilder, ManifestFormat, Registry};

const STEP: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_tarball_is_ingested_and_imported_with_the_registry_stopped() -> Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layers(&[400_000, (1 << 20) + 3])
        .format(ManifestFormat::Docker)
        .push(&reg, "team/saved:v1")
        .await?;
    let dockerd = Dockerd::start().await?;
    dockerd.docker(&["pull", &img.reference]).await?;
    let mount = tempfile::tempdir()?;
    let tarball = mount.path().join("saved.tar");
    dockerd
        .docker(&["save", "-o", &tarball.display().to_string(), &img.reference])
        .await?;
    dockerd.docker(&["rmi", &img.reference]).await?;
    std::fs::write(mount.path().join("images.list"), "not an archive\n")?;
    reg.stop();

    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let found = tokio::time::timeout(STEP, ingest_dir(&store, mount.path()))
        .await
        .context("ingest timed out")??;
    let reference: Reference = img.reference.parse()?;
    ensure!(found.len() == 1 && found[0].0 == reference, "{found:?}");
    let manifest = found[0].1;
    let images = store.images().await?;
    ensure!(images.len() == 1 && images[0].complete, "{images:?}");
    // The archive holds no manifest: config (image ID) as pushed, layers as docker stored them.
    assert_eq!(images[0].record.blobs[0].0, img.config_digest);

    let cfg = RuntimeConfig {
        kind: RuntimeKind::Docker,
        docker_host: Some(dockerd.host()),
        ..RuntimeConfig::default()
    };
    let docker = connect(&cfg).await?.remove(0);
    docker.import(&store, &reference, &manifest).await?;
    assert_eq!(
        dockerd.image_id(&img.reference).await?,
        Some(img.config_digest.to_string())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_archive_round_trips_with_the_manifest_digest() -> Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layers(&[70_000, 3000, (3 << 20) + 1])
        .push(&reg, "team/round:v1")
        .await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("a"))).await?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![reg.host()],
        ..RegistryConfig::default()
    })?;
    let reference: Reference = img.reference.parse()?;
    pull_image(&client, &store, &reference, &NoProgress).await?;
    reg.stop();

    let mut bytes = Vec::new();
    let mut archive = Box::pin(docker_archive(
        store.clone(),
        reference.clone(),
        img.manifest_digest,
    ));
    let mut largest = 0;
    while let Some(piece) = archive.next().await {
        let piece = piece?;
        largest = largest.max(piece.len());
        bytes.extend_from_slice(&piece);
    }
    // Streamed in bounded pieces, never a whole layer at once.
    assert!(largest <= 256 * 1024, "a {largest}-byte piece");
    let mount = tempfile::tempdir()?;
    std::fs::write(mount.path().join("plain.tar"), &bytes)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes)?;
    std::fs::write(mount.path().join("packed.tar.gz"), gz.finish()?)?;
    // A truncated archive is skipped with a warning, the others still count.
    std::fs::write(mount.path().join("broken.tar"), &bytes[..bytes.len() / 2])?;

    let fresh = Store::open(StoreConfig::new(tmp.path().join("b"))).await?;
    let found = ingest_dir(&fresh, mount.path()).await?;
    assert_eq!(
        found,
        vec![
            (reference.clone(), img.manifest_digest),
            (reference.clone(), img.manifest_digest)
        ]
    );
    let images = fresh.images().await?;
    ensure!(images.len() == 1 && images[0].complete, "{images:?}");
    assert_eq!(images[0].record.blobs, img.blobs());
    for (d, _) in img.blobs() {
        assert!(fresh.contains(&d).await);
    }
    Ok(())
}
