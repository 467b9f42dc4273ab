//! The election's view of the swarm: members are the connected peers and this node, ranked by
//! their peer ids; the wanting ones among them announce `want_key(manifest)` while they fetch
//! it (the coordination-free rule ranks only those); an
//! image has a provider when a connected peer announces its manifest digest (the puller does as
//! soon as it starts, every node once the image is complete). A record of a departed node does
//! not count: its peer is no longer connected. A want record outlives a finished fetch at other
//! nodes (until its TTL): such a node either provides the image or fails the ranking's first
//! rank, which the election widens past.

use std::future::Future;
use std::time::Duration;

use preheat_core::election::want_key;
use preheat_core::Digest;
use preheat_swarm::SwarmHandle;
use tokio::time::Instant;

use crate::lease::{Snapshot, SwarmView};

/// Bound on one peer-list or provider query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a snapshot is reused: well below the election's `settle`, so the first decision sees
/// the want records that arrived while it settled.
const CACHE: Duration = Duration::from_millis(100);
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
            let peers = &peers;
            let connected = |key: Digest| async move {
                let found = tokio::time::timeout(QUERY_TIMEOUT, h.providers(key))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                found
                    .into_iter()
                    .filter(|p| peers.contains(p))
                    .map(|p| p.to_string())
                    .collect::<Vec<String>>()
            };
            let providers = connected(image).await;
            let me = h.local_peer_id().to_string();
            let mut wanting = connected(want_key(&image)).await;
            wanting.push(me.clone());
            let mut members: Vec<String> = peers.iter().map(ToString::to_string).collect();
            members.push(me);
            let s = Snapshot {
                members,
                wanting,
                providers,
            };
            self.cached = Some((Instant::now(), s.clone()));
            s
        }
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(POLL)
    }
}
