//! Following a puller: every missing blob through the swarm, never from the registry. A blob whose
//! providers are not there yet (or whose download stalls) is tried again until the whole image
//! made no progress for the stall limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use preheat_core::Digest;
use preheat_store::Store;
use tokio::time::Instant;

use crate::pull::{PullProgress, PARALLEL_BLOBS};
use crate::swarm_pull::{PeerFetch, PeerSource};

/// Pause before asking the swarm again for a blob nobody serves yet.
const RETRY: Duration = Duration::from_millis(300);

/// Forwards progress to the caller's sink across role switches: the first `start` goes through,
/// later ones (a new phase re-counting the store) become an `advance` of what is new. Remembers
/// when bytes last arrived.
pub(super) struct Tracker {
    inner: Arc<dyn PullProgress>,
    started: AtomicBool,
    reported: AtomicU64,
    last: Mutex<Instant>,
}

impl Tracker {
    pub fn new(inner: Arc<dyn PullProgress>) -> Self {
        Self {
            inner,
            started: AtomicBool::new(false),
            reported: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// Restarts the stall clock.
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Time since bytes last arrived (or since `touch`).
    pub fn idle(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

impl PullProgress for Tracker {
    fn start(&self, total_bytes: u64, already: u64) {
        if !self.started.swap(true, Ordering::SeqCst) {
            self.reported.store(already, Ordering::SeqCst);
            self.inner.start(total_bytes, already);
            return;
        }
        let before = self.reported.fetch_max(already, Ordering::SeqCst);
        if already > before {
            self.inner.advance(already - before);
        }
    }

    fn advance(&self, bytes: u64) {
        self.reported.fetch_add(bytes, Ordering::SeqCst);
        self.touch();
        self.inner.advance(bytes);
    }

    fn blob_done(&self, d: &Digest) {
        self.inner.blob_done(d);
    }

    fn message(&self, msg: &str) {
        self.inner.message(msg);
    }
}

/// Stored bytes of `blobs` (complete blobs, verified chunks of partial ones) and their total.
pub(super) async fn stored(store: &Store, blobs: &[(Digest, u64)]) -> (u64, u64) {
    let (mut present, mut total) = (0, 0);
    for &(d, size) in blobs {
        total += size;
        present += if store.contains(&d).await {
            size
        } else {
            match store.partial(&d).await {
                Ok(Some(p)) => p.bytes_done.min(size),
                _ => 0,
            }
        };
    }
    (present, total)
}

/// Until the blobs are complete here, adding the bytes from peers to `peer_bytes`; `Err(idle)`
/// when no byte arrived for `stall`.
pub(super) async fn follow(
    peers: &PeerSource,
    store: &Store,
    blobs: &[(Digest, u64)],
    progress: &Tracker,
    stall: Duration,
    peer_bytes: &AtomicU64,
) -> Result<(), Duration> {
    let (present, total) = stored(store, blobs).await;
    progress.start(total, present);
    progress.touch();
    futures::stream::iter(blobs.iter().copied())
        .map(|(d, size)| async move {
            let mut reported = match store.partial(&d).await {
                Ok(Some(p)) => p.bytes_done.min(size),
                _ => 0,
            };
            loop {
                if store.contains(&d).await {
                    break;
                }
                match peers.fetch(store, d, size, reported, progress).await {
                    PeerFetch::Done { bytes } => {
                        peer_bytes.fetch_add(bytes, Ordering::Relaxed);
                        break;
                    }
                    PeerFetch::Fallback { reported: r } => reported = r,
                }
                let idle = progress.idle();
                if idle >= stall {
                    return Err(idle);
                }
                tokio::time::sleep(RETRY).await;
            }
            progress.blob_done(&d);
            Ok(())
        })
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(Mutex<Vec<(u64, u64)>>, AtomicU64);

    impl PullProgress for Record {
        fn start(&self, total: u64, already: u64) {
            self.0.lock().unwrap().push((total, already));
        }
        fn advance(&self, bytes: u64) {
            self.1.fetch_add(bytes, Ordering::SeqCst);
        }
        fn blob_done(&self, _: &Digest) {}
        fn message(&self, _: &str) {}
    }

    #[test]
    fn a_second_start_becomes_an_advance_of_what_is_new() {
        let rec = Arc::new(Record::default());
        let t = Tracker::new(rec.clone());
        t.start(100, 10);
        t.advance(20);
        // A role switch re-counts the store: 10 + 20 were reported, 45 are stored now.
        t.start(100, 45);
        // Re-counting less than was reported (a dropped unfinished chunk) reports nothing.
        t.start(100, 40);
        assert_eq!(*rec.0.lock().unwrap(), vec![(100, 10)]);
        assert_eq!(rec.1.load(Ordering::SeqCst), 20 + 15);
    }
}
