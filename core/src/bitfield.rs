//! A fixed-length set of chunk indices: which chunks a node (or a peer) has.
//!
//! Invariant: bits at positions `>= len` are always zero, so word-wise operations, equality and
//! `count_ones` need no masking. The wire form is BitTorrent's: `ceil(len / 8)` bytes, chunk `i` at
//! mask `0x80 >> (i % 8)` of byte `i / 8`, spare bits zero.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why bytes from the wire are not a bitfield of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield of {len} bits needs {want} bytes, got {got}")]
    Length { len: u32, want: usize, got: usize },
    #[error("bitfield of {len} bits has bits set past its end")]
    TrailingBits { len: u32 },
    #[error("bitfield is not valid hex")]
    Hex,
}

impl BitfieldError {
    /// Short label for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Length { .. } => "length",
            Self::TrailingBits { .. } => "trailing_bits",
            Self::Hex => "hex",
        }
    }
}

/// A set of chunk indices in `0..len`.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
pub struct Bitfield {
    len: u32,
    words: Vec<u64>,
}

/// Word `i` of `b`; zero past its end (a shorter operand's missing bits count as unset).
fn word(b: &Bitfield, i: usize) -> u64 {
    b.words.get(i).copied().unwrap_or(0)
}

fn words_for(len: u32) -> usize {
    len.div_ceil(64) as usize
}

impl Bitfield {
    /// An empty set over `len` chunks.
    pub fn new(len: u32) -> Self {
        Self {
            len,
            words: vec![0; words_for(len)],
        }
    }

    /// The set of all `len` chunks.
    pub fn full(len: u32) -> Self {
        let mut b = Self {
            len,
            words: vec![u64::MAX; words_for(len)],
        };
        b.mask_tail();
        b
    }

    /// Builds a bitfield from one flag per chunk.
    pub fn from_bools(bits: &[bool]) -> Self {
        // A blob has at most u32::MAX chunks (ChunkLayout::count); longer inputs are cut there.
        let len = u32::try_from(bits.len()).unwrap_or(u32::MAX);
        let mut b = Self::new(len);
        for (i, _) in (0..len).zip(bits).filter(|(_, &x)| x) {
            b.set(i);
        }
        b
    }

    /// Number of bits (chunks), not the number set.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `i` is in the set; false past the end.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Adds chunk `i`; returns true if it was not there. Indices past the end are ignored (false).
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let was = *w & m != 0;
        *w |= m;
        !was
    }

    /// Removes chunk `i`; returns true if it was there.
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let was = *w & m != 0;
        *w &= !m;
        was
    }

    pub fn count_ones(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn count_zeros(&self) -> u32 {
        self.len - self.count_ones()
    }

    /// True when every chunk is set (also for a zero-length bitfield).
    pub fn is_full(&self) -> bool {
        self.count_ones() == self.len
    }

    /// True when no chunk is set.
    pub fn is_clear(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Set indices, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .zip((0u32..).step_by(64))
            .flat_map(|(&w, base)| Ones { word: w, base })
    }

    /// Unset indices below `len`, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        let len = self.len;
        self.words
            .iter()
            .zip((0u32..).step_by(64))
            .flat_map(|(&w, base)| Ones { word: !w, base })
            .take_while(move |&i| i < len)
    }

    /// Indices of `self ∩ other`, ascending, without building the set (the piece pickers' hot path).
    pub fn iter_ones_and<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = u32> + 'a {
        self.words
            .iter()
            .enumerate()
            .zip((0u32..).step_by(64))
            .flat_map(|((i, &w), base)| Ones {
                word: w & word(other, i),
                base,
            })
    }

    /// `|self ∩ other|`, over `self.len()` bits.
    pub fn count_ones_and(&self, other: &Bitfield) -> u32 {
        let mut n = 0;
        for (i, &w) in self.words.iter().enumerate() {
            n += (w & word(other, i)).count_ones();
        }
        n
    }

    /// `|self ∖ a ∖ b|`.
    pub fn count_ones_except(&self, a: &Bitfield, b: &Bitfield) -> u32 {
        let mut n = 0;
        for (i, &w) in self.words.iter().enumerate() {
            n += (w & !word(a, i) & !word(b, i)).count_ones();
        }
        n
    }

    /// Removes every element of `other` from `self`.
    pub fn remove_all(&mut self, other: &Bitfield) {
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w &= !o;
        }
    }

    /// Makes `self` a copy of `other`, reusing its allocation.
    pub fn copy_from(&mut self, other: &Bitfield) {
        self.len = other.len;
        self.words.clone_from(&other.words);
    }

    /// `self ∩ other`, over `self.len()` bits (bits `other` lacks count as unset).
    pub fn and(&self, other: &Bitfield) -> Bitfield {
        let mut out = self.clone();
        for (i, w) in out.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
        out
    }

    /// `self \ other`, over `self.len()` bits.
    pub fn andnot(&self, other: &Bitfield) -> Bitfield {
        let mut out = self.clone();
        for (i, w) in out.words.iter_mut().enumerate() {
            *w &= !other.words.get(i).copied().unwrap_or(0);
        }
        out
    }

    /// `self ∪ other`, over `self.len()` bits.
    pub fn or(&self, other: &Bitfield) -> Bitfield {
        let mut out = self.clone();
        for (i, w) in out.words.iter_mut().enumerate() {
            *w |= other.words.get(i).copied().unwrap_or(0);
        }
        out.mask_tail();
        out
    }

    /// The complement over `len` bits.
    pub fn not(&self) -> Bitfield {
        let mut out = self.clone();
        for w in &mut out.words {
            *w = !*w;
        }
        out.mask_tail();
        out
    }

    /// Wire form: MSB-first per byte, `ceil(len / 8)` bytes, spare bits zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len.div_ceil(8) as usize];
        for i in self.iter_ones() {
            out[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
        out
    }

    /// Parses the wire form for a blob of `len` chunks; the byte count must match exactly and the
    /// spare bits of the last byte must be zero.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitfieldError> {
        let want = len.div_ceil(8) as usize;
        if bytes.len() != want {
            return Err(BitfieldError::Length {
                len,
                want,
                got: bytes.len(),
            });
        }
        let mut b = Self::new(len);
        for (byte_i, &byte) in (0u32..).zip(bytes) {
            for bit in 0..8u32 {
                if byte & (0x80 >> bit) != 0 {
                    let i = byte_i * 8 + bit;
                    if i >= len {
                        return Err(BitfieldError::TrailingBits { len });
                    }
                    b.set(i);
                }
            }
        }
        Ok(b)
    }

    fn mask_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }
}

struct Ones {
    word: u64,
    base: u32,
}

impl Iterator for Ones {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.word == 0 {
            return None;
        }
        let tz = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + tz)
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{} ", self.count_ones(), self.len)?;
        if self.len <= 128 {
            for i in 0..self.len {
                f.write_str(if self.get(i) { "1" } else { "0" })?;
            }
        } else {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

/// Serde form: `{"len": 10, "bits": "<hex of to_bytes()>"}`.
#[derive(Serialize, Deserialize)]
struct Wire {
    len: u32,
    bits: String,
}

impl From<Bitfield> for Wire {
    fn from(b: Bitfield) -> Self {
        Wire {
            len: b.len,
            bits: hex::encode(b.to_bytes()),
        }
    }
}

impl TryFrom<Wire> for Bitfield {
    type Error = BitfieldError;
    fn try_from(w: Wire) -> Result<Self, BitfieldError> {
        let bytes = hex::decode(&w.bits).map_err(|_| BitfieldError::Hex)?;
        Bitfield::from_bytes(w.len, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics_and_edges() {
        let mut b = Bitfield::new(70);
        assert!(b.is_clear() && !b.is_full());
        assert!(b.set(0) && b.set(69) && !b.set(69));
        assert!(!b.set(70), "past the end is ignored");
        assert!(b.get(0) && b.get(69) && !b.get(70) && !b.get(1));
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 69]);
        assert_eq!(b.iter_zeros().count(), 68);
        assert!(b.clear(0) && !b.clear(0));
        assert!(Bitfield::full(70).is_full());
        assert_eq!(Bitfield::full(70).count_ones(), 70);
        assert!(Bitfield::new(0).is_full() && Bitfield::new(0).is_clear());
        assert_eq!(Bitfield::full(64).not(), Bitfield::new(64));
    }

    #[test]
    fn wire_is_msb_first() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.to_bytes(), vec![0x80, 0x40]);
        assert_eq!(Bitfield::from_bytes(10, &[0x80, 0x40]).unwrap(), b);
        assert_eq!(
            Bitfield::from_bytes(10, &[0x80, 0x20]),
            Err(BitfieldError::TrailingBits { len: 10 })
        );
        assert_eq!(
            Bitfield::from_bytes(10, &[0x80]),
            Err(BitfieldError::Length {
                len: 10,
                want: 2,
                got: 1
            })
        );
        assert_eq!(Bitfield::from_bytes(0, &[]).unwrap(), Bitfield::new(0));
    }

    #[test]
    fn serde_roundtrip_and_rejects_bad() {
        let b = Bitfield::from_bools(&[true, false, true]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, r#"{"len":3,"bits":"a0"}"#);
        assert_eq!(serde_json::from_str::<Bitfield>(&json).unwrap(), b);
        assert!(serde_json::from_str::<Bitfield>(r#"{"len":3,"bits":"a1"}"#).is_err());
        assert!(serde_json::from_str::<Bitfield>(r#"{"len":3,"bits":"zz"}"#).is_err());
    }

    proptest! {
        #[test]
        fn bytes_roundtrip(bits in proptest::collection::vec(any::<bool>(), 0..300)) {
            let b = Bitfield::from_bools(&bits);
            prop_assert_eq!(b.len() as usize, bits.len());
            let back = Bitfield::from_bytes(b.len(), &b.to_bytes()).unwrap();
            prop_assert_eq!(&back, &b);
            let ones: Vec<u32> = b.iter_ones().collect();
            let want: Vec<u32> = (0u32..).zip(&bits).filter(|(_, &x)| x).map(|(i, _)| i).collect();
            prop_assert_eq!(&ones, &want);
            prop_assert_eq!(b.iter_zeros().count(), b.count_zeros() as usize);
            prop_assert_eq!(b.count_ones() as usize, want.len());
            prop_assert_eq!(b.is_full(), bits.iter().all(|&x| x));
        }

        #[test]
        fn set_algebra(a in proptest::collection::vec(any::<bool>(), 130), c in proptest::collection::vec(any::<bool>(), 130)) {
            let (x, y) = (Bitfield::from_bools(&a), Bitfield::from_bools(&c));
            for i in 0..130u32 {
                let (p, q) = (a[i as usize], c[i as usize]);
                prop_assert_eq!(x.and(&y).get(i), p && q);
                prop_assert_eq!(x.andnot(&y).get(i), p && !q);
                prop_assert_eq!(x.or(&y).get(i), p || q);
                prop_assert_eq!(x.not().get(i), !p);
            }
            prop_assert_eq!(x.not().count_ones(), x.count_zeros());
        }
    }
}
