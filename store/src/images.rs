//! Image records (`images/<sha256 of reference>.json`) and their completeness.

use std::fs;

use preheat_core::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{blocking, IoContext};
use crate::paths::{write_atomic, Paths};
use crate::{Store, StoreError};

/// What the store knows about one pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Canonical reference, e.g. `docker.io/library/nginx:latest`.
    pub reference: String,
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// The index (manifest list) the manifest was selected from, if any.
    pub index: Option<Digest>,
    pub platform: Option<String>,
    /// Config first, then layers, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
}

/// An image record with how much of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStatus {
    pub record: ImageRecord,
    /// Sum of the sizes of config and layers.
    pub size: u64,
    /// Bytes of config and layers stored: complete blobs plus verified chunks of partial ones.
    pub stored_bytes: u64,
    /// The manifest and every blob are complete.
    pub complete: bool,
}

/// Reads every image record; unreadable ones are skipped with a warning.
pub(crate) fn load_images(paths: &Paths) -> Result<Vec<ImageRecord>, StoreError> {
    let dir = paths.images_dir();
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok())
        {
            Some(rec) => out.push(rec),
            None => tracing::warn!(path = %path.display(), "skipping unreadable image record"),
        }
    }
    Ok(out)
}

impl Store {
    /// Stores (or replaces) the record of an image, durably.
    pub async fn put_image(&self, rec: ImageRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&rec)
            .map_err(|e| StoreError::corrupt(self.dir(), e.to_string()))?;
        let inner = self.inner.clone();
        let reference = rec.reference.clone();
        blocking(move || {
            let paths = &inner.paths;
            write_atomic(&paths.tmp_file("image"), &paths.image(&reference), &bytes)
        })
        .await?;
        self.inner.lock().images.insert(rec.reference.clone(), rec);
        Ok(())
    }

    /// Every image record with its stored size, sorted by reference.
    pub async fn images(&self) -> Result<Vec<ImageStatus>, StoreError> {
        let st = self.inner.lock();
        let out = st
            .images
            .values()
            .map(|rec| {
                let mut stored = 0;
                let mut complete = st.blobs.contains_key(&rec.manifest);
                for (d, size) in &rec.blobs {
                    if st.blobs.contains_key(d) {
                        stored += size;
                    } else {
                        complete = false;
                        if let Some(p) = st.partials.get(d) {
                            stored += p.partial.lock().bytes_done;
                        }
                    }
                }
                ImageStatus {
                    record: rec.clone(),
                    size: rec.blobs.iter().map(|(_, s)| s).sum(),
                    stored_bytes: stored,
                    complete,
                }
            })
            .collect();
        Ok(out)
    }

    /// Declares the wanted images by manifest (or index) digest; their manifests and blobs are never
    /// evicted. Replaces the previous set.
    pub async fn set_wanted(&self, manifests: impl IntoIterator<Item = Digest>) {
        self.inner.lock().wanted = manifests.into_iter().collect();
    }
}
