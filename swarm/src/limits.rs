//! Node-wide byte-rate limits (governor token buckets, one cell per byte).
//!
//! The burst is at least one piece of [`PIECE`] bytes and at least one chunk (CRATES.md: a burst
//! smaller than the largest single request makes governor refuse it forever). Callers take at most
//! [`PIECE`] bytes at a time, so data flows smoothly instead of in chunk-sized bursts.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Largest amount taken from a bucket at once; also the read/write piece size of chunk streams.
pub const PIECE: usize = PIECE_U32 as usize;
const PIECE_U32: u32 = 64 * 1024;

/// A shared byte-rate limiter; `None` rate means unlimited.
#[derive(Clone)]
pub struct ByteLimiter(Option<Arc<DefaultDirectRateLimiter>>);

impl ByteLimiter {
    /// `rate` in bytes/s (clamped to u32::MAX, about 4 GiB/s); `burst` in bytes.
    pub fn new(rate: Option<u64>, burst: u32) -> Self {
        let Some(rate) = rate else { return Self(None) };
        let rate =
            NonZeroU32::new(u32::try_from(rate).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(PIECE_U32)).unwrap_or(NonZeroU32::MIN);
        Self(Some(Arc::new(RateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        ))))
    }

    /// Waits until `n` bytes (at most [`PIECE`]) may pass.
    pub async fn take(&self, n: usize) {
        let Some(l) = &self.0 else { return };
        let n = u32::try_from(n.min(PIECE)).unwrap_or(PIECE_U32);
        if let Some(n) = NonZeroU32::new(n) {
            // The burst is >= PIECE >= n, so the only error (insufficient capacity) cannot happen.
            let _ = l.until_n_ready(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unlimited_never_waits_and_limited_bucket_empties() {
        let un = ByteLimiter::new(None, 0);
        for _ in 0..1000 {
            un.take(PIECE).await;
        }
        // 64 KiB/s with a 64 KiB burst: after one piece the bucket needs a second to refill.
        let l = ByteLimiter::new(Some(PIECE as u64), 0);
        l.take(PIECE).await;
        let inner = l.0.as_ref().unwrap();
        let n = NonZeroU32::new(PIECE_U32).unwrap();
        assert!(
            matches!(inner.check_n(n), Ok(Err(_))),
            "bucket must be empty right after a piece"
        );
        // A burst larger than the rate is honoured (one whole chunk at once).
        let big = ByteLimiter::new(Some(1024), 4 * 1024 * 1024);
        let n = NonZeroU32::new(4 * 1024 * 1024).unwrap();
        assert!(matches!(big.0.as_ref().unwrap().check_n(n), Ok(Ok(()))));
    }
}
