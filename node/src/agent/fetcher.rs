//! The agent's [`ImageSource`]: the election-aware [`ImageFetcher`] (swarm tag record or registry
//! resolve, one registry puller per image, followers fetch from the swarm).

use std::sync::Arc;

use futures::future::BoxFuture;
use image_preheat::fetch::ImageFetcher;
use image_preheat::pull::PullProgress;
use preheat_core::reference::Reference;

use super::error_chain;
use super::reconcile::{Fetched, ImageSource};

pub struct ElectedSource(pub ImageFetcher);

impl ImageSource for ElectedSource {
    fn fetch<'a>(
        &'a self,
        reference: &'a Reference,
        progress: Arc<dyn PullProgress>,
    ) -> BoxFuture<'a, anyhow::Result<Fetched>> {
        Box::pin(async move {
            let r = self
                .0
                .fetch(reference, progress)
                .await
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
            Ok(Fetched {
                manifest: r.manifest,
                total_bytes: r.total_bytes,
                registry_bytes: r.registry_bytes,
                peer_bytes: r.peer_bytes,
                present_bytes: r.present_bytes,
            })
        })
    }
}
