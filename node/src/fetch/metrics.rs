//! The seed deployment's registry pull metrics: `registry_pull_total{image,result}`,
//! `registry_pull_duration_seconds{image}` and `registry_pulling{image,node}`, registered in the
//! node's registry. `image` is the reference as configured (bounded by the image list), `node`
//! this node's name, `result` an enum.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// How one registry pull by this node ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PullResult {
    /// Every blob is stored.
    Ok,
    /// The pull failed (registry or store error).
    Error,
    /// Another node took the Lease over; this node continued from the swarm.
    Lost,
}

impl PullResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    image: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabels {
    image: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullingLabels {
    image: String,
    node: String,
}

type HistogramFamily = Family<ImageLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.5 s … ~17 min.
    Histogram::new(exponential_buckets(0.5, 2.0, 12))
}

/// Registry pull metrics; cheap to clone (shared). `Default` gives unregistered metrics.
#[derive(Debug, Clone)]
pub struct FetchMetrics {
    pulls: Family<PullLabels, Counter>,
    duration: HistogramFamily,
    pulling: Family<PullingLabels, Gauge>,
}

impl Default for FetchMetrics {
    fn default() -> Self {
        Self {
            pulls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            pulling: Family::default(),
        }
    }
}

impl FetchMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "registry_pull",
            "Registry pulls of an image by this node, by result",
            m.pulls.clone(),
        );
        registry.register_with_unit(
            "registry_pull_duration",
            "Duration of successful registry pulls of an image by this node",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "registry_pulling",
            "1 while this node pulls the image from the registry",
            m.pulling.clone(),
        );
        m
    }

    /// Records the end of a registry pull that took `seconds` (observed only when `Ok`).
    pub fn pulled(&self, image: &str, result: PullResult, seconds: f64) {
        self.pulls
            .get_or_create(&PullLabels {
                image: image.to_string(),
                result: result.as_str(),
            })
            .inc();
        if result == PullResult::Ok {
            self.duration
                .get_or_create(&ImageLabels {
                    image: image.to_string(),
                })
                .observe(seconds);
        }
    }

    /// Sets `registry_pulling{image,node}`.
    pub fn set_pulling(&self, image: &str, node: &str, pulling: bool) {
        self.pulling
            .get_or_create(&PullingLabels {
                image: image.to_string(),
                node: node.to_string(),
            })
            .set(i64::from(pulling));
    }

    /// `registry_pull_total{image,result}`.
    pub fn pulls(&self, image: &str, result: PullResult) -> u64 {
        self.pulls
            .get_or_create(&PullLabels {
                image: image.to_string(),
                result: result.as_str(),
            })
            .get()
    }

    /// `registry_pulling{image,node}`.
    pub fn pulling(&self, image: &str, node: &str) -> bool {
        self.pulling
            .get_or_create(&PullingLabels {
                image: image.to_string(),
                node: node.to_string(),
            })
            .get()
            > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_under_the_seed_deployment_names() {
        let mut registry = Registry::default();
        let m = FetchMetrics::register(&mut registry);
        m.set_pulling("r.example/app:1", "node-a", true);
        m.pulled("r.example/app:1", PullResult::Ok, 3.0);
        m.pulled("r.example/app:1", PullResult::Lost, 1.0);
        m.set_pulling("r.example/app:1", "node-a", false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "registry_pull_total{image=\"r.example/app:1\",result=\"ok\"} 1",
            "registry_pull_total{image=\"r.example/app:1\",result=\"lost\"} 1",
            "registry_pull_duration_seconds_count{image=\"r.example/app:1\"} 1",
            "registry_pulling{image=\"r.example/app:1\",node=\"node-a\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(m.pulls("r.example/app:1", PullResult::Error), 0);
        assert!(!m.pulling("r.example/app:1", "node-a"));
    }
}
