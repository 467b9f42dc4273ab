//! Loading the store from disk and reading/writing complete blobs.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use preheat_core::chunk::chunk_hash;
use preheat_core::digest::Hasher;
use preheat_core::{ChunkIndex, ChunkLayout, Digest};

use crate::error::{blocking, IoContext};
use crate::evict::{BlobEntry, PartialEntry, State, Verified};
use crate::images::load_images;
use crate::partial::Partial;
use crate::paths::{fsync_dir, remove_dir_if_exists, remove_if_exists, write_atomic, Paths};
use crate::{Store, StoreError, SMALL_LIMIT};

/// Progress of a partial blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialInfo {
    pub layout: ChunkLayout,
    /// One flag per chunk: stored and verified.
    pub done: Vec<bool>,
    pub bytes_done: u64,
    /// A chunk index was set (swarm mode), so `chunk_index` can serve it.
    pub has_index: bool,
}

/// Builds the in-memory state from disk, repairing what a crash left behind. Blocking.
pub(crate) fn load_state(paths: &Paths, chunk_size: u32) -> Result<State, StoreError> {
    let mut st = State::default();
    let dir = paths.blobs_dir();
    let (mut blobs, mut indexes) = (Vec::new(), HashSet::new());
    for entry in fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        let name = name.to_string_lossy();
        if let Some(d) = name
            .strip_suffix(".index")
            .and_then(|h| Digest::from_hex(h).ok())
        {
            indexes.insert(d);
        } else if let Ok(d) = Digest::from_hex(&name) {
            blobs.push(d);
        } else {
            tracing::warn!(name = %name, "ignoring unknown file in blob directory");
        }
    }
    let now = SystemTime::now();
    for d in &indexes {
        if !blobs.contains(d) {
            remove_if_exists(&paths.index(d))?;
        }
    }
    for d in blobs {
        let path = paths.blob(&d);
        let meta = fs::metadata(&path).at(&path)?;
        let size = meta.len();
        let stored = indexes
            .contains(&d)
            .then(|| read_index(paths, &d).ok())
            .flatten()
            .filter(|ix| ix.layout.size == size);
        let index = match stored {
            Some(ix) => ix,
            None => match rebuild_index(paths, &d, chunk_size)? {
                Some(ix) => ix,
                None => {
                    tracing::warn!(digest = %d, "removing stored blob that fails its digest");
                    remove_if_exists(&path)?;
                    remove_if_exists(&paths.index(&d))?;
                    continue;
                }
            },
        };
        let mtime = meta.modified().unwrap_or(now);
        st.insert_blob(
            d,
            BlobEntry {
                size,
                last_access: mtime,
                persisted: mtime,
                verified: Arc::new(Verified::new(index.layout.count(), false)),
                index: Arc::new(index),
            },
        );
    }
    let root = paths.partial_root();
    for entry in fs::read_dir(root).at(root)? {
        let entry = entry.at(root)?;
        let name = entry.file_name();
        let Ok(d) = Digest::from_hex(&name.to_string_lossy()) else {
            tracing::warn!(name = %name.to_string_lossy(), "ignoring unknown entry in partial directory");
            continue;
        };
        if st.blobs.contains_key(&d) {
            remove_dir_if_exists(&entry.path())?;
            continue;
        }
        match Partial::load(paths, d)? {
            Some(p) => {
                let last_access = fs::metadata(&p.dir)
                    .and_then(|m| m.modified())
                    .unwrap_or(now);
                let size = p.size();
                let partial = Arc::new(p);
                st.insert_partial(
                    d,
                    PartialEntry {
                        size,
                        last_access,
                        partial,
                    },
                );
            }
            None => remove_dir_if_exists(&entry.path())?,
        }
    }
    for rec in load_images(paths)? {
        st.images.insert(rec.reference.clone(), rec);
    }
    Ok(st)
}

fn read_index(paths: &Paths, d: &Digest) -> Result<ChunkIndex, StoreError> {
    let path = paths.index(d);
    let bytes = fs::read(&path).at(&path)?;
    let ix: ChunkIndex =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::corrupt(&path, e.to_string()))?;
    if ix.blob != *d || ix.layout.chunk_size == 0 || ix.validate().is_err() {
        return Err(StoreError::corrupt(&path, "index does not fit its blob"));
    }
    Ok(ix)
}

/// Re-hashes a complete blob: its chunk index, written atomically, or `None` if its sha256 is wrong.
fn rebuild_index(
    paths: &Paths,
    d: &Digest,
    chunk_size: u32,
) -> Result<Option<ChunkIndex>, StoreError> {
    let path = paths.blob(d);
    let mut f = File::open(&path).at(&path)?;
    let size = f.metadata().at(&path)?.len();
    let layout = ChunkLayout::new(size, chunk_size);
    let mut sha = Hasher::new();
    let mut hashes = Vec::with_capacity(layout.count() as usize);
    let mut buf = Vec::new();
    for i in 0..layout.count() {
        buf.resize(layout.len(i) as usize, 0);
        f.read_exact(&mut buf).at(&path)?;
        sha.update(&buf);
        hashes.push(chunk_hash(&buf));
    }
    if sha.finish() != *d {
        return Ok(None);
    }
    let ix = ChunkIndex {
        blob: *d,
        layout,
        hashes,
    };
    write_index(paths, &ix)?;
    Ok(Some(ix))
}

pub(crate) fn write_index(paths: &Paths, ix: &ChunkIndex) -> Result<(), StoreError> {
    let dest = paths.index(&ix.blob);
    let bytes = serde_json::to_vec(ix).map_err(|e| StoreError::corrupt(&dest, e.to_string()))?;
    write_atomic(&paths.tmp_file("index"), &dest, &bytes)
}

/// Moves a fully written, fsynced, verified file into place as blob `ix.blob`: index first, then
/// the blob itself, each made durable by a directory fsync. Blocking.
pub(crate) fn install(paths: &Paths, file: &Path, ix: &ChunkIndex) -> Result<(), StoreError> {
    write_index(paths, ix)?;
    fs::set_permissions(file, Permissions::from_mode(0o444)).at(file)?;
    let dest = paths.blob(&ix.blob);
    fs::rename(file, &dest).at(&dest)?;
    fsync_dir(paths.blobs_dir())
}

fn not_found(d: Digest) -> impl Fn(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
            StoreError::NotFound(d)
        }
        e => e,
    }
}

impl Store {
    /// True when the complete blob is stored.
    pub async fn contains(&self, d: &Digest) -> bool {
        self.inner.lock().blobs.contains_key(d)
    }

    /// Every complete blob, sorted.
    pub fn complete_blobs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.inner.lock().blobs.keys().copied().collect();
        v.sort();
        v
    }

    /// Every partial blob (being written or left for a resume), sorted.
    pub fn partial_blobs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.inner.lock().partials.keys().copied().collect();
        v.sort();
        v
    }

    /// True while a partial of `d` exists and a writer (or a discard) holds it: its chunks are
    /// still arriving, as opposed to a partial left for a later resume.
    pub fn being_written(&self, d: &Digest) -> bool {
        let st = self.inner.lock();
        st.partials.contains_key(d) && st.busy.contains(d)
    }

    /// Size of a complete blob.
    pub async fn blob_len(&self, d: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.lock().blobs.get(d).map(|e| e.size))
    }

    /// Path of a complete blob (for importers that want a file); does not touch the LRU.
    pub fn blob_path(&self, d: &Digest) -> std::path::PathBuf {
        self.inner.paths.blob(d)
    }

    /// Records an access for LRU; at most once a minute per blob it is persisted as the mtime.
    async fn touch(&self, d: &Digest) {
        let now = SystemTime::now();
        if self.inner.lock().touch(d, now) {
            let path = self.inner.paths.blob(d);
            // Best effort: the access time only orders eviction.
            let res = blocking(move || {
                File::open(&path)
                    .and_then(|f| f.set_modified(now))
                    .at(&path)
            })
            .await;
            if let Err(e) = res {
                tracing::debug!(error = %e, "could not persist access time");
            }
        }
    }

    /// Opens a complete blob for reading.
    pub async fn open_blob(&self, d: &Digest) -> Result<tokio::fs::File, StoreError> {
        if !self.contains(d).await {
            return Err(StoreError::NotFound(*d));
        }
        self.touch(d).await;
        let path = self.inner.paths.blob(d);
        tokio::fs::File::open(&path)
            .await
            .at(&path)
            .map_err(not_found(*d))
    }

    /// Reads a small complete blob (manifest, config) whole, re-checking its digest.
    pub async fn read_small(&self, d: &Digest) -> Result<Bytes, StoreError> {
        let size = self.blob_len(d).await?.ok_or(StoreError::NotFound(*d))?;
        if size > SMALL_LIMIT {
            return Err(StoreError::TooLarge {
                size,
                limit: SMALL_LIMIT,
            });
        }
        self.touch(d).await;
        let path = self.inner.paths.blob(d);
        let bytes = tokio::fs::read(&path)
            .await
            .at(&path)
            .map_err(not_found(*d))?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(StoreError::corrupt(
                &path,
                format!("content hashes to {actual}"),
            ));
        }
        Ok(Bytes::from(bytes))
    }

    /// Stores a small blob held in memory: digest checked, written, fsynced, renamed into place.
    pub async fn put_small(&self, d: Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if actual != d {
            return Err(StoreError::DigestMismatch {
                expected: d,
                actual,
            });
        }
        if self.contains(&d).await {
            return Ok(());
        }
        let _busy = self.claim(d)?;
        let size = bytes.len() as u64;
        let _reservation = self.reserve(size).await?;
        let layout = ChunkLayout::new(size, self.chunk_size());
        let ix = ChunkIndex {
            blob: d,
            layout,
            hashes: bytes
                .chunks(self.chunk_size() as usize)
                .map(chunk_hash)
                .collect(),
        };
        let inner = self.inner.clone();
        let data = bytes.to_vec();
        blocking(move || {
            let tmp = inner.paths.tmp_file("blob");
            let res = (|| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .at(&tmp)?;
                f.write_all(&data).at(&tmp)?;
                f.sync_all().at(&tmp)?;
                install(&inner.paths, &tmp, &ix)
            })();
            if res.is_err() {
                let _ = fs::remove_file(&tmp);
                return res;
            }
            // Updated here, not after the await, so a cancelled caller cannot leave it out.
            let now = SystemTime::now();
            let stale = {
                let mut st = inner.lock();
                st.insert_blob(
                    d,
                    BlobEntry {
                        size,
                        last_access: now,
                        persisted: now,
                        verified: Arc::new(Verified::new(ix.layout.count(), true)),
                        index: Arc::new(ix),
                    },
                );
                st.remove_partial(&d)
            };
            match stale {
                Some(p) => remove_dir_if_exists(&p.partial.dir),
                None => Ok(()),
            }
        })
        .await
    }

    /// The chunk index of a complete blob, or of a partial one whose index was set; `None` otherwise.
    pub async fn chunk_index(&self, d: &Digest) -> Result<Option<ChunkIndex>, StoreError> {
        let st = self.inner.lock();
        if let Some(e) = st.blobs.get(d) {
            return Ok(Some((*e.index).clone()));
        }
        Ok(st
            .partials
            .get(d)
            .and_then(|p| p.partial.lock().index.clone()))
    }

    /// Reads chunk `i` of a complete blob or a verified chunk of a partial one. A complete blob's
    /// chunk is checked against its blake3 hash on its first read since the blob was loaded (or
    /// after this process stored it, when it was just checked); a partial's chunks were checked
    /// when written or when the partial was reopened.
    pub async fn read_chunk(&self, d: &Digest, i: u32) -> Result<Bytes, StoreError> {
        self.read_chunk_into(d, i, Vec::new())
            .await
            .map(Bytes::from)
    }

    /// [`read_chunk`](Self::read_chunk) into `buf` (resized to the chunk; a reused buffer saves
    /// the zeroing and page faults of a fresh one).
    pub async fn read_chunk_into(
        &self,
        d: &Digest,
        i: u32,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let (index, partial) = {
            let st = self.inner.lock();
            match (st.blobs.get(d), st.partials.get(d)) {
                (Some(e), _) => (Some((e.index.clone(), e.verified.clone())), None),
                (None, Some(p)) => (None, Some(p.partial.clone())),
                (None, None) => return Err(StoreError::NotFound(*d)),
            }
        };
        if let Some(p) = partial {
            return blocking(move || p.read_chunk(i, buf)).await;
        }
        let Some((ix, verified)) = index else {
            return Err(StoreError::NotFound(*d));
        };
        if i >= ix.layout.count() {
            return Err(StoreError::ChunkMissing {
                digest: *d,
                index: i,
            });
        }
        self.touch(d).await;
        let path = self.inner.paths.blob(d);
        let d = *d;
        blocking(move || {
            let f = File::open(&path).at(&path)?;
            buf.resize(ix.layout.len(i) as usize, 0);
            f.read_exact_at(&mut buf, ix.layout.offset(i)).at(&path)?;
            if !verified.get(i) {
                if !ix.verify(i, &buf) {
                    return Err(StoreError::corrupt(
                        &path,
                        format!("chunk {i} fails its hash"),
                    ));
                }
                verified.set(i);
            }
            Ok(buf)
        })
        .await
        .map_err(not_found(d))
    }

    /// Progress of a partial blob, `None` when there is none.
    pub async fn partial(&self, d: &Digest) -> Result<Option<PartialInfo>, StoreError> {
        let st = self.inner.lock();
        Ok(st.partials.get(d).map(|p| {
            let ps = p.partial.lock();
            PartialInfo {
                layout: ps.layout,
                done: ps.hashes.iter().map(Option::is_some).collect(),
                bytes_done: ps.bytes_done,
                has_index: ps.index.is_some(),
            }
        }))
    }

    /// Removes a partial blob (not while a writer has it). True if one was removed.
    pub async fn discard_partial(&self, d: &Digest) -> Result<bool, StoreError> {
        let _busy = self.claim(*d)?;
        let Some(p) = self.inner.lock().remove_partial(d) else {
            return Ok(false);
        };
        blocking(move || remove_dir_if_exists(&p.partial.dir)).await?;
        Ok(true)
    }
}
