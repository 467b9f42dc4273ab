//! Swarm metrics, registered in the caller's registry (no globals). Labels are bounded enums.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Source {
    Peer,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

/// Why a peer fetch failed (`peer_fetch_failed_total{reason}`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FailReason {
    NoProviders,
    Deadline,
    Stalled,
    Store,
    Stopped,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabels {
    pub reason: FailReason,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum LookupResult {
    Found,
    Empty,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub result: LookupResult,
}

/// All swarm metrics; cheap to clone (shared atomics).
#[derive(Clone)]
pub struct Metrics {
    pub fetch_total: Counter,
    pub fetch_failed: Family<FailLabels, Counter>,
    pub fetch_duration: Histogram,
    pub bytes_received: Family<SourceLabels, Counter>,
    pub bytes_sent: Family<SourceLabels, Counter>,
    pub connected_peers: Gauge,
    pub provider_lookups: Family<LookupLabels, Counter>,
    pub provider_lookup_duration: Histogram,
    pub bad_chunks: Counter,
    pub busy_answers: Counter,
    pub declined_answers: Counter,
}

impl Metrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            fetch_total: Counter::default(),
            fetch_failed: Family::default(),
            fetch_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            connected_peers: Gauge::default(),
            provider_lookups: Family::default(),
            provider_lookup_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            bad_chunks: Counter::default(),
            busy_answers: Counter::default(),
            declined_answers: Counter::default(),
        };
        reg.register(
            "peer_fetch",
            "Blob fetches from peers started",
            m.fetch_total.clone(),
        );
        reg.register(
            "peer_fetch_failed",
            "Blob fetches from peers that failed",
            m.fetch_failed.clone(),
        );
        reg.register(
            "peer_fetch_duration_seconds",
            "Duration of successful blob fetches from peers",
            m.fetch_duration.clone(),
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

    pub fn failed(&self, reason: FailReason) {
        self.fetch_failed
            .get_or_create(&FailLabels { reason })
            .inc();
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
