//! Pure, I/O-free logic shared by the swarm, the node and the simulator.
//!
//! ```text
//!  reference ──► digest ──► chunk layout/index ──► picker ──► transfer state machine
//!                                                     ▲              │ actions
//!                                   simulations ──────┘    swarm ◄───┘
//! ```
//!
//! Invariants: nothing here touches a socket, a file, a clock or a global RNG; time and randomness are
//! passed in, so the simulator runs exactly the code production runs.

pub mod bitfield;
pub mod chunk;
pub mod digest;
pub mod election;
pub mod manifest;
pub mod picker;
pub mod reference;
pub mod rendezvous;
pub mod runs;
pub mod transfer;
pub mod units;
pub mod upload;

pub use chunk::{ChunkIndex, ChunkLayout};
pub use digest::Digest;
