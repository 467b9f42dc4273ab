//! A stored image as a `docker save` tar stream, generated on the fly.
//!
//! The archive is both a docker-archive (`manifest.json`, read by every `docker load`) and an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), the layout `docker save` writes
//! since Docker 25; `ctr images import` and skopeo's `oci-archive:` read it too. Layers go in as
//! stored (usually gzip; `docker load` decompresses them and checks the config's diff IDs).
//!
//! Invariant: memory is one read buffer ([`READ_BUF`]) plus the small documents, whatever the image
//! size; a blob shorter than its manifest says ends the stream with an error (the load fails).

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::stored::StoredImage;
use super::RuntimeError;

/// Bytes read from a blob file per stream item.
pub const READ_BUF: usize = 256 * 1024;

const BLOCK: u64 = 512;

/// Streams the complete stored image `manifest` as a `docker save` tar, tagged `reference` when it
/// has a tag. Fails (first item) with `NotStored` when a blob is missing.
pub fn docker_archive(
    store: Store,
    reference: Reference,
    manifest: Digest,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::once(async move {
        let img = StoredImage::load(&store, &reference, &manifest)
            .await
            .map_err(io::Error::other)?;
        let parts = plan(&store, &img, &reference).await?;
        Ok::<_, io::Error>(
            stream::iter(parts)
                .map(move |p| p.into_stream(store.clone()))
                .flatten(),
        )
    })
    .try_flatten()
}

/// One piece of the archive.
enum Part {
    Bytes(Bytes),
    /// A blob file's content (its header is the preceding `Bytes`), then padding.
    Blob {
        digest: Digest,
        size: u64,
    },
}

impl Part {
    fn into_stream(self, store: Store) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            Part::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
            Part::Blob { digest, size } => blob_stream(store, digest, size).boxed(),
        }
    }
}

async fn plan(store: &Store, img: &StoredImage, reference: &Reference) -> io::Result<Vec<Part>> {
    let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let diff_ids = img.diff_ids().map_err(io::Error::other)?;
    if diff_ids.len() != img.image.layers.len() {
        return Err(io::Error::other(RuntimeError::Manifest {
            digest: img.manifest.digest,
            reason: format!(
                "{} layers but {} diff ids in the config",
                img.image.layers.len(),
                diff_ids.len()
            ),
        }));
    }
    let repo_tags: Vec<String> = reference
        .tag()
        .map(|t| format!("{}:{t}", reference.name()))
        .into_iter()
        .collect();
    let docker_manifest = json!([{
        "Config": blob_path(&img.id()),
        "RepoTags": repo_tags,
        "Layers": img.image.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
    }]);
    let mut annotations = json!({ "io.containerd.image.name": reference.to_string() });
    if let Some(tag) = reference.tag() {
        annotations["org.opencontainers.image.ref.name"] = json!(tag);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": preheat_core::manifest::OCI_INDEX,
        "manifests": [{
            "mediaType": img.manifest.media_type,
            "digest": img.manifest.digest.to_string(),
            "size": img.manifest.bytes.len(),
            "annotations": annotations,
        }],
    });
    let mut parts = vec![
        small_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?,
        small_file("index.json", &to_json(&index)?)?,
        small_file("manifest.json", &to_json(&docker_manifest)?)?,
        Part::Bytes(header("blobs/", 0, tar::EntryType::Directory)?),
        Part::Bytes(header("blobs/sha256/", 0, tar::EntryType::Directory)?),
        small_file(&blob_path(&img.manifest.digest), &img.manifest.bytes)?,
        small_file(&blob_path(&img.id()), &img.config)?,
    ];
    let mut seen = vec![img.manifest.digest, img.id()];
    for layer in &img.image.layers {
        if seen.contains(&layer.digest) {
            continue;
        }
        seen.push(layer.digest);
        let stored = store
            .blob_len(&layer.digest)
            .await
            .map_err(io::Error::other)?;
        if stored != Some(layer.size) {
            return Err(io::Error::other(RuntimeError::Manifest {
                digest: img.manifest.digest,
                reason: format!(
                    "layer {} is stored with {stored:?} bytes, the manifest says {}",
                    layer.digest, layer.size
                ),
            }));
        }
        parts.push(Part::Bytes(header(
            &blob_path(&layer.digest),
            layer.size,
            tar::EntryType::Regular,
        )?));
        parts.push(Part::Blob {
            digest: layer.digest,
            size: layer.size,
        });
    }
    parts.push(Part::Bytes(Bytes::from_static(&[0u8; 1024])));
    Ok(parts)
}

fn to_json(v: &serde_json::Value) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

/// Header, content and padding of a small in-memory file.
fn small_file(path: &str, content: &[u8]) -> io::Result<Part> {
    let mut buf = BytesMut::with_capacity(512 + content.len() + 512);
    buf.extend_from_slice(&header(
        path,
        content.len() as u64,
        tar::EntryType::Regular,
    )?);
    buf.extend_from_slice(content);
    buf.resize(buf.len() + padding(content.len() as u64), 0);
    Ok(Part::Bytes(buf.freeze()))
}

fn header(path: &str, size: u64, kind: tar::EntryType) -> io::Result<Bytes> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(Bytes::copy_from_slice(h.as_bytes()))
}

fn padding(size: u64) -> usize {
    // Less than one 512-byte block, so it always fits.
    usize::try_from((BLOCK - size % BLOCK) % BLOCK).unwrap_or(0)
}

enum BlobState {
    Start,
    Reading(tokio::fs::File, u64),
    Done,
}

/// The blob's `size` bytes in [`READ_BUF`] pieces, then the tar padding.
fn blob_stream(
    store: Store,
    digest: Digest,
    size: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::try_unfold(BlobState::Start, move |state| {
        let store = store.clone();
        async move {
            match state {
                BlobState::Start => {
                    let file = store.open_blob(&digest).await.map_err(io::Error::other)?;
                    Ok(Some((Bytes::new(), BlobState::Reading(file, size))))
                }
                BlobState::Reading(_, 0) => {
                    let pad = vec![0u8; padding(size)];
                    Ok(Some((Bytes::from(pad), BlobState::Done)))
                }
                BlobState::Reading(mut file, remaining) => {
                    let want = usize::try_from(remaining).unwrap_or(READ_BUF).min(READ_BUF);
                    let mut buf = BytesMut::zeroed(want);
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("blob {digest} ended {remaining} bytes early"),
                        ));
                    }
                    buf.truncate(n);
                    Ok(Some((
                        buf.freeze(),
                        BlobState::Reading(file, remaining - n as u64),
                    )))
                }
                BlobState::Done => Ok(None),
            }
        }
    })
    .try_filter(|b| futures::future::ready(!b.is_empty()))
}
