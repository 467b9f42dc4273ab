//! Plain configuration of a swarm node; the binary parses flags and env into it.

use std::time::Duration;

use libp2p::Multiaddr;
use preheat_core::upload::UploadConfig;

/// Everything a swarm node needs besides its store and metrics registry.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4001` (`/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Addresses other nodes reach us at (the pod IP); confirmed as external for Kademlia.
    pub external: Vec<Multiaddr>,
    /// Static peers, dialled at start and re-dialled every `discovery_interval` while disconnected.
    /// `/dns4/` and `/dns6/` names are resolved to every A/AAAA record.
    pub peers: Vec<Multiaddr>,
    /// A DNS name (the headless Service) whose every A/AAAA record is a peer, and the swarm port.
    pub peers_dns: Option<(String, u16)>,
    pub discovery_interval: Duration,
    /// Node-wide byte rates; `None` means unlimited.
    pub upload_rate: Option<u64>,
    pub download_rate: Option<u64>,
    /// Chunk uploads served at once; more are answered `Busy`.
    pub max_uploads: usize,
    /// A chunk this node is sending, or started sending this recently, is declined to other
    /// askers, who then take it from its new holder (super-seeding); zero turns it off.
    pub resend_after: Duration,
    /// How long a chunk request that finds no free upload slot, or asks for a chunk in its resend
    /// window, waits before it is answered `Busy`/`Declined`; zero answers at once.
    pub upload_wait: Duration,
    /// Chunk requests waiting at once; more are answered at once.
    pub upload_waiting: usize,
    /// Chunk requests one download keeps in flight in total and per peer.
    pub max_requests: usize,
    pub max_requests_per_peer: usize,
    /// Established connections in total and per peer.
    pub max_connections: u32,
    /// Kademlia: provider record TTL, republish interval, query timeout.
    pub provider_ttl: Duration,
    pub provider_republish: Duration,
    pub query_timeout: Duration,
    /// Timeout of one chunk request (stream open to last byte).
    pub chunk_timeout: Duration,
    /// How long a bad-chunk sender stays banned.
    pub ban_duration: Duration,
    /// A download fails when, this long, no chunk was stored, no hash learnt and no peer offered a
    /// missing chunk (it waits that long for a provider that is still writing the blob).
    pub stall_timeout: Duration,
    /// This node's name (the Kubernetes node name), sent to peers in identify's agent version so
    /// that their `peer` metric labels name this node; `None`: peers label it by its peer id.
    pub node_name: Option<String>,
    /// Per-peer fetch metrics carry the peer's name in `peer` (else an empty value: large clusters).
    pub peer_metrics_label: bool,
    /// TEST ONLY: flip a bit in every chunk this node serves, to exercise bad-peer detection.
    /// Never set this outside tests.
    pub test_corrupt_uploads: bool,
    /// TEST ONLY: answer `GetIndex`/`GetProvisional` with the hashes of the corrupted chunks
    /// `test_corrupt_uploads` serves: a consistent forger whose chunks pass blake3 but fail the
    /// final sha256.
    pub test_forge_index: bool,
    /// TEST ONLY: answer `GetTag` with manifest bytes that do not match the record's digest.
    pub test_forge_tags: bool,
}

impl SwarmConfig {
    /// Sets [`SwarmConfig::node_name`].
    pub fn named(mut self, node_name: &str) -> Self {
        self.node_name = Some(node_name.to_owned());
        self
    }
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/4001"
                .parse()
                .expect("valid literal multiaddr")],
            external: Vec::new(),
            peers: Vec::new(),
            peers_dns: None,
            discovery_interval: Duration::from_secs(30),
            upload_rate: Some(500 * 1024 * 1024),
            download_rate: Some(500 * 1024 * 1024),
            max_uploads: 8,
            resend_after: UploadConfig::default().resend_after,
            upload_wait: UploadConfig::default().max_wait,
            upload_waiting: UploadConfig::default().max_waiting,
            // 1 MiB chunks: at most 16 MiB held per download. More per peer was slower on
            // loopback: libp2p-stream drops inbound streams its one-slot accept queue cannot take.
            max_requests: 16,
            max_requests_per_peer: 3,
            max_connections: 512,
            provider_ttl: Duration::from_secs(600),
            provider_republish: Duration::from_secs(180),
            query_timeout: Duration::from_secs(10),
            chunk_timeout: Duration::from_secs(30),
            ban_duration: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(60),
            node_name: None,
            peer_metrics_label: true,
            test_corrupt_uploads: false,
            test_forge_index: false,
            test_forge_tags: false,
        }
    }
}
