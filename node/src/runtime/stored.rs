//! One image as the store holds it: manifest bytes, parsed manifest, the index it came from, and
//! the config's diff IDs; loaded only when every blob is complete.

use bytes::Bytes;
use preheat_core::manifest::{parse_manifest, ImageManifest, Manifest};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;

use super::RuntimeError;

/// A raw manifest or index document.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A complete stored image.
#[derive(Debug, Clone)]
pub(crate) struct StoredImage {
    pub manifest: Doc,
    pub image: ImageManifest,
    /// The index the manifest was selected from, when the store holds it.
    pub index: Option<Doc>,
    pub config: Bytes,
}

impl StoredImage {
    /// Loads `manifest` (and, from `reference`'s image record, its index); fails with `NotStored`
    /// unless the manifest, config and every layer are complete.
    pub async fn load(
        store: &Store,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<StoredImage, RuntimeError> {
        let not_stored = || RuntimeError::NotStored {
            reference: reference.to_string(),
            manifest: *manifest,
        };
        if !store.contains(manifest).await {
            return Err(not_stored());
        }
        let bytes = read_small(store, manifest).await?;
        let image = match parse_manifest(&bytes, None) {
            Ok(Manifest::Image(m)) => m,
            Ok(Manifest::Index(_)) => {
                return Err(RuntimeError::Manifest {
                    digest: *manifest,
                    reason: "an index, not an image manifest".into(),
                })
            }
            Err(e) => {
                return Err(RuntimeError::Manifest {
                    digest: *manifest,
                    reason: e.to_string(),
                })
            }
        };
        for d in image.blobs() {
            if !store.contains(&d.digest).await {
                return Err(not_stored());
            }
        }
        let config = read_small(store, &image.config.digest).await?;
        let name = reference.to_string();
        let record = store
            .images()
            .await
            .map_err(|source| RuntimeError::Store {
                digest: *manifest,
                source,
            })?
            .into_iter()
            .map(|s| s.record)
            .find(|r| r.reference == name && r.manifest == *manifest);
        let mut index = None;
        if let Some(d) = record.and_then(|r| r.index) {
            if store.contains(&d).await {
                let bytes = read_small(store, &d).await?;
                let media_type = match parse_manifest(&bytes, None) {
                    Ok(m) => m.media_type().to_owned(),
                    Err(e) => {
                        return Err(RuntimeError::Manifest {
                            digest: d,
                            reason: e.to_string(),
                        })
                    }
                };
                index = Some(Doc {
                    digest: d,
                    media_type,
                    bytes,
                });
            }
        }
        Ok(StoredImage {
            manifest: Doc {
                digest: *manifest,
                media_type: image.media_type.clone(),
                bytes,
            },
            image,
            index,
            config,
        })
    }

    /// The image ID a runtime shows: the config digest.
    pub fn id(&self) -> Digest {
        self.image.config.digest
    }

    /// `rootfs.diff_ids` of the config.
    pub fn diff_ids(&self) -> Result<Vec<Digest>, RuntimeError> {
        diff_ids(&self.config).map_err(|reason| RuntimeError::Manifest {
            digest: self.id(),
            reason,
        })
    }
}

/// `rootfs.diff_ids` of an image config document.
pub(crate) fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    serde_json::from_slice::<Config>(config)
        .map(|c| c.rootfs.diff_ids)
        .map_err(|e| format!("config: {e}"))
}

async fn read_small(store: &Store, d: &Digest) -> Result<Bytes, RuntimeError> {
    store
        .read_small(d)
        .await
        .map_err(|source| RuntimeError::Store { digest: *d, source })
}
