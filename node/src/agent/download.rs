//! `/images/download`: a docker-archive (`docker save` format) tar stream generated from the store,
//! at most `DOWNLOAD_API_CONCURRENCY` at once (429 beyond), node-wide rate limited by
//! `DOWNLOAD_RATE_LIMIT` (one governor bucket, one cell per byte, taken in 64 KiB pieces).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;
use tokio::sync::Semaphore;

use super::http::ApiError;

/// Largest amount taken from the bucket at once (the burst is at least this).
const PIECE: u32 = 64 * 1024;

/// Generates the docker-archive stream of a complete stored image.
pub type ArchiveFn = Arc<
    dyn Fn(Store, Reference, Digest) -> BoxStream<'static, std::io::Result<Bytes>> + Send + Sync,
>;

pub struct Download {
    slots: Arc<Semaphore>,
    limit: usize,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    archive: Option<ArchiveFn>,
}

impl Download {
    /// `rate` in bytes/s, 0 = unlimited; `archive` is `None` when no exporter is built in.
    pub fn new(concurrency: usize, rate: u64, archive: Option<ArchiveFn>) -> Self {
        let limiter = NonZeroU32::new(u32::try_from(rate).unwrap_or(u32::MAX)).map(|r| {
            // A tenth of a second of data, at least one piece: smooth and never below a take.
            let burst = NonZeroU32::new((r.get() / 10).max(PIECE)).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(Quota::per_second(r).allow_burst(burst)))
        });
        Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            limit: concurrency.max(1),
            limiter,
            archive,
        }
    }

    pub fn respond(
        &self,
        store: Store,
        reference: Reference,
        manifest: Digest,
    ) -> Result<Response, ApiError> {
        let Some(archive) = &self.archive else {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "docker-archive export is not available in this build",
            ));
        };
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "at most {} downloads at once (DOWNLOAD_API_CONCURRENCY); retry later",
                    self.limit
                ),
            )
        })?;
        let name = reference.to_string();
        let limiter = self.limiter.clone();
        let stream = archive(store, reference, manifest).then(move |item| {
            let limiter = limiter.clone();
            // The permit lives as long as the stream: the slot frees when the body is dropped.
            let _held = &permit;
            async move {
                if let (Some(l), Ok(b)) = (&limiter, &item) {
                    take(l, b.len()).await;
                }
                item
            }
        });
        let file = name
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .replace([':', '@'], "_");
        Ok((
            [
                (header::CONTENT_TYPE, "application/x-tar".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}.tar\""),
                ),
            ],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

async fn take(l: &DefaultDirectRateLimiter, mut n: usize) {
    while n > 0 {
        let piece = n.min(PIECE as usize);
        n -= piece;
        if let Some(cells) = u32::try_from(piece).ok().and_then(NonZeroU32::new) {
            // The burst is at least PIECE >= cells, so "insufficient capacity" cannot happen.
            let _ = l.until_n_ready(cells).await;
        }
    }
}
