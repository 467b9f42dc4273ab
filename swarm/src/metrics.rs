//! Swarm metrics, registered in the caller's registry (no globals). Labels are typed label sets
//! with bounded values: enums, the image a fetch is for (bounded by the caller's image list) and
//! the peer's node name (bounded by the cluster; switched off with `SwarmConfig::peer_metrics_label`).
//!
//! Per-peer fetch metrics. A blob is fetched from several peers at once, so `peer` means *a peer
//! that contributed verified chunks to the fetch*: a finished blob fetch adds one sample per such
//! peer to `peer_fetch_total` and `peer_fetch_duration_seconds` (the whole fetch's duration) and
//! that peer's bytes to `peer_fetch_bytes_total`; a failed one adds one sample per contributing
//! peer to `peer_fetch_failed_total`, or one with an empty `peer` when no peer delivered anything
//! (no providers). A peer is named by the node name it sent in identify, by its peer id until then.
//! With the label off every peer has the empty value, so each fetch counts once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libp2p::PeerId;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Bound on the peer id → node name table.
const MAX_PEER_NAMES: usize = 4096;
/// Identify agent versions of image-preheat nodes: `image-preheat/VERSION[ node=NAME]`.
const AGENT_PREFIX: &str = "image-preheat/";
const NODE_FIELD: &str = " node=";

/// The identify agent version this node sends: its version and, when given, its node name.
pub fn agent_version(node_name: Option<&str>) -> String {
    let v = env!("CARGO_PKG_VERSION");
    match node_name.filter(|n| valid_name(n)) {
        Some(n) => format!("{AGENT_PREFIX}{v}{NODE_FIELD}{n}"),
        None => format!("{AGENT_PREFIX}{v}"),
    }
}

/// The node name in a peer's identify agent version, when it is a sane label value.
pub fn node_name_of(agent_version: &str) -> Option<&str> {
    let rest = agent_version.strip_prefix(AGENT_PREFIX)?;
    let (_, name) = rest.split_once(NODE_FIELD)?;
    valid_name(name).then_some(name)
}

/// Kubernetes node names are DNS subdomains; accept any short printable ASCII without quotes.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

macro_rules! snake_label {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), e)
            }
        }
    };
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Source {
    Peer,
}

impl Source {
    fn as_str(self) -> &'static str {
        "peer"
    }
}
snake_label!(Source);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

/// Why a peer fetch failed (`peer_fetch_failed_total{reason}`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FailReason {
    NoProviders,
    Deadline,
    Stalled,
    Store,
    Stopped,
}

impl FailReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoProviders => "no_providers",
            Self::Deadline => "deadline",
            Self::Stalled => "stalled",
            Self::Store => "store",
            Self::Stopped => "stopped",
        }
    }
}
snake_label!(FailReason);

/// `{image, peer}`: `peer` is `None` (an empty value) when unknown or switched off.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub image: Arc<str>,
    pub peer: Option<Arc<str>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabels {
    pub image: Arc<str>,
    pub peer: Option<Arc<str>>,
    pub reason: FailReason,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LookupResult {
    Found,
    Empty,
}

impl LookupResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::Empty => "empty",
        }
    }
}
snake_label!(LookupResult);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub result: LookupResult,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn fetch_histogram() -> Histogram {
    // 50 ms .. ~7 min
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// All swarm metrics; cheap to clone (shared atomics).
#[derive(Clone)]
pub struct Metrics {
    pub fetch_total: Family<PeerLabels, Counter>,
    pub fetch_failed: Family<FailLabels, Counter>,
    pub fetch_duration: HistogramFamily<PeerLabels>,
    pub fetch_bytes: Family<PeerLabels, Counter>,
    pub bytes_received: Family<SourceLabels, Counter>,
    pub bytes_sent: Family<SourceLabels, Counter>,
    pub connected_peers: Gauge,
    pub provider_lookups: Family<LookupLabels, Counter>,
    pub provider_lookup_duration: Histogram,
    pub bad_chunks: Counter,
    pub busy_answers: Counter,
    pub declined_answers: Counter,
    names: Arc<Mutex<HashMap<PeerId, Arc<str>>>>,
    peer_label: bool,
}

impl Metrics {
    /// `peer_label`: whether per-peer metrics carry the peer's name (else an empty `peer`).
    pub fn register(reg: &mut Registry, peer_label: bool) -> Self {
        let m = Self {
            fetch_total: Family::default(),
            fetch_failed: Family::default(),
            fetch_duration: Family::new_with_constructor(fetch_histogram),
            fetch_bytes: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            connected_peers: Gauge::default(),
            provider_lookups: Family::default(),
            provider_lookup_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            bad_chunks: Counter::default(),
            busy_answers: Counter::default(),
            declined_answers: Counter::default(),
            names: Arc::default(),
            peer_label,
        };
        reg.register(
            "peer_fetch",
            "Blob fetches from peers that finished, one per image and contributing peer",
            m.fetch_total.clone(),
        );
        reg.register(
            "peer_fetch_failed",
            "Blob fetches from peers that failed, one per image and contributing peer (empty peer: none)",
            m.fetch_failed.clone(),
        );
        reg.register(
            "peer_fetch_duration_seconds",
            "Duration of finished blob fetches from peers, per image and contributing peer",
            m.fetch_duration.clone(),
        );
        reg.register(
            "peer_fetch_bytes",
            "Verified blob bytes received from peers, per image and peer",
            m.fetch_bytes.clone(),
        );
        reg.register(
            "bytes_received",
            "Blob bytes received, by source",
            m.bytes_received.clone(),
        );
        reg.register(
            "bytes_sent",
            "Blob bytes sent, by source",
            m.bytes_sent.clone(),
        );
        reg.register(
            "swarm_connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        reg.register(
            "swarm_provider_lookups",
            "Kademlia provider lookups",
            m.provider_lookups.clone(),
        );
        reg.register(
            "swarm_provider_lookup_duration_seconds",
            "Latency of Kademlia provider lookups",
            m.provider_lookup_duration.clone(),
        );
        reg.register(
            "swarm_bad_chunks",
            "Chunks from peers that failed blake3 verification",
            m.bad_chunks.clone(),
        );
        reg.register(
            "swarm_busy_answers",
            "Chunk requests answered busy by this node",
            m.busy_answers.clone(),
        );
        reg.register(
            "swarm_declined_answers",
            "Chunk requests declined by this node because it had just sent that chunk",
            m.declined_answers.clone(),
        );
        m
    }

    /// Remembers the node name a peer sent in identify (bounded; later names replace earlier).
    pub fn learn_name(&self, peer: PeerId, agent_version: &str) {
        let Some(name) = node_name_of(agent_version) else {
            return;
        };
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.len() < MAX_PEER_NAMES || names.contains_key(&peer) {
            names.insert(peer, name.into());
        }
    }

    /// The `peer` label value: the node name, the peer id until that is known, nothing when off.
    pub fn peer_label(&self, peer: &PeerId) -> Option<Arc<str>> {
        if !self.peer_label {
            return None;
        }
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        Some(
            names
                .get(peer)
                .cloned()
                .unwrap_or_else(|| peer.to_string().into()),
        )
    }

    /// Each contributing peer's label value and bytes; peers sharing a value (the label off) are
    /// merged, so a fetch counts once per series.
    fn by_label(&self, peers: &HashMap<PeerId, u64>) -> HashMap<Option<Arc<str>>, u64> {
        let mut out: HashMap<Option<Arc<str>>, u64> = HashMap::new();
        for (p, bytes) in peers {
            *out.entry(self.peer_label(p)).or_default() += bytes;
        }
        out
    }

    /// Records a finished blob fetch for `image` that took `took`, with each contributing peer's
    /// verified bytes (see the module docs).
    pub fn fetched(&self, image: &str, took: Duration, peers: &HashMap<PeerId, u64>) {
        let image: Arc<str> = image.into();
        for (peer, bytes) in self.by_label(peers) {
            let l = PeerLabels {
                image: image.clone(),
                peer,
            };
            self.fetch_total.get_or_create(&l).inc();
            self.fetch_bytes.get_or_create(&l).inc_by(bytes);
            self.fetch_duration
                .get_or_create(&l)
                .observe(took.as_secs_f64());
        }
    }

    /// Records a failed blob fetch for `image`; `peers` delivered chunks before it failed.
    pub fn fetch_failed(&self, image: &str, reason: FailReason, peers: &HashMap<PeerId, u64>) {
        let image: Arc<str> = image.into();
        let mut labels = self.by_label(peers);
        if labels.is_empty() {
            labels.insert(None, 0);
        }
        for (peer, bytes) in labels {
            let l = PeerLabels {
                image: image.clone(),
                peer: peer.clone(),
            };
            if bytes > 0 {
                self.fetch_bytes.get_or_create(&l).inc_by(bytes);
            }
            self.fetch_failed
                .get_or_create(&FailLabels {
                    image: l.image,
                    peer,
                    reason,
                })
                .inc();
        }
    }

    pub fn received(&self, n: usize) {
        self.bytes_received
            .get_or_create(&SourceLabels {
                source: Source::Peer,
            })
            .inc_by(n as u64);
    }

    pub fn sent(&self, n: usize) {
        self.bytes_sent
            .get_or_create(&SourceLabels {
                source: Source::Peer,
            })
            .inc_by(n as u64);
    }

    /// Total bytes sent to peers (tests use it to measure the seeder's upload factor).
    pub fn sent_total(&self) -> u64 {
        self.bytes_sent
            .get_or_create(&SourceLabels {
                source: Source::Peer,
            })
            .get()
    }

    pub fn received_total(&self) -> u64 {
        self.bytes_received
            .get_or_create(&SourceLabels {
                source: Source::Peer,
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_names_travel_in_the_agent_version() {
        let v = agent_version(Some("node-a.example"));
        assert!(v.starts_with("image-preheat/"), "{v}");
        assert_eq!(node_name_of(&v), Some("node-a.example"));
        assert_eq!(node_name_of(&agent_version(None)), None);
        for bad in [
            "rust-libp2p/0.57 node=x",
            "image-preheat/1 node=",
            "image-preheat/1 node=a b",
            "image-preheat/1 node=a\"b",
        ] {
            assert_eq!(node_name_of(bad), None, "{bad}");
        }
        assert_eq!(node_name_of(&agent_version(Some("has space"))), None);
        let long = "n".repeat(254);
        assert_eq!(node_name_of(&format!("image-preheat/1 node={long}")), None);
    }

    fn encode(reg: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
        text
    }

    #[test]
    fn fetches_are_labelled_by_image_and_each_contributing_peer() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg, true);
        let (a, b) = (PeerId::random(), PeerId::random());
        m.learn_name(a, &agent_version(Some("node-a")));
        let peers = HashMap::from([(a, 300), (b, 100)]);
        m.fetched("r.example/app:1", Duration::from_secs(2), &peers);
        m.fetch_failed(
            "r.example/app:1",
            FailReason::Stalled,
            &HashMap::from([(a, 5)]),
        );
        m.fetch_failed("r.example/app:1", FailReason::NoProviders, &HashMap::new());
        let text = encode(&reg);
        for line in [
            "peer_fetch_total{image=\"r.example/app:1\",peer=\"node-a\"} 1".to_owned(),
            format!("peer_fetch_total{{image=\"r.example/app:1\",peer=\"{b}\"}} 1"),
            "peer_fetch_bytes_total{image=\"r.example/app:1\",peer=\"node-a\"} 305".to_owned(),
            "peer_fetch_duration_seconds_count{image=\"r.example/app:1\",peer=\"node-a\"} 1"
                .to_owned(),
            "peer_fetch_failed_total{image=\"r.example/app:1\",peer=\"node-a\",reason=\"stalled\"} 1"
                .to_owned(),
            "peer_fetch_failed_total{image=\"r.example/app:1\",peer=\"\",reason=\"no_providers\"} 1"
                .to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn the_peer_label_can_be_switched_off() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg, false);
        let (a, b) = (PeerId::random(), PeerId::random());
        m.learn_name(a, &agent_version(Some("node-a")));
        let peers = HashMap::from([(a, 300), (b, 100)]);
        m.fetched("img", Duration::from_secs(1), &peers);
        m.fetch_failed("img", FailReason::Deadline, &peers);
        let text = encode(&reg);
        assert!(
            text.contains("peer_fetch_total{image=\"img\",peer=\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("peer_fetch_bytes_total{image=\"img\",peer=\"\"} 800"),
            "{text}"
        );
        assert!(
            text.contains("peer_fetch_failed_total{image=\"img\",peer=\"\",reason=\"deadline\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("node-a") && !text.contains(&a.to_string()),
            "{text}"
        );
    }
}
