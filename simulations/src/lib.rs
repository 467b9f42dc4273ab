//! Capacity tools for image-preheat: a deterministic, event-driven network simulator that runs
//! preheat-core's real transfer state machine and piece picker, plus the report forms the
//! emulated-network lab (`preheat-lab`) shares with it.
//!
//! ```text
//!  SimConfig ──► engine (events in virtual ns) ──actions──► net (fluid flows, fair shares)
//!                  ▲  Transfer<u32> per node × blob      │ completions, busy, peer Haves
//!                  └─────────────────────────────────────┘
//!                ──► SimResult ──► report (markdown, JSON, SVG)
//! ```
//!
//! Invariants: no wall clock and one seeded RNG, so equal configs give equal results; no link
//! carries more than its capacity, so every completion is at or above the Kumar–Ross bound.

pub mod config;
mod engine;
pub mod net;
pub mod report;

pub use config::{bps, Bound, Churn, Links, SimConfig, StartPattern, Victim};
pub use engine::{run, Sim};
pub use report::{NodeResult, Row, SimResult};

/// Why a simulation cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation config: {0}")]
    Invalid(&'static str),
}
