//! Lease names and labels derived from an image's manifest digest, and the contenders for it.

use crate::rendezvous;
use crate::Digest;

/// Prefix of every Lease name.
pub const LEASE_NAME_PREFIX: &str = "image-preheat-";
/// Hex characters of the digest kept in a Lease name: 48 (192 bits), so the name is 62 characters.
pub const LEASE_NAME_HEX: usize = 48;
/// Hex characters of the digest kept in the `image-preheat.io/digest` label (label values ≤ 63).
pub const DIGEST_LABEL_HEX: usize = 63;

/// The Lease name for an image: `image-preheat-` + the first 48 hex characters of its manifest digest.
///
/// A valid DNS-1123 label (lowercase alphanumerics and `-`, starts and ends alphanumeric, 62 ≤ 63
/// characters), a pure function of the digest, and injective on the kept 192 bits: digests that
/// differ anywhere in their first 48 hex characters never share a name. The full 64 hex characters
/// do not fit in 63. Why truncation is safe: SHA-256 output bits are uniform, so among n distinct
/// images two share a name with probability about n²/2¹⁹³ (10⁻³⁹ for a million images); finding
/// such a pair on purpose costs about 2⁹⁶ hashes. And a collision only makes two images share one
/// puller's Lease (the other image waits for its provider deadline), never serves wrong bytes: every
/// blob is verified against its own digest.
pub fn lease_name(manifest: &Digest) -> String {
    let hex = manifest.hex();
    format!("{LEASE_NAME_PREFIX}{}", &hex[..LEASE_NAME_HEX])
}

/// The value of the `image-preheat.io/digest` label: the first 63 hex characters of the digest.
pub fn digest_label(manifest: &Digest) -> String {
    let hex = manifest.hex();
    hex[..DIGEST_LABEL_HEX].to_string()
}

/// Domain separation of [`want_key`] (no blob or manifest has this digest).
const WANT_CONTEXT: &[u8] = b"image-preheat want v1\0";

/// The key under which every node fetching an image announces itself in the swarm, so the
/// ranking covers only members that want it: sha256 of a fixed prefix and the manifest digest.
/// Distinct from every blob key (a preimage of a real blob would be needed to collide).
pub fn want_key(manifest: &Digest) -> Digest {
    let mut data = WANT_CONTEXT.to_vec();
    data.extend_from_slice(manifest.as_bytes());
    Digest::of(&data)
}

/// The members that contend for the image's Lease: the top `k` of the rendezvous ranking of the
/// image digest (as `sha256:…` text) over the live members.
pub fn contenders<'a, M: AsRef<[u8]>>(manifest: &Digest, live: &'a [M], k: usize) -> Vec<&'a M> {
    rendezvous::top_k(manifest.to_string().as_bytes(), live, k)
}
