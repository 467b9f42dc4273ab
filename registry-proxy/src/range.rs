//! Single-range `Range: bytes=...` parsing and resolution against a blob size.
//!
//! Invariants: a resolved [`ByteRange`] always satisfies `start <= end < size`; several ranges in
//! one header are ignored (the whole blob is sent, which HTTP allows), a malformed single range or
//! one that starts past the end is unsatisfiable (416, as Go's `http.ServeContent`, which
//! distribution uses, answers).

/// A range as the client asked for it, before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (both inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// A satisfiable range of a blob: bytes `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range (never 0).
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a range holds at least one byte. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The `Range` header could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed range")]
pub struct RangeSyntaxError;

/// Parses a `Range` header value. `Ok(None)` means "ignore it and send everything" (other units,
/// several ranges).
pub fn parse_range(value: &str) -> Result<Option<RangeSpec>, RangeSyntaxError> {
    let value = value.trim();
    let Some(set) = value.strip_prefix("bytes=") else {
        // Unknown units are ignored (RFC 9110 §14.2).
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let (a, b) = set.trim().split_once('-').ok_or(RangeSyntaxError)?;
    let num = |s: &str| -> Result<u64, RangeSyntaxError> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeSyntaxError);
        }
        s.parse().map_err(|_| RangeSyntaxError)
    };
    match (a.trim(), b.trim()) {
        ("", n) => Ok(Some(RangeSpec::Suffix(num(n)?))),
        (a, "") => Ok(Some(RangeSpec::From(num(a)?))),
        (a, b) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(RangeSyntaxError);
            }
            Ok(Some(RangeSpec::FromTo(a, b)))
        }
    }
}

impl RangeSpec {
    /// The bytes of a blob of `size` this spec selects; `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<ByteRange> {
        let last = size.checked_sub(1)?;
        match self {
            Self::FromTo(a, b) if a <= last => Some(ByteRange {
                start: a,
                end: b.min(last),
            }),
            Self::From(a) if a <= last => Some(ByteRange {
                start: a,
                end: last,
            }),
            Self::Suffix(n) if n > 0 => Some(ByteRange {
                start: size - n.min(size),
                end: last,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r(start: u64, end: u64) -> Option<ByteRange> {
        Some(ByteRange { start, end })
    }

    #[test]
    fn parses() {
        assert_eq!(parse_range("bytes=0-9"), Ok(Some(RangeSpec::FromTo(0, 9))));
        assert_eq!(parse_range("bytes=5-"), Ok(Some(RangeSpec::From(5))));
        assert_eq!(parse_range("bytes=-3"), Ok(Some(RangeSpec::Suffix(3))));
        assert_eq!(
            parse_range(" bytes= 1 - 2 "),
            Ok(Some(RangeSpec::FromTo(1, 2)))
        );
        assert_eq!(parse_range("bytes=0-1,4-5"), Ok(None));
        assert_eq!(parse_range("items=0-1"), Ok(None));
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=-+1",
            "bytes=99999999999999999999999-",
            "bytes=0--1",
        ] {
            assert_eq!(parse_range(bad), Err(RangeSyntaxError), "{bad}");
        }
    }

    #[test]
    fn resolves() {
        assert_eq!(RangeSpec::FromTo(0, 9).resolve(100), r(0, 9));
        assert_eq!(RangeSpec::FromTo(90, 200).resolve(100), r(90, 99));
        assert_eq!(RangeSpec::FromTo(100, 200).resolve(100), None);
        assert_eq!(RangeSpec::From(99).resolve(100), r(99, 99));
        assert_eq!(RangeSpec::From(100).resolve(100), None);
        assert_eq!(RangeSpec::Suffix(10).resolve(100), r(90, 99));
        assert_eq!(RangeSpec::Suffix(1000).resolve(100), r(0, 99));
        assert_eq!(RangeSpec::Suffix(0).resolve(100), None);
        assert_eq!(RangeSpec::From(0).resolve(0), None);
        assert_eq!(RangeSpec::Suffix(5).resolve(0), None);
    }

    proptest! {
        #[test]
        fn resolved_ranges_fit(a in 0u64..1000, b in 0u64..1000, size in 0u64..1000, kind in 0u8..3) {
            let spec = match kind {
                0 => RangeSpec::FromTo(a.min(b), a.max(b)),
                1 => RangeSpec::From(a),
                _ => RangeSpec::Suffix(a),
            };
            if let Some(range) = spec.resolve(size) {
                prop_assert!(range.start <= range.end && range.end < size);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_range(&s);
            let _ = parse_range(&format!("bytes={s}"));
        }
    }
}
