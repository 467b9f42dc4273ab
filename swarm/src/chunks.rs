//! Bulk chunk streams over libp2p-stream: serving our chunks and requesting a peer's.
//!
//! The accept loop only spawns one task per inbound stream (libp2p-stream's channel has no slack,
//! so a slow accept loop would stall every connection). Each serving task holds at most one chunk.
//! A request beyond `max_uploads`, or for a chunk just sent to another peer (super-seeding), waits
//! up to `upload_wait` for a slot or for the chunk's resend window to end, and is then answered
//! `Busy` or `Declined` so the downloader goes elsewhere (core's `UploadQueue`, via `Waitlist`).

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use libp2p_stream::{Control, IncomingStreams};
use preheat_core::upload::Answer;
use preheat_core::Digest;
use preheat_store::Store;

use crate::limits::{ByteLimiter, PIECE};
use crate::metrics::Metrics;
use crate::protocol::{self, ChunkStatus, CHUNK_PROTOCOL};
use crate::waitlist::Waitlist;

/// Time a peer gets to send its 37-byte request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the serving side needs.
pub(crate) struct Uploads {
    pub store: Store,
    pub waitlist: Arc<Waitlist>,
    pub limiter: ByteLimiter,
    /// Read buffers for chunks being served, recycled.
    pub buffers: crate::buffers::Buffers,
    pub metrics: Metrics,
    pub timeout: Duration,
    /// Test-only fault injection, see `SwarmConfig::test_corrupt_uploads`.
    pub corrupt: bool,
}

/// Accepts inbound chunk streams until the swarm goes away; one task per stream.
pub(crate) async fn accept_loop(mut incoming: IncomingStreams, up: Arc<Uploads>) {
    while let Some((peer, stream)) = incoming.next().await {
        let up = up.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(up.timeout, serve(stream, &up)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "chunk upload failed"),
                Err(_) => tracing::debug!(%peer, "chunk upload timed out"),
            }
        });
    }
}

async fn serve(mut s: Stream, up: &Uploads) -> std::io::Result<()> {
    let (blob, chunk) = tokio::time::timeout(REQUEST_TIMEOUT, protocol::read_chunk_request(&mut s))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let refusal = match up.waitlist.admit(blob, chunk).await {
        Answer::Serve => None,
        Answer::Busy => {
            up.metrics.busy_answers.inc();
            Some(ChunkStatus::Busy)
        }
        Answer::Declined => {
            up.metrics.declined_answers.inc();
            Some(ChunkStatus::Declined)
        }
    };
    if let Some(st) = refusal {
        protocol::write_status(&mut s, st).await?;
        return s.close().await;
    }
    let _slot = Slot {
        list: &up.waitlist,
        blob,
        chunk,
    };
    let data = match up
        .store
        .read_chunk_into(&blob, chunk, up.buffers.take_any())
        .await
    {
        Ok(d) => d,
        Err(error) => {
            tracing::debug!(%blob, chunk, %error, "chunk not served");
            protocol::write_status(&mut s, ChunkStatus::NotFound).await?;
            return s.close().await;
        }
    };
    let len =
        u32::try_from(data.len()).map_err(|_| std::io::Error::other("chunk larger than 4 GiB"))?;
    protocol::write_status(&mut s, ChunkStatus::Ok).await?;
    protocol::write_chunk_len(&mut s, len).await?;
    let mut flipped = false;
    for piece in data.chunks(PIECE) {
        up.limiter.take(piece.len()).await;
        if up.corrupt && !flipped {
            let mut bad = piece.to_vec();
            bad[0] ^= 0x01;
            flipped = true;
            s.write_all(&bad).await?;
        } else {
            s.write_all(piece).await?;
        }
        up.metrics.sent(piece.len());
    }
    up.buffers.put(data);
    s.close().await
}

/// An upload slot the waitlist granted, returned when the upload ends however it ends.
struct Slot<'a> {
    list: &'a Waitlist,
    blob: Digest,
    chunk: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.list.finished(self.blob, self.chunk);
    }
}

/// What a peer answered to a chunk request.
#[derive(Debug)]
pub(crate) enum Reply {
    Data(Vec<u8>),
    Busy,
    Declined,
    /// The stream was reset unanswered (the server could not accept it in time).
    Dropped,
    NotFound,
}

/// Requests chunk `chunk` from `peer` into `buf`, whose length is the chunk's exact length. The
/// caller bounds the time.
pub(crate) async fn request(
    mut control: Control,
    peer: PeerId,
    blob: Digest,
    chunk: u32,
    mut buf: Vec<u8>,
    limiter: &ByteLimiter,
    metrics: &Metrics,
) -> std::io::Result<Reply> {
    let mut s = control
        .open_stream(peer, CHUNK_PROTOCOL)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e))?;
    let len = u32::try_from(buf.len()).map_err(|_| std::io::Error::other("chunk over 4 GiB"))?;
    protocol::write_chunk_request(&mut s, &blob, chunk).await?;
    let status = match protocol::read_chunk_header(&mut s, len).await {
        Ok(st) => st,
        // Reset before the status byte: libp2p-stream drops an inbound stream when the server's
        // accept queue (one slot) is full, which happens under load; retry soon, like busy.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Reply::Dropped),
        Err(e) => return Err(e),
    };
    match status {
        ChunkStatus::Busy => return Ok(Reply::Busy),
        ChunkStatus::Declined => return Ok(Reply::Declined),
        ChunkStatus::NotFound => return Ok(Reply::NotFound),
        ChunkStatus::Ok => {}
    }
    // `len` was checked against the chunk index, so this is at most one chunk.
    let mut off = 0;
    while off < buf.len() {
        let end = (off + PIECE).min(buf.len());
        limiter.take(end - off).await;
        s.read_exact(&mut buf[off..end]).await?;
        metrics.received(end - off);
        off = end;
    }
    Ok(Reply::Data(buf))
}
