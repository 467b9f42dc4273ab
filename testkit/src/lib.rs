//! Test fixtures for image-preheat that use real components (dev-dependency only).
//!
//! ```text
//! ImageBuilder ──push (HTTP API)──▶ Registry (docker-registry process, 127.0.0.1:free port, temp storage)
//!                                      ▲
//! code under test ──▶ CountingProxy ───┘  (counts bytes to the client, can cut or refuse connections)
//! ```
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use preheat_testkit::{CountingProxy, ImageBuilder, Registry};
//! let reg = Registry::builder().tls().htpasswd("alice", "secret").start().await?;
//! let img = ImageBuilder::new().seed(1).layers(&[4 << 20, 1 << 20]).push(&reg, "app:v1").await?;
//! let proxy = CountingProxy::start(reg.addr()).await?;
//! proxy.cut_after(Some(2 << 20)); // the registry "dies" 2 MiB into the next transfer
//! let via_proxy = img.reference_via(&proxy.host()); // "127.0.0.1:PROXY/app:v1"
//! // ... pull via_proxy, trusting reg.ca_pem_path(), then count at the registry:
//! let gets = reg.blob_gets(&img.layers[0].0)?;
//! # let _ = (via_proxy, gets); Ok(()) }
//! ```
//!
//! Invariants: every process, task, mount and temp dir a fixture creates is gone after its drop;
//! nothing listens on a fixed port (never 5000); nothing touches the network beyond loopback.

pub mod accesslog;
pub mod containerd;
pub mod dnsmasq;
pub mod dockerd;
pub mod image;
pub mod kube_api;
pub mod netns;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod tls;
pub mod tmpfs;

use std::net::TcpListener;

pub use accesslog::AccessLogEntry;
pub use containerd::Containerd;
pub use dockerd::Dockerd;
pub use image::{
    ImageBuilder, LayerGen, ManifestFormat, PlatformSpec, PushedImage, PushedIndex, MIN_LAYER_SIZE,
};
pub use proxy::{CountingProxy, HttpFault};
pub use push::{push_blob, push_blob_chunks, push_manifest};
pub use registry::{Registry, RegistryBuilder};
pub use tmpfs::TmpfsMount;

/// A port that was free on 127.0.0.1 a moment ago (bind to :0, read, release).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Installs rustls' ring crypto provider process-wide (idempotent). The kit's constructors call it;
/// call it yourself before building other rustls/reqwest clients in a test.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Test logging: `RUST_LOG` filter (default `info`), captured per test by the harness. Idempotent.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
