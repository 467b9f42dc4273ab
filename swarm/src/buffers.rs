//! Recycled chunk receive buffers. A fresh chunk-sized `Vec` per request costs a memset and, from
//! glibc's mmap path, page faults on every page; a few buffers are kept for reuse instead.

use std::sync::Mutex;

/// Buffers kept idle at most (with 4 MiB chunks: 32 MiB).
const KEEP: usize = 8;

#[derive(Default)]
pub(crate) struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// A buffer of `len` bytes; its content is unspecified (a reused one is not zeroed).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self.lock().pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    /// A buffer as it was returned (any length), for callers that resize it themselves.
    pub fn take_any(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    /// Returns a buffer for reuse; dropped when enough are kept.
    pub fn put(&self, b: Vec<u8>) {
        let mut free = self.lock();
        if free.len() < KEEP {
            free.push(b);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_up_to_keep_buffers_and_sizes_them() {
        let pool = Buffers::default();
        let a = pool.take(10);
        assert_eq!(a.len(), 10);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.take(8);
        assert_eq!(
            (b.len(), b.as_ptr()),
            (8, ptr),
            "the same allocation, resized"
        );
        for _ in 0..KEEP + 3 {
            pool.put(vec![0; 4]);
        }
        assert_eq!(pool.lock().len(), KEEP);
    }
}
