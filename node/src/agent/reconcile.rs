//! The reconcile loop: every `INTERVAL`, on every image-list change and on on-demand requests, each
//! wanted image (listed or requested) that no job owns gets a job:
//!
//! ```text
//!  store has it complete ─► every runtime has it ─► Complete (skip; no network)
//!        │ no                        │ no
//!        ▼                           ▼
//!  slot (PREHEAT_CONCURRENCY) ─► fetch (≤ PULLING_TIMEOUT) ─► import into runtimes lacking it ─► Complete
//!        failure anywhere ─► Failed, retried after a jittered backoff (5 s doubling, ≤ INTERVAL)
//! ```
//!
//! Invariants: at most one job per image; at most `concurrency` fetches at once; the store's wanted
//! set is the manifests of the wanted images after every pass; on shutdown no new job starts,
//! fetches are abandoned (the store keeps verified chunks for the next start) and running imports
//! get a bounded grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use image_preheat::pull::PullProgress;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use preheat_store::Store;
use rand::Rng;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::image_list::ImageList;
use super::metrics::{AgentMetrics, Source};
use super::state::{EntryProgress, State, Status};

/// First retry delay after a failure (doubles per failure up to the interval).
pub const RETRY_MIN: Duration = Duration::from_secs(5);

/// What one fetch brought into the store.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub manifest: Digest,
    pub total_bytes: u64,
    pub registry_bytes: u64,
    pub peer_bytes: u64,
    pub present_bytes: u64,
}

/// Gets an image into the store (swarm, election, registry).
pub trait ImageSource: Send + Sync + 'static {
    fn fetch<'a>(
        &'a self,
        reference: &'a Reference,
        progress: Arc<dyn PullProgress>,
    ) -> BoxFuture<'a, anyhow::Result<Fetched>>;
}

/// A container runtime images are imported into.
pub trait ImageRuntime: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn has_image<'a>(
        &'a self,
        reference: &'a Reference,
        manifest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
    fn import<'a>(
        &'a self,
        store: &'a Store,
        reference: &'a Reference,
        manifest: &'a Digest,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub interval: Duration,
    pub concurrency: usize,
    pub pulling_timeout: Duration,
    /// Bound on waiting for running imports at shutdown.
    pub import_grace: Duration,
    /// First retry delay ([`RETRY_MIN`] in the agent).
    pub retry_min: Duration,
}

/// Everything a job needs; cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    pub store: Store,
    pub source: Arc<dyn ImageSource>,
    pub runtimes: Arc<Vec<Arc<dyn ImageRuntime>>>,
    pub status: Status,
    pub metrics: AgentMetrics,
    pub cfg: ReconcileConfig,
    /// Wakes the loop (on-demand requests).
    pub wake: Arc<Notify>,
    slots: Arc<Semaphore>,
}

impl Reconciler {
    pub fn new(
        store: Store,
        source: Arc<dyn ImageSource>,
        runtimes: Vec<Arc<dyn ImageRuntime>>,
        metrics: AgentMetrics,
        cfg: ReconcileConfig,
    ) -> Self {
        Self {
            store,
            source,
            runtimes: Arc::new(runtimes),
            status: Status::default(),
            metrics,
            slots: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            cfg,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks for `images` now (on-demand preheat): they are kept wanted like listed images, and a
    /// failed one is retried at once.
    pub fn request(&self, images: &[Reference]) {
        {
            let mut map = self.status.lock();
            for r in images {
                let e = map
                    .entry(r.to_string())
                    .or_insert_with(|| super::state::Entry::new(r.clone()));
                e.on_demand = true;
                e.retry_at = None;
            }
        }
        self.wake.notify_one();
    }

    /// Runs until `cancel`, then drains jobs as the module docs say.
    pub async fn run(self, mut list: watch::Receiver<Arc<ImageList>>, cancel: CancellationToken) {
        let mut jobs = JoinSet::new();
        let first = tokio::time::Instant::now() + self.cfg.interval;
        let mut ticker = tokio::time::interval_at(first, self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A full pass re-checks complete images too (the runtime may have lost one); the passes
        // after a job ended, a retry came due or an on-demand request only start what is not complete.
        let mut full = true;
        loop {
            let current = list.borrow_and_update().clone();
            let next_retry = self.pass(&current, full, &mut jobs, &cancel).await;
            let retry = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            full = false;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => full = true,
                r = list.changed() => if r.is_err() { break } else { full = true },
                _ = self.wake.notified() => {}
                _ = retry => {}
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
            }
        }
        let grace = tokio::time::sleep(self.cfg.import_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                j = jobs.join_next() => if j.is_none() { break },
                _ = &mut grace => {
                    tracing::warn!(jobs = jobs.len(), "abandoning image jobs at shutdown");
                    jobs.abort_all();
                    break;
                }
            }
        }
    }

    /// One pass: schedules due images (with `full`, complete ones too, to check them again), forgets unwanted ones, updates the wanted set. Returns the
    /// earliest pending retry.
    async fn pass(
        &self,
        list: &ImageList,
        full: bool,
        jobs: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next_retry: Option<Instant> = None;
        {
            let mut map = self.status.lock();
            for e in map.values_mut() {
                e.listed = false;
            }
            for r in &list.images {
                map.entry(r.to_string())
                    .or_insert_with(|| super::state::Entry::new(r.clone()))
                    .listed = true;
            }
            map.retain(|_, e| e.listed || e.on_demand || e.scheduled);
            for (key, e) in map.iter_mut() {
                if e.scheduled
                    || !(e.listed || e.on_demand)
                    || (!full && e.state == State::Complete)
                {
                    continue;
                }
                if let Some(at) = e.retry_at.filter(|at| *at > now) {
                    next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                    continue;
                }
                e.scheduled = true;
                due.push((key.clone(), e.reference.clone()));
            }
        }
        for (key, reference) in due {
            let this = self.clone();
            let cancel = cancel.clone();
            jobs.spawn(async move { this.job(key, reference, cancel).await });
        }
        self.update_wanted().await;
        next_retry
    }

    /// Tells the store which manifests to keep: those of wanted images it has records of.
    async fn update_wanted(&self) {
        let wanted: std::collections::HashSet<String> =
            self.status.lock().keys().cloned().collect();
        match self.store.images().await {
            Ok(images) => {
                let digests = images
                    .iter()
                    .filter(|s| wanted.contains(&s.record.reference))
                    .flat_map(|s| std::iter::once(s.record.manifest).chain(s.record.index));
                self.store.set_wanted(digests.collect::<Vec<_>>()).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list stored images"),
        }
        self.metrics
            .store(self.store.usage(), self.store.max_bytes());
    }

    /// The manifest and size of `key` if the store holds that image complete.
    async fn stored(&self, key: &str) -> Option<(Digest, u64)> {
        let images = self.store.images().await.ok()?;
        images
            .into_iter()
            .find(|s| s.complete && s.record.reference == key)
            .map(|s| (s.record.manifest, s.size))
    }

    /// Whether every runtime has the image (true with no runtimes).
    async fn in_runtimes(&self, reference: &Reference, manifest: &Digest) -> anyhow::Result<bool> {
        for rt in self.runtimes.iter() {
            if !rt.has_image(reference, manifest).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn job(&self, key: String, reference: Reference, cancel: CancellationToken) {
        let outcome = self.attempt(&key, &reference, &cancel).await;
        let retry_after = self.backoff(&key);
        let mut map = self.status.lock();
        let Some(e) = map.get_mut(&key) else { return };
        e.scheduled = false;
        match outcome {
            Ok(()) => {
                e.attempts = 0;
                e.retry_at = None;
            }
            Err(err) => {
                let text = format!("{err:#}");
                let source = Source::dominant(e.registry_bytes, e.peer_bytes);
                if !cancel.is_cancelled() {
                    tracing::warn!(image = %key, error = %text, retry_in = ?retry_after, "image preheat failed");
                    self.metrics.failed(&key, source);
                }
                e.state = State::Failed;
                e.error = Some(text);
                e.attempts = e.attempts.saturating_add(1);
                e.retry_at = Some(Instant::now() + retry_after);
            }
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let attempts = self.status.lock().get(key).map_or(0, |e| e.attempts);
        let min = self.cfg.retry_min;
        let base = min
            .saturating_mul(1 << attempts.min(16))
            .min(self.cfg.interval.max(min));
        base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }

    async fn attempt(
        &self,
        key: &str,
        reference: &Reference,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some((manifest, size)) = self.stored(key).await {
            if self.in_runtimes(reference, &manifest).await? {
                self.status.update(key, |e| {
                    e.state = State::Complete;
                    e.manifest = Some(manifest);
                    e.in_runtime = !self.runtimes.is_empty();
                    e.total_bytes = size;
                    e.done_bytes = size;
                    e.error = None;
                });
                return Ok(());
            }
        }
        let _slot = tokio::select! {
            s = self.slots.acquire() => s?,
            _ = cancel.cancelled() => anyhow::bail!("interrupted by shutdown"),
        };
        let started = Instant::now();
        self.status.update(key, |e| {
            e.state = State::Fetching;
            e.error = None;
            e.first_start.get_or_insert(started);
        });
        let progress: Arc<dyn PullProgress> = Arc::new(EntryProgress {
            status: self.status.clone(),
            key: key.to_owned(),
        });
        let fetch = tokio::time::timeout(
            self.cfg.pulling_timeout,
            self.source.fetch(reference, progress),
        );
        // Abandoning a fetch is safe: the store keeps its verified chunks for the next start.
        let fetched = tokio::select! {
            r = fetch => r.map_err(|_| {
                anyhow::anyhow!("not fetched within {:?} (PULLING_TIMEOUT)", self.cfg.pulling_timeout)
            })??,
            _ = cancel.cancelled() => anyhow::bail!("interrupted by shutdown"),
        };
        self.status.update(key, |e| {
            e.manifest = Some(fetched.manifest);
            e.total_bytes = fetched.total_bytes;
            e.done_bytes = fetched.total_bytes;
            e.registry_bytes = fetched.registry_bytes;
            e.peer_bytes = fetched.peer_bytes;
            e.present_bytes = fetched.present_bytes;
        });
        let imported = self.import(reference, &fetched.manifest).await?;
        let source = Source::dominant(fetched.registry_bytes, fetched.peer_bytes);
        self.metrics.preheated(
            key,
            source,
            fetched.registry_bytes,
            fetched.peer_bytes,
            fetched.present_bytes,
        );
        let took = self
            .status
            .lock()
            .get(key)
            .and_then(|e| e.first_start)
            .map(|s| s.elapsed());
        tracing::info!(image = %key, digest = %fetched.manifest, source = source.as_str(),
            registry_bytes = fetched.registry_bytes, peer_bytes = fetched.peer_bytes,
            present_bytes = fetched.present_bytes, imported, seconds = started.elapsed().as_secs_f64(),
            "image preheated");
        self.status.update(key, |e| {
            e.state = State::Complete;
            e.in_runtime = !self.runtimes.is_empty();
            e.took = took;
        });
        self.update_wanted().await;
        Ok(())
    }

    /// Imports into every runtime lacking the image; returns how many imports ran.
    async fn import(&self, reference: &Reference, manifest: &Digest) -> anyhow::Result<usize> {
        let mut n = 0;
        for rt in self.runtimes.iter() {
            if rt.has_image(reference, manifest).await? {
                continue;
            }
            let t = Instant::now();
            rt.import(&self.store, reference, manifest)
                .await
                .map_err(|e| e.context(format!("import into {}", rt.name())))?;
            self.metrics.imported(rt.name(), t.elapsed().as_secs_f64());
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
