//! Container runtimes the store imports images into: Docker (bollard, a `docker save` archive
//! streamed to `/images/load`) and containerd (gRPC: content, image records); plus the reverse,
//! ingesting image tarballs found in a directory (`MOUNT_DIR`) into the store.
//!
//! ```text
//!  Store ──docker_archive (tar stream, one blob file at a time)──► dockerd /images/load
//!  Store ──content Write (expected digest, 1 MiB messages) ──► containerd ──images Create/Update
//!  MOUNT_DIR/*.tar ──ingest_dir (sha256-verified BlobWriter)──► Store + ImageRecord
//! ```
//!
//! Invariants: memory per import is bounded by one read buffer, never a whole blob or image;
//! an image is imported only when every blob it needs is complete in the store; after an import
//! the runtime's image ID is the config digest (checked), as after a pull.

mod archive;
mod containerd;
mod docker;
mod ingest;
mod stored;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{Store, StoreError};

use crate::registry::credentials::DockerConfig;

pub use archive::docker_archive;
pub use containerd::ContainerdRuntime;
pub use docker::DockerRuntime;
pub use ingest::ingest_dir;

/// Default containerd socket.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Default Docker endpoint when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The containerd namespace kubelet's CRI plugin uses.
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "k8s.io";

/// The snapshotter kubelet's CRI plugin uses by default; [`connect`] unpacks into it.
pub const DEFAULT_CONTAINERD_SNAPSHOTTER: &str = "overlayfs";

/// Which runtimes to import into (`RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Every runtime whose socket answers.
    #[default]
    Auto,
    Docker,
    Containerd,
    /// Keep images in the store only.
    None,
}

/// Where the runtimes are.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    /// `unix:///path`, `tcp://host:port` or `http://host:port`; `None` means [`DEFAULT_DOCKER_HOST`].
    pub docker_host: Option<String>,
    pub containerd_address: PathBuf,
    pub containerd_namespace: String,
    /// After a Docker load, let dockerd pull `repo@digest` so it records the RepoDigest a pull
    /// records; dockerd finds the image ID present and asks the registry for the manifest only.
    /// `Some(credentials)` turns it on (an empty config: anonymous).
    pub docker_repo_digests: Option<DockerConfig>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: RuntimeKind::Auto,
            docker_host: None,
            containerd_address: PathBuf::from(DEFAULT_CONTAINERD_ADDRESS),
            containerd_namespace: DEFAULT_CONTAINERD_NAMESPACE.to_owned(),
            docker_repo_digests: None,
        }
    }
}

/// A container runtime images are imported into.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// `"docker"` or `"containerd"` (a metric label).
    fn name(&self) -> &'static str;
    /// True when the runtime holds the image `manifest` under `reference` (its tag resolves to that
    /// manifest, to an index listing it, or to an image whose ID is that manifest's config), or
    /// under `repository@manifest`.
    async fn has_image(
        &self,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<bool, RuntimeError>;
    /// Imports the stored image `manifest` (complete in `store`) and names it `reference`.
    async fn import(
        &self,
        store: &Store,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), RuntimeError>;
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} is not reachable at {address}")]
    Connect {
        runtime: &'static str,
        address: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {reference} ({manifest}) is not complete in the store")]
    NotStored { reference: String, manifest: Digest },
    #[error("store error on {digest}")]
    Store {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("stored manifest {digest} is not usable: {reason}")]
    Manifest { digest: Digest, reason: String },
    #[error("docker {op} failed")]
    Docker {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("containerd {op} failed")]
    Containerd {
        op: &'static str,
        #[source]
        source: Box<containerd_client::tonic::Status>,
    },
    #[error("{runtime} shows image {got} after the import, expected {expected}")]
    Verify {
        runtime: &'static str,
        expected: Digest,
        got: String,
    },
    #[error("cannot read image archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::NotStored { .. } => "not_stored",
            Self::Store { source, .. } => source.kind(),
            Self::Manifest { .. } => "manifest",
            Self::Docker { .. } => "docker",
            Self::Containerd { .. } => "containerd",
            Self::Verify { .. } => "verify",
            Self::Archive { .. } => "archive",
            Self::Io { .. } => "io",
        }
    }

    pub(crate) fn containerd(op: &'static str, status: containerd_client::tonic::Status) -> Self {
        Self::Containerd {
            op,
            source: Box::new(status),
        }
    }
}

/// Connects the runtimes `cfg` asks for. `Auto` returns every runtime whose socket answers (possibly
/// none); an explicit `Docker` or `Containerd` fails when that runtime does not answer.
pub async fn connect(cfg: &RuntimeConfig) -> Result<Vec<Arc<dyn Runtime>>, RuntimeError> {
    connect_with(cfg, None).await
}

/// [`connect`], giving Docker the store so that [`Runtime::has_image`] recognises images loaded by
/// an earlier process (a load sets no RepoDigests; the store maps the manifest to the image ID).
pub async fn connect_with(
    cfg: &RuntimeConfig,
    store: Option<Store>,
) -> Result<Vec<Arc<dyn Runtime>>, RuntimeError> {
    let mut out: Vec<Arc<dyn Runtime>> = Vec::new();
    let host = cfg.docker_host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST);
    let want_docker = matches!(cfg.kind, RuntimeKind::Auto | RuntimeKind::Docker);
    let want_containerd = matches!(cfg.kind, RuntimeKind::Auto | RuntimeKind::Containerd);
    if want_docker {
        match DockerRuntime::connect(host, store.clone()).await {
            Ok(d) => out.push(Arc::new(
                d.with_repo_digests(cfg.docker_repo_digests.clone()),
            )),
            Err(e) if cfg.kind == RuntimeKind::Auto => {
                tracing::debug!(host, error = %e, "docker not detected");
            }
            Err(e) => return Err(e),
        }
    }
    if want_containerd {
        match ContainerdRuntime::connect(&cfg.containerd_address, &cfg.containerd_namespace).await {
            Ok(c) => out.push(Arc::new(c)),
            Err(e) if cfg.kind == RuntimeKind::Auto => {
                tracing::debug!(address = %cfg.containerd_address.display(), error = %e, "containerd not detected");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
