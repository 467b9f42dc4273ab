//! The election's view of the swarm: live members are the connected peers (and this node),
//! ranked by their peer ids; an image has a provider when a connected peer announces its
//! manifest digest (the puller does as soon as it starts, every node once the image is complete).
//! A provider record of a departed node does not count: its peer is no longer connected.

use std::future::Future;
use std::time::Duration;

use preheat_core::Digest;
use preheat_swarm::SwarmHandle;
use tokio::time::Instant;

use crate::lease::{Snapshot, SwarmView};

/// Bound on one peer-list or provider query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a snapshot is reused (the election polls about once a second).
const CACHE: Duration = Duration::from_millis(900);
/// How often the election re-polls without other news.
const POLL: Duration = Duration::from_secs(1);

/// [`SwarmView`] over a running swarm node. The elector's member id must be
/// `handle.local_peer_id().to_string()`.
#[derive(Clone)]
pub struct MemberView {
    handle: SwarmHandle,
    cached: Option<(Instant, Snapshot)>,
}

impl MemberView {
    pub fn new(handle: SwarmHandle) -> Self {
        Self {
            handle,
            cached: None,
        }
    }
}

impl SwarmView for MemberView {
    fn snapshot(&mut self, image: &Digest) -> impl Future<Output = Snapshot> + Send {
        let image = *image;
        async move {
            if let Some((at, s)) = &self.cached {
                if at.elapsed() < CACHE {
                    return s.clone();
                }
            }
            let h = &self.handle;
            let peers = tokio::time::timeout(QUERY_TIMEOUT, h.connected_peers())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let providers = tokio::time::timeout(QUERY_TIMEOUT, h.providers(image))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let mut members: Vec<String> = peers.iter().map(ToString::to_string).collect();
            members.push(h.local_peer_id().to_string());
            let s = Snapshot {
                members,
                providers: providers.iter().any(|p| peers.contains(p)),
            };
            self.cached = Some((Instant::now(), s.clone()));
            s
        }
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(POLL)
    }
}
