//! The per-image election task: drives `preheat_core::election::Election` with the Lease API and a
//! view of the swarm, and publishes the role through a watch channel.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
pub use preheat_core::election::Role;
use preheat_core::election::{lease_name, Action, Election, LeaseRecord, Observed, View, Written};
use preheat_core::Digest;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::api::{lease_record, new_lease, LeaseApi};
use super::{LeaseConfig, LeaseError, LeaseMetrics, LeaseMode};

/// What the swarm knows about an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Live members' ranking ids (this node may be among them).
    pub members: Vec<String>,
    /// Ranking ids of the live members that want the image (this node may be among them).
    pub wanting: Vec<String>,
    /// Ranking ids of the live members, this node excluded, that provide (part of) the image.
    pub providers: Vec<String>,
}

/// The swarm as the election needs it; the node implements it over the swarm handle.
///
/// `snapshot` runs on every poll (about once per `changed`), so serve it from cached membership
/// and provider records. Report members only once discovery has settled: a node that sees only
/// itself ranks itself first and contends, so a half-discovered swarm sends more nodes to the API.
pub trait SwarmView: Send + 'static {
    fn snapshot(&mut self, image: &Digest) -> impl Future<Output = Snapshot> + Send;

    /// Resolves when the snapshot may have changed; the election then polls again. The default
    /// re-checks every second.
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(Duration::from_secs(1))
    }
}

/// Who decides right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The Lease decides.
    Lease,
    /// The API server failed; the ranking decides until it answers again.
    Fallback,
    /// `LEASE=none`.
    CoordinationFree,
}

/// The election's state as published to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub mode: Mode,
    /// We hold the Lease.
    pub holder: bool,
    /// The election ended (complete or abandoned).
    pub done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Complete,
    Abandon,
}

/// Starts one election per image; cheap to clone.
#[derive(Debug, Clone)]
pub struct LeaseElector {
    cfg: LeaseConfig,
    member_id: String,
    api: Option<LeaseApi>,
    running: Arc<Running>,
}

/// Election tasks still running (a dropped election's task still hands its Lease over).
#[derive(Debug, Default)]
struct Running {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one election task while it lives.
struct RunningGuard(Arc<Running>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl LeaseElector {
    /// `member_id` is this node's id in the swarm's member list (what the ranking hashes);
    /// `cfg.node_name` is the Lease holder identity. `LEASE=kube` without a client runs
    /// coordination-free (logged).
    pub fn new(
        mut cfg: LeaseConfig,
        member_id: impl Into<String>,
        client: Option<Client>,
        metrics: LeaseMetrics,
    ) -> Result<Self, LeaseError> {
        let secs = cfg.lease_duration.as_secs();
        if secs == 0 || i32::try_from(secs).is_err() {
            return Err(LeaseError::Duration(cfg.lease_duration));
        }
        if cfg.contenders == 0 {
            return Err(LeaseError::NoContenders);
        }
        let api = match (cfg.mode, client) {
            (LeaseMode::Kube, Some(c)) => Some(LeaseApi::new(c, &cfg.namespace, metrics)),
            (LeaseMode::Kube, None) => {
                warn!("no kubernetes client, electing pullers coordination-free");
                cfg.mode = LeaseMode::None;
                None
            }
            (LeaseMode::None, _) => None,
        };
        Ok(Self {
            cfg,
            member_id: member_id.into(),
            api,
            running: Arc::default(),
        })
    }

    /// Like [`LeaseElector::new`] with [`super::kube_client`] for `LEASE=kube`; a missing or broken
    /// configuration is logged and the election runs coordination-free.
    pub async fn from_environment(
        cfg: LeaseConfig,
        member_id: impl Into<String>,
        metrics: LeaseMetrics,
    ) -> Result<Self, LeaseError> {
        let client = match cfg.mode {
            LeaseMode::Kube => match super::kube_client().await {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = ?e, "kubernetes client unavailable");
                    None
                }
            },
            LeaseMode::None => None,
        };
        Self::new(cfg, member_id, client, metrics)
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Waits until no election task of this elector (or its clones) runs, e.g. at shutdown after
    /// the elections were dropped: their tasks hand the Leases over first. Bound it with a timeout.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.running.idle.notified();
            if self.running.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Runs the election for `image` in a task until [`ImageElection::complete`] (or drop).
    pub fn start<V: SwarmView>(&self, image: Digest, view: V) -> ImageElection {
        let election = Election::new(
            image,
            self.member_id.clone(),
            self.cfg.node_name.clone(),
            self.cfg.election(),
            Instant::now(),
        );
        let mode = if self.cfg.mode == LeaseMode::None {
            Mode::CoordinationFree
        } else {
            Mode::Lease
        };
        let (tx, rx) = watch::channel(Status {
            role: Role::Undecided,
            mode,
            holder: false,
            done: false,
        });
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let run = Run {
            e: election,
            api: self.api.clone(),
            cfg: self.cfg.clone(),
            tx,
            rng: StdRng::from_entropy(),
            acquired: None,
        };
        self.running.count.fetch_add(1, Ordering::SeqCst);
        let guard = RunningGuard(self.running.clone());
        let task = tokio::spawn(async move {
            let _running = guard;
            run.run(view, stop_rx).await;
        });
        ImageElection {
            status: rx,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }
}

/// The running election for one image. Dropping it hands the Lease over (as [`Self::abandon`]).
#[derive(Debug)]
pub struct ImageElection {
    status: watch::Receiver<Status>,
    stop: Option<mpsc::Sender<Stop>>,
    task: Option<JoinHandle<()>>,
}

impl ImageElection {
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver of every status change (for `select!` alongside the pull).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until this node either pulls from the registry or follows the swarm.
    pub async fn acquire_or_follow(&mut self) -> Status {
        self.wait_for(|s| s.role != Role::Undecided || s.done).await
    }

    /// Waits until the status satisfies `f` (returns at once if it already does).
    pub async fn wait_for(&mut self, mut f: impl FnMut(&Status) -> bool) -> Status {
        let r = self.status.wait_for(|s| f(s)).await.map(|s| *s);
        // Err: the task ended; its last status stays readable.
        r.unwrap_or_else(|_| *self.status.borrow())
    }

    /// The image is complete here: deletes our Lease (if we hold it) and ends the election.
    pub async fn complete(mut self) {
        self.finish(Stop::Complete).await;
    }

    /// We stop before the image is complete: our Lease is handed over (no holder), so the next
    /// contender that reads it takes over without waiting for expiry.
    pub async fn abandon(mut self) {
        self.finish(Stop::Abandon).await;
    }

    /// Stops at once without touching the Lease, as a crash would: it expires on its own.
    pub fn kill(mut self) {
        self.stop = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn finish(&mut self, how: Stop) {
        if let Some(s) = self.stop.take() {
            // Err: the task already ended.
            let _ = s.send(how).await;
        }
        if let Some(t) = self.task.take() {
            if let Err(e) = t.await {
                warn!(error = %e, "lease election task failed");
            }
        }
    }
}

impl Drop for ImageElection {
    fn drop(&mut self) {
        // Closing the stop channel makes the task abandon the Lease on its own.
        self.stop = None;
    }
}

struct Run {
    e: Election<String>,
    api: Option<LeaseApi>,
    cfg: LeaseConfig,
    tx: watch::Sender<Status>,
    rng: StdRng,
    /// When this node acquired the Lease it holds (kept across renewals).
    acquired: Option<Timestamp>,
}

impl Run {
    async fn run<V: SwarmView>(mut self, mut view: V, mut stop: mpsc::Receiver<Stop>) {
        let image = *self.e.image();
        let name = lease_name(&image);
        let mut stop_open = true;
        loop {
            let snap = view.snapshot(&image).await;
            let actions = self.e.poll(
                Instant::now(),
                View {
                    members: &snap.members,
                    wanting: &snap.wanting,
                    providers: &snap.providers,
                },
                &mut self.rng,
            );
            let mut until = None;
            let mut called = false;
            for a in actions {
                match a {
                    Action::Wait { until: u } => until = Some(u),
                    Action::PullFromRegistry => info!(%image, "pulling from the registry"),
                    Action::FeedFromSwarm => info!(%image, "fetching from the swarm"),
                    Action::FallbackCoordinationFree => {
                        warn!(%image, "lease api unavailable, electing coordination-free")
                    }
                    call => {
                        called = true;
                        self.call(&image, &name, call).await;
                    }
                }
            }
            self.publish();
            if self.e.is_done() {
                break;
            }
            if called {
                continue;
            }
            let wake = until.unwrap_or_else(|| Instant::now() + self.cfg.lease_duration / 3);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = view.changed() => {}
                s = stop.recv(), if stop_open => match s {
                    Some(Stop::Complete) => self.e.complete(),
                    Some(Stop::Abandon) => self.e.abandon(),
                    None => {
                        stop_open = false;
                        self.e.abandon();
                    }
                },
            }
        }
        debug!(%image, "lease election ended");
    }

    /// Performs one API action and feeds the answer back.
    async fn call(&mut self, image: &Digest, name: &str, action: Action) {
        let Some(api) = self.api.clone() else {
            // Only `LEASE=kube` asks for calls, and it always has a client; answer as a failure.
            match action {
                Action::Get => self
                    .e
                    .on_get(Instant::now(), Observed::ApiError, &mut self.rng),
                _ => self
                    .e
                    .on_write(Instant::now(), Written::ApiError, &mut self.rng),
            }
            return;
        };
        let d = self.cfg.lease_duration;
        let me = self.cfg.node_name.clone();
        let res = match action {
            Action::Get => {
                let obs = match api.get(name).await {
                    Ok(Some(l)) => {
                        Observed::Lease(lease_record(&l, Instant::now(), Timestamp::now()))
                    }
                    Ok(None) => Observed::Absent,
                    Err(e) => {
                        warn!(%image, error = ?e, kind = e.kind(), "lease read failed");
                        Observed::ApiError
                    }
                };
                self.e.on_get(Instant::now(), obs, &mut self.rng);
                return;
            }
            Action::Create => match new_lease(image, Some(&me), d, Timestamp::now(), None) {
                Ok(l) => api.create(&l).await,
                Err(e) => Err(e),
            },
            Action::TakeOver {
                resource_version: rv,
            } => match new_lease(image, Some(&me), d, Timestamp::now(), Some(rv)) {
                Ok(l) => api.replace(&l).await,
                Err(e) => Err(e),
            },
            Action::Renew {
                resource_version: rv,
            } => match new_lease(image, Some(&me), d, Timestamp::now(), Some(rv)) {
                Ok(mut l) => {
                    // A renewal keeps the time this holder acquired the Lease.
                    if let (Some(spec), Some(known)) = (l.spec.as_mut(), self.acquired) {
                        spec.acquire_time = Some(MicroTime(known));
                    }
                    api.replace(&l).await
                }
                Err(e) => Err(e),
            },
            Action::Yield {
                resource_version: rv,
            } => match new_lease(image, None, d, Timestamp::now(), Some(rv)) {
                Ok(l) => api.replace(&l).await,
                Err(e) => Err(e),
            },
            Action::Release {
                resource_version: rv,
            } => api
                .delete(name, &rv)
                .await
                .map(|()| k8s_openapi::api::coordination::v1::Lease::default()),
            _ => return,
        };
        let acquired = res
            .as_ref()
            .ok()
            .and_then(|l| l.spec.as_ref()?.acquire_time.as_ref())
            .map(|MicroTime(t)| *t);
        let written = match res {
            Ok(l) => Written::Ok(if l.metadata.resource_version.is_some() {
                lease_record(&l, Instant::now(), Timestamp::now())
            } else {
                LeaseRecord {
                    holder: None,
                    renew_time: None,
                    duration: None,
                    resource_version: String::new(),
                }
            }),
            Err(LeaseError::Conflict { .. }) => Written::Conflict,
            Err(LeaseError::NotFound { .. }) => Written::NotFound,
            Err(e) => {
                warn!(%image, error = ?e, kind = e.kind(), "lease write failed");
                Written::ApiError
            }
        };
        self.e.on_write(Instant::now(), written, &mut self.rng);
        self.acquired = if self.e.is_holder() {
            acquired.or(self.acquired)
        } else {
            None
        };
    }

    fn publish(&self) {
        let mode = if self.cfg.mode == LeaseMode::None {
            Mode::CoordinationFree
        } else if self.e.in_fallback() {
            Mode::Fallback
        } else {
            Mode::Lease
        };
        let s = Status {
            role: self.e.role(),
            mode,
            holder: self.e.is_holder(),
            done: self.e.is_done(),
        };
        self.tx.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    }
}
