//! Docker import against a real dockerd started by the test (private socket, data root, vfs):
//! an image pushed to a real docker-registry, pulled into a store, loaded through bollard's
//! streaming load; and the `docker_archive` stream loaded by the `docker load` CLI.

#![allow(clippy::unwrap_used)] // test code

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use image_preheat::pull::{pull_image, NoProgress};
use image_preheat::registry::{RegistryClient, RegistryConfig};
use image_preheat::runtime::{
    connect, connect_with, docker_archive, RuntimeConfig, RuntimeError, RuntimeKind,
};
use preheat_core::reference::Reference;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{Dockerd, ImageBuilder, ManifestFormat, PushedImage, Registry};
use tokio::io::AsyncWriteExt;

const STEP: Duration = Duration::from_secs(300);

async fn pulled(
    reg: &Registry,
    dir: &std::path::Path,
    format: ManifestFormat,
    repo_tag: &str,
) -> Result<(Store, Reference, PushedImage)> {
    let img = ImageBuilder::new()
        .layers(&[300_000, (1 << 20) + 5, 2048])
        .format(format)
        .push(reg, repo_tag)
        .await?;
    let store = Store::open(StoreConfig::new(dir.join("store"))).await?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![reg.host()],
        ..RegistryConfig::default()
    })?;
    let reference: Reference = img.reference.parse()?;
    let report = pull_image(&client, &store, &reference, &NoProgress).await?;
    ensure!(report.manifest == img.manifest_digest);
    Ok((store, reference, img))
}

fn docker_cfg(d: &Dockerd) -> RuntimeConfig {
    RuntimeConfig {
        kind: RuntimeKind::Docker,
        docker_host: Some(d.host()),
        ..RuntimeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_shows_the_pulled_image_id_and_tag() -> Result<()> {
    let reg = Registry::start().await?;
    let tmp = tempfile::tempdir()?;
    let (store, reference, img) =
        pulled(&reg, tmp.path(), ManifestFormat::Docker, "team/app:v1").await?;
    let dockerd = Dockerd::start().await?;
    let runtimes = connect(&docker_cfg(&dockerd)).await?;
    ensure!(runtimes.len() == 1 && runtimes[0].name() == "docker");
    let docker = &runtimes[0];
    assert!(!docker.has_image(&reference, &img.manifest_digest).await?);

    tokio::time::timeout(
        STEP,
        docker.import(&store, &reference, &img.manifest_digest),
    )
    .await
    .context("import timed out")??;

    let inspect = dockerd.inspect(&img.reference).await?.context("no image")?;
    assert_eq!(inspect["Id"], img.config_digest.to_string());
    assert_eq!(inspect["RepoTags"], serde_json::json!([img.reference]));
    // A load sets no RepoDigests (documented difference from a pull).
    assert_eq!(inspect["RepoDigests"], serde_json::json!([]));
    assert!(docker.has_image(&reference, &img.manifest_digest).await?);

    // A second process (no memory of the load) recognises it through the store.
    let fresh = connect_with(&docker_cfg(&dockerd), Some(store.clone())).await?;
    assert!(fresh[0].has_image(&reference, &img.manifest_digest).await?);
    let without_store = connect(&docker_cfg(&dockerd)).await?;
    assert!(
        !without_store[0]
            .has_image(&reference, &img.manifest_digest)
            .await?
    );

    // A real pull of the same reference gives the same ID, and adds the repo digest.
    dockerd.docker(&["pull", &img.reference]).await?;
    let pulled = dockerd.inspect(&img.reference).await?.context("no image")?;
    assert_eq!(pulled["Id"], img.config_digest.to_string());
    let repo_digest = format!(
        "{}@{}",
        img.reference.rsplit_once(':').unwrap().0,
        img.manifest_digest
    );
    assert_eq!(pulled["RepoDigests"], serde_json::json!([repo_digest]));
    assert!(
        without_store[0]
            .has_image(&reference, &img.manifest_digest)
            .await?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_records_the_repo_digest_fetching_only_the_manifest() -> Result<()> {
    let reg = Registry::start().await?;
    let tmp = tempfile::tempdir()?;
    let (store, reference, img) =
        pulled(&reg, tmp.path(), ManifestFormat::Oci, "team/digests:v1").await?;
    let dockerd = Dockerd::start().await?;
    let cfg = RuntimeConfig {
        docker_repo_digests: Some(Default::default()),
        ..docker_cfg(&dockerd)
    };
    let docker = connect(&cfg).await?.remove(0);
    let before = reg.access_log()?.len();
    tokio::time::timeout(
        STEP,
        docker.import(&store, &reference, &img.manifest_digest),
    )
    .await
    .context("import timed out")??;
    let inspect = dockerd.inspect(&img.reference).await?.context("no image")?;
    assert_eq!(inspect["Id"], img.config_digest.to_string());
    assert_eq!(inspect["RepoTags"], serde_json::json!([img.reference]));
    let repo_digest = format!(
        "{}@{}",
        img.reference.rsplit_once(':').unwrap().0,
        img.manifest_digest
    );
    assert_eq!(inspect["RepoDigests"], serde_json::json!([repo_digest]));
    let asked = reg.access_log()?.split_off(before);
    assert!(
        asked.iter().all(|e| e.blob_digest().is_none()),
        "dockerd fetched blobs: {asked:?}"
    );
    assert!(
        asked.iter().any(|e| e.path.contains("/manifests/")),
        "{asked:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_stream_loads_with_the_docker_cli() -> Result<()> {
    let reg = Registry::start().await?;
    let tmp = tempfile::tempdir()?;
    let (store, reference, img) =
        pulled(&reg, tmp.path(), ManifestFormat::Oci, "team/oci:v2").await?;
    let dockerd = Dockerd::start().await?;

    let mut cmd = tokio::process::Command::from(dockerd.command());
    cmd.arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let mut archive = Box::pin(docker_archive(
        store.clone(),
        reference.clone(),
        img.manifest_digest,
    ));
    let mut sent = 0u64;
    let feed = async {
        while let Some(piece) = archive.next().await {
            let piece = piece?;
            sent += piece.len() as u64;
            stdin.write_all(&piece).await?;
        }
        stdin.shutdown().await?;
        drop(stdin);
        anyhow::Ok(())
    };
    tokio::time::timeout(STEP, feed)
        .await
        .context("feeding docker load timed out")??;
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .context("docker load timed out")??;
    ensure!(
        out.status.success(),
        "docker load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sent > img.total_size, "{sent} bytes for {}", img.total_size);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&img.reference));
    assert_eq!(
        dockerd.image_id(&img.reference).await?,
        Some(img.config_digest.to_string())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blobs_and_absent_daemons_are_errors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let reference: Reference = "127.0.0.1:1/none:v1".parse()?;
    let manifest = preheat_core::Digest::of(b"no such manifest");
    let mut archive = Box::pin(docker_archive(store.clone(), reference.clone(), manifest));
    let first = archive.next().await.context("empty stream")?;
    assert!(first.is_err());

    let cfg = RuntimeConfig {
        kind: RuntimeKind::Docker,
        docker_host: Some(format!("unix://{}/nothing.sock", tmp.path().display())),
        ..RuntimeConfig::default()
    };
    let err = connect(&cfg).await.err().context("connected to nothing")?;
    assert!(matches!(err, RuntimeError::Connect { .. }), "{err}");
    let auto = RuntimeConfig {
        kind: RuntimeKind::Auto,
        containerd_address: tmp.path().join("nothing.sock"),
        ..cfg
    };
    assert!(connect(&auto).await?.is_empty());
    Ok(())
}
