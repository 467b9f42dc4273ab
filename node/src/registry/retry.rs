//! Retry policy for registry requests: capped exponential backoff with full jitter, and `Retry-After`.
//!
//! The arithmetic is pure (the caller passes the RNG and the clock), so it is tested without I/O.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// How often and how patiently a failed registry request is retried.
///
/// Retried: HTTP 429, 5xx, connection errors and timeouts. Never retried: other 4xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubled after every further failure.
    pub base: Duration,
    /// Upper bound of the backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Whether another attempt may follow after `failures` failed attempts.
    pub fn may_retry(&self, failures: u32) -> bool {
        failures < self.max_attempts
    }

    /// The backoff ceiling after `failures` failures (1-based): `min(max_delay, base * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Full jitter: a uniformly random delay in `[0, ceiling(failures)]`.
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// The longest `Retry-After` the client is willing to honour: three times `max_delay`.
    pub fn retry_after_cap(&self) -> Duration {
        self.max_delay.saturating_mul(3)
    }

    /// The wait before the next attempt: the server's `Retry-After` (capped) when given, else the backoff.
    pub fn delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        match retry_after {
            Some(d) => d.min(self.retry_after_cap()),
            None => self.backoff(failures, rng),
        }
    }
}

/// Parses a `Retry-After` value: delta seconds (`"120"`) or an HTTP date, relative to `now`.
/// A date in the past gives zero; anything unparsable gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(6), Duration::from_millis(6400));
        assert_eq!(p.ceiling(7), Duration::from_secs(10));
        assert_eq!(p.ceiling(1000), Duration::from_secs(10));
        assert_eq!(p.ceiling(0), Duration::from_millis(200));
    }

    #[test]
    fn ceiling_survives_overflow() {
        let p = RetryPolicy {
            max_attempts: 100,
            base: Duration::from_secs(u64::MAX / 2),
            max_delay: Duration::from_secs(5),
        };
        assert_eq!(p.ceiling(40), Duration::from_secs(5));
    }

    #[test]
    fn backoff_is_jittered_within_ceiling() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut distinct = std::collections::HashSet::new();
        for failures in 1..=10 {
            for _ in 0..50 {
                let d = p.backoff(failures, &mut rng);
                assert!(d <= p.ceiling(failures), "{d:?} > ceiling for {failures}");
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 100, "full jitter should spread delays");
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2)), &mut rng),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), &mut rng),
            Duration::from_secs(30)
        );
        assert!(p.delay(1, None, &mut rng) <= Duration::from_millis(200));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::default();
        assert!(p.may_retry(5));
        assert!(!p.may_retry(6));
        let once = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert!(!once.may_retry(1));
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
