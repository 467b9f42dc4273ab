//! Human units in configuration: durations (`1h30m`), byte sizes (`1.5GiB`) and rates (`50MiB/s`).
//!
//! Invariants: parsing is exact integer arithmetic (no floats); anything that does not fit
//! (`u64` bytes, `Duration`) is rejected, never wrapped or saturated.

use std::time::Duration;

/// Why a duration, size or rate was rejected. Each message names the input and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid duration {input:?}: {problem}; expected a duration like 30s, 5m, 1h or 1h30m"
    )]
    Duration {
        input: String,
        problem: &'static str,
    },
    #[error("invalid size {input:?}: {problem}; expected a size like 500MiB, 1.5GiB, 10MB or 1024 (bytes)")]
    Bytes {
        input: String,
        problem: &'static str,
    },
    #[error("invalid rate {input:?}: {problem}; expected a rate like 50MiB/s, 1GB/s or 1048576 (bytes per second)")]
    Rate {
        input: String,
        problem: &'static str,
    },
}

const TOO_LARGE: &str = "the value is too large";
const NO_NUMBER: &str = "a number is missing";
const EMPTY: &str = "it is empty";
const NEGATIVE: &str = "it is negative";

/// A non-negative decimal number split into its integer part and up to 18 fractional digits.
struct Decimal {
    int: u128,
    frac: u128,
    frac_digits: u32,
}

impl Decimal {
    /// `self * unit`, rounded down, or `None` when it does not fit in a `u128`.
    fn times(&self, unit: u128) -> Option<u128> {
        let whole = self.int.checked_mul(unit)?;
        let part = self.frac.checked_mul(unit)? / 10u128.pow(self.frac_digits);
        whole.checked_add(part)
    }
}

/// Reads a number at the start of `s`; returns it and the rest. `Err` holds the problem.
fn take_number(s: &str) -> Result<(Decimal, &str), &'static str> {
    let digits_end = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n = digits_end(s);
    let (int_str, mut rest) = s.split_at(n);
    let mut frac_str = "";
    if let Some(after) = rest.strip_prefix('.') {
        let m = digits_end(after);
        frac_str = &after[..m];
        rest = &after[m..];
        if frac_str.is_empty() {
            return Err("a '.' must be followed by digits");
        }
    }
    if int_str.is_empty() && frac_str.is_empty() {
        return Err(NO_NUMBER);
    }
    if frac_str.len() > 18 {
        return Err("more than 18 decimal places");
    }
    let int = if int_str.is_empty() {
        0
    } else {
        int_str.parse::<u128>().map_err(|_| TOO_LARGE)?
    };
    let frac = if frac_str.is_empty() {
        0
    } else {
        frac_str.parse::<u128>().map_err(|_| TOO_LARGE)?
    };
    // At most 18 digits, so this fits.
    let frac_digits = u32::try_from(frac_str.len()).unwrap_or(18);
    Ok((
        Decimal {
            int,
            frac,
            frac_digits,
        },
        rest,
    ))
}

fn duration_unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return None,
    })
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1h30m`, `1.5h`, `2d`, or a bare number of seconds (`90`).
/// Units: ns, us (µs), ms, s, m, h, d.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = |problem| UnitError::Duration {
        input: input.to_owned(),
        problem,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err(EMPTY));
    }
    if s.starts_with('-') {
        return Err(err(NEGATIVE));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (secs, _) = take_number(s).map_err(err)?;
        let nanos = secs.times(1_000_000_000).ok_or(err(TOO_LARGE))?;
        return nanos_to_duration(nanos).ok_or(err(TOO_LARGE));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let (value, after) = take_number(rest).map_err(err)?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(err(
                "a number is missing its unit (ns, us, ms, s, m, h or d)",
            ));
        }
        let per =
            duration_unit_nanos(unit).ok_or(err("unknown unit (use ns, us, ms, s, m, h or d)"))?;
        let nanos = value.times(per).ok_or(err(TOO_LARGE))?;
        total = total.checked_add(nanos).ok_or(err(TOO_LARGE))?;
        rest = after;
    }
    nanos_to_duration(total).ok_or(err(TOO_LARGE))
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    // The remainder is below 1e9, so it fits in a u32.
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

fn byte_unit(unit: &str) -> Option<u128> {
    const K: u128 = 1000;
    const KI: u128 = 1024;
    // Single letters are case-sensitive (Kubernetes reads a lowercase m as milli); longer
    // suffixes are not.
    let exact = match unit {
        "" | "B" => Some(1),
        "k" | "K" => Some(K),
        "M" => Some(K.pow(2)),
        "G" => Some(K.pow(3)),
        "T" => Some(K.pow(4)),
        "P" => Some(K.pow(5)),
        "E" => Some(K.pow(6)),
        _ => None,
    };
    exact.or_else(|| {
        Some(match unit.to_ascii_lowercase().as_str() {
            "kb" => K,
            "mb" => K.pow(2),
            "gb" => K.pow(3),
            "tb" => K.pow(4),
            "pb" => K.pow(5),
            "eb" => K.pow(6),
            "ki" | "kib" => KI,
            "mi" | "mib" => KI.pow(2),
            "gi" | "gib" => KI.pow(3),
            "ti" | "tib" => KI.pow(4),
            "pi" | "pib" => KI.pow(5),
            "ei" | "eib" => KI.pow(6),
            _ => return None,
        })
    })
}

fn bytes_problem(s: &str) -> Result<u64, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Err(EMPTY);
    }
    if s.starts_with('-') {
        return Err(NEGATIVE);
    }
    let (value, unit) = take_number(s)?;
    let mult = byte_unit(unit.trim_start())
        .ok_or("unknown unit (use B, kB, KiB, MB, MiB, GB, GiB, TB, TiB, PB or PiB)")?;
    let bytes = value.times(mult).ok_or(TOO_LARGE)?;
    u64::try_from(bytes).map_err(|_| TOO_LARGE)
}

/// Parses a byte size: `1024`, `4k`, `10MB`, `500MiB`, `1.5GiB`, `2Ti`, `1 GiB`. Decimal units
/// (k, KB, MB, GB, TB) are powers of 1000, binary ones (KiB/Ki, MiB/Mi, ...) powers of 1024;
/// a fractional byte count is rounded down.
pub fn parse_bytes(input: &str) -> Result<u64, UnitError> {
    bytes_problem(input).map_err(|problem| UnitError::Bytes {
        input: input.to_owned(),
        problem,
    })
}

/// Parses a rate in bytes per second: a byte size with an optional `/s` (`50MiB/s`, `100MB`).
pub fn parse_rate(input: &str) -> Result<u64, UnitError> {
    let trimmed = input.trim();
    let size = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    bytes_problem(size).map_err(|problem| UnitError::Rate {
        input: input.to_owned(),
        problem,
    })
}

/// Formats a byte count with binary units and at most one decimal: `512 B`, `1.5 GiB`, `2 MiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    while i + 1 < UNITS.len() && u128::from(n) >= 1u128 << (10 * (i + 1)) {
        i += 1;
    }
    if i == 0 {
        return format!("{n} B");
    }
    // Tenths of the unit, rounded half up; 1023.96 KiB rounds to 1024.0 and moves up a unit.
    let unit = 1u128 << (10 * i);
    let mut tenths = (u128::from(n) * 10 + unit / 2) / unit;
    if tenths >= 10240 && i + 1 < UNITS.len() {
        i += 1;
        tenths = (u128::from(n) * 10 + (unit << 9)) / (unit << 10);
    }
    let (whole, tenth) = (tenths / 10, tenths % 10);
    if tenth == 0 {
        format!("{whole} {}", UNITS[i])
    } else {
        format!("{whole}.{tenth} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(172_800)),
            ("1.5h", Duration::from_secs(5400)),
            ("1m0.5s", Duration::from_millis(60_500)),
            ("90", Duration::from_secs(90)),
            ("2.5", Duration::from_millis(2500)),
            (" 10s ", Duration::from_secs(10)),
            ("0", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("3µs", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        let bad = [
            ("", "it is empty"),
            ("  ", "it is empty"),
            ("5x", "unknown unit"),
            ("1h30", "missing its unit"),
            ("h", "a number is missing"),
            ("-5s", "negative"),
            ("1.s", "followed by digits"),
            ("99999999999999999999999h", "too large"),
            ("18446744073709551616", "too large"),
        ];
        for (input, problem) in bad {
            let e = parse_duration(input).expect_err(input);
            let text = e.to_string();
            assert!(text.contains(problem), "{input}: {text}");
            assert!(text.contains(&format!("{input:?}")), "{text}");
            assert!(text.contains("expected a duration like 30s, 5m"), "{text}");
        }
    }

    #[test]
    fn byte_sizes() {
        let ok = [
            ("1024", 1024),
            ("0", 0),
            ("12B", 12),
            ("4k", 4000),
            ("4K", 4000),
            ("4KB", 4000),
            ("4kB", 4000),
            ("4KiB", 4096),
            ("10MB", 10_000_000),
            ("500MiB", 500 << 20),
            ("500mib", 500 << 20),
            ("1GiB", 1 << 30),
            ("1 GiB", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("2Gi", 2 << 30),
            ("3G", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("1TiB", 1 << 40),
            ("2PiB", 2 << 50),
            ("1EB", 1_000_000_000_000_000_000),
            ("15.5 EiB", 31 << 59),
            ("0.5k", 500),
            ("1.0001KiB", 1024),
            (
                "16777215.999TiB",
                16_777_215 * (1 << 40) + 999 * (1u64 << 40) / 1000,
            ),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, want) in ok {
            assert_eq!(parse_bytes(input), Ok(want), "{input}");
        }
        let bad = [
            ("", "it is empty"),
            ("MiB", "a number is missing"),
            ("10m", "unknown unit"),
            ("10 MiBs", "unknown unit"),
            ("10XB", "unknown unit"),
            ("-1", "negative"),
            ("18446744073709551616", "too large"),
            ("16777216TiB", "too large"),
            ("16EiB", "too large"),
            ("1.1234567890123456789KiB", "18 decimal places"),
        ];
        for (input, problem) in bad {
            let e = parse_bytes(input).expect_err(input);
            let text = e.to_string();
            assert!(text.contains(problem), "{input}: {text}");
            assert!(text.contains(&format!("{input:?}")), "{text}");
            assert!(text.contains("expected a size like 500MiB"), "{text}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("100MB"), Ok(100_000_000));
        assert_eq!(parse_rate(" 1.5GiB/s "), Ok(3 << 29));
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        let e = parse_rate("fast/s").unwrap_err();
        assert!(matches!(e, UnitError::Rate { .. }), "{e:?}");
        assert!(e.to_string().contains("\"fast/s\""), "{e}");
        assert!(
            e.to_string().contains("expected a rate like 50MiB/s"),
            "{e}"
        );
        assert!(parse_rate("5MiB/h").is_err());
    }

    #[test]
    fn formats_bytes() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (3 << 29, "1.5 GiB"),
            (200 << 20, "200 MiB"),
            ((1 << 20) - 1, "1 MiB"),
            ((1 << 20) - 51, "1 MiB"),
            ((1 << 20) - 52, "1023.9 KiB"),
            ((1 << 20) - 103, "1023.9 KiB"),
            (1 << 40, "1 TiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(format_bytes(n), want, "{n}");
        }
    }

    proptest! {
        #[test]
        fn formatted_sizes_parse_back_closely(n in 0..(15u64 << 60)) {
            let shown = format_bytes(n);
            let back = parse_bytes(&shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // One decimal of a unit >= 1 is within 5 % (exact below 1 KiB).
            prop_assert!(back.abs_diff(n) <= n / 20, "{} -> {} -> {}", n, shown, back);
        }

        #[test]
        fn whole_units_round_trip(k in 0u64..1024, unit in 0usize..5) {
            let n = k << (10 * unit);
            prop_assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }

        #[test]
        fn compound_durations_add_up(h in 0u64..10_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let input = format!("{h}h{m}m{s}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            prop_assert_eq!(parse_duration(&input), Ok(want));
        }

        #[test]
        fn sizes_scale_by_their_unit(n in 0u64..1_000_000, i in 0usize..9) {
            let (unit, mult) = [("B", 1u64), ("k", 1000), ("KiB", 1024), ("MB", 1_000_000),
                ("MiB", 1 << 20), ("GB", 1_000_000_000), ("GiB", 1 << 30), ("TB", 1_000_000_000_000),
                ("TiB", 1 << 40)][i];
            prop_assert_eq!(parse_bytes(&format!("{n}{unit}")), Ok(n * mult));
            prop_assert_eq!(parse_rate(&format!("{n}{unit}/s")), Ok(n * mult));
        }
    }
}
