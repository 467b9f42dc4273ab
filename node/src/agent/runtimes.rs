//! Connects the container runtimes chosen by `RUNTIME` (`image_preheat::runtime`), the
//! docker-archive exporter of `/images/download`, and the `MOUNT_DIR` ingest.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use image_preheat::registry::credentials::DockerConfig;
use image_preheat::runtime::{self, Runtime, RuntimeConfig};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;

use super::config::AgentArgs;
use super::download::ArchiveFn;
use super::error_chain;
use super::reconcile::ImageRuntime;
use crate::cli::EXIT_RUNTIME;

pub struct Runtimes {
    pub importers: Vec<Arc<dyn ImageRuntime>>,
    pub archive: Option<ArchiveFn>,
}

/// A runtime of `image_preheat::runtime` seen through the reconciler's trait.
struct Adapter(Arc<dyn Runtime>);

impl ImageRuntime for Adapter {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn has_image<'a>(
        &'a self,
        reference: &'a Reference,
        manifest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            self.0
                .has_image(reference, manifest)
                .await
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        })
    }

    fn import<'a>(
        &'a self,
        store: &'a Store,
        reference: &'a Reference,
        manifest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.0
                .import(store, reference, manifest)
                .await
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        })
    }
}

/// The runtimes `RUNTIME` asks for (`auto`: those whose sockets answer, possibly none); an
/// explicit runtime that does not answer is a runtime failure (exit 1).
pub async fn connect(args: &AgentArgs, store: &Store) -> Result<Runtimes, u8> {
    let cfg = RuntimeConfig {
        kind: args.runtime,
        docker_host: args.docker_host.clone(),
        containerd_address: args.containerd_address.clone(),
        containerd_namespace: args.containerd_namespace.clone(),
        docker_repo_digests: args.docker_repo_digests.then(|| {
            // The same pull secrets the registry client reads (it already rejected a bad file).
            args.registry
                .config()
                .docker_config
                .and_then(|p| DockerConfig::load(&p).ok())
                .unwrap_or_default()
        }),
    };
    let found = runtime::connect_with(&cfg, Some(store.clone()))
        .await
        .map_err(|e| {
            eprintln!("error: {}", error_chain(&e));
            EXIT_RUNTIME
        })?;
    let names: Vec<&str> = found.iter().map(|r| r.name()).collect();
    tracing::info!(runtime = ?args.runtime, ?names, "container runtimes");
    let archive: ArchiveFn = Arc::new(|store, reference, manifest| {
        runtime::docker_archive(store, reference, manifest).boxed()
    });
    Ok(Runtimes {
        importers: found
            .into_iter()
            .map(|r| Arc::new(Adapter(r)) as Arc<dyn ImageRuntime>)
            .collect(),
        archive: Some(archive),
    })
}

/// Ingests the image tarballs in `dir` (no network); returns the images found. A missing
/// directory is no error; a bad tarball is logged and skipped by the ingest.
pub async fn ingest(store: &Store, dir: &Path) -> Vec<Reference> {
    if !dir.is_dir() {
        tracing::debug!(dir = %dir.display(), "no MOUNT_DIR");
        return Vec::new();
    }
    match runtime::ingest_dir(store, dir).await {
        Ok(found) => {
            for (reference, manifest) in &found {
                tracing::info!(%reference, %manifest, dir = %dir.display(), "image ingested from MOUNT_DIR");
            }
            found.into_iter().map(|(r, _)| r).collect()
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %error_chain(&e), "MOUNT_DIR ingest failed");
            Vec::new()
        }
    }
}
