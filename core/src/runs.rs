//! Which byte ranges of a blob to ask a registry for when some chunks are already stored (from
//! peers, in any order): the runs of missing chunks, merged across the shortest stored gaps until
//! at most `max_runs` remain, so a resume costs a bounded number of range requests and re-fetches
//! only the few stored chunks inside merged gaps.

use std::ops::Range;

/// Runs of missing chunks (`done[i] == false`) as chunk ranges, in order, at most `max_runs`
/// (at least one when anything is missing).
pub fn missing_runs(done: &[bool], max_runs: usize) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for (i, d) in done.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        if *d {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    while runs.len() > max_runs.max(1) {
        // Merge the pair with the shortest stored gap between them (the first such on ties).
        let Some(k) = (0..runs.len() - 1).min_by_key(|&k| runs[k + 1].start - runs[k].end) else {
            break;
        };
        let next = runs.remove(k + 1);
        runs[k].end = next.end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bools(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == '#').collect()
    }

    #[test]
    fn runs_of_missing_chunks_merged_over_the_shortest_gaps() {
        assert_eq!(missing_runs(&bools("####"), 4), Vec::<Range<u32>>::new());
        assert_eq!(missing_runs(&bools("...."), 4), vec![0..4]);
        assert_eq!(missing_runs(&bools("#..#.###."), 4), vec![1..3, 4..5, 8..9]);
        // Gaps of 1 (between 1..3 and 4..5) and 3 (before 8): the shorter one goes first.
        assert_eq!(missing_runs(&bools("#..#.###."), 2), vec![1..5, 8..9]);
        assert_eq!(missing_runs(&bools("#..#.###."), 1), vec![1..9]);
        assert_eq!(missing_runs(&bools("#..#.###."), 0), vec![1..9]);
    }

    proptest! {
        #[test]
        fn runs_cover_every_missing_chunk_in_order_within_the_cap(
            done in proptest::collection::vec(any::<bool>(), 0..300),
            max in 1usize..20,
        ) {
            let runs = missing_runs(&done, max);
            prop_assert!(runs.len() <= max);
            for w in runs.windows(2) {
                prop_assert!(w[0].end < w[1].start, "ordered, disjoint, not adjacent");
            }
            for (i, d) in done.iter().enumerate() {
                let i = u32::try_from(i).unwrap();
                if !d {
                    prop_assert!(runs.iter().any(|r| r.contains(&i)));
                }
            }
            for r in &runs {
                prop_assert!(!done[r.start as usize] && !done[r.end as usize - 1], "runs start and end on missing chunks");
            }
            // Without a cap binding, nothing stored is re-fetched.
            let exact = missing_runs(&done, usize::MAX);
            let stored_inside: usize = exact.iter().map(|r| r.clone().filter(|&i| done[i as usize]).count()).sum();
            prop_assert_eq!(stored_inside, 0);
        }
    }
}
