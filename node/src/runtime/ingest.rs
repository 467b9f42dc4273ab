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

use preheat_core::manifest::{self, parse_manifest, select_platform, Manifest, Platform};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::{ImageRecord, Store};

use super::stored::diff_ids;
use super::RuntimeError;

mod tarscan;

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
struct Planned {
    names: Vec<Reference>,
    /// Manifest, index and config documents: `(digest, bytes)`.
    docs: Vec<(Digest, Vec<u8>)>,
    /// Blob files to copy: `(path in archive, digest, size)`.
    files: Vec<(String, Digest, u64)>,
    kind: PlannedKind,
}

enum PlannedKind {
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

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Images of an OCI layout: `index.json` entries, names from their annotations (or the
/// `manifest.json` RepoTags of the same config).
async fn plan_oci(archive: &Archive) -> Result<Vec<Planned>, RuntimeError> {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        media_type: Option<String>,
        digest: Digest,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let docs = archive
        .read_small(&["index.json".into(), "manifest.json".into()])
        .await?;
    let index: Index = parse_json(archive, docs.get("index.json"))?;
    let repo_tags = docs
        .get("manifest.json")
        .map(|b| docker_manifests(archive, b))
        .transpose()?
        .unwrap_or_default();
    let mut out = Vec::new();
    for entry in index.manifests {
        let mut names: Vec<Reference> = Vec::new();
        for key in [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ] {
            let full = entry
                .annotations
                .get(key)
                .filter(|n| n.contains(['/', ':', '@']));
            if let Some(r) = full.and_then(|n| n.parse::<Reference>().ok()) {
                if !names.contains(&r) {
                    names.push(r);
                }
            }
        }
        let (mut docs, mut index_digest, mut platform) = (Vec::new(), None, None);
        let mut digest = entry.digest;
        let mut bytes = read_blob(archive, &digest).await?;
        let mut parsed = parse(archive, &bytes, entry.media_type.as_deref())?;
        if let Manifest::Index(ix) = &parsed {
            let host = Platform::host();
            let child = select_platform(ix, &host)
                .ok_or_else(|| archive.error(&format!("index {digest} has no {host} image")))?;
            platform = child.platform.as_ref().map(ToString::to_string);
            index_digest = Some(digest);
            docs.push((digest, bytes));
            digest = child.digest;
            bytes = read_blob(archive, &digest).await?;
            parsed = parse(archive, &bytes, Some(&child.media_type))?;
        }
        let Manifest::Image(image) = parsed else {
            return Err(archive.error(&format!("{digest} is an index inside an index")));
        };
        let config = read_blob(archive, &image.config.digest).await?;
        for (tags, cfg, _) in &repo_tags {
            if *cfg == blob_name(&image.config.digest) {
                for t in tags {
                    if !names.contains(t) {
                        names.push(t.clone());
                    }
                }
            }
        }
        docs.push((digest, bytes));
        docs.push((image.config.digest, config));
        out.push(Planned {
            names,
            docs,
            files: image
                .layers
                .iter()
                .map(|l| (blob_name(&l.digest), l.digest, l.size))
                .collect(),
            kind: PlannedKind::Oci {
                manifest: digest,
                media_type: image.media_type.clone(),
                index: index_digest,
                platform,
                blobs: image.blobs().map(|d| (d.digest, d.size)).collect(),
            },
        });
    }
    Ok(out)
}

/// Images of a classic docker-archive: one per `manifest.json` entry.
async fn plan_docker(archive: &Archive) -> Result<Vec<Planned>, RuntimeError> {
    let docs = archive.read_small(&["manifest.json".into()]).await?;
    let entries = docker_manifests(
        archive,
        docs.get("manifest.json").map_or(&[][..], Vec::as_slice),
    )?;
    let mut out = Vec::new();
    for (names, config_path, layer_paths) in entries {
        let config = archive
            .read_small(std::slice::from_ref(&config_path))
            .await?
            .remove(&config_path)
            .ok_or_else(|| archive.error(&format!("{config_path} not found")))?;
        let config_digest = Digest::of(&config);
        let diff_ids = diff_ids(&config).map_err(|e| archive.error(&e))?;
        if diff_ids.len() != layer_paths.len() {
            return Err(archive.error(&format!(
                "{config_path}: {} diff ids for {} layers",
                diff_ids.len(),
                layer_paths.len()
            )));
        }
        let mut files = Vec::new();
        for (path, diff_id) in layer_paths.iter().zip(&diff_ids) {
            // `blobs/sha256/<hex>` names its digest; `<id>/layer.tar` is the uncompressed layer.
            let digest = path
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok())
                .unwrap_or(*diff_id);
            let size = archive
                .size(path)
                .ok_or_else(|| archive.error(&format!("layer {path} not found")))?;
            files.push((path.clone(), digest, size));
        }
        let size = config.len() as u64;
        out.push(Planned {
            names,
            docs: vec![(config_digest, config)],
            files,
            kind: PlannedKind::Docker {
                config: (config_digest, size),
            },
        });
    }
    Ok(out)
}

/// `(RepoTags, Config path, Layer paths)` of a `manifest.json` entry.
type DockerEntry = (Vec<Reference>, String, Vec<String>);

/// The entries of `manifest.json`.
fn docker_manifests(archive: &Archive, bytes: &[u8]) -> Result<Vec<DockerEntry>, RuntimeError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        #[serde(default)]
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = parse_json(archive, Some(&bytes.to_vec()))?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let names = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| t.parse::<Reference>().ok())
                .collect();
            (names, e.config, e.layers)
        })
        .collect())
}

fn parse_json<T: serde::de::DeserializeOwned>(
    archive: &Archive,
    bytes: Option<&Vec<u8>>,
) -> Result<T, RuntimeError> {
    let bytes = bytes.ok_or_else(|| archive.error("metadata file missing or too large"))?;
    serde_json::from_slice(bytes).map_err(|e| archive.error(&e.to_string()))
}

fn parse(
    archive: &Archive,
    bytes: &[u8],
    media_type: Option<&str>,
) -> Result<Manifest, RuntimeError> {
    parse_manifest(bytes, media_type).map_err(|e| archive.error(&e.to_string()))
}

/// A small blob of the layout, its digest checked.
async fn read_blob(archive: &Archive, d: &Digest) -> Result<Vec<u8>, RuntimeError> {
    let name = blob_name(d);
    let bytes = archive
        .read_small(std::slice::from_ref(&name))
        .await?
        .remove(&name)
        .ok_or_else(|| archive.error(&format!("{name} not found or too large")))?;
    if Digest::of(&bytes) != *d {
        return Err(archive.error(&format!("{name} does not match its digest")));
    }
    Ok(bytes)
}

impl Archive {
    fn error(&self, reason: &str) -> RuntimeError {
        RuntimeError::Archive {
            path: PathBuf::from(self.path()),
            reason: reason.to_owned(),
        }
    }
}
