//! The transfer's peers as a map sorted by key in two vectors: `poll` walks every peer on each
//! call, and contiguous entries keep that walk fast where a tree's scattered nodes miss the cache
//! (the simulator runs tens of thousands of transfers at once). Iteration is ascending by key,
//! as a `BTreeMap`'s; lookups are binary searches over at most a few dozen peers.

#[derive(Debug, Clone)]
pub(super) struct PeerMap<K, V> {
    keys: Vec<K>,
    vals: Vec<V>,
}

impl<K: Ord + Copy, V> PeerMap<K, V> {
    pub fn new() -> Self {
        Self {
            keys: Vec::new(),
            vals: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let i = self.keys.binary_search(k).ok()?;
        self.vals.get(i)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.keys.binary_search(k).ok()?;
        self.vals.get_mut(i)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.keys.binary_search(k).is_ok()
    }

    /// The value of `k`, inserted from `f` when absent.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        let i = match self.keys.binary_search(&k) {
            Ok(i) => i,
            Err(i) => {
                self.keys.insert(i, k);
                self.vals.insert(i, f());
                i
            }
        };
        &mut self.vals[i]
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.keys.binary_search(k).ok()?;
        self.keys.remove(i);
        Some(self.vals.remove(i))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.keys.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.vals.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.vals.iter_mut()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.keys.iter().zip(&self.vals)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.keys.iter().zip(&mut self.vals)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::PeerMap;

    proptest! {
        #[test]
        fn behaves_as_a_btree_map(ops in proptest::collection::vec((0u8..3, 0u8..20, any::<u16>()), 0..200)) {
            let (mut m, mut b) = (PeerMap::new(), BTreeMap::new());
            for (op, k, v) in ops {
                match op {
                    0 => {
                        let e = m.get_or_insert_with(k, || v);
                        *e = e.wrapping_add(1);
                        let e = b.entry(k).or_insert(v);
                        *e = e.wrapping_add(1);
                    }
                    1 => prop_assert_eq!(m.remove(&k), b.remove(&k)),
                    _ => prop_assert_eq!(m.get(&k), b.get(&k)),
                }
                prop_assert_eq!(m.len(), b.len());
                prop_assert!(m.iter().eq(b.iter()));
            }
        }
    }
}
