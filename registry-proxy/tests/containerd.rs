//! A real containerd (private root, state and socket) pulls an image whose origin is a real
//! docker-registry, with a `hosts.toml` naming the mirror: every manifest and blob comes from the
//! mirror (a store-backed source), none from the origin.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{copy_into_store, Mirror, StoreSource};
use preheat_store::{Store, StoreConfig};
use preheat_testkit::image::{ImageBuilder, ManifestFormat};
use preheat_testkit::registry::Registry as Origin;
use preheat_testkit::Containerd;
use registry_proxy::ProxyConfig;

const NAMESPACE: &str = "preheat-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pull_is_served_entirely_by_the_mirror() -> Result<()> {
    let origin = Origin::start().await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let mut src = StoreSource::new(store.clone());
    let img = ImageBuilder::new()
        .layers(&[1024 * 1024 + 7, 300_000])
        .seed(3)
        .format(ManifestFormat::Docker)
        .push(&origin, "team/app:v2")
        .await?;
    copy_into_store(&origin, &store, &img, &mut src, "v2").await?;
    let mirror = Mirror::start(Arc::new(src), ProxyConfig::default()).await?;

    // hosts.toml for the origin host: try the mirror first, for resolving tags too.
    let hosts = tmp.path().join("hosts.d");
    let host_dir = hosts.join(origin.host());
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            origin.host(),
            mirror.addr
        ),
    )?;
    let before = origin.access_log()?.len();

    let reference = format!("{}/team/app:v2", origin.host());
    let hosts_arg = hosts.display().to_string();
    let ctd = Containerd::start().await?;
    let pulled = ctd
        .ctr(
            NAMESPACE,
            &[
                "images",
                "pull",
                "--snapshotter",
                "native",
                "--hosts-dir",
                &hosts_arg,
                &reference,
            ],
        )
        .await;
    if let Err(e) = pulled {
        bail!("{e}\ncontainerd log:\n{}", ctd.log());
    }
    let listing = ctd.ctr(NAMESPACE, &["images", "ls"]).await?;
    let manifest_digest = img.manifest_digest.to_string();
    ensure!(
        listing.contains(&manifest_digest),
        "{manifest_digest} not in {listing}"
    );

    // A sentinel request marks the end of the pull in the origin's log; nothing before it
    // (after the store was filled) may be a manifest or blob request.
    let sentinel = "/v2/sentinel/manifests/end";
    origin
        .request(reqwest::Method::GET, sentinel)
        .send()
        .await?;
    let log = origin
        .wait_access_log(Duration::from_secs(10), |l| {
            l.iter().any(|e| e.path == sentinel)
        })
        .await?;
    let during: Vec<_> = log[before..]
        .iter()
        .take_while(|e| e.path != sentinel)
        .filter(|e| e.blob_digest().is_some() || e.manifest_reference().is_some())
        .collect();
    assert!(during.is_empty(), "origin was asked: {during:?}");

    let blobs = img.blobs().len() as f64;
    let served = mirror
        .metric(r#"mirror_requests_total{kind="blob",result="local"}"#)
        .unwrap_or(0.0);
    assert!(served >= blobs, "{served} blob hits for {blobs} blobs");
    let manifests = mirror
        .metric(r#"mirror_requests_total{kind="manifest",result="local"}"#)
        .unwrap_or(0.0);
    assert!(manifests >= 1.0);
    Ok(())
}
