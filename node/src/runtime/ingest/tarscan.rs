//! Sequential passes over a (possibly gzip-compressed) tar file on a blocking thread: list the
//! entries, read a few small ones, copy chosen entries into the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use preheat_core::Digest;
use preheat_store::{Store, StoreError, SMALL_LIMIT};
use tokio::runtime::Handle;

use crate::runtime::RuntimeError;

/// Bytes copied per store write.
const COPY_BUF: usize = 1 << 20;
/// Links followed when resolving a name.
const MAX_LINKS: usize = 8;

#[derive(Debug, Clone)]
enum Meta {
    File(u64),
    /// A symlink or hard link, its target as an archive path.
    Link(String),
    Other,
}

/// Entries to copy into the store: resolved archive path → `(digest, size)`.
#[derive(Debug, Default)]
pub(super) struct Wanted(HashMap<String, (Digest, u64)>);

impl Wanted {
    pub fn add(&mut self, name: String, digest: Digest, size: u64) {
        self.0.insert(name, (digest, size));
    }
}

/// A listed tar file.
#[derive(Debug)]
pub(super) struct Archive {
    path: PathBuf,
    rt: Handle,
    entries: HashMap<String, Meta>,
}

impl Archive {
    /// Lists the entries of the tar file at `path`.
    pub async fn list(path: PathBuf, rt: Handle) -> Result<Archive, RuntimeError> {
        let p = path.clone();
        let entries = blocking(&path, move || {
            let mut entries = HashMap::new();
            each_entry(&p, |name, entry| {
                let kind = entry.header().entry_type();
                let meta = if kind.is_file() {
                    Meta::File(entry.size())
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry.link_name()?.unwrap_or_default();
                    let target = target.to_string_lossy();
                    let base = if kind.is_symlink() {
                        name.rsplit_once('/').map_or("", |(dir, _)| dir)
                    } else {
                        ""
                    };
                    Meta::Link(normalize(&format!("{base}/{target}")))
                } else {
                    Meta::Other
                };
                entries.insert(name, meta);
                Ok(())
            })?;
            Ok(entries)
        })
        .await?;
        Ok(Archive { path, rt, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` with links followed.
    pub fn resolve(&self, name: &str) -> String {
        let mut name = normalize(name);
        for _ in 0..MAX_LINKS {
            match self.entries.get(&name) {
                Some(Meta::Link(target)) => name = target.clone(),
                _ => break,
            }
        }
        name
    }

    /// Size of the regular file `name` (links followed).
    pub fn size(&self, name: &str) -> Option<u64> {
        match self.entries.get(&self.resolve(name)) {
            Some(Meta::File(size)) => Some(*size),
            _ => None,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.size(name).is_some()
    }

    /// The content of each of `names` that is a regular file of at most 4 MiB, keyed by `names`.
    pub async fn read_small(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, RuntimeError> {
        let mut by_resolved: HashMap<String, Vec<String>> = HashMap::new();
        for n in names {
            if self.size(n).is_some_and(|s| s <= SMALL_LIMIT) {
                by_resolved
                    .entry(self.resolve(n))
                    .or_default()
                    .push(n.clone());
            }
        }
        if by_resolved.is_empty() {
            return Ok(HashMap::new());
        }
        let path = self.path.clone();
        blocking(&self.path, move || {
            let mut out = HashMap::new();
            each_entry(&path, |name, entry| {
                if let Some(asked) = by_resolved.get(&name) {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf)?;
                    for a in asked {
                        out.insert(a.clone(), buf.clone());
                    }
                }
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    /// Copies the wanted entries into the store (each verified by its digest when finished);
    /// returns the first four bytes of each, to tell compressed layers from plain ones.
    pub async fn write_blobs(
        &self,
        store: &Store,
        wanted: Wanted,
    ) -> Result<HashMap<Digest, [u8; 4]>, RuntimeError> {
        let (path, rt, store) = (self.path.clone(), self.rt.clone(), store.clone());
        let archive_err = |reason: String| RuntimeError::Archive {
            path: self.path.clone(),
            reason,
        };
        let result = blocking(&self.path, move || {
            let mut magic = HashMap::new();
            let mut failure = None;
            each_entry(&path, |name, entry| {
                let Some(&(digest, size)) = wanted.0.get(&name) else {
                    return Ok(());
                };
                if entry.size() != size {
                    failure = Some(format!(
                        "{name} has {} bytes, expected {size}",
                        entry.size()
                    ));
                    return Ok(());
                }
                match copy_entry(&rt, &store, entry, digest, size) {
                    Ok(m) => {
                        magic.insert(digest, m);
                    }
                    Err(Copy::Io(e)) => return Err(e),
                    Err(Copy::Store(StoreError::DigestMismatch { actual, .. })) => {
                        failure = Some(format!("{name} hashes to {actual}, expected {digest}"));
                    }
                    Err(Copy::Store(source)) => {
                        failure = Some(format!("storing {name} as {digest}: {source}"));
                    }
                }
                Ok(())
            })?;
            Ok((magic, failure))
        })
        .await?;
        match result {
            (_, Some(reason)) => Err(archive_err(reason)),
            (magic, None) => Ok(magic),
        }
    }
}

enum Copy {
    Io(io::Error),
    Store(StoreError),
}

/// Streams one entry into a store writer (resuming a partial blob), returning its first bytes.
fn copy_entry(
    rt: &Handle,
    store: &Store,
    entry: &mut dyn Read,
    digest: Digest,
    size: u64,
) -> Result<[u8; 4], Copy> {
    let mut writer = match rt.block_on(store.writer(digest, size)) {
        Ok(w) => Some(w),
        Err(StoreError::Exists(_)) => None,
        Err(e) => return Err(Copy::Store(e)),
    };
    let skip = writer.as_ref().map_or(size, |w| w.resume_offset());
    let mut magic = [0u8; 4];
    let mut buf = vec![0u8; COPY_BUF];
    let mut pos = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(Copy::Io)?;
        if n == 0 {
            break;
        }
        if pos < 4 {
            let at = usize::try_from(pos).unwrap_or(4);
            let k = (4 - at).min(n);
            magic[at..at + k].copy_from_slice(&buf[..k]);
        }
        let start = pos;
        pos += n as u64;
        if pos <= skip {
            if writer.is_none() && pos >= 4 {
                break;
            }
            continue;
        }
        let from = usize::try_from(skip.saturating_sub(start)).unwrap_or(0);
        if let Some(w) = writer.as_mut() {
            rt.block_on(w.write(&buf[from..n])).map_err(Copy::Store)?;
        }
    }
    if let Some(w) = writer {
        rt.block_on(w.finish()).map_err(Copy::Store)?;
    }
    Ok(magic)
}

/// Runs `f` for every entry (names normalised), in archive order.
fn each_entry(
    path: &Path,
    mut f: impl FnMut(String, &mut tar::Entry<'_, Box<dyn Read>>) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = normalize(&entry.path()?.to_string_lossy());
        f(name, &mut entry)?;
    }
    Ok(())
}

/// `./a//b/../c/` → `a/c`.
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, RuntimeError> {
    let io_err = |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(io::Error::other(e)))?
        .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalize("./manifest.json"), "manifest.json");
        assert_eq!(normalize("abc/../def/layer.tar"), "def/layer.tar");
        assert_eq!(normalize("blobs//sha256/"), "blobs/sha256");
    }
}
