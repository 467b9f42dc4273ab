//! End to end with real components: images pushed to a real docker-registry, copied into a real
//! preheat-store, served by the mirror over TCP through a store-backed `Source`; `skopeo copy`
//! from the mirror must equal `skopeo copy` from the origin byte for byte; Range and HEAD checked
//! over real HTTP.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use common::{copy_into_store, StoreSource};
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::image::{ImageBuilder, ManifestFormat};
use preheat_testkit::registry::Registry as Origin;
use prometheus_client::registry::Registry;
use registry_proxy::{serve, ProxyConfig};

fn skopeo_copy(reference: &str, dest: &Path) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--retry-times=0"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .context("running skopeo")?;
    ensure!(
        out.status.success(),
        "skopeo copy {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every file of `a` equals the same file of `b`, and they hold the same names.
fn assert_same_dir(a: &Path, b: &Path) -> Result<usize> {
    let names = |d: &Path| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let (na, nb) = (names(a)?, names(b)?);
    ensure!(na == nb, "file names differ: {na:?} vs {nb:?}");
    for n in &na {
        let (fa, fb) = (std::fs::read(a.join(n))?, std::fs::read(b.join(n))?);
        ensure!(fa == fb, "{n} differs");
    }
    Ok(na.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_from_mirror_equals_origin_and_ranges_work() -> Result<()> {
    let origin = Origin::start().await?;
    let tmp = tempfile::tempdir()?;
    let store = Store::open(StoreConfig::new(tmp.path().join("store"))).await?;
    let mut src = StoreSource::new(store.clone());
    let oci = ImageBuilder::new()
        .layers(&[2 * 1024 * 1024 + 123, 700_000])
        .seed(1)
        .push(&origin, "test/deep/app:v1")
        .await?;
    let docker = ImageBuilder::new()
        .layers(&[300_000])
        .seed(2)
        .format(ManifestFormat::Docker)
        .push(&origin, "other:1.0")
        .await?;
    copy_into_store(&origin, &store, &oci, &mut src, "v1").await?;
    copy_into_store(&origin, &store, &docker, &mut src, "1.0").await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mirror = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut registry = Registry::default();
        let shutdown = async {
            let _ = stop_rx.await;
        };
        serve(
            listener,
            Arc::new(src),
            ProxyConfig::default(),
            &mut registry,
            shutdown,
        )
        .await
    });

    for (img, tag) in [(&oci, "v1"), (&docker, "1.0")] {
        let via_mirror = tmp.path().join(format!("mirror-{tag}"));
        let via_origin = tmp.path().join(format!("origin-{tag}"));
        let repo = &img.repository;
        let mirror_ref = format!("{mirror}/{repo}:{tag}");
        let origin_ref = format!("{}/{repo}:{tag}", origin.host());
        tokio::task::spawn_blocking({
            let (m, o) = (via_mirror.clone(), via_origin.clone());
            move || -> Result<()> {
                skopeo_copy(&mirror_ref, &m)?;
                skopeo_copy(&origin_ref, &o)
            }
        })
        .await??;
        let files = assert_same_dir(&via_mirror, &via_origin)?;
        // manifest.json, version, config and each layer.
        assert_eq!(files, 3 + img.layers.len(), "{tag}");
        let manifest = std::fs::read(via_mirror.join("manifest.json"))?;
        assert_eq!(manifest, img.manifest_bytes, "manifest not byte-exact");
    }

    // Range and HEAD over real HTTP (hyper keeps Content-Length on HEAD).
    let client = reqwest::Client::new();
    let (layer, size) = oci.layers[0];
    let url = format!("http://{mirror}/v2/test/deep/app/blobs/{layer}?ns=docker.io");
    let whole = std::fs::read(via_layer_file(tmp.path(), &layer))?;
    let resp = client.head(&url).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
    assert_eq!(
        resp.headers()["docker-content-digest"],
        layer.to_string().as_str()
    );
    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-77", size - 77, size - 1),
        ("bytes=2000000-", 2_000_000, size - 1),
    ] {
        let resp = client.get(&url).header("range", range).send().await?;
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {start}-{end}/{size}").as_str()
        );
        let got = resp.bytes().await?;
        let (s, e) = (usize::try_from(start)?, usize::try_from(end)?);
        assert_eq!(&got[..], &whole[s..=e], "{range}");
    }
    let resp = client
        .get(&url)
        .header("range", format!("bytes={size}-"))
        .send()
        .await?;
    assert_eq!(resp.status(), 416);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );

    stop_tx.send(()).ok();
    server.await??;
    Ok(())
}

/// skopeo's `dir:` layout names blobs by their hex digest.
fn via_layer_file(tmp: &Path, d: &Digest) -> std::path::PathBuf {
    tmp.join("origin-v1").join(d.hex())
}

/// A client that never finishes its request head is disconnected after the header read timeout
/// (instead of holding a connection forever); a complete request on another connection works.
#[tokio::test]
async fn slow_request_head_is_cut_off_and_shutdown_returns() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = ProxyConfig {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let server = tokio::spawn(async move {
        let mut registry = Registry::default();
        let src = Arc::new(registry_proxy::MemorySource::new());
        serve(listener, src, cfg, &mut registry, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let mut slow = tokio::net::TcpStream::connect(addr).await?;
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await?;
    let mut fast = tokio::net::TcpStream::connect(addr).await?;
    fast.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    fast.read_to_string(&mut answer).await?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The slow connection is closed by the server (EOF or reset), well before this bound.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        slow.read_to_end(&mut buf),
    )
    .await
    .context("slow connection still open")?;
    ensure!(
        closed.is_err() || !String::from_utf8_lossy(&buf).contains("200"),
        "slow request was served"
    );

    stop_tx.send(()).ok();
    server.await??;
    Ok(())
}

/// A 1 TiB blob generated on the fly, counting the bytes the mirror pulled from it.
struct Endless {
    pulled: Arc<std::sync::atomic::AtomicU64>,
}

const TIB: u64 = 1 << 40;

#[async_trait::async_trait]
impl registry_proxy::Source for Endless {
    async fn manifest(
        &self,
        _: &registry_proxy::RepoName,
        _: &registry_proxy::TagOrDigest,
        _: Option<&str>,
    ) -> Result<Option<registry_proxy::Manifest>, registry_proxy::ProxyError> {
        Ok(None)
    }
    async fn blob(
        &self,
        _: &registry_proxy::RepoName,
        _: &Digest,
        _: Option<&str>,
        _: Option<registry_proxy::RangeSpec>,
    ) -> Result<Option<registry_proxy::Blob>, registry_proxy::ProxyError> {
        static PIECE: [u8; 65536] = [0; 65536];
        let pulled = self.pulled.clone();
        let body = futures::stream::repeat_with(move || {
            pulled.fetch_add(PIECE.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(bytes::Bytes::from_static(&PIECE))
        });
        Ok(Some(registry_proxy::Blob {
            size: TIB,
            range: None,
            body: Box::pin(body),
            source: registry_proxy::SourceKind::Peer,
        }))
    }
    async fn blob_size(
        &self,
        _: &registry_proxy::RepoName,
        _: &Digest,
        _: Option<&str>,
    ) -> Result<Option<registry_proxy::BlobStat>, registry_proxy::ProxyError> {
        Ok(None)
    }
}

/// A client that stops reading holds the server to a bounded amount of pulled data (backpressure,
/// no buffering of the blob); when it goes away, its concurrency permit is released.
#[tokio::test]
async fn huge_blob_is_streamed_with_backpressure() -> Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    preheat_testkit::install_crypto_provider();
    let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = ProxyConfig {
        max_concurrent: 1,
        ..ProxyConfig::default()
    };
    let src = Arc::new(Endless {
        pulled: pulled.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut registry = Registry::default();
        serve(listener, src, cfg, &mut registry, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let path = format!("/v2/big/blobs/{}", Digest::of(b"big"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    let mut slow = tokio::net::TcpStream::connect(addr).await?;
    slow.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 1 << 20];
    slow.read_exact(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..200]).into_owned();
    ensure!(head.contains(&format!("content-length: {TIB}")), "{head}");

    // Wait until the server stops pulling (it is blocked on the full socket), then check the bound.
    let mut last = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = pulled.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let bound = 64 << 20;
    ensure!(
        last < bound,
        "pulled {last} bytes for a client that read 1 MiB"
    );

    // The only permit is held by the stalled response; once the client leaves, it is released.
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    ensure!(
        client.head(&url).send().await?.status() == 429,
        "cap not held"
    );
    drop(slow);
    let mut status = 0;
    for _ in 0..100 {
        status = client.head(&url).send().await?.status().as_u16();
        if status != 429 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ensure!(status == 404, "permit not released: {status}");

    stop_tx.send(()).ok();
    server.await??;
    Ok(())
}
