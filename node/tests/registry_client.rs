//! The registry client and the puller against a real docker-registry (preheat-testkit).

#![allow(clippy::unwrap_used)] // test code: a poisoned lock or failed setup should panic

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use image_preheat::pull::{pull_image, NoProgress, PullError, PullProgress};
use image_preheat::registry::{RegistryClient, RegistryConfig, RegistryError, RetryPolicy};
use preheat_core::manifest::Platform;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use preheat_testkit::{CountingProxy, HttpFault, ImageBuilder, ManifestFormat, Registry};

const CHUNK: u32 = 64 * 1024;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

/// A client that trusts `reg` (its CA over TLS, or plain HTTP as an insecure registry).
fn client_for(reg: &Registry, docker_config: Option<PathBuf>) -> Result<RegistryClient> {
    let mut cfg = RegistryConfig {
        docker_config,
        retry: fast_retry(),
        ..RegistryConfig::default()
    };
    match reg.ca_pem_path() {
        Some(ca) => cfg.ca_files.push(ca.to_path_buf()),
        None => cfg.insecure.push(reg.host()),
    }
    Ok(RegistryClient::new(cfg)?)
}

async fn store_in(dir: &Path) -> Result<Store> {
    let mut cfg = StoreConfig::new(dir.join("store"));
    cfg.chunk_size = CHUNK;
    Ok(Store::open(cfg).await?)
}

fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> Result<PathBuf> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )?;
    Ok(path)
}

#[derive(Default)]
struct Recorder {
    start: Mutex<Option<(u64, u64)>>,
    advanced: AtomicU64,
    done: Mutex<Vec<Digest>>,
    messages: Mutex<Vec<String>>,
}

impl PullProgress for Recorder {
    fn start(&self, total: u64, already: u64) {
        *self.start.lock().unwrap() = Some((total, already));
    }
    fn advance(&self, bytes: u64) {
        self.advanced.fetch_add(bytes, Ordering::SeqCst);
    }
    fn blob_done(&self, d: &Digest) {
        self.done.lock().unwrap().push(*d);
    }
    fn message(&self, msg: &str) {
        self.messages.lock().unwrap().push(msg.to_owned());
    }
}

#[tokio::test]
async fn resolves_and_pulls_a_single_platform_image() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[300_000, 100_000, 5_000])
        .format(ManifestFormat::Docker)
        .push(&reg, "test/app:v1")
        .await?;
    let client = client_for(&reg, None)?;
    let reference: Reference = pushed.reference.parse()?;

    let resolved = client.resolve(&reference).await?;
    assert!(resolved.index.is_none());
    assert_eq!(resolved.manifest.digest, pushed.manifest_digest);
    assert_eq!(
        resolved.manifest.bytes, pushed.manifest_bytes,
        "byte-exact manifest"
    );
    assert_eq!(resolved.manifest.media_type, pushed.manifest_media_type);
    let blobs: Vec<(Digest, u64)> = resolved.image.blobs().map(|d| (d.digest, d.size)).collect();
    assert_eq!(blobs, pushed.blobs());

    let by_digest: Reference = pushed.digest_reference().parse()?;
    assert_eq!(
        client.resolve(&by_digest).await?.manifest.digest,
        pushed.manifest_digest
    );

    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;
    let progress = Recorder::default();
    let report = pull_image(&client, &store, &reference, &progress).await?;
    assert_eq!(report.manifest, pushed.manifest_digest);
    assert_eq!(report.total_bytes, pushed.total_size);
    assert_eq!(report.fetched_bytes, pushed.total_size);
    assert_eq!(report.present_bytes, 0);
    assert_eq!(
        *progress.start.lock().unwrap(),
        Some((pushed.total_size, 0))
    );
    assert_eq!(progress.advanced.load(Ordering::SeqCst), pushed.total_size);
    assert_eq!(progress.done.lock().unwrap().len(), pushed.blobs().len());
    for (d, _) in pushed.blobs() {
        assert!(store.contains(&d).await, "{d} stored");
    }
    assert_eq!(
        store.read_small(&pushed.manifest_digest).await?,
        pushed.manifest_bytes
    );
    assert_eq!(
        store.read_small(&pushed.config_digest).await?,
        pushed.config_bytes
    );
    let images = store.images().await?;
    assert_eq!(images.len(), 1);
    assert!(images[0].complete);
    assert_eq!(images[0].record.reference, reference.to_string());

    // A second pull finds everything in the store and fetches no blob.
    let again = pull_image(&client, &store, &reference, &NoProgress).await?;
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(again.present_bytes, pushed.total_size);
    Ok(())
}

#[tokio::test]
async fn selects_the_configured_platform_from_an_index() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[20_000, 10_000])
        .push_index(
            &reg,
            "multi/app:1",
            &[
                ("linux", "amd64", None),
                ("linux", "arm64", Some("v8")),
                ("linux", "arm", Some("v7")),
            ],
        )
        .await?;
    let reference: Reference = pushed.reference.parse()?;
    for want in ["linux/arm64/v8", "linux/arm/v7", "linux/amd64"] {
        let mut cfg = RegistryConfig {
            insecure: vec![reg.host()],
            retry: fast_retry(),
            ..RegistryConfig::default()
        };
        cfg.platform = want.parse::<Platform>()?;
        let client = RegistryClient::new(cfg)?;
        let resolved = client.resolve(&reference).await?;
        let expected = pushed.platform(want).expect("pushed platform");
        let index = resolved.index.as_ref().expect("index kept");
        assert_eq!(index.digest, pushed.index_digest);
        assert_eq!(index.bytes, pushed.index_bytes);
        assert_eq!(resolved.manifest.digest, expected.manifest_digest, "{want}");
        assert_eq!(resolved.manifest.bytes, expected.manifest_bytes);
        assert_eq!(
            resolved.platform.map(|p| p.to_string()).as_deref(),
            Some(want)
        );

        let dir = tempfile::tempdir()?;
        let store = store_in(dir.path()).await?;
        let report = pull_image(&client, &store, &reference, &NoProgress).await?;
        assert_eq!(report.manifest, expected.manifest_digest);
        let record = &store.images().await?[0].record;
        assert_eq!(record.index, Some(pushed.index_digest));
        assert_eq!(record.platform.as_deref(), Some(want));
        assert!(
            store.contains(&pushed.index_digest).await,
            "index stored byte-exact"
        );
    }

    let cfg = RegistryConfig {
        insecure: vec![reg.host()],
        platform: "linux/s390x".parse()?,
        retry: fast_retry(),
        ..RegistryConfig::default()
    };
    let err = RegistryClient::new(cfg)?
        .resolve(&reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "no_platform", "{err}");
    assert!(
        err.to_string().contains("linux/s390x") && err.to_string().contains("linux/arm64"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn pulls_over_tls_with_htpasswd_credentials_from_a_docker_config() -> Result<()> {
    let reg = Registry::builder()
        .tls()
        .htpasswd("alice", "s3cret")
        .start()
        .await?;
    let pushed = ImageBuilder::new()
        .layers(&[50_000])
        .push(&reg, "private/app:1")
        .await?;
    let reference: Reference = pushed.reference.parse()?;
    let dir = tempfile::tempdir()?;

    let good = docker_config(dir.path(), &reg.host(), "alice", "s3cret")?;
    let client = client_for(&reg, Some(good))?;
    let store = store_in(dir.path()).await?;
    let report = pull_image(&client, &store, &reference, &NoProgress).await?;
    assert_eq!(report.manifest, pushed.manifest_digest);
    assert!(store.images().await?[0].complete);

    let bad_dir = tempfile::tempdir()?;
    let bad = docker_config(bad_dir.path(), &reg.host(), "alice", "wrong")?;
    let err = client_for(&reg, Some(bad))?
        .resolve(&reference)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&reg.host()), "{err}");

    let err = client_for(&reg, None)?
        .resolve(&reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unauthorized", "{err}");

    // Without the CA the certificate is not trusted.
    let cfg = RegistryConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..fast_retry()
        },
        ..RegistryConfig::default()
    };
    let err = RegistryClient::new(cfg)?
        .resolve(&reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "transport", "{err:?}");
    Ok(())
}

#[tokio::test]
async fn missing_images_are_not_found() -> Result<()> {
    let reg = Registry::start().await?;
    ImageBuilder::new()
        .layers(&[2_000])
        .push(&reg, "exists/app:1")
        .await?;
    let client = client_for(&reg, None)?;
    for name in ["exists/app:2", "nothing/here:1"] {
        let reference: Reference = format!("{}/{name}", reg.host()).parse()?;
        let err = client.resolve(&reference).await.unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("manifest unknown: {reference}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_corrupted_blob_is_rejected_and_not_stored() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[200_000, 30_000])
        .push(&reg, "bad/app:1")
        .await?;
    let (bad, _) = pushed.layers[0];
    reg.corrupt_blob(&bad)?;
    let client = client_for(&reg, None)?;
    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;
    let reference: Reference = pushed.reference.parse()?;

    let err = pull_image(&client, &store, &reference, &NoProgress)
        .await
        .unwrap_err();
    match &err {
        PullError::DigestMismatch { digest, .. } => assert_eq!(*digest, bad),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&bad.to_string()), "{err}");
    assert!(!store.contains(&bad).await);
    assert!(
        store.partial(&bad).await?.is_none(),
        "no partial left behind"
    );
    assert!(!store.images().await?[0].complete);
    Ok(())
}

#[tokio::test]
async fn a_cut_mid_layer_resumes_from_stored_chunks() -> Result<()> {
    let reg = Registry::start().await?;
    let layer_size = 40 * u64::from(CHUNK) + 1234;
    let pushed = ImageBuilder::new()
        .layers(&[layer_size])
        .push(&reg, "cut/app:1")
        .await?;
    let (layer, _) = pushed.layers[0];
    let proxy = CountingProxy::start(reg.addr()).await?;
    let cfg = RegistryConfig {
        insecure: vec![proxy.host()],
        retry: fast_retry(),
        ..RegistryConfig::default()
    };
    let client = RegistryClient::new(cfg)?;
    let reference: Reference = pushed.reference_via(&proxy.host()).parse()?;
    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;

    // Manifest and config are a few KiB: the cut lands about half way through the layer.
    proxy.cut_after(Some(layer_size / 2));
    let progress = Recorder::default();
    let report = pull_image(&client, &store, &reference, &progress).await?;
    assert!(store.contains(&layer).await);
    assert!(store.images().await?[0].complete);
    assert_eq!(progress.advanced.load(Ordering::SeqCst), pushed.total_size);
    assert!(
        progress
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("resuming")),
        "the interruption was reported"
    );

    let through_proxy = proxy.bytes_to_client();
    let overhead = pushed.manifest_bytes.len() as u64 + 16 * 1024; // manifest and response headers
    assert!(
        through_proxy < pushed.total_size + u64::from(CHUNK) + overhead,
        "{through_proxy} bytes through the proxy for {} bytes of blobs",
        pushed.total_size
    );
    assert!(report.fetched_bytes < pushed.total_size + u64::from(CHUNK));
    assert!(
        report.fetched_bytes > pushed.total_size,
        "some bytes were fetched twice"
    );

    let gets = reg
        .wait_access_log(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|e| e.blob_digest() == Some(layer))
                .count()
                >= 2
        })
        .await?;
    let layer_gets: Vec<_> = gets
        .iter()
        .filter(|e| e.blob_digest() == Some(layer))
        .collect();
    assert_eq!(layer_gets.len(), 2, "{layer_gets:?}");
    // Log lines are written when a handler returns, so the aborted request may be logged last.
    let retry = layer_gets
        .iter()
        .find(|e| e.status == 206)
        .expect("the retry asked for a range");
    // The first request delivered about half the layer (less manifest, config and headers); the
    // retry starts at the last stored chunk boundary before that point.
    let received_first = layer_size / 2 - overhead - pushed.config_bytes.len() as u64;
    assert!(
        retry.bytes <= layer_size - received_first + u64::from(CHUNK),
        "second request served {} bytes of {layer_size}",
        retry.bytes
    );
    assert!(retry.bytes < layer_size - u64::from(CHUNK));
    Ok(())
}

#[tokio::test]
async fn refused_connections_are_retried_until_the_registry_is_back() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[4_000])
        .push(&reg, "flaky/app:1")
        .await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    let cfg = RegistryConfig {
        insecure: vec![proxy.host()],
        // Far more patience than the outage below needs, whatever the jitter draws.
        retry: RetryPolicy {
            max_attempts: 40,
            base: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        },
        ..RegistryConfig::default()
    };
    let client = RegistryClient::new(cfg)?;
    let reference: Reference = pushed.reference_via(&proxy.host()).parse()?;
    proxy.set_down(true).await?;
    let resolving = tokio::spawn(async move { client.resolve(&reference).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set_down(false).await?;
    let resolved = resolving.await??;
    assert_eq!(resolved.manifest.digest, pushed.manifest_digest);
    Ok(())
}

async fn proxied(reg: &Registry, retry: RetryPolicy) -> Result<(CountingProxy, RegistryClient)> {
    let proxy = CountingProxy::start(reg.addr()).await?;
    let cfg = RegistryConfig {
        insecure: vec![proxy.host()],
        retry,
        ..RegistryConfig::default()
    };
    Ok((proxy, RegistryClient::new(cfg)?))
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_honouring_retry_after() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[4_000])
        .push(&reg, "busy/app:1")
        .await?;
    // Backoff alone would wait milliseconds; only Retry-After makes the client wait seconds.
    let retry = RetryPolicy {
        max_attempts: 6,
        base: Duration::from_millis(1),
        max_delay: Duration::from_secs(1),
    };
    let (proxy, client) = proxied(&reg, retry).await?;
    let reference: Reference = pushed.reference_via(&proxy.host()).parse()?;
    for status in [503, 429, 503] {
        proxy.fail_next_connections(
            1,
            HttpFault {
                status,
                retry_after: Some(1),
            },
        );
    }
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;
    let report = pull_image(&client, &store, &reference, &NoProgress).await?;
    assert_eq!(report.manifest, pushed.manifest_digest);
    assert_eq!(proxy.faults_served(), 3);
    // The first fault may answer the auth probe (GET /v2/), the others were waited out: a lower
    // bound guaranteed by the sleeps, not a race.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn client_errors_other_than_429_are_not_retried() -> Result<()> {
    let reg = Registry::start().await?;
    let pushed = ImageBuilder::new()
        .layers(&[4_000])
        .push(&reg, "strict/app:1")
        .await?;
    let (proxy, client) = proxied(&reg, fast_retry()).await?;
    let reference: Reference = pushed.reference_via(&proxy.host()).parse()?;
    // One for the auth probe, one for the manifest request; a retry would then succeed.
    proxy.fail_next_connections(
        2,
        HttpFault {
            status: 400,
            retry_after: None,
        },
    );
    let err = client.resolve(&reference).await.unwrap_err();
    match &err {
        RegistryError::Status { status, .. } => assert_eq!(*status, 400),
        other => panic!("expected http 400, got {other:?}"),
    }
    assert_eq!(proxy.faults_served(), 2);
    assert_eq!(
        client.resolve(&reference).await?.manifest.digest,
        pushed.manifest_digest
    );
    Ok(())
}

/// A one-purpose HTTP/1.1 responder: records each request head and answers with `respond(path)`.
/// It stands in for blob storage behind a redirect (as distribution's S3 driver does), which the
/// filesystem-backed test registry cannot produce.
async fn tiny_http(
    respond: impl Fn(&str) -> String + Send + Sync + 'static,
) -> Result<(std::net::SocketAddr, std::sync::Arc<Mutex<Vec<String>>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let respond = std::sync::Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(head);
                let _ = sock.write_all(respond(&path).as_bytes()).await;
            });
        }
    });
    Ok((addr, seen))
}

#[tokio::test]
async fn blob_redirects_are_followed_without_leaking_credentials() -> Result<()> {
    let (storage, storage_seen) = tiny_http(|_| {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_owned()
    })
    .await?;
    let storage_port = storage.port();
    let (front, front_seen) = tiny_http(move |path| {
        if path == "/v2/" {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            // Another host name for the same loopback address: a cross-host redirect.
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{storage_port}/data\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        }
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let host = front.to_string();
    let cfg = RegistryConfig {
        insecure: vec![host.clone()],
        docker_config: Some(docker_config(dir.path(), &host, "alice", "s3cret")?),
        retry: fast_retry(),
        ..RegistryConfig::default()
    };
    let client = RegistryClient::new(cfg)?;
    let reference: Reference = format!("{host}/r/app:1").parse()?;
    let digest = Digest::of(b"hello");
    let stream = client.blob_stream(&reference, &digest, 0).await?;
    let body: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(stream).await?;
    assert_eq!(body.concat(), b"hello");

    let front_seen = front_seen.lock().unwrap().clone();
    let blob_get = front_seen
        .iter()
        .find(|h| h.contains("/blobs/"))
        .expect("blob request reached the registry");
    assert!(
        blob_get
            .to_ascii_lowercase()
            .contains("authorization: basic"),
        "{blob_get}"
    );
    let storage_seen = storage_seen.lock().unwrap().clone();
    assert_eq!(storage_seen.len(), 1, "{storage_seen:?}");
    assert!(
        !storage_seen[0]
            .to_ascii_lowercase()
            .contains("authorization"),
        "credentials leaked to the redirect target: {}",
        storage_seen[0]
    );
    Ok(())
}

/// Signals once `after` bytes are stored.
struct TripWire {
    after: u64,
    advanced: AtomicU64,
    tripped: tokio::sync::Notify,
}

impl PullProgress for TripWire {
    fn start(&self, _: u64, _: u64) {}
    fn advance(&self, bytes: u64) {
        let before = self.advanced.fetch_add(bytes, Ordering::SeqCst);
        if before < self.after && before + bytes >= self.after {
            self.tripped.notify_one();
        }
    }
    fn blob_done(&self, _: &Digest) {}
    fn message(&self, _: &str) {}
}

#[tokio::test]
async fn a_failed_pull_leaves_chunks_that_the_next_pull_resumes_from() -> Result<()> {
    let reg = Registry::start().await?;
    let layer_size = 30 * u64::from(CHUNK);
    let pushed = ImageBuilder::new()
        .layers(&[layer_size])
        .push(&reg, "again/app:1")
        .await?;
    let (layer, _) = pushed.layers[0];
    let client = client_for(&reg, None)?;
    let reference: Reference = pushed.reference.parse()?;
    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;

    // The pull is dropped (as a killed process would stop) once half the layer is stored. Chunk
    // writes yield to the runtime, so the biased select sees the signal right after the crossing.
    let wire = TripWire {
        after: layer_size / 2,
        advanced: AtomicU64::new(0),
        tripped: tokio::sync::Notify::new(),
    };
    tokio::select! {
        biased;
        () = wire.tripped.notified() => {}
        res = pull_image(&client, &store, &reference, &wire) => panic!("pull was not interrupted: {res:?}"),
    }
    let partial = store.partial(&layer).await?.expect("partial kept");
    let config_size = pushed.config_bytes.len() as u64;
    assert!(
        partial.bytes_done >= layer_size / 2 - config_size,
        "{partial:?}"
    );
    assert!(partial.bytes_done < layer_size, "{partial:?}");
    assert!(!store.contains(&layer).await);
    drop(store);

    // A new process: the store is reopened and the pull continues from the stored prefix.
    let store = store_in(dir.path()).await?;
    let report = pull_image(&client, &store, &reference, &NoProgress).await?;
    assert!(store.contains(&layer).await);
    // A chunk write already handed to the blocking pool when the pull was dropped may still land,
    // so the second pull can find more than the snapshot above, never less.
    assert!(
        report.present_bytes >= config_size + partial.bytes_done,
        "{report:?}"
    );
    assert_eq!(
        report.present_bytes + report.fetched_bytes,
        pushed.total_size
    );
    // The registry served the second request as a range: exactly the missing suffix.
    let log = reg
        .wait_access_log(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|e| e.blob_digest() == Some(layer))
                .count()
                >= 2
        })
        .await?;
    let ranged: Vec<_> = log
        .iter()
        .filter(|e| e.blob_digest() == Some(layer) && e.status == 206)
        .collect();
    assert_eq!(ranged.len(), 1, "{log:?}");
    assert_eq!(ranged[0].bytes, report.fetched_bytes);
    Ok(())
}

/// Chunks a peer delivered out of order (here written straight into the store, as the swarm's
/// writer does) are not fetched again: the registry is asked for the missing runs only.
#[tokio::test]
async fn chunks_already_stored_out_of_order_are_not_fetched_again() -> Result<()> {
    let reg = Registry::start().await?;
    let chunks = 40u32;
    let layer_size = u64::from(chunks) * u64::from(CHUNK) - 777;
    let pushed = ImageBuilder::new()
        .layers(&[layer_size])
        .push(&reg, "gaps/app:1")
        .await?;
    let (layer, _) = pushed.layers[0];
    let direct = client_for(&reg, None)?;
    let reference: Reference = pushed.reference.parse()?;
    let mut bytes = Vec::new();
    let mut s = direct.blob_stream(&reference, &layer, 0).await?;
    while let Some(piece) = futures::StreamExt::next(&mut s).await {
        bytes.extend_from_slice(&piece?);
    }
    assert_eq!(bytes.len() as u64, layer_size);

    let dir = tempfile::tempdir()?;
    let store = store_in(dir.path()).await?;
    // Stored: every chunk but 0, 5, 6, 7, 20 and the last 4 (36..40).
    let missing: Vec<u32> = [0, 5, 6, 7, 20].into_iter().chain(36..chunks).collect();
    let mut w = store.writer(layer, layer_size).await?;
    let mut stored = 0u64;
    for i in (0..chunks).filter(|i| !missing.contains(i)) {
        let start = i as usize * CHUNK as usize;
        let data = &bytes[start..(start + CHUNK as usize).min(bytes.len())];
        w.write_chunk(i, data, &preheat_core::chunk::chunk_hash(data))
            .await?;
        stored += data.len() as u64;
    }
    drop(w);

    let (proxy, client) = proxied(&reg, fast_retry()).await?;
    let via: Reference = pushed.reference_via(&proxy.host()).parse()?;
    let report = pull_image(&client, &store, &via, &NoProgress).await?;
    assert!(store.contains(&layer).await);
    let missing_bytes = layer_size - stored;
    assert_eq!(
        report.fetched_bytes,
        missing_bytes + pushed.config_bytes.len() as u64,
        "only the missing chunks (and the config) came from the registry"
    );
    // The log also holds this test's own full download (200) before the pull's requests.
    let layer_gets = reg
        .wait_access_log(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|e| e.blob_digest() == Some(layer))
                .count()
                >= 5
        })
        .await?;
    let (full, ranges): (Vec<_>, Vec<_>) = layer_gets
        .iter()
        .filter(|e| e.blob_digest() == Some(layer))
        .partition(|e| e.status == 200);
    assert_eq!(full.len(), 1, "only the test's own download is a full GET");
    let ranges: Vec<u64> = ranges
        .iter()
        .map(|e| {
            assert_eq!(e.status, 206, "range requests only");
            e.bytes
        })
        .collect();
    assert_eq!(ranges.len(), 4, "one request per missing run: {ranges:?}");
    assert_eq!(ranges.iter().sum::<u64>(), missing_bytes);
    Ok(())
}
