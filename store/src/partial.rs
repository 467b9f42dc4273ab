//! A blob being downloaded: `partial/<hex>/{data, chunks.log, meta.json}`.
//!
//! `data` receives chunks at their offsets in any order. A chunk is appended to `chunks.log`
//! (fixed 36-byte records: u32 little-endian index, 32-byte blake3 hash) only after its bytes were
//! fdatasync'ed, so a record never names data that is not on disk. On load, a torn trailing record
//! is dropped and every record is re-verified against the data (blake3 is cheap), so a lying log
//! costs a re-download of that chunk, never a wrong blob.

use std::fs::{self, File, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use preheat_core::chunk::{chunk_hash, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use preheat_core::{ChunkIndex, ChunkLayout, Digest};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, StoreError};
use crate::paths::{self, fsync_dir, partial_data, partial_log, partial_meta, write_atomic, Paths};

/// Size of one `chunks.log` record.
pub(crate) const RECORD: u64 = 36;

/// `meta.json` of a partial blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    blob: Digest,
    layout: ChunkLayout,
    #[serde(default)]
    index: Option<ChunkIndex>,
}

/// What is known about a partial blob, shared by its writer and readers.
#[derive(Debug)]
pub(crate) struct PartialState {
    pub layout: ChunkLayout,
    /// Verified blake3 hash per chunk, `None` while the chunk is missing.
    pub hashes: Vec<Option<[u8; 32]>>,
    /// Expected hashes from a peer's chunk index (swarm mode).
    pub index: Option<ChunkIndex>,
    pub bytes_done: u64,
    /// Number of valid records in `chunks.log`.
    pub records: u64,
}

impl PartialState {
    fn new(layout: ChunkLayout, index: Option<ChunkIndex>) -> Self {
        Self {
            layout,
            hashes: vec![None; layout.count() as usize],
            index,
            bytes_done: 0,
            records: 0,
        }
    }

    fn mark(&mut self, i: u32, hash: [u8; 32]) {
        if let Some(slot) = self.hashes.get_mut(i as usize) {
            if slot.is_none() {
                self.bytes_done += u64::from(self.layout.len(i));
            }
            *slot = Some(hash);
        }
    }
}

/// A partial blob: its directory, an open data file and the verified state.
#[derive(Debug)]
pub(crate) struct Partial {
    pub digest: Digest,
    pub dir: PathBuf,
    pub data: File,
    pub log: File,
    state: Mutex<PartialState>,
    /// Serializes chunk writes, even from a write whose caller went away (cancelled future).
    write_lock: Mutex<()>,
}

impl Partial {
    pub fn lock(&self) -> MutexGuard<'_, PartialState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn size(&self) -> u64 {
        self.lock().layout.size
    }

    /// Creates a fresh partial directory. On failure nothing is left behind.
    pub fn create(paths: &Paths, digest: Digest, layout: ChunkLayout) -> Result<Self, StoreError> {
        let dir = paths.partial_dir(&digest);
        let res = Self::create_in(paths, &dir, digest, layout);
        if res.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        res
    }

    fn create_in(
        paths: &Paths,
        dir: &Path,
        digest: Digest,
        layout: ChunkLayout,
    ) -> Result<Self, StoreError> {
        if dir.exists() {
            fs::remove_dir_all(dir).at(dir)?;
        }
        fs::create_dir(dir).at(dir)?;
        let data = open_rw(&partial_data(dir), true)?;
        let log = open_rw(&partial_log(dir), true)?;
        let meta = Meta {
            blob: digest,
            layout,
            index: None,
        };
        write_meta(paths, dir, &meta)?;
        fsync_dir(paths.partial_root())?;
        Ok(Self {
            digest,
            dir: dir.to_path_buf(),
            data,
            log,
            state: Mutex::new(PartialState::new(layout, None)),
            write_lock: Mutex::new(()),
        })
    }

    /// Loads and re-verifies a partial directory. `Ok(None)` means it is unusable (no valid
    /// metadata) and should be removed.
    pub fn load(paths: &Paths, digest: Digest) -> Result<Option<Self>, StoreError> {
        let dir = paths.partial_dir(&digest);
        let meta_path = partial_meta(&dir);
        let Ok(bytes) = fs::read(&meta_path) else {
            return Ok(None);
        };
        let Ok(meta) = serde_json::from_slice::<Meta>(&bytes) else {
            return Ok(None);
        };
        if meta.blob != digest
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&meta.layout.chunk_size)
        {
            return Ok(None);
        }
        let index = meta
            .index
            .filter(|ix| ix.blob == digest && ix.layout == meta.layout && ix.validate().is_ok());
        let data_path = partial_data(&dir);
        // A crash inside `install` may have left the data read-only.
        let _ = fs::set_permissions(&data_path, Permissions::from_mode(0o644));
        let data = open_rw(&data_path, true)?;
        let log_path = partial_log(&dir);
        let log = open_rw(&log_path, true)?;
        let raw = fs::read(&log_path).at(&log_path)?;
        let mut state = PartialState::new(meta.layout, index);
        let mut buf = Vec::new();
        let mut verified = Vec::new();
        for rec in raw.chunks_exact(36) {
            let mut ib = [0u8; 4];
            ib.copy_from_slice(&rec[..4]);
            let i = u32::from_le_bytes(ib);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&rec[4..]);
            if i >= meta.layout.count() || state.hashes[i as usize].is_some() {
                continue;
            }
            if let Some(ix) = &state.index {
                if ix.hashes[i as usize] != hash {
                    continue;
                }
            }
            buf.resize(meta.layout.len(i) as usize, 0);
            if data.read_exact_at(&mut buf, meta.layout.offset(i)).is_err()
                || chunk_hash(&buf) != hash
            {
                continue;
            }
            state.mark(i, hash);
            verified.push((i, hash));
        }
        // Rewrite the log when records were dropped, so appends stay record-aligned.
        if verified.len() as u64 * RECORD != raw.len() as u64 {
            let mut clean = Vec::with_capacity(verified.len() * 36);
            for (i, h) in &verified {
                clean.extend_from_slice(&i.to_le_bytes());
                clean.extend_from_slice(h);
            }
            let tmp = paths.tmp_file("log");
            write_atomic(&tmp, &log_path, &clean)?;
            // The old handle points at the replaced inode; reopen.
            return Ok(Some(Self {
                digest,
                log: open_rw(&log_path, false)?,
                dir,
                data,
                state: Mutex::new(PartialState {
                    records: verified.len() as u64,
                    ..state
                }),
                write_lock: Mutex::new(()),
            }));
        }
        state.records = verified.len() as u64;
        Ok(Some(Self {
            digest,
            dir,
            data,
            log,
            state: Mutex::new(state),
            write_lock: Mutex::new(()),
        }))
    }

    /// Writes chunk `i` at its offset, fdatasyncs it, then records it. Blocking.
    /// The chunk is visible to readers only once all of that succeeded.
    pub fn write_chunk(&self, i: u32, data: &[u8], hash: [u8; 32]) -> Result<(), StoreError> {
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (offset, slot) = {
            let st = self.lock();
            (st.layout.offset(i), st.records * RECORD)
        };
        let data_path = partial_data(&self.dir);
        self.data.write_all_at(data, offset).at(&data_path)?;
        self.data.sync_data().at(&data_path)?;
        let mut rec = [0u8; 36];
        rec[..4].copy_from_slice(&i.to_le_bytes());
        rec[4..].copy_from_slice(&hash);
        // Positional: a record torn by an earlier failure is simply overwritten.
        let log_path = partial_log(&self.dir);
        self.log.write_all_at(&rec, slot).at(&log_path)?;
        let mut st = self.lock();
        st.records += 1;
        st.mark(i, hash);
        Ok(())
    }

    /// Forgets chunk `i` (its data no longer matches); the next load drops its record too.
    pub fn forget(&self, i: u32) {
        let mut st = self.lock();
        let len = u64::from(st.layout.len(i));
        if let Some(slot) = st.hashes.get_mut(i as usize) {
            if slot.take().is_some() {
                st.bytes_done -= len;
            }
        }
    }

    /// Reads verified chunk `i`: its bytes were hashed when written or when the partial was
    /// reopened, so they are not hashed again. Blocking.
    pub fn read_chunk(&self, i: u32, mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let (stored, offset, len) = {
            let st = self.lock();
            let stored = st.hashes.get(i as usize).is_some_and(Option::is_some);
            (stored, st.layout.offset(i), st.layout.len(i))
        };
        if !stored {
            return Err(StoreError::ChunkMissing {
                digest: self.digest,
                index: i,
            });
        }
        buf.resize(len as usize, 0);
        let path = partial_data(&self.dir);
        self.data.read_exact_at(&mut buf, offset).at(&path)?;
        Ok(buf)
    }

    /// Adopts a chunk index (swarm mode). Blocking. When no chunk is stored yet the index's layout
    /// replaces the partial's; otherwise layouts and every stored chunk hash must agree.
    pub fn set_index(&self, paths: &Paths, index: ChunkIndex) -> Result<(), StoreError> {
        let digest = self.digest;
        let mismatch = |reason| StoreError::IndexMismatch { digest, reason };
        if index.blob != digest {
            return Err(mismatch("index names another blob"));
        }
        if index.validate().is_err() {
            return Err(mismatch("index is malformed"));
        }
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut st = self.lock();
        if index.layout.size != st.layout.size {
            return Err(mismatch("index has another blob size"));
        }
        let relayout = index.layout != st.layout;
        if relayout && st.bytes_done > 0 {
            return Err(mismatch("index chunk size differs from stored chunks"));
        }
        for (have, want) in st.hashes.iter().zip(&index.hashes) {
            if have.is_some_and(|h| h != *want) {
                return Err(mismatch("a stored chunk disagrees with the index"));
            }
        }
        let meta = Meta {
            blob: digest,
            layout: index.layout,
            index: Some(index.clone()),
        };
        write_meta(paths, &self.dir, &meta)?;
        if relayout {
            let log_path = partial_log(&self.dir);
            self.log.set_len(0).at(&log_path)?;
            *st = PartialState::new(index.layout, Some(index));
        } else {
            st.index = Some(index);
        }
        Ok(())
    }
}

impl Partial {
    /// Replaces the layout of a partial that has no stored chunk (swarm mode, adopting a peer's
    /// chunk size before its full index is known). Blocking.
    pub fn set_layout(&self, paths: &Paths, layout: ChunkLayout) -> Result<(), StoreError> {
        let digest = self.digest;
        let mismatch = |reason| StoreError::IndexMismatch { digest, reason };
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&layout.chunk_size) {
            return Err(mismatch("index chunk size is out of range"));
        }
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut st = self.lock();
        if layout.size != st.layout.size {
            return Err(mismatch("index has another blob size"));
        }
        if layout == st.layout {
            return Ok(());
        }
        if st.bytes_done > 0 || st.index.is_some() {
            return Err(mismatch("index chunk size differs from stored chunks"));
        }
        let meta = Meta {
            blob: digest,
            layout,
            index: None,
        };
        write_meta(paths, &self.dir, &meta)?;
        let log_path = partial_log(&self.dir);
        self.log.set_len(0).at(&log_path)?;
        *st = PartialState::new(layout, None);
        Ok(())
    }
}

fn write_meta(paths: &Paths, dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(meta).map_err(|e| StoreError::corrupt(dir, e.to_string()))?;
    write_atomic(&paths.tmp_file("meta"), &paths::partial_meta(dir), &bytes)
}

fn open_rw(path: &Path, create: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .at(path)
}
