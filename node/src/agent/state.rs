//! Per-image state shared by the reconciler (writer) and the HTTP API (reader).
//!
//! Invariant: an entry is `Fetching` only while exactly one job owns it (`scheduled`); entries of
//! images neither listed nor requested on demand are dropped once no job owns them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use image_preheat::pull::PullProgress;
use preheat_core::reference::Reference;
use preheat_core::Digest;
use serde::Serialize;

/// The state of one image on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Absent,
    Fetching,
    Complete,
    Failed,
}

/// What the reconciler knows about one image.
#[derive(Debug, Clone)]
pub struct Entry {
    pub reference: Reference,
    pub state: State,
    pub manifest: Option<Digest>,
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub registry_bytes: u64,
    pub peer_bytes: u64,
    pub present_bytes: u64,
    pub in_runtime: bool,
    pub error: Option<String>,
    pub attempts: u32,
    /// A job owns the entry (checking, waiting for a slot, fetching or importing).
    pub scheduled: bool,
    /// Failed: not retried before this.
    pub retry_at: Option<Instant>,
    /// When the first attempt started, and how long until it was complete.
    pub first_start: Option<Instant>,
    pub took: Option<Duration>,
    pub listed: bool,
    pub on_demand: bool,
}

impl Entry {
    pub fn new(reference: Reference) -> Self {
        Self {
            reference,
            state: State::Absent,
            manifest: None,
            total_bytes: 0,
            done_bytes: 0,
            registry_bytes: 0,
            peer_bytes: 0,
            present_bytes: 0,
            in_runtime: false,
            error: None,
            attempts: 0,
            scheduled: false,
            retry_at: None,
            first_start: None,
            took: None,
            listed: false,
            on_demand: false,
        }
    }

    pub fn view(&self) -> ImageView {
        let progress = match self.state {
            State::Complete => 1.0,
            _ if self.total_bytes == 0 => 0.0,
            #[allow(clippy::cast_precision_loss)] // a ratio for display
            _ => (self.done_bytes as f64 / self.total_bytes as f64).clamp(0.0, 1.0),
        };
        ImageView {
            image: self.reference.to_string(),
            digest: self.manifest.map(|d| d.to_string()),
            state: self.state,
            in_runtime: self.in_runtime,
            progress,
            bytes: self.done_bytes,
            total_bytes: self.total_bytes,
            registry_bytes: self.registry_bytes,
            peer_bytes: self.peer_bytes,
            present_bytes: self.present_bytes,
            seconds: self.took.map(|d| d.as_secs_f64()),
            attempts: self.attempts,
            error: self.error.clone(),
            listed: self.listed,
            on_demand: self.on_demand,
        }
    }
}

/// The JSON form of an [`Entry`] (`/images/check`, `/api/v1/status`, `/api/v1/preheat`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image: String,
    pub digest: Option<String>,
    pub state: State,
    pub in_runtime: bool,
    /// 0..1 of the image's config and layer bytes stored.
    pub progress: f64,
    /// Bytes stored so far.
    pub bytes: u64,
    pub total_bytes: u64,
    pub registry_bytes: u64,
    pub peer_bytes: u64,
    pub present_bytes: u64,
    /// Seconds from the first attempt until complete.
    pub seconds: Option<f64>,
    pub attempts: u32,
    pub error: Option<String>,
    pub listed: bool,
    pub on_demand: bool,
}

/// Shared image states, keyed by canonical reference.
#[derive(Debug, Clone, Default)]
pub struct Status {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Status {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to the entry of `key` if it exists.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().get_mut(key) {
            f(e);
        }
    }

    pub fn get(&self, key: &str) -> Option<ImageView> {
        self.lock().get(key).map(Entry::view)
    }

    /// Every entry, sorted by reference.
    pub fn views(&self) -> Vec<ImageView> {
        let mut v: Vec<ImageView> = self.lock().values().map(Entry::view).collect();
        v.sort_by(|a, b| a.image.cmp(&b.image));
        v
    }
}

/// Feeds fetch progress into the entry of one image.
pub struct EntryProgress {
    pub status: Status,
    pub key: String,
}

impl PullProgress for EntryProgress {
    fn start(&self, total_bytes: u64, already: u64) {
        self.status.update(&self.key, |e| {
            e.total_bytes = total_bytes;
            e.done_bytes = already;
        });
    }

    fn advance(&self, bytes: u64) {
        self.status.update(&self.key, |e| {
            e.done_bytes = e.done_bytes.saturating_add(bytes)
        });
    }

    fn blob_done(&self, _: &Digest) {}

    fn message(&self, msg: &str) {
        tracing::debug!(image = %self.key, msg, "fetch progress");
    }
}
