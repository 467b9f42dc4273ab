//! The libp2p overlay of image-preheat: nodes find each other (static list, DNS), advertise the
//! blobs they hold or are writing as Kademlia provider records, and download a blob's chunks from
//! several peers at once, verified, while serving what they have. A blob still being written (by a
//! registry pull through a `BlobWriter`, or by a swarm fetch) is served and followed chunk by chunk.
//! Tag records (reference → manifest digest and bytes) are published and resolved the same way.
//!
//! ```text
//!  SwarmHandle (Clone) ──bounded mpsc + oneshot──► event loop task (owns libp2p::Swarm)
//!      │ fetch_blob                                  │ kad: providers (blobs, tags), start/stop_providing
//!      ▼                                             │ ctl: GetProvisional / GetBitfield / Have / GetTag
//!  fetch task: core::transfer::Transfer              │ Store::subscribe_chunks ─► Have to subscribers
//!      │ Request{peer,chunk} ──► libp2p-stream ──────┼──► peer's accept loop → one task per stream
//!      │ ◄── [status][len][bytes] (≤ one chunk)      │      store.read_chunk → governor → socket
//!      ▼                                             ▼
//!  BlobWriter::write_chunk (blake3) ─► finish (sha256) ─► Store ─► announce
//! ```
//!
//! Trust chain. The caller asks for a blob by its sha256 digest (taken from a manifest whose own
//! digest it verified). The chunk index (one blake3 hash per chunk) comes from peers and is only a
//! *claim* until the whole blob hashed to the digest asked for. A *provisional* index — the hashes a
//! peer knows so far of a blob it is still writing, plus a `complete` flag — is a claim like any
//! other: its pages are merged only when they agree with every hash already known, and it is
//! refreshed (from the peer offering the chunks) when chunks beyond it become available.
//! - the index must name that digest and size ([`protocol::check_provisional`]); shape is validated;
//! - each chunk is checked against its claimed blake3 hash before it is stored
//!   (`BlobWriter::write_chunk`), and requested only once its hash is known: with an honest index a
//!   peer serving a bad chunk is caught at once, the chunk re-requested elsewhere and the sender
//!   banned (by the transfer and node-wide);
//! - a forged index, provisional or full (hashes of other data), passes chunk checks but fails the
//!   final sha256 in `BlobWriter::finish`: the partial is discarded, every peer whose answer
//!   contributed hashes is banned, and the download restarts with an index from another peer. If
//!   several peers' chunks fail one index, the index itself is suspect: it is dropped and fetched
//!   from another source.
//!
//! So nothing unverified is ever served as a complete blob; partial chunks we serve to others were
//! verified against an index that the receiver checks again at its own end. A tag record is
//! accepted only when `sha256(bytes)` equals its manifest digest (see `tags`).
//!
//! Invariants: one task owns the swarm; every channel, queue, subscription table and message size is
//! bounded; a download holds at most `max_requests` chunks in memory; requests beyond `max_uploads`
//! wait at most `upload_wait` (≤ `upload_waiting` at once) before they are answered `Busy`; the chunk accept loop
//! only spawns; a download waits for
//! a provider that is still writing at most `stall_timeout` without any progress.

mod behaviour;
mod buffers;
mod chunks;
pub mod config;
mod discovery;
mod event_loop;
mod fetch;
mod handle;
pub mod identity;
mod limits;
mod metrics;
pub mod protocol;
mod source;
mod tags;
mod waitlist;

use std::path::PathBuf;

use preheat_core::Digest;
use preheat_store::StoreError;

pub use config::SwarmConfig;
pub use discovery::{parse_peer, to_multiaddr};
pub use handle::{FetchReport, Swarm, SwarmHandle};
pub use libp2p::{Multiaddr, PeerId};
pub use tags::TagRecord;

/// Errors of the swarm boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or write the node identity {path}")]
    Identity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node identity {path} is not a valid key")]
    IdentityDecode {
        path: PathBuf,
        source: libp2p::identity::DecodingError,
    },
    #[error("cannot set up the noise transport security")]
    Transport(#[from] libp2p::noise::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: Multiaddr,
        source: libp2p::TransportError<std::io::Error>,
    },
    #[error("no peer provides {digest}")]
    NoProviders { digest: Digest },
    #[error("fetching {digest} from peers did not finish before the deadline")]
    Deadline { digest: Digest },
    #[error("fetching {digest} from peers stalled: no peer had the missing chunks for {waited:?}")]
    Stalled {
        digest: Digest,
        waited: std::time::Duration,
    },
    #[error("invalid tag record for {reference}: {reason}")]
    BadTag {
        reference: String,
        reason: &'static str,
    },
    #[error("store error")]
    Store(#[from] StoreError),
    #[error("the swarm has stopped")]
    Stopped,
}

impl Error {
    /// A short stable name, for metric labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Identity { .. } | Self::IdentityDecode { .. } => "identity",
            Self::Transport(_) => "transport",
            Self::Listen { .. } => "listen",
            Self::NoProviders { .. } => "no_providers",
            Self::Deadline { .. } => "deadline",
            Self::Stalled { .. } => "stalled",
            Self::BadTag { .. } => "bad_tag",
            Self::Store(_) => "store",
            Self::Stopped => "stopped",
        }
    }
}
