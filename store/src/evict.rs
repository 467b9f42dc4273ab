//! In-memory accounting, LRU order and eviction.
//!
//! Usage is the size of complete blobs plus the full size of every partial blob (reserved when its
//! writer is created) plus reservations in flight. When a reservation would pass `max_bytes`, the
//! least recently used complete blobs (and idle partials) that belong to no wanted image and are not
//! busy are evicted; when even that is not enough nothing is evicted and the caller gets `Full`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use preheat_core::{ChunkIndex, Digest};

use crate::images::ImageRecord;
use crate::partial::Partial;
use crate::StoreError;

/// How often at most a blob's access time is written to its file's mtime.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct BlobEntry {
    pub size: u64,
    pub last_access: SystemTime,
    pub persisted: SystemTime,
    pub index: Arc<ChunkIndex>,
    /// Chunks whose bytes on disk were checked against `index` since the blob was loaded.
    pub verified: Arc<Verified>,
}

/// One flag per chunk of a complete blob: its bytes on disk matched the index once, so serving it
/// again need not re-hash it (blobs this process stored start all set; blobs found on disk at
/// startup start clear and are checked on first read).
#[derive(Debug)]
pub(crate) struct Verified(Vec<std::sync::atomic::AtomicBool>);

impl Verified {
    pub fn new(chunks: u32, all: bool) -> Self {
        Self(
            (0..chunks)
                .map(|_| std::sync::atomic::AtomicBool::new(all))
                .collect(),
        )
    }

    pub fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize)
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn set(&self, i: u32) {
        if let Some(f) = self.0.get(i as usize) {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub(crate) struct PartialEntry {
    pub size: u64,
    pub last_access: SystemTime,
    pub partial: Arc<Partial>,
}

/// Something chosen for eviction; already removed from the accounting.
#[derive(Debug)]
pub(crate) enum Victim {
    Blob(Digest),
    Partial(Arc<Partial>),
}

impl Victim {
    pub fn digest(&self) -> Digest {
        match self {
            Self::Blob(d) => *d,
            Self::Partial(p) => p.digest,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub blobs: HashMap<Digest, BlobEntry>,
    pub partials: HashMap<Digest, PartialEntry>,
    /// Digests with a writer, a `put_small` or an eviction in progress.
    pub busy: HashSet<Digest>,
    /// Bytes reserved for blobs being created.
    pub pending: u64,
    pub images: BTreeMap<String, ImageRecord>,
    /// Manifest (or index) digests of wanted images.
    pub wanted: HashSet<Digest>,
    blob_bytes: u64,
    partial_bytes: u64,
}

impl State {
    pub fn usage(&self) -> u64 {
        self.blob_bytes + self.partial_bytes + self.pending
    }

    pub fn insert_blob(&mut self, d: Digest, entry: BlobEntry) {
        self.blob_bytes += entry.size;
        if let Some(old) = self.blobs.insert(d, entry) {
            self.blob_bytes -= old.size;
        }
    }

    pub fn remove_blob(&mut self, d: &Digest) -> Option<BlobEntry> {
        let e = self.blobs.remove(d)?;
        self.blob_bytes -= e.size;
        Some(e)
    }

    pub fn insert_partial(&mut self, d: Digest, entry: PartialEntry) {
        self.partial_bytes += entry.size;
        if let Some(old) = self.partials.insert(d, entry) {
            self.partial_bytes -= old.size;
        }
    }

    pub fn remove_partial(&mut self, d: &Digest) -> Option<PartialEntry> {
        let e = self.partials.remove(d)?;
        self.partial_bytes -= e.size;
        Some(e)
    }

    /// Records an access; true when the access time should be persisted now.
    pub fn touch(&mut self, d: &Digest, now: SystemTime) -> bool {
        let Some(e) = self.blobs.get_mut(d) else {
            return false;
        };
        e.last_access = now;
        let due = now
            .duration_since(e.persisted)
            .map_or(true, |age| age >= PERSIST_EVERY);
        if due {
            e.persisted = now;
        }
        due
    }

    /// Every digest that must not be evicted: manifests, indexes and blobs of wanted images.
    pub fn protected(&self) -> HashSet<Digest> {
        let mut out = HashSet::new();
        for rec in self.images.values() {
            let wanted = self.wanted.contains(&rec.manifest)
                || rec.index.is_some_and(|ix| self.wanted.contains(&ix));
            if wanted {
                out.insert(rec.manifest);
                out.extend(rec.index);
                out.extend(rec.blobs.iter().map(|(d, _)| *d));
            }
        }
        out
    }

    /// Reserves `needed` bytes under the cap, choosing victims when necessary. The victims are
    /// removed from the accounting and marked busy; the caller deletes their files and then calls
    /// [`State::evicted`].
    pub fn reserve(&mut self, needed: u64, max: Option<u64>) -> Result<Vec<Victim>, StoreError> {
        let Some(max) = max else {
            self.pending += needed;
            return Ok(Vec::new());
        };
        if self.usage().saturating_add(needed) <= max {
            self.pending += needed;
            return Ok(Vec::new());
        }
        let full = StoreError::Full { needed, max };
        if needed > max {
            return Err(full);
        }
        let protected = self.protected();
        let mut candidates: Vec<(SystemTime, Digest, u64, bool)> = self
            .blobs
            .iter()
            .filter(|(d, _)| !protected.contains(d) && !self.busy.contains(d))
            .map(|(d, e)| (e.last_access, *d, e.size, false))
            .chain(
                self.partials
                    .iter()
                    .filter(|(d, _)| !protected.contains(d) && !self.busy.contains(d))
                    .map(|(d, e)| (e.last_access, *d, e.size, true)),
            )
            .collect();
        candidates.sort();
        let mut excess = self.usage() + needed - max;
        let mut chosen = Vec::new();
        for (_, d, size, is_partial) in candidates {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(size);
            chosen.push((d, is_partial));
        }
        if excess > 0 {
            return Err(full);
        }
        let mut victims = Vec::with_capacity(chosen.len());
        for (d, is_partial) in chosen {
            self.busy.insert(d);
            if is_partial {
                if let Some(e) = self.remove_partial(&d) {
                    victims.push(Victim::Partial(e.partial));
                }
            } else {
                self.remove_blob(&d);
                victims.push(Victim::Blob(d));
            }
        }
        self.pending += needed;
        Ok(victims)
    }

    /// Ends an eviction: the victims' files are gone.
    pub fn evicted(&mut self, victims: &[Victim]) {
        for v in victims {
            self.busy.remove(&v.digest());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use preheat_core::ChunkLayout;

    fn entry(size: u64, secs: u64) -> BlobEntry {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        BlobEntry {
            size,
            last_access: t,
            persisted: t,
            index: Arc::new(ChunkIndex {
                blob: Digest::of(b""),
                layout: ChunkLayout::new(size, 65536),
                hashes: Vec::new(),
            }),
            verified: Arc::new(Verified::new(0, false)),
        }
    }

    #[test]
    fn evicts_oldest_first_and_spares_wanted() {
        let mut st = State::default();
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        st.insert_blob(a, entry(10, 1));
        st.insert_blob(b, entry(10, 2));
        st.insert_blob(c, entry(10, 3));
        let m = Digest::of(b"m");
        st.images.insert(
            "r".into(),
            ImageRecord {
                reference: "r".into(),
                manifest: m,
                manifest_media_type: String::new(),
                index: None,
                platform: None,
                blobs: vec![(a, 10)],
            },
        );
        st.wanted.insert(m);
        let v = st.reserve(10, Some(35)).unwrap();
        let got: Vec<_> = v.iter().map(Victim::digest).collect();
        assert_eq!(got, vec![b]);
        assert_eq!(st.usage(), 30);
        assert!(st.touch(&c, SystemTime::now()));
        assert!(!st.touch(&c, SystemTime::now()));
        assert!(matches!(
            st.reserve(30, Some(35)),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(st.usage(), 30, "a failed reservation evicts nothing");
    }
}
