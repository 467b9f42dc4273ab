//! Piece selection policies: which of the chunks a peer can serve to ask it for next.
//!
//! A policy only chooses; the transfer state machine decides who is asked and how often. Every
//! policy returns a chunk in `want ∩ peer_has`, or `None` when that set is empty.

use std::fmt;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::bitfield::Bitfield;

/// Chooses the next chunk to request from one peer.
pub trait PiecePolicy: Send + Sync + fmt::Debug {
    /// `want`: chunks still needed and not in flight; `peer_has`: the peer's chunks;
    /// `availability[i]`: how many known peers have chunk `i`.
    fn pick(
        &self,
        want: &Bitfield,
        peer_has: &Bitfield,
        availability: &[u16],
        rng: &mut dyn RngCore,
    ) -> Option<u32>;
}

/// The chunk fewest peers have, ties broken uniformly at random (Kraken's and BitTorrent's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct RarestFirst;

/// The lowest-numbered chunk (useful for streaming and as a baseline in the simulator).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sequential;

/// A uniformly random chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl PiecePolicy for RarestFirst {
    fn pick(
        &self,
        want: &Bitfield,
        has: &Bitfield,
        avail: &[u16],
        rng: &mut dyn RngCore,
    ) -> Option<u32> {
        let mut best: Option<(u16, u32)> = None;
        let mut ties = 0u32;
        for i in want.iter_ones_and(has) {
            let a = avail.get(i as usize).copied().unwrap_or(0);
            match best {
                Some((b, _)) if a > b => {}
                Some((b, _)) if a == b => {
                    // Reservoir sampling keeps each tied chunk with probability 1/ties.
                    ties += 1;
                    if rng.gen_range(0..ties) == 0 {
                        best = Some((a, i));
                    }
                }
                _ => {
                    best = Some((a, i));
                    ties = 1;
                }
            }
        }
        best.map(|(_, i)| i)
    }
}

impl PiecePolicy for Sequential {
    fn pick(&self, want: &Bitfield, has: &Bitfield, _: &[u16], _: &mut dyn RngCore) -> Option<u32> {
        want.iter_ones_and(has).next()
    }
}

impl PiecePolicy for Random {
    fn pick(
        &self,
        want: &Bitfield,
        has: &Bitfield,
        _: &[u16],
        rng: &mut dyn RngCore,
    ) -> Option<u32> {
        let n = want.count_ones_and(has);
        if n == 0 {
            return None;
        }
        let k = rng.gen_range(0..n) as usize;
        let picked = want.iter_ones_and(has).nth(k);
        picked
    }
}

/// A policy chosen by name, for configuration and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    RarestFirst,
    Sequential,
    Random,
}

impl PiecePolicy for Policy {
    fn pick(
        &self,
        want: &Bitfield,
        has: &Bitfield,
        avail: &[u16],
        rng: &mut dyn RngCore,
    ) -> Option<u32> {
        match self {
            Policy::RarestFirst => RarestFirst.pick(want, has, avail, rng),
            Policy::Sequential => Sequential.pick(want, has, avail, rng),
            Policy::Random => Random.pick(want, has, avail, rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn bits(len: u32, ones: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_first_picks_lowest_availability_and_spreads_ties() {
        let want = Bitfield::full(6);
        let has = bits(6, &[0, 1, 2, 4, 5]);
        let avail = [1, 5, 2, 0, 1, 3];
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [0u32; 6];
        for _ in 0..200 {
            let c = RarestFirst.pick(&want, &has, &avail, &mut rng).unwrap();
            seen[c as usize] += 1;
        }
        // Chunk 3 is rarer but the peer lacks it; 0 and 4 tie at availability 1.
        assert_eq!(seen[1] + seen[2] + seen[3] + seen[5], 0);
        assert!(seen[0] > 50 && seen[4] > 50, "{seen:?}");
    }

    #[test]
    fn sequential_and_random() {
        let want = bits(8, &[2, 5, 7]);
        let has = bits(8, &[5, 6, 7]);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(Sequential.pick(&want, &has, &[], &mut rng), Some(5));
        for _ in 0..20 {
            let c = Random.pick(&want, &has, &[], &mut rng).unwrap();
            assert!(c == 5 || c == 7);
        }
        assert_eq!(Random.pick(&want, &bits(8, &[0]), &[], &mut rng), None);
    }

    proptest! {
        #[test]
        fn every_policy_picks_inside_want_and_has(
            w in proptest::collection::vec(any::<bool>(), 1..100),
            h in proptest::collection::vec(any::<bool>(), 1..100),
            avail in proptest::collection::vec(0u16..5, 0..100),
            seed in any::<u64>(),
        ) {
            let n = w.len().min(h.len());
            let (want, has) = (Bitfield::from_bools(&w[..n]), Bitfield::from_bools(&h[..n]));
            let both = want.and(&has);
            let mut rng = StdRng::seed_from_u64(seed);
            for p in [Policy::RarestFirst, Policy::Sequential, Policy::Random] {
                match p.pick(&want, &has, &avail, &mut rng) {
                    Some(c) => {
                        prop_assert!(both.get(c));
                        if p == Policy::RarestFirst {
                            let a = |i: u32| avail.get(i as usize).copied().unwrap_or(0);
                            prop_assert!(both.iter_ones().all(|i| a(i) >= a(c)));
                        }
                    }
                    None => prop_assert!(both.is_clear()),
                }
            }
        }
    }
}
