//! The kit against a real docker-registry: push, fetch back, auth, restart, corruption, indexes.

use std::time::Duration;

use preheat_core::Digest;
use preheat_testkit::image::media;
use preheat_testkit::{ImageBuilder, LayerGen, ManifestFormat, Registry};
use reqwest::{Method, StatusCode};

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

async fn get(reg: &Registry, path: &str) -> anyhow::Result<(StatusCode, Option<String>, Vec<u8>)> {
    let resp = reg
        .request(Method::GET, path)
        .header("accept", ACCEPT_ALL)
        .send()
        .await?;
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, ct, resp.bytes().await?.to_vec()))
}

#[tokio::test]
async fn push_two_layers_and_fetch_back() -> anyhow::Result<()> {
    preheat_testkit::init_tracing();
    let reg = Registry::start().await?;
    assert_ne!(reg.addr().port(), 5000);
    // The second layer spans several 8 MiB upload chunks.
    let img = ImageBuilder::new()
        .seed(42)
        .layers(&[4096, (17 << 20) + 5])
        .push(&reg, "test/app:v1")
        .await?;
    assert_eq!(img.reference, format!("{}/test/app:v1", reg.host()));
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[1].1, (17 << 20) + 5);

    let (status, ct, body) = get(&reg, "/v2/test/app/manifests/v1").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some(media::OCI_MANIFEST));
    assert_eq!(body, img.manifest_bytes);
    assert_eq!(Digest::of(&body), img.manifest_digest);

    let manifest: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(manifest["config"]["digest"], img.config_digest.to_string());
    let config: serde_json::Value = serde_json::from_slice(&img.config_bytes)?;
    assert_eq!(
        config["rootfs"]["diff_ids"][1],
        img.layers[1].0.to_string(),
        "uncompressed layers: diff_id == digest"
    );

    for (digest, size) in img.blobs() {
        let (status, _, blob) = get(&reg, &format!("/v2/test/app/blobs/{digest}")).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(blob.len() as u64, size);
        assert_eq!(Digest::of(&blob), digest);
    }

    // Same seed, same bytes: a second push of the same spec yields the same digests.
    let again = ImageBuilder::new()
        .seed(42)
        .layers(&[4096, (17 << 20) + 5])
        .push(&reg, "test/other:v1")
        .await?;
    assert_eq!(again.manifest_digest, img.manifest_digest);
    let small = LayerGen::new(4096, 0, 0)?.into_vec();
    assert_eq!(small.len(), 4096);

    let log = reg
        .wait_access_log(Duration::from_secs(5), |log| {
            log.iter()
                .any(|e| e.method == "GET" && e.blob_digest() == Some(img.layers[1].0))
        })
        .await?;
    let gets: Vec<_> = log
        .iter()
        .filter(|e| e.method == "GET" && e.blob_digest() == Some(img.layers[1].0))
        .collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].status, 200);
    assert_eq!(gets[0].bytes, (17 << 20) + 5);
    Ok(())
}

#[tokio::test]
async fn docker_format_is_accepted() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .format(ManifestFormat::Docker)
        .layer(2048)
        .push(&reg, "docker/fmt")
        .await?;
    let (status, ct, body) = get(&reg, "/v2/docker/fmt/manifests/latest").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some(media::DOCKER_MANIFEST));
    assert_eq!(body, img.manifest_bytes);
    Ok(())
}

#[tokio::test]
async fn tls_htpasswd_rejects_anonymous_and_accepts_credentials() -> anyhow::Result<()> {
    let reg = Registry::builder()
        .tls()
        .htpasswd("alice", "s3cret")
        .start()
        .await?;
    assert!(reg.base_url().starts_with("https://127.0.0.1:"));
    let ca = reg.ca_pem_path().expect("tls registry has a CA");
    assert!(std::fs::read_to_string(ca)?.contains("BEGIN CERTIFICATE"));

    let url = format!("{}/v2/", reg.base_url());
    let anon = reg.client().get(&url).send().await?;
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let wrong = reg
        .client()
        .get(&url)
        .basic_auth("alice", Some("nope"))
        .send()
        .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = reg.request(Method::GET, "/v2/").send().await?;
    assert_eq!(ok.status(), StatusCode::OK);

    // A client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder().tls_certs_only([]).build()?;
    assert!(untrusting.get(&url).send().await.is_err());

    let img = ImageBuilder::new()
        .layer(10_000)
        .push(&reg, "private/app:1")
        .await?;
    let (status, _, body) = get(&reg, "/v2/private/app/manifests/1").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, img.manifest_bytes);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reg.docker_config(&[])?)?)?;
    let auth = config["auths"][reg.host()]["auth"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(auth, "YWxpY2U6czNjcmV0", "base64 of alice:s3cret");
    let anon_manifest = reg
        .client()
        .get(format!("{}/v2/private/app/manifests/1", reg.base_url()))
        .send()
        .await?;
    assert_eq!(anon_manifest.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn restart_keeps_port_and_content() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layer(3000)
        .push(&reg, "keep/me:t")
        .await?;
    let port = reg.addr().port();

    reg.stop();
    assert!(!reg.is_running());
    assert!(reg.request(Method::GET, "/v2/").send().await.is_err());

    reg.restart().await?;
    assert!(reg.is_running());
    assert_eq!(reg.addr().port(), port);
    let (status, _, body) = get(&reg, "/v2/keep/me/manifests/t").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, img.manifest_bytes);
    Ok(())
}

#[tokio::test]
async fn corrupt_blob_serves_mismatching_bytes() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layer(8192)
        .push(&reg, "bad/blob")
        .await?;
    let (digest, size) = img.layers[0];
    assert!(reg.blob_path(&digest).exists());
    reg.corrupt_blob(&digest)?;
    let (status, _, body) = get(&reg, &format!("/v2/bad/blob/blobs/{digest}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len() as u64, size);
    assert_ne!(Digest::of(&body), digest);
    Ok(())
}

#[tokio::test]
async fn index_with_platforms() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    for (format, repo) in [
        (ManifestFormat::Oci, "multi/oci:v1"),
        (ManifestFormat::Docker, "multi/docker:v1"),
    ] {
        let idx = ImageBuilder::new()
            .format(format)
            .layers(&[2048, 5000])
            .push_index(
                &reg,
                repo,
                &[("linux", "amd64", None), ("linux", "arm64", Some("v8"))],
            )
            .await?;
        let repo_name = repo.split(':').next().unwrap_or_default();
        let (status, ct, body) = get(&reg, &format!("/v2/{repo_name}/manifests/v1")).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(idx.index_media_type.as_str()));
        assert_eq!(body, idx.index_bytes);
        assert_eq!(Digest::of(&body), idx.index_digest);

        let index: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(index["manifests"][1]["platform"]["variant"], "v8");

        let arm = idx.platform("linux/arm64/v8").expect("arm64 member");
        let amd = idx.platform("linux/amd64").expect("amd64 member");
        assert_ne!(arm.layers[0].0, amd.layers[0].0);
        let config: serde_json::Value = serde_json::from_slice(&arm.config_bytes)?;
        assert_eq!(config["architecture"], "arm64");
        let (status, _, body) = get(
            &reg,
            &format!("/v2/{repo_name}/manifests/{}", arm.manifest_digest),
        )
        .await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, arm.manifest_bytes);
        assert_eq!(
            arm.digest_reference(),
            format!("{}/{repo_name}@{}", reg.host(), arm.manifest_digest)
        );
    }
    Ok(())
}

#[tokio::test]
async fn missing_image_is_404() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let (status, _, _) = get(&reg, "/v2/does/not/exist/manifests/latest").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn range_requests_are_served_and_logged() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layer(100_000)
        .push(&reg, "range/r")
        .await?;
    let (digest, size) = img.layers[0];
    let full = get(&reg, &format!("/v2/range/r/blobs/{digest}")).await?.2;
    let resp = reg
        .request(Method::GET, &format!("/v2/range/r/blobs/{digest}"))
        .header("range", "bytes=60000-")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let tail = resp.bytes().await?;
    assert_eq!(&tail[..], &full[60_000..]);
    let log = reg
        .wait_access_log(Duration::from_secs(5), |log| {
            log.iter()
                .any(|e| e.blob_digest() == Some(digest) && e.status == 206)
        })
        .await?;
    assert!(log
        .iter()
        .any(|e| e.blob_digest() == Some(digest) && e.status == 206 && e.bytes == size - 60_000));
    assert_eq!(reg.blob_bytes_served(&digest)?, size + size - 60_000);
    Ok(())
}

#[tokio::test]
async fn chosen_dir_outlives_the_registry() -> anyhow::Result<()> {
    let keep = tempfile::tempdir()?;
    let dir = keep.path().join("reg");
    let img = {
        let reg = Registry::builder().dir(&dir).start().await?;
        assert_eq!(reg.dir(), dir.as_path());
        ImageBuilder::new()
            .layer(5000)
            .push(&reg, "kept/img:1")
            .await?
    };
    assert!(dir.join("storage").is_dir());
    let reg = Registry::builder().dir(&dir).start().await?;
    let (status, _, body) = get(&reg, "/v2/kept/img/manifests/1").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, img.manifest_bytes);
    Ok(())
}
