//! Image tarballs in a directory (`MOUNT_DIR`) into the store, with no network access: OCI image
//! layouts (`index.json` + `blobs/sha256/…`, what `docker save` writes since Docker 25, `ctr export`,
//! skopeo's `oci-archive:` and [`super::docker_archive`]) and classic docker-archives
//! (`manifest.json` + `<id>/layer.tar`, `docker save` before 25). Plain or gzip-compressed.
//!
//! An OCI layout keeps its manifests, so the manifest digest is the registry's. A classic
//! docker-archive holds no manifest: one is written (Docker schema 2, layers as stored in the
//! archive, usually uncompressed), so the image ID (config digest) is the registry's but the
//! manifest digest is not.
//!
//! Invariants: every blob goes through a [`preheat_store::BlobWriter`] or `put_small`, so it is
//! sha256-verified before it is visible; memory is one 1 MiB buffer plus small documents (≤ 4 MiB
//! each); the archive is read sequentially, a few times (listing, documents, blobs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use preheat_core::manifest;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{ImageRecord, Store};

use super::RuntimeError;

mod plan;
mod tarscan;

use plan::{plan_docker, plan_oci};
use tarscan::{Archive, Wanted};

/// Docker's media type for an uncompressed layer.
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Ingests every `*.tar`, `*.tar.gz` and `*.tgz` file in `dir` (not hidden, not in subdirectories);
/// a file that fails is logged and skipped. Returns the references stored with their manifests.
pub async fn ingest_dir(
    store: &Store,
    dir: &Path,
) -> Result<Vec<(Reference, Digest)>, RuntimeError> {
    let io_err = |source| RuntimeError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await.map_err(io_err)?;
    while let Some(entry) = rd.next_entry().await.map_err(io_err)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let archive = [".tar", ".tar.gz", ".tgz"]
            .iter()
            .any(|s| name.ends_with(s));
        if name.starts_with('.') || !archive {
            continue;
        }
        // Follows symlinks (a mounted ConfigMap's files are links into `..data`).
        if tokio::fs::metadata(entry.path())
            .await
            .is_ok_and(|m| m.is_file())
        {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        match ingest_file(store, &path).await {
            Ok(images) => out.extend(images),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, kind = e.kind(), "image archive not ingested");
            }
        }
    }
    Ok(out)
}

/// Ingests one image archive; see the module docs.
pub async fn ingest_file(
    store: &Store,
    path: &Path,
) -> Result<Vec<(Reference, Digest)>, RuntimeError> {
    let archive = Archive::list(path.to_owned(), tokio::runtime::Handle::current()).await?;
    let images = if archive.has("index.json") {
        plan_oci(&archive).await?
    } else if archive.has("manifest.json") {
        plan_docker(&archive).await?
    } else {
        return Err(archive.error("neither index.json nor manifest.json found"));
    };
    // Documents first (small, from memory), then one pass over the archive for the big blobs.
    let mut wanted = Wanted::default();
    for img in &images {
        for (d, bytes) in &img.docs {
            store
                .put_small(*d, bytes)
                .await
                .map_err(|source| RuntimeError::Store { digest: *d, source })?;
        }
        for (name, d, size) in &img.files {
            wanted.add(archive.resolve(name), *d, *size);
        }
    }
    let magic = archive.write_blobs(store, wanted).await?;
    let mut out = Vec::new();
    for img in images {
        let record = img.finish(store, &magic, &archive).await?;
        for name in &img.names {
            let mut rec = record.clone();
            rec.reference = name.to_string();
            store
                .put_image(rec)
                .await
                .map_err(|source| RuntimeError::Store {
                    digest: record.manifest,
                    source,
                })?;
            out.push((name.clone(), record.manifest));
        }
        if img.names.is_empty() {
            tracing::warn!(path = %path.display(), manifest = %record.manifest, "image in archive has no name; blobs stored, no record");
        }
    }
    Ok(out)
}

/// One image found in an archive.
pub(super) struct Planned {
    pub names: Vec<Reference>,
    /// Manifest, index and config documents: `(digest, bytes)`.
    pub docs: Vec<(Digest, Vec<u8>)>,
    /// Blob files to copy: `(path in archive, digest, size)`.
    pub files: Vec<(String, Digest, u64)>,
    pub kind: PlannedKind,
}

pub(super) enum PlannedKind {
    /// The archive's own manifest.
    Oci {
        manifest: Digest,
        media_type: String,
        index: Option<Digest>,
        platform: Option<String>,
        blobs: Vec<(Digest, u64)>,
    },
    /// A manifest to write once the layers' compression is known.
    Docker { config: (Digest, u64) },
}

impl Planned {
    /// Checks every blob is stored and returns the image record (reference filled in by the caller).
    async fn finish(
        &self,
        store: &Store,
        magic: &HashMap<Digest, [u8; 4]>,
        archive: &Archive,
    ) -> Result<ImageRecord, RuntimeError> {
        let rec = match &self.kind {
            PlannedKind::Oci {
                manifest,
                media_type,
                index,
                platform,
                blobs,
            } => ImageRecord {
                reference: String::new(),
                manifest: *manifest,
                manifest_media_type: media_type.clone(),
                index: *index,
                platform: platform.clone(),
                blobs: blobs.clone(),
            },
            PlannedKind::Docker { config } => {
                let layers: Vec<serde_json::Value> = self
                    .files
                    .iter()
                    .map(|(_, d, size)| {
                        let media_type = match magic.get(d) {
                            Some([0x1f, 0x8b, ..]) => manifest::DOCKER_LAYER_GZIP,
                            Some([0x28, 0xb5, 0x2f, 0xfd]) => manifest::OCI_LAYER_ZSTD,
                            _ => DOCKER_LAYER_TAR,
                        };
                        serde_json::json!({ "mediaType": media_type, "size": size, "digest": d.to_string() })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": manifest::DOCKER_MANIFEST,
                    "config": {
                        "mediaType": manifest::DOCKER_CONFIG,
                        "size": config.1,
                        "digest": config.0.to_string(),
                    },
                    "layers": layers,
                });
                let bytes = serde_json::to_vec_pretty(&doc)
                    .map_err(|e| archive.error(&format!("manifest: {e}")))?;
                let digest = Digest::of(&bytes);
                store
                    .put_small(digest, &bytes)
                    .await
                    .map_err(|source| RuntimeError::Store { digest, source })?;
                let mut blobs = vec![*config];
                blobs.extend(self.files.iter().map(|(_, d, s)| (*d, *s)));
                ImageRecord {
                    reference: String::new(),
                    manifest: digest,
                    manifest_media_type: manifest::DOCKER_MANIFEST.to_owned(),
                    index: None,
                    platform: None,
                    blobs,
                }
            }
        };
        for (d, _) in &rec.blobs {
            if !store.contains(d).await {
                return Err(archive.error(&format!("blob {d} is missing from the archive")));
            }
        }
        Ok(rec)
    }
}

impl Archive {
    pub(super) fn error(&self, reason: &str) -> RuntimeError {
        RuntimeError::Archive {
            path: PathBuf::from(self.path()),
            reason: reason.to_owned(),
        }
    }
}
