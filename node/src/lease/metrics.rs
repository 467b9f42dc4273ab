//! `lease_api_calls_total{verb,result}`, registered in the node's registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The REST verb of a Lease call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVerb {
    Get,
    Create,
    Replace,
    Delete,
    List,
}

impl ApiVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Create => "create",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::List => "list",
        }
    }
}

/// How a Lease call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiResult {
    Ok,
    NotFound,
    Conflict,
    Error,
}

impl ApiResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

type Labels = [(&'static str, &'static str); 2];

/// Counters of Lease API calls; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct LeaseMetrics {
    calls: Family<Labels, Counter>,
}

impl LeaseMetrics {
    /// Creates the counters and registers them as `lease_api_calls_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "lease_api_calls",
            "Kubernetes Lease API calls by verb and result",
            m.calls.clone(),
        );
        m
    }

    pub fn inc(&self, verb: ApiVerb, result: ApiResult) {
        self.calls
            .get_or_create(&[("verb", verb.as_str()), ("result", result.as_str())])
            .inc();
    }

    /// Calls of `verb` that ended with `result`.
    pub fn calls(&self, verb: ApiVerb, result: ApiResult) -> u64 {
        self.calls
            .get_or_create(&[("verb", verb.as_str()), ("result", result.as_str())])
            .get()
    }

    /// All calls.
    pub fn total(&self) -> u64 {
        let verbs = [
            ApiVerb::Get,
            ApiVerb::Create,
            ApiVerb::Replace,
            ApiVerb::Delete,
            ApiVerb::List,
        ];
        let results = [
            ApiResult::Ok,
            ApiResult::NotFound,
            ApiResult::Conflict,
            ApiResult::Error,
        ];
        verbs
            .iter()
            .flat_map(|v| results.iter().map(|r| self.calls(*v, *r)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_as_lease_api_calls_total_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = LeaseMetrics::register(&mut registry);
        m.inc(ApiVerb::Get, ApiResult::Ok);
        m.inc(ApiVerb::Replace, ApiResult::Conflict);
        m.inc(ApiVerb::Replace, ApiResult::Conflict);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("lease_api_calls_total{verb=\"get\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lease_api_calls_total{verb=\"replace\",result=\"conflict\"} 2"),
            "{text}"
        );
        assert_eq!(m.total(), 3);
    }
}
