//! Tag records this node publishes, answered to `GetTag` from memory (bounded).

use std::collections::HashMap;

use libp2p::kad::RecordKey;
use preheat_core::Digest;

use crate::protocol::TagWire;

/// Tag records kept at most; beyond, the oldest published is dropped.
const MAX_TAGS: usize = 1024;

#[derive(Default)]
pub(crate) struct TagTable {
    map: HashMap<String, TagWire>,
}

impl TagTable {
    /// Keeps `t` unless a newer record of its reference is already here.
    pub fn insert(&mut self, t: TagWire) {
        if self
            .map
            .get(&t.reference)
            .is_some_and(|old| old.published_ms > t.published_ms)
        {
            return;
        }
        if !self.map.contains_key(&t.reference) && self.map.len() >= MAX_TAGS {
            let oldest = self
                .map
                .values()
                .min_by_key(|o| o.published_ms)
                .map(|o| o.reference.clone());
            if let Some(r) = oldest {
                self.map.remove(&r);
            }
        }
        self.map.insert(t.reference.clone(), t);
    }

    pub fn get(&self, reference: &str) -> Option<&TagWire> {
        self.map.get(reference)
    }
}

/// Kademlia provider key of a tag: sha256 of a prefixed reference, so it never equals a blob key.
pub(crate) fn tag_key(reference: &str) -> RecordKey {
    let mut v = b"image-preheat/tag\0".to_vec();
    v.extend_from_slice(reference.as_bytes());
    RecordKey::new(Digest::of(&v).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &str, ms: u64, body: &[u8]) -> TagWire {
        TagWire {
            reference: r.into(),
            manifest: Digest::of(body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: body.to_vec(),
            published_ms: ms,
        }
    }

    #[test]
    fn newest_record_wins_and_the_table_is_bounded() {
        let mut t = TagTable::default();
        t.insert(wire("a", 10, b"new"));
        t.insert(wire("a", 5, b"old"));
        assert_eq!(t.get("a").unwrap().bytes, b"new");
        t.insert(wire("a", 11, b"newer"));
        assert_eq!(t.get("a").unwrap().bytes, b"newer");
        for i in 0..MAX_TAGS + 10 {
            t.insert(wire(&format!("r{i}"), 100 + i as u64, b"x"));
        }
        assert_eq!(t.map.len(), MAX_TAGS);
        assert!(t.get("a").is_none(), "the oldest record is dropped first");
        assert_ne!(tag_key("a"), tag_key("b"));
    }
}
