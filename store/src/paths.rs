//! On-disk layout and small durable-file helpers.
//!
//! Every path is built from a [`Digest`], whose hex form is always 64 lowercase hex characters, or
//! from names the store generates itself; names read back from disk are parsed with
//! [`Digest::from_hex`] before use, so no path component can escape the store directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use preheat_core::Digest;

use crate::error::{IoContext, StoreError};

/// The directories of one store.
#[derive(Debug)]
pub(crate) struct Paths {
    root: PathBuf,
    blobs: PathBuf,
    partial: PathBuf,
    images: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl Paths {
    pub fn new(root: PathBuf) -> Self {
        Self {
            blobs: root.join("blobs").join("sha256"),
            partial: root.join("partial"),
            images: root.join("images"),
            tmp: root.join("tmp"),
            root,
            counter: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }
    pub fn partial_root(&self) -> &Path {
        &self.partial
    }
    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }
    pub fn index(&self, d: &Digest) -> PathBuf {
        self.blobs.join(format!("{}.index", d.hex()))
    }
    pub fn partial_dir(&self, d: &Digest) -> PathBuf {
        self.partial.join(d.hex())
    }
    pub fn image(&self, reference: &str) -> PathBuf {
        self.images
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }
    /// A fresh, unique file name under `tmp/`.
    pub fn tmp_file(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// Creates the directories and empties `tmp/` (left-overs of an interrupted write).
    pub fn prepare(&self) -> Result<(), StoreError> {
        for dir in [&self.blobs, &self.partial, &self.images] {
            fs::create_dir_all(dir).at(dir)?;
        }
        if self.tmp.exists() {
            fs::remove_dir_all(&self.tmp).at(&self.tmp)?;
        }
        fs::create_dir_all(&self.tmp).at(&self.tmp)?;
        Ok(())
    }
}

pub(crate) fn partial_data(dir: &Path) -> PathBuf {
    dir.join("data")
}
pub(crate) fn partial_log(dir: &Path) -> PathBuf {
    dir.join("chunks.log")
}
pub(crate) fn partial_meta(dir: &Path) -> PathBuf {
    dir.join("meta.json")
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Writes `bytes` to `tmp`, fsyncs it and renames it to `dest`, then fsyncs `dest`'s directory.
/// On failure the temporary file is removed and `dest` is untouched.
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .at(tmp)?;
        f.write_all(bytes).at(tmp)?;
        f.sync_all().at(tmp)?;
        drop(f);
        fs::rename(tmp, dest).at(dest)
    })();
    if res.is_err() {
        let _ = fs::remove_file(tmp);
        return res;
    }
    if let Some(parent) = dest.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(path, e)),
        _ => Ok(()),
    }
}

/// Removes a directory tree, treating "already gone" as success.
pub(crate) fn remove_dir_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(path, e)),
        _ => Ok(()),
    }
}
