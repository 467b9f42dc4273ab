//! A conformance check every [`Source`] implementation should pass (run it from the
//! implementation's tests with content the source holds): misses are `None`, manifests are
//! byte-exact with a matching digest, blob bodies hold exactly the announced bytes, ranges follow
//! [`RangeSpec::resolve`] and unsatisfiable ones are [`ProxyError::RangeInvalid`] with the size.

use bytes::Bytes;
use futures::TryStreamExt;
use preheat_core::Digest;

use crate::error::ProxyError;
use crate::name::{RepoName, TagOrDigest};
use crate::range::RangeSpec;
use crate::source::{check_manifest, Blob, Source};

/// What the source under test holds (and does not).
#[derive(Debug, Clone)]
pub struct Expected {
    pub name: RepoName,
    /// A tag of `name` pointing at the manifest.
    pub tag: String,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_bytes: Bytes,
    /// A blob of at least 2 bytes.
    pub blob: Bytes,
    /// `ns` to pass along (`None` to test without).
    pub ns: Option<String>,
}

/// Which check failed and how.
#[derive(Debug, thiserror::Error)]
#[error("{check}: {detail}")]
pub struct ConformanceError {
    pub check: &'static str,
    pub detail: String,
}

fn fail(check: &'static str, detail: impl Into<String>) -> ConformanceError {
    ConformanceError {
        check,
        detail: detail.into(),
    }
}

/// Runs every check against `source`; the first failure is returned.
pub async fn check_source(source: &dyn Source, e: &Expected) -> Result<(), ConformanceError> {
    if e.blob.len() < 2 {
        return Err(fail("fixture", "the blob must hold at least 2 bytes"));
    }
    let ns = e.ns.as_deref();
    let unknown = Digest::of(b"registry-proxy conformance: content nobody stores");

    for reference in [
        TagOrDigest::Tag(e.tag.clone()),
        TagOrDigest::Digest(e.manifest_digest),
    ] {
        let m = source
            .manifest(&e.name, &reference, ns)
            .await
            .map_err(|err| fail("manifest", format!("{reference}: {err}")))?
            .ok_or_else(|| fail("manifest", format!("{reference}: missing")))?;
        check_manifest(&reference, &m).map_err(|err| fail("manifest digest", err.to_string()))?;
        if m.bytes != e.manifest_bytes || m.media_type != e.manifest_media_type {
            return Err(fail("manifest", format!("{reference}: not byte-exact")));
        }
    }
    let missing = source
        .manifest(&e.name, &TagOrDigest::Digest(unknown), ns)
        .await
        .map_err(|err| fail("manifest miss", err.to_string()))?;
    if missing.is_some() {
        return Err(fail("manifest miss", "an unknown digest was found"));
    }

    let digest = Digest::of(&e.blob);
    let size = e.blob.len() as u64;
    let stat = source
        .blob_size(&e.name, &digest, ns)
        .await
        .map_err(|err| fail("blob_size", err.to_string()))?
        .ok_or_else(|| fail("blob_size", "missing"))?;
    if stat.size != size {
        return Err(fail("blob_size", format!("{} != {size}", stat.size)));
    }

    let ranges = [
        None,
        Some(RangeSpec::FromTo(1, 1)),
        Some(RangeSpec::FromTo(0, size + 10)),
        Some(RangeSpec::From(size - 1)),
        Some(RangeSpec::Suffix(2)),
        Some(RangeSpec::Suffix(size + 10)),
    ];
    for spec in ranges {
        let blob = source
            .blob(&e.name, &digest, ns, spec)
            .await
            .map_err(|err| fail("blob", format!("{spec:?}: {err}")))?
            .ok_or_else(|| fail("blob", format!("{spec:?}: missing")))?;
        check_blob(blob, &e.blob, spec).await?;
    }
    for spec in [RangeSpec::From(size), RangeSpec::Suffix(0)] {
        match source.blob(&e.name, &digest, ns, Some(spec)).await {
            Err(ProxyError::RangeInvalid { size: Some(s) }) if s == size => {}
            other => {
                let got = other.map(|b| b.map(|b| (b.size, b.range)));
                return Err(fail("unsatisfiable range", format!("{spec:?}: {got:?}")));
            }
        }
    }

    let miss = source
        .blob(&e.name, &unknown, ns, None)
        .await
        .map_err(|err| fail("blob miss", err.to_string()))?;
    let stat_miss = source
        .blob_size(&e.name, &unknown, ns)
        .await
        .map_err(|err| fail("blob miss", err.to_string()))?;
    if miss.is_some() || stat_miss.is_some() {
        return Err(fail("blob miss", "an unknown digest was found"));
    }
    Ok(())
}

/// The body holds exactly what `size`/`range` announce, and it is the right part of `whole`.
async fn check_blob(
    blob: Blob,
    whole: &Bytes,
    spec: Option<RangeSpec>,
) -> Result<(), ConformanceError> {
    let size = whole.len() as u64;
    if blob.size != size {
        return Err(fail(
            "blob size",
            format!("{spec:?}: {} != {size}", blob.size),
        ));
    }
    let expected_range = spec.and_then(|s| s.resolve(size));
    let (start, end) = match blob.range {
        Some(r) if Some(r) == expected_range => (r.start, r.end),
        Some(r) => return Err(fail("blob range", format!("{spec:?}: got {r:?}"))),
        None => (0, size - 1),
    };
    let pieces: Vec<Bytes> = blob
        .body
        .try_collect()
        .await
        .map_err(|err| fail("blob body", format!("{spec:?}: {err}")))?;
    let got = pieces.concat();
    let (s, e) = (
        usize::try_from(start).map_err(|_| fail("blob range", "start"))?,
        usize::try_from(end).map_err(|_| fail("blob range", "end"))?,
    );
    if got[..] != whole[s..=e] {
        return Err(fail(
            "blob body",
            format!("{spec:?}: {} bytes, not bytes {start}..={end}", got.len()),
        ));
    }
    Ok(())
}
