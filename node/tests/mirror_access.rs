//! The mirror's credential check against a real private registry (docker-registry with htpasswd
//! over TLS): the image is in the node's store, yet the mirror serves it only to clients whose
//! credentials the registry accepts (401 otherwise); `--mirror-open` serves it to anyone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use image_preheat::fetch::{FetchConfig, FetchMetrics, ImageFetcher};
use image_preheat::mirror::{serve_on, MirrorArgs, Upstream};
use image_preheat::pull::NoProgress;
use image_preheat::registry::{RegistryClient, RegistryConfig};
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{ImageBuilder, PushedImage, Registry};
use prometheus_client::registry::Registry as Metrics;

const GUARD: Duration = Duration::from_secs(120);

fn args(default_registry: &str, extra: &[&str]) -> MirrorArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mirror: MirrorArgs,
    }
    let mut argv = vec!["x", "--mirror-default-registry", default_registry];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().mirror
}

struct Private {
    origin: Registry,
    image: PushedImage,
    store: Store,
    registry_cfg: RegistryConfig,
    _dir: tempfile::TempDir,
}

/// A private registry with an image, pulled into a fresh store with the right credentials.
async fn private() -> Result<Private> {
    let origin = Registry::builder()
        .tls()
        .htpasswd("alice", "s3cret")
        .start()
        .await?;
    let image = ImageBuilder::new()
        .layers(&[600_000])
        .seed(11)
        .push(&origin, "private/app:v1")
        .await?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(dir.path())).await?;
    let registry_cfg = RegistryConfig {
        ca_files: vec![origin.ca_pem_path().context("ca")?.to_path_buf()],
        docker_config: Some(origin.docker_config(&[])?),
        ..RegistryConfig::default()
    };
    let fetcher = ImageFetcher::new(
        store.clone(),
        RegistryClient::new(registry_cfg.clone())?,
        None,
        None,
        FetchConfig::new("node"),
        FetchMetrics::register(&mut Metrics::default()),
    );
    fetcher
        .fetch(&image.reference.parse()?, Arc::new(NoProgress))
        .await?;
    Ok(Private {
        origin,
        image,
        store,
        registry_cfg,
        _dir: dir,
    })
}

/// Starts a mirror over the store (no swarm, no upstream fetches); returns its host:port.
async fn mirror(p: &Private, args: &MirrorArgs) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let upstream = Upstream {
        fetcher: None,
        registry: RegistryConfig {
            docker_config: None, // the mirror never uses the node's own credentials for clients
            ..p.registry_cfg.clone()
        },
    };
    let server = serve_on(
        listener,
        args,
        p.store.clone(),
        None,
        upstream,
        &mut Metrics::default(),
        std::future::pending(),
    )?;
    tokio::spawn(server);
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repository_needs_credentials_the_registry_accepts() -> Result<()> {
    let p = private().await?;
    let addr = mirror(&p, &args(&p.origin.host(), &[])).await?;
    let http = reqwest::Client::new();
    let (layer, size) = p.image.layers[0];
    let blob = format!("http://{addr}/v2/private/app/blobs/{layer}");
    let manifest = format!("http://{addr}/v2/private/app/manifests/v1");

    // No credentials: 401 with a Basic challenge, for blobs and manifests.
    for url in [&blob, &manifest] {
        let resp = http.get(url).send().await?;
        assert_eq!(resp.status(), 401, "{url}");
        let challenge = resp.headers()["www-authenticate"].to_str()?.to_owned();
        assert!(challenge.starts_with("Basic "), "{challenge}");
    }
    // Wrong credentials: refused as well.
    let resp = http
        .get(&blob)
        .basic_auth("alice", Some("guess"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(&blob)
        .basic_auth("mallory", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    // The right ones: the blob and the manifest, byte-exact.
    let resp = http
        .get(&blob)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await?;
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(Digest::of(&bytes), layer);
    let resp = http
        .get(&manifest)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await?, p.image.manifest_bytes);
    // A cached verdict for one credential says nothing about another.
    let resp = http
        .get(&blob)
        .basic_auth("alice", Some("guess"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);

    // A real client: skopeo with and without the credentials.
    let reference = format!("docker://{addr}/private/app:v1");
    let tmp = tempfile::tempdir()?;
    let copy = move |creds: Option<&str>, dest: &std::path::Path| -> Result<bool> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--src-tls-verify=false", "--retry-times=0"]);
        match creds {
            Some(c) => cmd.args(["--src-creds", c]),
            None => cmd.arg("--src-no-creds"),
        };
        let out = cmd
            .arg(&reference)
            .arg(format!("dir:{}", dest.display()))
            .output()
            .context("running skopeo")?;
        eprintln!("skopeo {creds:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out.status.success())
    };
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    let (ok, refused) = tokio::time::timeout(
        GUARD,
        tokio::task::spawn_blocking(move || -> Result<(bool, bool)> {
            Ok((copy(Some("alice:s3cret"), &with)?, copy(None, &without)?))
        }),
    )
    .await???;
    ensure!(ok, "skopeo with the right credentials failed");
    ensure!(!refused, "skopeo without credentials was served");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mirror_serves_anyone() -> Result<()> {
    let p = private().await?;
    let addr = mirror(&p, &args(&p.origin.host(), &["--mirror-open"])).await?;
    let (layer, _) = p.image.layers[0];
    let resp = reqwest::get(format!("http://{addr}/v2/private/app/blobs/{layer}")).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(Digest::of(&resp.bytes().await?), layer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_resolved_tags_miss_while_digests_and_other_tags_are_served() -> Result<()> {
    let p = private().await?;
    // The same manifest is also tagged `latest` in the store.
    let mut rec = p
        .store
        .images()
        .await?
        .into_iter()
        .next()
        .context("image record")?
        .record;
    rec.reference = format!("{}/private/app:latest", p.origin.host());
    p.store.put_image(rec).await?;
    let addr = mirror(
        &p,
        &args(
            &p.origin.host(),
            &[
                "--mirror-open",
                "--mirror-never-resolve-tags",
                "latest,edge",
            ],
        ),
    )
    .await?;
    let url = |r: &str| format!("http://{addr}/v2/private/app/manifests/{r}");
    let resp = reqwest::get(url("latest")).await?;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    for r in ["v1".to_owned(), p.image.manifest_digest.to_string()] {
        let resp = reqwest::get(url(&r)).await?;
        assert_eq!(resp.status(), 200, "{r}");
        assert_eq!(resp.bytes().await?, p.image.manifest_bytes);
    }
    Ok(())
}
