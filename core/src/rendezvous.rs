//! Rendezvous (highest random weight) hashing: every node ranks the same members the same way
//! for a key, and removing a member only moves the keys it ranked first.
//!
//! The score is stable across versions and platforms and must stay so (nodes of different versions
//! must agree): the first 8 bytes, little-endian, of
//! `blake3::derive_key("image-preheat rendezvous v1", le_u64(key.len()) ‖ key ‖ member)`.
//! The length prefix keeps `("ab", "c")` and `("a", "bc")` apart. Ties (probability 2^-64) are
//! broken by member bytes, ascending.

/// Key-derivation context of the score; changing it reshuffles every ranking.
pub const CONTEXT: &str = "image-preheat rendezvous v1";

/// The weight of `member` for `key`.
pub fn score(key: &[u8], member: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(member);
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// All members, highest score first.
pub fn rank<'a, M: AsRef<[u8]>>(key: &[u8], members: &'a [M]) -> Vec<&'a M> {
    let mut scored: Vec<(u64, &'a M)> = members
        .iter()
        .map(|m| (score(key, m.as_ref()), m))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// The first `k` members of [`rank`].
pub fn top_k<'a, M: AsRef<[u8]>>(key: &[u8], members: &'a [M], k: usize) -> Vec<&'a M> {
    let mut r = rank(key, members);
    r.truncate(k);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn known_answer_and_length_prefix() {
        assert_eq!(
            score(b"sha256:abc", b"node-1"),
            score(b"sha256:abc", b"node-1")
        );
        assert_ne!(score(b"ab", b"c"), score(b"a", b"bc"));
        let expected = {
            let mut h = blake3::Hasher::new_derive_key("image-preheat rendezvous v1");
            h.update(&3u64.to_le_bytes());
            h.update(b"key");
            h.update(b"member");
            u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
        };
        assert_eq!(score(b"key", b"member"), expected);
        assert_eq!(score(b"key", b"member"), KNOWN_KEY_MEMBER);
    }

    /// Pinned: a change here breaks agreement between node versions.
    const KNOWN_KEY_MEMBER: u64 = 4_516_063_918_787_311_397;

    #[test]
    fn rank_is_a_deterministic_permutation() {
        let m = nodes(10);
        let r1 = rank(b"blob", &m);
        let mut shuffled = m.clone();
        shuffled.reverse();
        let r2 = rank(b"blob", &shuffled);
        assert_eq!(r1, r2);
        assert_eq!(r1.len(), 10);
        assert_eq!(top_k(b"blob", &m, 3), r1[..3].to_vec());
        assert_eq!(top_k(b"blob", &m, 30).len(), 10);
        assert!(rank::<String>(b"blob", &[]).is_empty());
    }

    #[test]
    fn ties_break_by_member_bytes() {
        let m = ["b", "a", "b"];
        let r = rank(b"k", &m);
        // Equal members score equally and keep ascending byte order among themselves.
        let pos: Vec<&str> = r.into_iter().copied().collect();
        let bs: Vec<usize> = pos
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == "b")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(bs[1], bs[0] + 1);
    }

    #[test]
    fn first_place_is_roughly_uniform() {
        let m = nodes(8);
        let mut wins = [0f64; 8];
        let keys = 8000;
        for k in 0..keys {
            let key = format!("sha256:{k:064x}");
            let first = rank(key.as_bytes(), &m)[0];
            wins[m.iter().position(|x| x == first).unwrap()] += 1.0;
        }
        let expect = f64::from(keys) / 8.0;
        let chi2: f64 = wins.iter().map(|w| (w - expect).powi(2) / expect).sum();
        // 7 degrees of freedom: p(chi2 > 40) < 1e-6. The keys are fixed, so this cannot flake.
        assert!(chi2 < 40.0, "chi2 {chi2}, wins {wins:?}");
    }

    proptest! {
        #[test]
        fn removing_a_member_keeps_everyone_elses_order(key in any::<Vec<u8>>(), n in 1usize..20, gone in any::<prop::sample::Index>()) {
            let m = nodes(n);
            let before: Vec<String> = rank(&key, &m).into_iter().cloned().collect();
            let gone = &m[gone.index(n)];
            let rest: Vec<String> = m.iter().filter(|x| *x != gone).cloned().collect();
            let after: Vec<String> = rank(&key, &rest).into_iter().cloned().collect();
            let expected: Vec<String> = before.iter().filter(|x| *x != gone).cloned().collect();
            prop_assert_eq!(&after, &expected);
            // Members ranked above the removed one keep their exact positions.
            let at = before.iter().position(|x| x == gone).unwrap();
            prop_assert_eq!(&after[..at], &before[..at]);
        }
    }
}
