//! Finding the images in a listed archive: which documents to read, which blobs to copy.

use std::collections::HashMap;

use preheat_core::manifest::{parse_manifest, select_platform, Manifest, Platform};
use preheat_core::reference::Reference;
use preheat_core::Digest;

use super::tarscan::Archive;
use super::{Planned, PlannedKind};
use crate::runtime::stored::diff_ids;
use crate::runtime::RuntimeError;

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Images of an OCI layout: `index.json` entries, names from their annotations (or the
/// `manifest.json` RepoTags of the same config).
pub(super) async fn plan_oci(archive: &Archive) -> Result<Vec<Planned>, RuntimeError> {
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
pub(super) async fn plan_docker(archive: &Archive) -> Result<Vec<Planned>, RuntimeError> {
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
