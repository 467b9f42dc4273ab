//! Docker through bollard: imports stream a [`docker_archive`] to `/images/load`.
//!
//! What differs from `docker pull`: the image ID (config digest) and tag are the same, but a load
//! sets no RepoDigests (Docker's `/images/load` only accepts tags, and `/images/{name}/tag` refuses
//! digests). With repo digests on, the import then asks dockerd to pull `repo@digest`: dockerd finds
//! the image ID present, fetches only the manifest from the registry and records the RepoDigest a
//! pull records (best effort: a failure is logged, the loaded image stays). Without it
//! `docker images --digests` shows `<none>`; [`Runtime::has_image`] therefore also accepts an image
//! whose ID is the manifest's config digest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::StreamExt;
use preheat_core::manifest::{parse_manifest, Manifest};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;

use super::archive::docker_archive;
use super::stored::StoredImage;
use super::{Runtime, RuntimeError};
use crate::registry::credentials::{Credential, DockerConfig};

/// Deadline for short calls (version, inspect), in seconds.
const CALL_TIMEOUT_SECS: u64 = 30;
/// Deadline for one `/images/load` (dockerd answers only after reading the whole archive).
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Deadline for the manifest-only pull that records a RepoDigest.
const REPO_DIGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long detection waits for the daemon to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Docker daemon.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    store: Option<Store>,
    /// manifest → image ID, for images this process loaded.
    loaded: Mutex<HashMap<Digest, Digest>>,
    /// Record RepoDigests after a load, with these registry credentials.
    repo_digests: Option<DockerConfig>,
}

impl DockerRuntime {
    /// Connects to `host` (`unix:///path`, `/path`, `tcp://h:p`, `http://h:p`) and negotiates the
    /// API version (Debian's docker.io 20.10 speaks 1.41).
    pub async fn connect(host: &str, store: Option<Store>) -> Result<Self, RuntimeError> {
        let connect_err =
            |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::Connect {
                runtime: "docker",
                address: host.to_owned(),
                source,
            };
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            Docker::connect_with_unix(host, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(host, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
        .map_err(|e| connect_err(Box::new(e)))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|e| connect_err(Box::new(e)))?
            .map_err(|e| connect_err(Box::new(e)))?;
        tracing::debug!(host, "docker connected");
        Ok(DockerRuntime {
            docker,
            host: host.to_owned(),
            store,
            loaded: Mutex::new(HashMap::new()),
            repo_digests: None,
        })
    }

    /// Records RepoDigests after loads (see the module docs), with these credentials.
    pub fn with_repo_digests(mut self, credentials: Option<DockerConfig>) -> Self {
        self.repo_digests = credentials;
        self
    }

    /// Lets dockerd pull `name@digest` of an image it already holds: the manifest is all it
    /// fetches, and it records the RepoDigest. Best effort.
    async fn record_repo_digest(&self, reference: &Reference, digest: &Digest) {
        let Some(creds) = &self.repo_digests else {
            return;
        };
        let from = format!("{}@{digest}", reference.name());
        let auth = creds.lookup(reference.registry()).map(|c| match c {
            Credential::Basic { username, password } => DockerCredentials {
                username: Some(username.clone()),
                password: Some(password.clone()),
                serveraddress: Some(reference.registry().to_owned()),
                ..DockerCredentials::default()
            },
            Credential::IdentityToken(t) => DockerCredentials {
                identitytoken: Some(t.clone()),
                serveraddress: Some(reference.registry().to_owned()),
                ..DockerCredentials::default()
            },
        });
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&from)
            .build();
        let pull = async {
            let mut progress = self.docker.create_image(Some(opts), None, auth);
            while let Some(item) = progress.next().await {
                item?;
            }
            Ok::<_, bollard::errors::Error>(())
        };
        match tokio::time::timeout(REPO_DIGEST_TIMEOUT, pull).await {
            Ok(Ok(())) => tracing::debug!(%from, "repo digest recorded in docker"),
            Ok(Err(e)) => {
                tracing::warn!(%from, error = %e, "docker could not record the repo digest")
            }
            Err(_) => tracing::warn!(%from, "docker did not record the repo digest in time"),
        }
    }

    /// The bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `Some(id)` of the image `name` refers to, `None` when Docker has no such image.
    async fn image_id(&self, name: &str) -> Result<Option<(String, Vec<String>)>, RuntimeError> {
        match self.docker.inspect_image(name).await {
            Ok(img) => Ok(Some((
                img.id.unwrap_or_default(),
                img.repo_digests.unwrap_or_default(),
            ))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(RuntimeError::Docker {
                op: "inspect",
                source,
            }),
        }
    }

    /// The config digest of `manifest`: loaded by this process, or read from the store.
    async fn config_of(&self, manifest: &Digest) -> Option<Digest> {
        if let Some(id) = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(manifest)
        {
            return Some(*id);
        }
        let bytes = self.store.as_ref()?.read_small(manifest).await.ok()?;
        match parse_manifest(&bytes, None).ok()? {
            Manifest::Image(m) => Some(m.config.digest),
            Manifest::Index(_) => None,
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn has_image(
        &self,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<bool, RuntimeError> {
        let pinned = format!("{}@{manifest}", reference.name());
        if self.image_id(&pinned).await?.is_some() {
            return Ok(true);
        }
        let Some(tag) = reference.tag() else {
            return Ok(false);
        };
        let Some((id, repo_digests)) = self
            .image_id(&format!("{}:{tag}", reference.name()))
            .await?
        else {
            return Ok(false);
        };
        let suffix = format!("@{manifest}");
        if repo_digests.iter().any(|d| d.ends_with(&suffix)) {
            return Ok(true);
        }
        Ok(self
            .config_of(manifest)
            .await
            .is_some_and(|config| id == config.to_string()))
    }

    async fn import(
        &self,
        store: &Store,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), RuntimeError> {
        let img = StoredImage::load(store, reference, manifest).await?;
        let id = img.id();
        let archive = docker_archive(store.clone(), reference.clone(), *manifest);
        let loader = self.docker.clone().with_timeout(IMPORT_TIMEOUT);
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut progress = loader.import_image_stream(opts, archive, None);
        while let Some(item) = progress.next().await {
            item.map_err(|source| RuntimeError::Docker { op: "load", source })?;
        }
        let name = match reference.tag() {
            Some(tag) => format!("{}:{tag}", reference.name()),
            None => id.to_string(),
        };
        let got = self.image_id(&name).await?.map(|(id, _)| id);
        if got.as_deref() != Some(id.to_string().as_str()) {
            return Err(RuntimeError::Verify {
                runtime: "docker",
                expected: id,
                got: got.unwrap_or_else(|| "nothing".into()),
            });
        }
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(*manifest, id);
        // A pull of a tag records the digest the tag resolved to: the index's when there is one.
        let resolved = img.index.as_ref().map_or(*manifest, |i| i.digest);
        self.record_repo_digest(reference, &resolved).await;
        tracing::debug!(%reference, %manifest, image_id = %id, "image loaded into docker");
        Ok(())
    }
}
