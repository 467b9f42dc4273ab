//! The agent's own metrics, registered in the node's one `Registry` next to the swarm's, the
//! lease elector's and the fetcher's. Labels are bounded: `source` and `runtime` are enums, `image`
//! is bounded by the image list (plus on-demand preheats).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// OpenMetrics text (what prometheus-client writes) as Prometheus text format 0.0.4, for clients
/// that do not ask for OpenMetrics (curl, `promtool check metrics`): a counter family `x` becomes
/// `x_total` in its HELP and TYPE lines (its samples already are), `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Where the bytes of a preheated image came from (the `source` label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Source {
    Registry,
    Peer,
    /// Already in the store (or ingested from `MOUNT_DIR`).
    Local,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Peer => "peer",
            Self::Local => "local",
        }
    }

    /// The source of most of an image's bytes.
    pub fn dominant(registry: u64, peer: u64) -> Self {
        if peer > 0 && peer >= registry {
            Self::Peer
        } else if registry > 0 {
            Self::Registry
        } else {
            Self::Local
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), e)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageSource {
    image: String,
    source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: &'static str,
}

fn import_histogram() -> Histogram {
    // 0.1 s .. ~7 min
    Histogram::new(exponential_buckets(0.1, 2.0, 13))
}

/// Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    preheat: Family<ImageSource, Counter>,
    preheat_failed: Family<ImageSource, Counter>,
    bytes: Family<SourceLabels, Counter>,
    import_seconds: Family<RuntimeLabels, Histogram, fn() -> Histogram>,
    store_usage: Gauge,
    store_capacity: Gauge,
    list_invalid: Gauge,
    list_images: Gauge,
    list_reloads: Counter,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            preheat: Family::default(),
            preheat_failed: Family::default(),
            bytes: Family::default(),
            import_seconds: Family::new_with_constructor(import_histogram),
            store_usage: Gauge::default(),
            store_capacity: Gauge::default(),
            list_invalid: Gauge::default(),
            list_images: Gauge::default(),
            list_reloads: Counter::default(),
        };
        registry.register(
            "image_preheat",
            "Images preheated (fetched into the store and imported), by image and main byte source",
            m.preheat.clone(),
        );
        registry.register(
            "image_preheat_failed",
            "Failed preheat attempts, by image and the source bytes came from so far",
            m.preheat_failed.clone(),
        );
        registry.register(
            "image_preheat_bytes",
            "Blob bytes of preheated images by source (registry, peer, local)",
            m.bytes.clone(),
        );
        registry.register(
            "runtime_import_duration_seconds",
            "Duration of image imports into a container runtime",
            m.import_seconds.clone(),
        );
        registry.register(
            "store_usage_bytes",
            "Bytes used by the content store",
            m.store_usage.clone(),
        );
        registry.register(
            "store_capacity_bytes",
            "Size cap of the content store (0: no cap)",
            m.store_capacity.clone(),
        );
        registry.register(
            "image_list_invalid_lines",
            "Lines of the image list that are not valid image references",
            m.list_invalid.clone(),
        );
        registry.register(
            "image_list_images",
            "Distinct valid images in the image list",
            m.list_images.clone(),
        );
        registry.register(
            "image_list_reloads",
            "Times the image list was read and found changed",
            m.list_reloads.clone(),
        );
        m
    }

    pub fn preheated(&self, image: &str, source: Source, registry: u64, peer: u64, local: u64) {
        self.preheat
            .get_or_create(&ImageSource {
                image: image.to_owned(),
                source,
            })
            .inc();
        for (s, n) in [
            (Source::Registry, registry),
            (Source::Peer, peer),
            (Source::Local, local),
        ] {
            self.bytes
                .get_or_create(&SourceLabels { source: s })
                .inc_by(n);
        }
    }

    pub fn failed(&self, image: &str, source: Source) {
        self.preheat_failed
            .get_or_create(&ImageSource {
                image: image.to_owned(),
                source,
            })
            .inc();
    }

    pub fn imported(&self, runtime: &'static str, seconds: f64) {
        self.import_seconds
            .get_or_create(&RuntimeLabels { runtime })
            .observe(seconds);
    }

    pub fn store(&self, usage: u64, capacity: Option<u64>) {
        self.store_usage.set(gauge_value(usage));
        self.store_capacity.set(gauge_value(capacity.unwrap_or(0)));
    }

    pub fn image_list(&self, images: usize, invalid: usize) {
        self.list_images
            .set(gauge_value(u64::try_from(images).unwrap_or(u64::MAX)));
        self.list_invalid
            .set(gauge_value(u64::try_from(invalid).unwrap_or(u64::MAX)));
        self.list_reloads.inc();
    }

    /// `image_preheat_total{image,source}` (for tests).
    #[cfg(test)]
    pub fn preheat_count(&self, image: &str, source: Source) -> u64 {
        self.preheat
            .get_or_create(&ImageSource {
                image: image.to_owned(),
                source,
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_in_help_and_type() {
        let om = "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 2\n# HELP b_seconds B.\n# TYPE b_seconds histogram\n# UNIT b_seconds seconds\nb_seconds_sum 1.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n# HELP b_seconds B.\n# TYPE b_seconds histogram\nb_seconds_sum 1.0\n"
        );
    }
}
