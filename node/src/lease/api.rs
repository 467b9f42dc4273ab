//! The Lease REST calls (get, create, replace, delete, list), counted, and the conversions between
//! a `Lease` and the election's `LeaseRecord`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use preheat_core::election::{digest_label, lease_name, LeaseRecord};
use preheat_core::Digest;

use super::metrics::{ApiResult, ApiVerb, LeaseMetrics};
use super::LeaseError;

/// Label on every Lease we create, for listing and garbage collection.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "image-preheat";
/// Label with the first 63 hex characters of the image's manifest digest.
pub const DIGEST_LABEL: &str = "image-preheat.io/digest";

/// A kube client from the in-cluster configuration or the kubeconfig (`kube::Config::infer`),
/// with rustls and ring (installed process-wide here; an existing provider is kept).
pub async fn kube_client() -> Result<Client, LeaseError> {
    let config = kube::Config::infer().await.map_err(LeaseError::Config)?;
    client_from_config(config)
}

/// A kube client for Lease calls from `config`: kube's own retries of 429/503/504 are switched off
/// (they back off for minutes; the election retries with its own jitter and falls back meanwhile)
/// and a call gives up after 5 s connecting or 15 s reading.
pub fn client_from_config(mut config: kube::Config) -> Result<Client, LeaseError> {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(15));
    config.write_timeout = Some(Duration::from_secs(15));
    Client::try_from(config).map_err(LeaseError::Api)
}

/// The Lease for `image` held by `holder`, renewed at `now`; `resource_version` makes a replace
/// conditional. `holder = None` is a handed-over Lease (any contender may take it).
pub fn new_lease(
    image: &Digest,
    holder: Option<&str>,
    duration: Duration,
    now: Timestamp,
    resource_version: Option<String>,
) -> Result<Lease, LeaseError> {
    let secs = i32::try_from(duration.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or(LeaseError::Duration(duration))?;
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (DIGEST_LABEL.to_string(), digest_label(image)),
    ]);
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(image)),
            labels: Some(labels),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(now)),
            acquire_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    })
}

/// The election's view of `lease`: wall-clock `renewTime` mapped onto the monotonic clock by its
/// age at (`now`, `wall_now`); a renew time in the future counts as now.
pub fn lease_record(lease: &Lease, now: Instant, wall_now: Timestamp) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    let renew_time = spec.renew_time.map(|MicroTime(t)| {
        let age = wall_now.duration_since(t).max(SignedDuration::ZERO);
        let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
        now.checked_sub(age).unwrap_or(now)
    });
    LeaseRecord {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renew_time,
        duration: spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// Lease calls in one namespace, each counted in `lease_api_calls_total{verb,result}`.
#[derive(Clone)]
pub struct LeaseApi {
    api: Api<Lease>,
    metrics: LeaseMetrics,
}

impl std::fmt::Debug for LeaseApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseApi").finish_non_exhaustive()
    }
}

impl LeaseApi {
    pub fn new(client: Client, namespace: &str, metrics: LeaseMetrics) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            metrics,
        }
    }

    /// The Lease, or `None` if there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        let r = self.api.get(name).await;
        match self.count(ApiVerb::Get, name, r) {
            Ok(l) => Ok(Some(l)),
            Err(LeaseError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the Lease; [`LeaseError::Conflict`] if it exists.
    pub async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let r = self.api.create(&PostParams::default(), lease).await;
        self.count(ApiVerb::Create, &name, r)
    }

    /// Replaces the Lease; with `metadata.resourceVersion` set, [`LeaseError::Conflict`] if it moved on.
    pub async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let r = self.api.replace(&name, &PostParams::default(), lease).await;
        self.count(ApiVerb::Replace, &name, r)
    }

    /// Deletes the Lease if it still has `resource_version`.
    pub async fn delete(&self, name: &str, resource_version: &str) -> Result<(), LeaseError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        let r = self.api.delete(name, &dp).await.map(|_| ());
        self.count(ApiVerb::Delete, name, r)
    }

    /// Every Lease this program manages in the namespace (for garbage collection).
    pub async fn list_managed(&self) -> Result<Vec<Lease>, LeaseError> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
        let r = self.api.list(&lp).await.map(|l| l.items);
        self.count(ApiVerb::List, "", r)
    }

    /// Garbage collection: deletes the managed Leases whose renew time + duration + `grace` lies
    /// before `now` (their holder died and no node took over, e.g. the image left every list), each
    /// with its resourceVersion as precondition, so a Lease renewed meanwhile stays. Keep `grace` at
    /// several lease durations: a follower reading no Lease takes the image as complete.
    /// Returns how many were deleted.
    pub async fn delete_expired(
        &self,
        now: Timestamp,
        grace: Duration,
    ) -> Result<usize, LeaseError> {
        let mut deleted = 0;
        for lease in self.list_managed().await? {
            let spec = lease.spec.clone().unwrap_or_default();
            let secs = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0);
            let keep = SignedDuration::try_from(Duration::from_secs(secs).saturating_add(grace))
                .unwrap_or(SignedDuration::MAX);
            let stale = spec
                .renew_time
                .is_none_or(|MicroTime(t)| now.duration_since(t) > keep);
            let (Some(name), Some(rv)) = (
                lease.metadata.name.as_deref(),
                lease.metadata.resource_version.as_deref(),
            ) else {
                continue;
            };
            if !stale {
                continue;
            }
            match self.delete(name, rv).await {
                Ok(()) => deleted += 1,
                // Renewed, taken over or deleted meanwhile: not ours to remove.
                Err(LeaseError::Conflict { .. } | LeaseError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    pub fn metrics(&self) -> &LeaseMetrics {
        &self.metrics
    }

    fn count<T>(
        &self,
        verb: ApiVerb,
        name: &str,
        r: Result<T, kube::Error>,
    ) -> Result<T, LeaseError> {
        let (result, out) = match r {
            Ok(v) => (ApiResult::Ok, Ok(v)),
            Err(kube::Error::Api(s)) if s.code == 409 => (
                ApiResult::Conflict,
                Err(LeaseError::Conflict {
                    name: name.to_string(),
                }),
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => (
                ApiResult::NotFound,
                Err(LeaseError::NotFound {
                    name: name.to_string(),
                }),
            ),
            Err(e) => (ApiResult::Error, Err(LeaseError::Api(e))),
        };
        self.metrics.inc(verb, result);
        out
    }
}
