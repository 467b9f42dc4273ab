//! A blob body read from the store: from the complete blob, or chunk by chunk from a partial one
//! while a writer (registry pull or swarm fetch) stores its chunks.
//!
//! Invariants: memory is one chunk (partial) or one 64 KiB piece (complete blob) per response; the
//! chunk holding the blob's last byte is only ever read from the complete blob, so a client never
//! receives the whole of a blob that has not passed its sha256 check; a body that makes no progress
//! for `stall` ends with an error (the client retries or falls back).

use std::io::{self, SeekFrom};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use preheat_core::Digest;
use preheat_store::{ChunkWritten, Store, StoreError};
use registry_proxy::BlobBody;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Piece size when reading a complete blob.
const PIECE: usize = 64 * 1024;
/// Re-check interval while waiting: catches completion (which sends no chunk notice) and lost
/// notices. Chunk notices wake the reader at once.
const POLL: Duration = Duration::from_millis(100);

/// Bytes `start..=end` of blob `d`, streamed as they become available in `store`. The caller has
/// checked that the blob is complete or has a partial, and that the range lies inside the blob.
pub fn body(store: Store, d: Digest, start: u64, end: u64, stall: Duration) -> BlobBody {
    // Subscribed before the first look at the store, so no chunk stored after it is missed.
    let notices = store.subscribe_chunks();
    let reader = Reader {
        store,
        digest: d,
        pos: start,
        end,
        stall,
        notices,
        file: None,
        last_progress: Instant::now(),
    };
    Box::pin(futures::stream::try_unfold(reader, |mut r| async move {
        Ok(r.next().await?.map(|b| (b, r)))
    }))
}

struct Reader {
    store: Store,
    digest: Digest,
    /// Next byte to send.
    pos: u64,
    /// Last byte to send (inclusive).
    end: u64,
    stall: Duration,
    notices: broadcast::Receiver<ChunkWritten>,
    /// The complete blob, positioned at `pos`, once it is installed.
    file: Option<tokio::fs::File>,
    last_progress: Instant,
}

fn to_io(e: StoreError) -> io::Error {
    io::Error::other(e)
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.pos > self.end {
            return Ok(None);
        }
        loop {
            if let Some(piece) = self.read_file().await? {
                return Ok(Some(self.sent(piece)));
            }
            if let Some(piece) = self.read_partial().await? {
                return Ok(Some(self.sent(piece)));
            }
            if self.last_progress.elapsed() >= self.stall {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no chunk of {} was stored for {:?}",
                        self.digest, self.stall
                    ),
                ));
            }
            self.wait().await;
        }
    }

    fn sent(&mut self, piece: Bytes) -> Bytes {
        self.pos += piece.len() as u64;
        self.last_progress = Instant::now();
        piece
    }

    /// The next piece from the complete blob; `None` while it is not complete.
    async fn read_file(&mut self) -> io::Result<Option<Bytes>> {
        if self.file.is_none() {
            if !self.store.contains(&self.digest).await {
                return Ok(None);
            }
            let mut f = self.store.open_blob(&self.digest).await.map_err(to_io)?;
            f.seek(SeekFrom::Start(self.pos)).await?;
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(None);
        };
        let want = usize::try_from(self.end - self.pos + 1).map_or(PIECE, |n| n.min(PIECE));
        let mut buf = BytesMut::zeroed(want);
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob {} ended before byte {}", self.digest, self.pos),
            ));
        }
        buf.truncate(n);
        Ok(Some(buf.freeze()))
    }

    /// The rest of the chunk holding `pos` from the partial blob, when that chunk is stored and is
    /// not the last one; `None` to wait.
    async fn read_partial(&mut self) -> io::Result<Option<Bytes>> {
        let Some(p) = self.store.partial(&self.digest).await.map_err(to_io)? else {
            if self.store.contains(&self.digest).await {
                return Ok(None); // installed meanwhile: the next round reads the file
            }
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {} left the store before it was complete", self.digest),
            ));
        };
        let layout = p.layout;
        let i = layout.chunk_of(self.pos);
        let last = i + 1 >= layout.count();
        if last || !p.done.get(i as usize).copied().unwrap_or(false) {
            return Ok(None);
        }
        let chunk = match self.store.read_chunk(&self.digest, i).await {
            Ok(c) => c,
            // Installed or re-laid out between the two looks: look again.
            Err(StoreError::NotFound(_) | StoreError::ChunkMissing { .. }) => return Ok(None),
            Err(e) => return Err(to_io(e)),
        };
        let offset = layout.offset(i);
        let from = usize::try_from(self.pos - offset).map_err(io::Error::other)?;
        let to = usize::try_from((self.end + 1 - offset).min(chunk.len() as u64))
            .map_err(io::Error::other)?;
        if from >= to {
            return Ok(None);
        }
        Ok(Some(chunk.slice(from..to)))
    }

    /// Until a chunk of this blob is stored, or `POLL` passes.
    async fn wait(&mut self) {
        let digest = self.digest;
        let notices = &mut self.notices;
        let notice = async {
            loop {
                match notices.recv().await {
                    Ok(n) if n.digest == digest => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(POLL, notice).await;
    }
}
