//! image-preheat node library: the registry client and the image puller used by the binary.

pub mod pull;
pub mod registry;
