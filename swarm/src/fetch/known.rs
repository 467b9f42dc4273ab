//! The chunk hashes a download knows so far: a provisional index, merged from peers' answers and
//! the chunks already stored. Hashes are claims until the blob's sha256 is checked; a merge that
//! contradicts a known hash is refused whole, so one index never mixes two stories about a chunk.

use std::collections::BTreeSet;

use libp2p::PeerId;
use preheat_core::bitfield::Bitfield;
use preheat_core::{ChunkIndex, ChunkLayout, Digest};

use crate::protocol::ProvisionalIndex;

/// A merge contradicted a known hash (or the layout); nothing was merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conflict;

#[derive(Debug, Clone)]
pub(crate) struct Known {
    blob: Digest,
    layout: ChunkLayout,
    hashes: Vec<Option<[u8; 32]>>,
    known: Bitfield,
    /// Peers whose answers contributed hashes; they vouch for the index.
    sources: BTreeSet<PeerId>,
}

impl Known {
    /// Nothing known yet about a blob cut by `layout`.
    pub fn new(blob: Digest, layout: ChunkLayout) -> Self {
        let n = layout.count();
        Self {
            blob,
            layout,
            hashes: vec![None; n as usize],
            known: Bitfield::new(n),
            sources: BTreeSet::new(),
        }
    }

    pub fn from_index(ix: &ChunkIndex) -> Self {
        Self {
            blob: ix.blob,
            layout: ix.layout,
            hashes: ix.hashes.iter().copied().map(Some).collect(),
            known: Bitfield::full(ix.layout.count()),
            sources: BTreeSet::new(),
        }
    }

    pub fn blob(&self) -> Digest {
        self.blob
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    pub fn hash(&self, i: u32) -> Option<[u8; 32]> {
        self.hashes.get(i as usize).copied().flatten()
    }

    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.known.is_full()
    }

    pub fn sources(&self) -> impl Iterator<Item = &PeerId> {
        self.sources.iter()
    }

    pub fn to_index(&self) -> Option<ChunkIndex> {
        Some(ChunkIndex {
            blob: self.blob,
            layout: self.layout,
            hashes: self.hashes.iter().copied().collect::<Option<Vec<_>>>()?,
        })
    }

    /// Merges a peer's answer; returns how many hashes were new.
    pub fn merge(&mut self, p: &ProvisionalIndex, src: Option<PeerId>) -> Result<u32, Conflict> {
        if p.blob != self.blob || p.layout != self.layout {
            return Err(Conflict);
        }
        let page = p.hashes.iter().map(|h| h.map(|h| h.0));
        let new = self.merge_at(p.from, page)?;
        if let (Some(s), true) = (src, new > 0) {
            self.sources.insert(s);
        }
        Ok(new)
    }

    /// Merges the hashes of chunks already stored (from `Store::chunk_hashes`).
    pub fn merge_stored(&mut self, hashes: &[Option<[u8; 32]>]) -> Result<u32, Conflict> {
        if hashes.len() != self.hashes.len() {
            return Err(Conflict);
        }
        self.merge_at(0, hashes.iter().copied())
    }

    fn merge_at(
        &mut self,
        from: u32,
        page: impl Iterator<Item = Option<[u8; 32]>> + Clone,
    ) -> Result<u32, Conflict> {
        let start = from as usize;
        for (i, h) in page.clone().enumerate() {
            match (self.hashes.get(start + i).ok_or(Conflict)?, h) {
                (Some(have), Some(h)) if *have != h => return Err(Conflict),
                _ => {}
            }
        }
        let mut new = 0;
        for (i, h) in page.enumerate() {
            let Some(h) = h else { continue };
            let idx = start + i;
            if self.hashes[idx].is_none() {
                self.hashes[idx] = Some(h);
                self.known.set(u32::try_from(idx).unwrap_or(u32::MAX));
                new += 1;
            }
        }
        Ok(new)
    }

    /// The chunks of `has` whose hash is known (only those can be requested and checked).
    pub fn mask(&self, has: &Bitfield) -> Bitfield {
        let mut out = Bitfield::new(self.layout.count());
        for i in has.iter_ones().filter(|i| self.known.get(*i)) {
            out.set(i);
        }
        out
    }

    /// The first chunk a peer `has` that we lack (`have`) and whose hash we do not know.
    pub fn first_unknown(&self, has: &Bitfield, have: &Bitfield) -> Option<u32> {
        has.iter_ones()
            .find(|i| !have.get(*i) && !self.known.get(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChunkHash;

    fn page(blob: Digest, layout: ChunkLayout, from: u32, h: &[Option<u8>]) -> ProvisionalIndex {
        ProvisionalIndex {
            blob,
            layout,
            from,
            hashes: h.iter().map(|b| b.map(|b| ChunkHash([b; 32]))).collect(),
            complete: false,
        }
    }

    #[test]
    fn merges_pages_refuses_contradictions_and_masks_availability() {
        let d = Digest::of(b"blob");
        let layout = ChunkLayout::new(4 * 65_536, 65_536);
        let mut k = Known::new(d, layout);
        let a = PeerId::random();
        let b = PeerId::random();
        assert_eq!(
            k.merge(&page(d, layout, 0, &[Some(1), None]), Some(a)),
            Ok(1)
        );
        assert_eq!(
            k.merge(&page(d, layout, 1, &[Some(2), Some(3)]), Some(b)),
            Ok(2)
        );
        assert_eq!(k.sources().count(), 2);
        // A contradiction merges nothing, not even its new hashes.
        assert_eq!(
            k.merge(&page(d, layout, 2, &[Some(9), Some(4)]), Some(b)),
            Err(Conflict)
        );
        assert_eq!(k.hash(3), None);
        assert_eq!(
            k.merge(&page(d, layout, 3, &[Some(4), Some(5)]), None),
            Err(Conflict)
        );
        let other = ChunkLayout::new(4 * 65_536, 131_072);
        assert_eq!(k.merge(&page(d, other, 0, &[]), None), Err(Conflict));

        let has = Bitfield::full(4);
        let mut have = Bitfield::new(4);
        assert_eq!(k.mask(&has).count_ones(), 3);
        assert_eq!(k.first_unknown(&has, &have), Some(3));
        have.set(3);
        assert_eq!(k.first_unknown(&has, &have), None);
        assert!(k.to_index().is_none());
        assert_eq!(k.merge_stored(&[None, None, None, Some([4; 32])]), Ok(1));
        assert!(k.is_complete());
        assert_eq!(k.to_index().unwrap().hashes[3], [4; 32]);
    }
}
