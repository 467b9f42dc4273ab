//! What one simulated run is: the nodes' links, the origin, the image, the protocol knobs, and
//! the Kumar–Ross lower bound for those links.

use std::time::Duration;

use preheat_core::transfer::TransferConfig;
use preheat_core::upload::UploadConfig;
use serde::{Deserialize, Serialize};

/// Upload and download capacity of one node, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Links {
    pub up: f64,
    pub down: f64,
}

/// When the nodes are given the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StartPattern {
    /// Every node at time zero (the first-pull thundering herd).
    AllAtOnce,
    /// Waves of `fraction` of the nodes; a wave starts when the previous one completed.
    Rolling { fraction: f64 },
}

/// A node killed mid-transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Victim {
    /// The node pulling from the origin; another node takes over the origin pull.
    Puller,
    /// Some other node (chosen by the seed).
    Other,
}

/// One kill: `victim` dies at `at` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Churn {
    pub at: f64,
    pub victim: Victim,
}

/// Everything a run depends on; equal configs give equal results.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One entry per node.
    pub nodes: Vec<Links>,
    /// Origin (registry) upload, bytes per second.
    pub origin_up: f64,
    /// Blob sizes of the image, bytes.
    pub layers: Vec<u64>,
    pub chunk_size: u32,
    /// Round trip between any two hosts; a chunk request waits half of it before data flows.
    pub rtt: Duration,
    /// Delay before a node's first peer lookup (DHT provider search).
    pub dht_lookup: Duration,
    /// How often a download looks for more peers (production: 2 s).
    pub refresh: Duration,
    /// Peers one download tracks (production: 64 candidates).
    pub max_peers: usize,
    /// Chunk uploads a node serves at once; more are answered busy (production: 8).
    pub max_uploads: usize,
    /// A node declines a chunk it is sending or started sending this recently (super-seeding,
    /// production: 1 s; zero turns it off).
    pub resend_after: Duration,
    /// How long a request an uploader cannot serve now waits there (production: zero, refused at
    /// once).
    pub max_wait: Duration,
    /// Requests one uploader holds at once (production: 64).
    pub max_waiting: usize,
    /// Blobs a node downloads at once (production: 3).
    pub parallel_blobs: usize,
    /// Chunk requests the origin puller keeps open per blob (a pipelined stream).
    pub origin_streams: u32,
    /// The peer download's state machine configuration (production values by default).
    pub transfer: TransferConfig,
    pub start: StartPattern,
    pub churn: Vec<Churn>,
    /// How long after the puller dies another node takes over the origin pull (lease expiry).
    pub takeover: Duration,
    /// Simulated time after which a run stops (nodes not done by then are reported unfinished).
    pub horizon: Duration,
    pub seed: u64,
    /// Shared-CPU model (off when either is zero): all hosts share `cpu_cores` cores and every
    /// GiB delivered costs `cpu_per_gib` CPU-seconds, so all flows together carry at most
    /// `cpu_cores / cpu_per_gib` GiB/s (see `net`'s header for how rates are cut to fit).
    pub cpu_cores: f64,
    pub cpu_per_gib: f64,
}

impl SimConfig {
    /// `n` identical nodes with production protocol defaults.
    pub fn uniform(n: usize, links: Links, origin_up: f64, layers: Vec<u64>) -> Self {
        Self {
            nodes: vec![links; n],
            origin_up,
            layers,
            chunk_size: preheat_core::chunk::DEFAULT_CHUNK_SIZE,
            rtt: Duration::from_millis(1),
            dht_lookup: Duration::from_millis(50),
            refresh: Duration::from_secs(2),
            max_peers: 64,
            max_uploads: UploadConfig::default().max_uploads,
            resend_after: UploadConfig::default().resend_after,
            max_wait: UploadConfig::default().max_wait,
            max_waiting: UploadConfig::default().max_waiting,
            parallel_blobs: 3,
            origin_streams: 2,
            transfer: TransferConfig {
                max_in_flight_per_peer: 3,
                max_in_flight_total: 16,
                ..TransferConfig::default()
            },
            start: StartPattern::AllAtOnce,
            churn: Vec::new(),
            takeover: Duration::from_secs(15),
            horizon: Duration::from_secs(24 * 3600),
            seed: 1,
            cpu_cores: 0.0,
            cpu_per_gib: 0.0,
        }
    }

    /// The CPU model's cap on the sum of all flow rates, bytes per second; `None` when off.
    pub fn cpu_cap(&self) -> Option<f64> {
        (self.cpu_cores > 0.0 && self.cpu_per_gib > 0.0)
            .then(|| self.cpu_cores / self.cpu_per_gib * (1u64 << 30) as f64)
    }

    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// Why the config cannot be simulated, if it cannot.
    pub fn validate(&self) -> Result<(), crate::SimError> {
        use crate::SimError::Invalid;
        let rate_ok = |r: f64| r.is_finite() && r > 0.0;
        if self.nodes.is_empty() {
            return Err(Invalid("at least one node is needed"));
        }
        if u32::try_from(self.nodes.len()).is_err() {
            return Err(Invalid("too many nodes"));
        }
        if !self.nodes.iter().all(|l| rate_ok(l.up) && rate_ok(l.down)) || !rate_ok(self.origin_up)
        {
            return Err(Invalid("every link rate must be finite and positive"));
        }
        if self.layers.is_empty() || self.layers.contains(&0) {
            return Err(Invalid("the image needs at least one non-empty layer"));
        }
        if self.layers.len() > usize::from(u16::MAX) {
            return Err(Invalid("too many layers"));
        }
        if self.chunk_size == 0 || self.max_peers == 0 || self.max_uploads == 0 {
            return Err(Invalid(
                "chunk size, max peers and max uploads must be positive",
            ));
        }
        if self.parallel_blobs == 0 || self.origin_streams == 0 {
            return Err(Invalid(
                "parallel blobs and origin streams must be positive",
            ));
        }
        let cpu_ok = |v: f64| v.is_finite() && v >= 0.0;
        if !cpu_ok(self.cpu_cores) || !cpu_ok(self.cpu_per_gib) {
            return Err(Invalid(
                "cpu cores and cpu seconds per GiB are finite and not negative",
            ));
        }
        if let StartPattern::Rolling { fraction } = self.start {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(Invalid("a rolling fraction is in (0, 1]"));
            }
        }
        if self
            .churn
            .iter()
            .any(|c| !(c.at.is_finite() && c.at >= 0.0))
        {
            return Err(Invalid("churn times are finite and not negative"));
        }
        Ok(())
    }

    /// The Kumar–Ross bound for these links, seconds.
    pub fn bound(&self) -> Bound {
        let f = self.image_bytes() as f64;
        let n = self.nodes.len() as f64;
        let d_min = self
            .nodes
            .iter()
            .map(|l| l.down)
            .fold(f64::INFINITY, f64::min);
        let sum_up: f64 = self.nodes.iter().map(|l| l.up).sum();
        Bound {
            origin: f / self.origin_up,
            download: f / d_min,
            aggregate: n * f / (self.origin_up + sum_up),
        }
    }
}

/// The three terms of `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bound {
    pub origin: f64,
    pub download: f64,
    pub aggregate: f64,
}

impl Bound {
    /// No node can have the whole image earlier than this.
    pub fn seconds(&self) -> f64 {
        self.origin.max(self.download).max(self.aggregate)
    }
}

/// Bits per second to bytes per second.
pub fn bps(bits: f64) -> f64 {
    bits / 8.0
}
