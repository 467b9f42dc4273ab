//! A blob body as a stream of `Bytes`, starting at the offset that was asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};

use super::error::RegistryError;

/// A blob's bytes from the requested offset on, as they arrive.
pub struct BlobStream {
    pub(super) inner: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
    pub(super) offset: u64,
    pub(super) remaining: Option<u64>,
}

impl BlobStream {
    /// The blob offset of the first byte this stream yields.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of bytes the server announced from `offset` on, if it did.
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("offset", &self.offset)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Drops the first `skip` bytes of a byte stream.
pub(super) fn skip_prefix<S>(
    stream: S,
    mut skip: u64,
) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send
where
    S: Stream<Item = Result<Bytes, RegistryError>> + Send,
{
    stream.try_filter_map(move |mut bytes| {
        if skip > 0 {
            let n = usize::try_from(skip).unwrap_or(usize::MAX).min(bytes.len());
            bytes = bytes.slice(n..);
            skip -= n as u64;
        }
        futures::future::ready(Ok((!bytes.is_empty()).then_some(bytes)))
    })
}

/// Ends a byte stream after `limit` bytes (`u64::MAX`: never).
pub(super) fn cut_at<S>(
    stream: S,
    mut limit: u64,
) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send
where
    S: Stream<Item = Result<Bytes, RegistryError>> + Send,
{
    stream
        .map_ok(move |mut bytes| {
            let n = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes.truncate(n);
            limit -= n as u64;
            bytes
        })
        .try_take_while(|b| futures::future::ready(Ok(!b.is_empty())))
}

/// `bytes 100-199/200` → 100.
pub(super) fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn skips_the_prefix_a_server_sent_despite_the_range() {
        for (skip, want) in [
            (0, "abcdefghij"),
            (2, "cdefghij"),
            (3, "defghij"),
            (8, "ij"),
            (10, ""),
            (99, ""),
        ] {
            let pieces = ["abc", "defg", "", "hij"].map(|s| Ok(Bytes::from(s)));
            let out: Vec<Bytes> = skip_prefix(futures::stream::iter(pieces), skip)
                .try_collect()
                .await
                .unwrap();
            assert!(out.iter().all(|b| !b.is_empty()), "no empty pieces");
            assert_eq!(out.concat(), want.as_bytes(), "skip {skip}");
        }
    }

    #[tokio::test]
    async fn cuts_a_stream_after_the_range_end() {
        for (limit, want) in [
            (0, ""),
            (2, "ab"),
            (3, "abc"),
            (5, "abcde"),
            (10, "abcdefghij"),
            (u64::MAX, "abcdefghij"),
        ] {
            let pieces = ["abc", "defg", "hij"].map(|s| Ok(Bytes::from(s)));
            let out: Vec<Bytes> = cut_at(futures::stream::iter(pieces), limit)
                .try_collect()
                .await
                .unwrap();
            assert_eq!(out.concat(), want.as_bytes(), "limit {limit}");
        }
    }

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("items 1-2"), None);
    }
}
