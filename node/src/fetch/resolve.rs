//! Reference → image manifest, through the swarm first: a tag record some peer publishes (the
//! manifest bytes, checked against their digest by the swarm), else the registry. A node that
//! resolved at the registry publishes what it got, so the next nodes need no registry request.
//!
//! ```text
//!  resolve_tag(ref, tag_timeout) ─ image manifest ──────────────────────────► Resolved
//!        │                      └ index ─► platform ─► resolve_tag(repo@child) ┘
//!        └ none / invalid ─► registry.resolve(ref) ─► publish_tag(ref [, repo@child]) ─► Resolved
//! ```

use preheat_core::manifest::{parse_manifest, select_platform, Manifest, Platform};
use preheat_core::reference::Reference;
use preheat_swarm::{SwarmHandle, TagRecord};

use crate::registry::{RawManifest, RegistryClient, RegistryError, Resolved};

/// Where the manifest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedVia {
    Swarm,
    Registry,
}

/// Resolves `reference`; see the module docs.
pub async fn resolve(
    registry: &RegistryClient,
    swarm: Option<&SwarmHandle>,
    platform: &Platform,
    tag_timeout: std::time::Duration,
    reference: &Reference,
) -> Result<(Resolved, ResolvedVia), RegistryError> {
    if let Some(h) = swarm {
        if let Some(r) = from_swarm(h, platform, tag_timeout, reference).await {
            return Ok((r, ResolvedVia::Swarm));
        }
    }
    let resolved = registry.resolve(reference).await?;
    if let Some(h) = swarm {
        publish(h, reference, &resolved).await;
    }
    Ok((resolved, ResolvedVia::Registry))
}

/// The record of `reference` as a raw manifest, if a peer (or this node) publishes a valid one.
async fn record(
    h: &SwarmHandle,
    reference: &str,
    timeout: std::time::Duration,
) -> Option<RawManifest> {
    match h.resolve_tag(reference, timeout).await {
        Ok(Some(r)) => Some(RawManifest {
            digest: r.manifest,
            media_type: r.media_type,
            bytes: r.bytes,
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%reference, error = %e, "tag lookup in the swarm failed");
            None
        }
    }
}

async fn from_swarm(
    h: &SwarmHandle,
    platform: &Platform,
    timeout: std::time::Duration,
    reference: &Reference,
) -> Option<Resolved> {
    let top = record(h, &reference.to_string(), timeout).await?;
    if reference.digest().is_some_and(|d| *d != top.digest) {
        return None;
    }
    let parsed = parse(&top)?;
    let index = match parsed {
        Manifest::Image(image) => {
            return Some(Resolved {
                index: None,
                manifest: top,
                image,
                platform: None,
            })
        }
        Manifest::Index(index) => index,
    };
    let desc = select_platform(&index, platform)?;
    let child_ref = reference.with_digest(desc.digest);
    let child = record(h, &child_ref.to_string(), timeout).await?;
    if child.digest != desc.digest {
        return None;
    }
    match parse(&child)? {
        Manifest::Image(image) => Some(Resolved {
            index: Some(top),
            manifest: child,
            image,
            platform: desc.platform.clone(),
        }),
        Manifest::Index(_) => None,
    }
}

fn parse(raw: &RawManifest) -> Option<Manifest> {
    match parse_manifest(&raw.bytes, Some(&raw.media_type)) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(digest = %raw.digest, error = %e, "tag record is not a usable manifest");
            None
        }
    }
}

/// Publishes `reference` → its top manifest and, for an index, `repo@child` → the platform's
/// manifest. Failures are logged: other nodes then ask the registry themselves.
pub async fn publish(h: &SwarmHandle, reference: &Reference, resolved: &Resolved) {
    let top = resolved.index.as_ref().unwrap_or(&resolved.manifest);
    let mut records = vec![(reference.to_string(), top)];
    if resolved.index.is_some() {
        let child = reference.with_digest(resolved.manifest.digest);
        records.push((child.to_string(), &resolved.manifest));
    }
    for (name, raw) in records {
        let rec = TagRecord {
            manifest: raw.digest,
            media_type: raw.media_type.clone(),
            bytes: raw.bytes.clone(),
        };
        if let Err(e) = h.publish_tag(&name, rec).await {
            tracing::warn!(reference = %name, error = %e, "cannot publish tag record");
        }
    }
}
