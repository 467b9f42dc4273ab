//! image-preheat node library: the registry client, the image puller and its swarm-first blob
//! source, used by the binary.

pub mod fetch;
pub mod lease;
pub mod mirror;
pub mod pull;
pub mod registry;
pub mod runtime;
pub mod swarm_pull;
