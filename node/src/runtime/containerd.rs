//! containerd through its gRPC API, as `ctr images pull` leaves things: every blob in the content
//! store (written with its expected digest, so containerd verifies it), the garbage-collection labels
//! that keep the children of the manifest (and index) alive, and an image record whose target is
//! what the reference names (the index for a multi-platform tag, else the manifest). All under a
//! lease, so a half-written image is never collected mid-import nor kept forever.
//!
//! Like kubelet's CRI pull, a tagged reference also gets a `repo@digest` record. With a snapshotter
//! configured (CRI's default is `overlayfs`) the layers are unpacked too, so a pod starts without
//! unpacking first; an unpack failure is only logged, since the CRI plugin unpacks on first use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest, DeleteRequest, GetImageRequest, Image, Info, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest,
};
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::Descriptor;
use preheat_core::manifest::{parse_manifest, Manifest};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;

use super::stored::StoredImage;
use super::{Runtime, RuntimeError};

mod unpack;
mod write;

/// How long detection waits for containerd to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A lease left behind by a crashed import expires after this.
const LEASE_TTL: Duration = Duration::from_secs(3600);

/// A containerd daemon and the namespace images go into.
#[derive(Debug, Clone)]
pub struct ContainerdRuntime {
    channel: Channel,
    address: PathBuf,
    namespace: MetadataValue<containerd_client::tonic::metadata::Ascii>,
    snapshotter: Option<String>,
}

impl ContainerdRuntime {
    /// Connects to the socket at `address` and checks that containerd answers. Imports unpack into
    /// [`super::DEFAULT_CONTAINERD_SNAPSHOTTER`] unless [`Self::with_snapshotter`] says otherwise.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let connect_err =
            |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::Connect {
                runtime: "containerd",
                address: address.display().to_string(),
                source,
            };
        let namespace = MetadataValue::try_from(namespace).map_err(|e| connect_err(Box::new(e)))?;
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(address))
            .await
            .map_err(|e| connect_err(Box::new(e)))?
            .map_err(|e| connect_err(Box::new(e)))?;
        let version = tokio::time::timeout(
            CONNECT_TIMEOUT,
            VersionClient::new(channel.clone()).version(()),
        )
        .await
        .map_err(|e| connect_err(Box::new(e)))?
        .map_err(|e| connect_err(Box::new(e)))?
        .into_inner();
        tracing::debug!(address = %address.display(), version = %version.version, "containerd connected");
        Ok(ContainerdRuntime {
            channel,
            address: address.to_owned(),
            namespace,
            snapshotter: Some(super::DEFAULT_CONTAINERD_SNAPSHOTTER.to_owned()),
        })
    }

    /// Unpack imported images into `snapshotter` (`None`: leave that to the CRI plugin).
    pub fn with_snapshotter(mut self, snapshotter: Option<String>) -> Self {
        self.snapshotter = snapshotter.filter(|s| !s.is_empty());
        self
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    /// A request in our namespace, under `lease` when given.
    fn req<T>(
        &self,
        msg: T,
        lease: Option<&MetadataValue<containerd_client::tonic::metadata::Ascii>>,
    ) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        md.insert("containerd-namespace", self.namespace.clone());
        if let Some(lease) = lease {
            md.insert("containerd-lease", lease.clone());
        }
        req
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    /// The target of image `name`, `None` when there is no such image.
    async fn target(&self, name: &str) -> Result<Option<Descriptor>, RuntimeError> {
        let req = self.req(
            GetImageRequest {
                name: name.to_owned(),
            },
            None,
        );
        match self.images().get(req).await {
            Ok(resp) => Ok(resp.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(RuntimeError::containerd("images get", s)),
        }
    }

    /// Reads a small content blob (an index) whole.
    async fn read_small(&self, digest: &str, size: i64) -> Result<Vec<u8>, RuntimeError> {
        if size > 4 << 20 {
            return Ok(Vec::new());
        }
        let req = self.req(
            ReadContentRequest {
                digest: digest.to_owned(),
                offset: 0,
                size: 0,
            },
            None,
        );
        let mut stream = self
            .content()
            .read(req)
            .await
            .map_err(|s| RuntimeError::containerd("content read", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| RuntimeError::containerd("content read", s))?
        {
            out.extend_from_slice(&msg.data);
            if out.len() > 4 << 20 {
                break;
            }
        }
        Ok(out)
    }

    /// Creates image `name` pointing at `target`, or repoints an existing one.
    async fn put_image(
        &self,
        lease: &MetadataValue<containerd_client::tonic::metadata::Ascii>,
        name: String,
        target: Descriptor,
    ) -> Result<(), RuntimeError> {
        let image = Image {
            name,
            labels: HashMap::from([("io.cri-containerd.image".into(), "managed".into())]),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.images().create(self.req(create, Some(lease))).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                self.images()
                    .update(self.req(update, Some(lease)))
                    .await
                    .map(|_| ())
                    .map_err(|s| RuntimeError::containerd("images update", s))
            }
            Err(s) => Err(RuntimeError::containerd("images create", s)),
        }
    }

    /// Sets `labels` on existing content `digest`.
    async fn label(
        &self,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let req = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                size: 0,
                created_at: None,
                updated_at: None,
                labels,
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        self.content()
            .update(self.req(req, None))
            .await
            .map(|_| ())
            .map_err(|s| RuntimeError::containerd("content update", s))
    }

    /// True when the content store has `digest`.
    async fn has_content(&self, digest: &Digest) -> Result<bool, RuntimeError> {
        let req = self.req(
            InfoRequest {
                digest: digest.to_string(),
            },
            None,
        );
        match self.content().info(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::containerd("content info", s)),
        }
    }

    async fn create_lease(
        &self,
    ) -> Result<MetadataValue<containerd_client::tonic::metadata::Ascii>, RuntimeError> {
        let id = format!("image-preheat-{:016x}", rand::random::<u64>());
        let expire = k8s_openapi::jiff::Timestamp::now()
            + k8s_openapi::jiff::SignedDuration::try_from(LEASE_TTL).unwrap_or_default();
        let req = CreateRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".into(), expire.to_string())]),
        };
        LeasesClient::new(self.channel.clone())
            .create(self.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("leases create", s))?;
        MetadataValue::try_from(id.as_str())
            .map_err(|_| RuntimeError::containerd("leases create", Status::internal("lease id")))
    }

    async fn delete_lease(&self, lease: &MetadataValue<containerd_client::tonic::metadata::Ascii>) {
        let id = lease.to_str().unwrap_or_default().to_owned();
        let req = DeleteRequest { id, sync: false };
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.req(req, None))
            .await
        {
            tracing::warn!(error = %s, "could not delete containerd lease; it expires by itself");
        }
    }

    async fn import_leased(
        &self,
        lease: &MetadataValue<containerd_client::tonic::metadata::Ascii>,
        store: &Store,
        reference: &Reference,
        img: &StoredImage,
    ) -> Result<(), RuntimeError> {
        let diff_ids = img.diff_ids()?;
        for (i, layer) in img.image.layers.iter().enumerate() {
            let mut labels = HashMap::new();
            if let Some(diff) = diff_ids.get(i) {
                labels.insert("containerd.io/uncompressed".to_owned(), diff.to_string());
            }
            self.put_blob(lease, store, &layer.digest, layer.size, labels)
                .await?;
        }
        self.put_blob(
            lease,
            store,
            &img.id(),
            img.config.len() as u64,
            HashMap::new(),
        )
        .await?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            img.id().to_string(),
        )]);
        for (i, layer) in img.image.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.to_string(),
            );
        }
        let m = &img.manifest;
        self.put_blob(lease, store, &m.digest, m.bytes.len() as u64, labels)
            .await?;
        let mut target = Descriptor {
            media_type: m.media_type.clone(),
            digest: m.digest.to_string(),
            size: i64::try_from(m.bytes.len()).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        };
        // The index is the target only when the reference names it (a tag, or its digest).
        let index = img
            .index
            .as_ref()
            .filter(|ix| reference.digest().is_none_or(|d| *d == ix.digest));
        if let Some(ix) = index {
            let mut labels = HashMap::new();
            if let Ok(Manifest::Index(parsed)) = parse_manifest(&ix.bytes, None) {
                for (i, child) in parsed.manifests.iter().enumerate() {
                    if child.digest == m.digest {
                        labels.insert(
                            format!("containerd.io/gc.ref.content.m.{i}"),
                            m.digest.to_string(),
                        );
                    }
                }
            }
            self.put_blob(lease, store, &ix.digest, ix.bytes.len() as u64, labels)
                .await?;
            target = Descriptor {
                media_type: ix.media_type.clone(),
                digest: ix.digest.to_string(),
                size: i64::try_from(ix.bytes.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            };
        }
        let digest_name = format!("{}@{}", reference.name(), target.digest);
        let name = reference.to_string();
        if name != digest_name && reference.tag().is_some() && reference.digest().is_none() {
            self.put_image(lease, digest_name, target.clone()).await?;
        }
        self.put_image(lease, name, target).await?;
        if let Some(snapshotter) = &self.snapshotter {
            match self.unpack(lease, snapshotter, img).await {
                Ok(Some(top)) => {
                    let key = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
                    self.label(&img.id(), HashMap::from([(key, top.to_string())]))
                        .await?;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%reference, snapshotter, error = %e, "unpack failed; containerd unpacks on first use");
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        "containerd"
    }

    async fn has_image(
        &self,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<bool, RuntimeError> {
        let want = manifest.to_string();
        for name in [
            reference.to_string(),
            format!("{}@{manifest}", reference.name()),
        ] {
            let Some(target) = self.target(&name).await? else {
                continue;
            };
            if target.digest == want {
                return Ok(true);
            }
            let bytes = self.read_small(&target.digest, target.size).await?;
            if let Ok(Manifest::Index(ix)) = parse_manifest(&bytes, Some(&target.media_type)) {
                if ix.manifests.iter().any(|d| d.digest == *manifest)
                    && self.has_content(manifest).await?
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn import(
        &self,
        store: &Store,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), RuntimeError> {
        let img = StoredImage::load(store, reference, manifest).await?;
        let lease = self.create_lease().await?;
        let res = self.import_leased(&lease, store, reference, &img).await;
        self.delete_lease(&lease).await;
        res?;
        tracing::debug!(%reference, %manifest, "image imported into containerd");
        Ok(())
    }
}
