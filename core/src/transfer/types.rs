//! The transfer's configuration, actions, errors and counters.

use std::time::{Duration, Instant};

use crate::picker::Policy;

/// Default busy backoff: short, since a busy answer costs one round trip and the busy peer is
/// often the only one holding the newest chunks.
pub const BUSY_BACKOFF_MS: u64 = 250;

/// Limits and timings of one transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferConfig {
    pub max_in_flight_per_peer: u32,
    pub max_in_flight_total: u32,
    /// A request older than this is failed and retried elsewhere.
    pub chunk_timeout: Duration,
    /// Once every missing chunk is in flight, each may be requested from up to this many more peers.
    pub endgame_duplicates: u32,
    /// How long a peer that served a bad chunk gets nothing.
    pub ban_duration: Duration,
    /// How long a peer that answered "busy" is left alone; also the base of the failure backoff
    /// (`busy_backoff * 2^(consecutive failures - 1)`, at most `chunk_timeout`).
    pub busy_backoff: Duration,
    /// How long a chunk a peer declined (it just sent that chunk to someone else) is not asked of
    /// that peer again; the peer stays eligible for other chunks.
    pub decline_backoff: Duration,
    pub policy: Policy,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_peer: 4,
            max_in_flight_total: 32,
            chunk_timeout: Duration::from_secs(30),
            endgame_duplicates: 2,
            ban_duration: Duration::from_secs(300),
            busy_backoff: Duration::from_millis(BUSY_BACKOFF_MS),
            decline_backoff: Duration::from_secs(1),
            policy: Policy::RarestFirst,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action<P> {
    /// Ask `peer` for `chunk`; answer with `on_chunk_ok`/`_bad`, `on_failure`, `on_busy` or
    /// `on_declined`.
    Request { peer: P, chunk: u32 },
    /// Abandon this request (another peer delivered the chunk, it timed out, or the peer was banned).
    Cancel { peer: P, chunk: u32 },
    /// `peer` served a bad chunk; it gets no requests before `until`. Emitted once per ban.
    Ban { peer: P, until: Instant },
    /// Every chunk is here. Emitted once.
    Complete,
}

/// Events that do not fit the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("bitfield has {got} bits, the blob has {want} chunks")]
    BitfieldLength { got: u32, want: u32 },
    #[error("chunk {chunk} is out of range, the blob has {count} chunks")]
    ChunkOutOfRange { chunk: u32, count: u32 },
}

impl TransferError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BitfieldLength { .. } => "bitfield_length",
            Self::ChunkOutOfRange { .. } => "chunk_out_of_range",
        }
    }
}

/// Counters for metrics and progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferStats {
    pub chunks: u32,
    pub chunks_have: u32,
    pub bytes_have: u64,
    pub in_flight: u32,
    pub peers: u32,
    pub requests: u64,
    /// Verified chunks we did not have before.
    pub chunks_ok: u64,
    /// Verified chunks that arrived after another copy (endgame waste).
    pub duplicates: u64,
    pub bad: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub busy: u64,
    /// Requests declined because the peer had just sent that chunk to someone else.
    pub declined: u64,
    pub bans: u64,
}
