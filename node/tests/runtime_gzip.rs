//! Images with gzip-compressed layers (what real registries serve; testkit's ImageBuilder pushes
//! uncompressed ones): Docker loads the archive (decompressing, checking diff IDs), containerd gets
//! the layers with their `containerd.io/uncompressed` labels, and the archive ingests back intact.

#![allow(clippy::unwrap_used)] // test code

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use image_preheat::pull::{pull_image, NoProgress};
use image_preheat::registry::{RegistryClient, RegistryConfig};
use image_preheat::runtime::{connect, docker_archive, ingest_dir, RuntimeConfig, RuntimeKind};
use preheat_core::manifest::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{push_blob, push_manifest, Containerd, Dockerd, LayerGen, Registry};
use serde_json::json;

const STEP: Duration = Duration::from_secs(300);

struct GzImage {
    reference: String,
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
    diff_ids: Vec<Digest>,
}

/// Pushes an OCI image whose layers are gzip-compressed tars.
async fn push_gzip_image(reg: &Registry, repo: &str, tag: &str) -> Result<GzImage> {
    let (mut descriptors, mut layers, mut diff_ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, size) in [200_000u64, (1 << 20) + 1].into_iter().enumerate() {
        let raw = LayerGen::new(size, 40 + i as u64, i)?.into_vec();
        diff_ids.push(Digest::of(&raw));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw)?;
        let gz = gz.finish()?;
        let d = push_blob(reg, repo, &gz).await?;
        descriptors.push(
            json!({ "mediaType": OCI_LAYER_GZIP, "digest": d.to_string(), "size": gz.len() }),
        );
        layers.push(d);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>() },
    }))?;
    let config_digest = push_blob(reg, repo, &config).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
        "layers": descriptors,
    }))?;
    let manifest = push_manifest(reg, repo, tag, OCI_MANIFEST, &manifest).await?;
    Ok(GzImage {
        reference: format!("{}/{repo}:{tag}", reg.host()),
        manifest,
        config: config_digest,
        layers,
        diff_ids,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_layers_import_into_docker_and_containerd_and_ingest_back() -> Result<()> {
    let reg = Registry::start().await?;
    let img = push_gzip_image(&reg, "team/gz", "v1").await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![reg.host()],
        ..RegistryConfig::default()
    })?;
    let reference: Reference = img.reference.parse()?;
    pull_image(&client, &store, &reference, &NoProgress).await?;

    let dockerd = Dockerd::start().await?;
    let ctd = Containerd::start().await?;
    let cfg = RuntimeConfig {
        kind: RuntimeKind::Auto,
        docker_host: Some(dockerd.host()),
        containerd_address: ctd.socket(),
        ..RuntimeConfig::default()
    };
    let runtimes = connect(&cfg).await?;
    let names: Vec<_> = runtimes.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["docker", "containerd"]);
    for rt in &runtimes {
        tokio::time::timeout(STEP, rt.import(&store, &reference, &img.manifest))
            .await
            .context("import timed out")??;
        assert!(rt.has_image(&reference, &img.manifest).await?);
    }
    assert_eq!(
        dockerd.image_id(&img.reference).await?,
        Some(img.config.to_string())
    );
    let images = ctd.images("k8s.io").await?;
    assert!(
        images.contains(&(img.reference.clone(), img.manifest.to_string())),
        "{images:?}"
    );
    let content = ctd.ctr("k8s.io", &["content", "ls"]).await?;
    for (layer, diff) in img.layers.iter().zip(&img.diff_ids) {
        let line = content
            .lines()
            .find(|l| l.starts_with(&layer.to_string()))
            .with_context(|| format!("{layer} not in {content}"))?;
        assert!(
            line.contains(&format!("containerd.io/uncompressed={diff}")),
            "{line}"
        );
    }

    // The archive of compressed layers ingests back to the same manifest, with the registry gone.
    reg.stop();
    let mount = tempfile::tempdir()?;
    let mut file = std::fs::File::create(mount.path().join("gz.tar"))?;
    let mut archive = Box::pin(docker_archive(
        store.clone(),
        reference.clone(),
        img.manifest,
    ));
    while let Some(piece) = archive.next().await {
        file.write_all(&piece?)?;
    }
    drop(file);
    let fresh = Store::open(StoreConfig::new(tmp.path().join("fresh"))).await?;
    let found = ingest_dir(&fresh, mount.path()).await?;
    ensure!(found == vec![(reference, img.manifest)], "{found:?}");
    Ok(())
}
