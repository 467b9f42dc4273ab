//! Tag records through the swarm: the node that resolved a tag at the registry publishes
//! `reference → manifest digest + manifest bytes`, so other nodes resolve it without a registry
//! request.
//!
//! The publisher keeps the record in memory and provides the Kademlia key [`tag_key`] (a prefixed
//! sha256 of the reference, never equal to a blob key); a resolver looks the providers up, asks each
//! (`GetTag`, at most [`MAX_TAG_ASKS`] at once) and keeps the newest valid answer by publish time.
//! A record is a claim: it is accepted only when `sha256(bytes) == manifest` and within the caps
//! (manifest ≤ 4 MiB), so a forged record is dropped; the manifest digest itself is what the
//! caller then trusts, exactly as if the registry had answered it.
//!
//! [`tag_key`]: crate::event_loop::tag_key

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use preheat_core::Digest;

use crate::event_loop::{tag_key, Command};
use crate::handle::SwarmHandle;
use crate::protocol::{check_tag, CtlRequest, CtlResponse, TagWire};
use crate::Error;

/// Providers asked for a tag record at most.
pub const MAX_TAG_ASKS: usize = 16;
/// Pause between lookups while no record is found.
const TAG_RETRY: Duration = Duration::from_millis(250);

/// A tag resolved to a manifest: its digest, media type and bytes (`sha256(bytes) == manifest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub manifest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl From<TagWire> for TagRecord {
    fn from(t: TagWire) -> Self {
        Self {
            manifest: t.manifest,
            media_type: t.media_type,
            bytes: Bytes::from(t.bytes),
        }
    }
}

impl SwarmHandle {
    /// Publishes `record` as the resolution of `reference` (canonical, e.g.
    /// `docker.io/library/nginx:latest`), stamped with this node's clock: the newest record wins.
    /// `BadTag` when the bytes do not hash to the manifest digest or exceed a cap.
    pub async fn publish_tag(&self, reference: &str, record: TagRecord) -> Result<(), Error> {
        let published_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let wire = TagWire {
            reference: reference.to_owned(),
            manifest: record.manifest,
            media_type: record.media_type,
            bytes: record.bytes.to_vec(),
            published_ms,
        };
        check_tag(&wire, reference).map_err(|reason| Error::BadTag {
            reference: reference.to_owned(),
            reason,
        })?;
        self.send(Command::PublishTag(wire)).await
    }

    /// Peers that advertise a record of `reference` (this node excluded).
    pub async fn tag_providers(&self, reference: &str) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::Providers {
            key: tag_key(reference),
            reply,
        })
        .await
    }

    /// The newest valid record of `reference` that this node or a peer publishes. Until one is
    /// found the lookup is repeated (a puller may publish a moment later); `None` once `timeout`
    /// has passed. Forged or oversized answers are dropped and their senders banned.
    pub async fn resolve_tag(
        &self,
        reference: &str,
        timeout: Duration,
    ) -> Result<Option<TagRecord>, Error> {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + timeout;
        let mut best = self
            .ask(|reply| Command::LocalTag {
                reference: reference.to_owned(),
                reply,
            })
            .await?;
        loop {
            self.ask_tag_providers(reference, until, &mut best).await?;
            let next = tokio::time::Instant::now() + TAG_RETRY;
            if best.is_some() || next >= until {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
        tracing::debug!(
            reference,
            found = best.is_some(),
            ms = started.elapsed().as_millis(),
            "tag resolved through the swarm"
        );
        Ok(best.map(TagRecord::from))
    }

    /// One round: the tag's providers, asked at once; the newest valid answer replaces `best`.
    async fn ask_tag_providers(
        &self,
        reference: &str,
        until: tokio::time::Instant,
        best: &mut Option<TagWire>,
    ) -> Result<(), Error> {
        let providers = match tokio::time::timeout_at(until, self.tag_providers(reference)).await {
            Ok(p) => p?,
            Err(_) => return Ok(()),
        };
        let mut asks: FuturesUnordered<_> = providers
            .into_iter()
            .filter(|p| !self.is_banned(p))
            .take(MAX_TAG_ASKS)
            .map(|peer| async move {
                let req = CtlRequest::GetTag {
                    reference: reference.to_owned(),
                };
                let resp = self
                    .ask(|reply| Command::Ctl { peer, req, reply })
                    .await
                    .ok()
                    .flatten();
                (peer, resp)
            })
            .collect();
        while let Ok(Some((peer, resp))) = tokio::time::timeout_at(until, asks.next()).await {
            let Some(CtlResponse::Tag(t)) = resp else {
                continue;
            };
            if let Err(reason) = check_tag(&t, reference) {
                tracing::warn!(%peer, reference, reason, "tag record rejected; peer banned");
                self.ban(peer, Instant::now() + self.inner.cfg.ban_duration);
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| t.published_ms > b.published_ms)
            {
                *best = Some(t);
            }
        }
        Ok(())
    }
}
