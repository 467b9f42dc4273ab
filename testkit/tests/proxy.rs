//! CountingProxy in front of a real registry: counting, cutting mid-blob, refusing connections.

use std::time::Duration;

use preheat_core::Digest;
use preheat_testkit::{CountingProxy, HttpFault, ImageBuilder, Registry};

fn blob_url(proxy: &CountingProxy, scheme: &str, repo: &str, digest: &Digest) -> String {
    format!("{scheme}://{}/v2/{repo}/blobs/{digest}", proxy.host())
}

#[tokio::test]
async fn counts_bytes_to_client() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layer(3 << 20)
        .push(&reg, "proxy/count")
        .await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    assert_eq!(proxy.bytes_to_client(), 0);
    let (digest, size) = img.layers[0];
    let body = reg
        .client()
        .get(blob_url(&proxy, "http", "proxy/count", &digest))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(Digest::of(&body), digest);
    // Body plus response headers.
    let sent = proxy.bytes_to_client();
    assert!(sent > size && sent < size + 4096, "sent {sent}");
    assert_eq!(proxy.connection_count(), 1);
    assert_eq!(proxy.connection_bytes(), vec![sent]);
    assert!(proxy.bytes_to_upstream() > 0);
    assert_eq!(
        img.reference_via(&proxy.host()),
        format!("{}/proxy/count:latest", proxy.host())
    );
    Ok(())
}

#[tokio::test]
async fn cut_after_drops_connections_mid_blob_then_recovers() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let img = ImageBuilder::new()
        .layer(4 << 20)
        .push(&reg, "proxy/cut")
        .await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    let (digest, size) = img.layers[0];
    let url = blob_url(&proxy, "http", "proxy/cut", &digest);

    proxy.cut_after(Some(1 << 20));
    let resp = reg.client().get(&url).send().await?;
    assert!(resp.status().is_success());
    assert!(resp.bytes().await.is_err(), "body must end early");
    assert_eq!(proxy.bytes_to_client(), 1 << 20);

    // One shot: the next request goes through whole.
    let body = reg.client().get(&url).send().await?.bytes().await?;
    assert_eq!(Digest::of(&body), digest);

    // The registry logged both GETs. It may have written the whole cut one into socket buffers
    // before the proxy dropped it, so only the complete one has a known size.
    let log = reg
        .wait_access_log(Duration::from_secs(5), |log| {
            log.iter()
                .filter(|e| e.blob_digest() == Some(digest))
                .count()
                == 2
        })
        .await?;
    assert!(log
        .iter()
        .any(|e| e.blob_digest() == Some(digest) && e.bytes == size));
    assert_eq!(reg.blob_gets(&digest)?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn set_down_refuses_then_serves_again() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    let url = format!("http://{}/v2/", proxy.host());
    assert!(reg.client().get(&url).send().await?.status().is_success());

    proxy.set_down(true).await?;
    let err = tokio::net::TcpStream::connect(proxy.addr()).await;
    assert!(err.is_err(), "connection must be refused while down");
    assert!(reg.client().get(&url).send().await.is_err());

    proxy.set_down(false).await?;
    assert!(reg.client().get(&url).send().await?.status().is_success());
    Ok(())
}

#[tokio::test]
async fn passes_tls_through() -> anyhow::Result<()> {
    let reg = Registry::builder().tls().htpasswd("u", "p").start().await?;
    let img = ImageBuilder::new()
        .layer(20_000)
        .push(&reg, "tls/via")
        .await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    let (digest, size) = img.layers[0];
    let body = reg
        .request(
            reqwest::Method::GET,
            &blob_url(&proxy, "https", "tls/via", &digest),
        )
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert_eq!(Digest::of(&body), digest);
    assert!(proxy.bytes_to_client() > size);
    Ok(())
}

#[tokio::test]
async fn injected_http_faults_then_upstream() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let proxy = CountingProxy::start(reg.addr()).await?;
    let url = format!("http://{}/v2/", proxy.host());
    proxy.fail_next_connections(
        2,
        HttpFault {
            status: 429,
            retry_after: Some(3),
        },
    );
    for _ in 0..2 {
        let resp = reg.client().get(&url).send().await?;
        assert_eq!(resp.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
        assert!(resp.text().await?.contains("TOOMANYREQUESTS"));
    }
    assert_eq!(proxy.faults_served(), 2);
    assert_eq!(proxy.bytes_to_client(), 0, "canned answers are not counted");
    let resp = reg.client().get(&url).send().await?;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(proxy.faults_served(), 2);
    Ok(())
}
