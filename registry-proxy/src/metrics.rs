//! The mirror's metrics, registered in the node's one `Registry`. Labels are bounded enums.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::SourceKind;

/// `kind` label: what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Manifest,
    Blob,
    /// `/v2/` and anything that did not parse as a manifest or blob path.
    Other,
}

/// `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Local,
    Peer,
    Upstream,
    /// No source had it in time (404).
    Miss,
    /// A source failed.
    Error,
    /// The request was refused before any source was asked (invalid, over a limit, write method).
    Rejected,
}

/// Encodes lowercase label values (the derive would keep the variant's case).
macro_rules! label_value {
    ($t:ty, $($variant:path => $s:literal),+ $(,)?) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                e.write_str(match self { $($variant => $s),+ })
            }
        }
    };
}

label_value!(Kind, Kind::Manifest => "manifest", Kind::Blob => "blob", Kind::Other => "other");
label_value!(
    Outcome,
    Outcome::Local => "local",
    Outcome::Peer => "peer",
    Outcome::Upstream => "upstream",
    Outcome::Miss => "miss",
    Outcome::Error => "error",
    Outcome::Rejected => "rejected",
);
label_value!(
    SourceKind,
    SourceKind::Local => "local",
    SourceKind::Peer => "peer",
    SourceKind::Upstream => "upstream",
);

impl From<SourceKind> for Outcome {
    fn from(k: SourceKind) -> Self {
        match k {
            SourceKind::Local => Self::Local,
            SourceKind::Peer => Self::Peer,
            SourceKind::Upstream => Self::Upstream,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    kind: Kind,
    result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    source: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

/// Handles to the mirror's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    resolve: Family<KindLabels, Histogram>,
    last_success: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers the metrics (names prefixed `mirror_`) in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            bytes: Family::default(),
            resolve: Family::new_with_constructor(|| {
                // 1 ms .. ~16 s.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 15,
                ))
            }),
            last_success: Gauge::default(),
        };
        registry.register(
            "mirror_requests",
            "Mirror requests by kind and result (local, peer, upstream hit, miss, error, rejected)",
            m.requests.clone(),
        );
        registry.register(
            "mirror_bytes_served",
            "Blob and manifest bytes the mirror sent, by source",
            m.bytes.clone(),
        );
        registry.register(
            "mirror_resolve_duration_seconds",
            "Time from request to the source's answer (before the body streams)",
            m.resolve.clone(),
        );
        registry.register(
            "mirror_last_success_timestamp_seconds",
            "Unix time of the last request the mirror answered with content",
            m.last_success.clone(),
        );
        m
    }

    pub(crate) fn request(&self, kind: Kind, result: Outcome) {
        self.requests
            .get_or_create(&RequestLabels { kind, result })
            .inc();
        if matches!(result, Outcome::Local | Outcome::Peer | Outcome::Upstream) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        }
    }

    pub(crate) fn resolved(&self, kind: Kind, took: Duration) {
        self.resolve
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// The counter of bytes served from `source`.
    pub(crate) fn bytes_counter(&self, source: SourceKind) -> Counter {
        self.bytes.get_or_create(&BytesLabels { source }).clone()
    }
}
