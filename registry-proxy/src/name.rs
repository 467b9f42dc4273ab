//! Parsing of request paths and queries: repository names, tags, digests and the `ns` parameter.
//!
//! Invariants: a [`RepoName`] matches distribution's grammar (lowercase components joined by single
//! `/`, no `.`/`..` components, at most [`NAME_MAX_LEN`] bytes), so it can never escape a
//! directory; a [`TagOrDigest`] holds a valid tag or a parsed [`Digest`]; nothing here allocates
//! more than the (already size-capped) input.

use std::fmt;

use preheat_core::reference::check_path_component;
use preheat_core::Digest;

use crate::error::ProxyError;

/// Longest repository name distribution accepts.
pub const NAME_MAX_LEN: usize = 255;
const TAG_MAX_LEN: usize = 128;
const HOST_MAX_LEN: usize = 255;

/// A validated repository name, e.g. `library/nginx` or `a/b/c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    /// Validates `s` by distribution's grammar:
    /// `component ("/" component)*`, `component := [a-z0-9]+ (("."|"_"|"__"|"-"+) [a-z0-9]+)*`.
    pub fn parse(s: &str) -> Result<Self, ProxyError> {
        let err = |reason| ProxyError::NameInvalid { reason };
        if s.is_empty() {
            return Err(err("the repository name is empty"));
        }
        if s.len() > NAME_MAX_LEN {
            return Err(err("the repository name is longer than 255 bytes"));
        }
        for c in s.split('/') {
            check_path_component(c).map_err(err)?;
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagOrDigest {
    Tag(String),
    Digest(Digest),
}

impl TagOrDigest {
    /// A string with a `:` is a digest (tags cannot hold one), anything else a tag.
    pub fn parse(s: &str) -> Result<Self, ProxyError> {
        if s.contains(':') {
            return Ok(Self::Digest(s.parse()?));
        }
        let b = s.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let err = |reason| ProxyError::TagInvalid { reason };
        match b.first() {
            None => Err(err("the tag is empty")),
            Some(&f) if !word(f) => Err(err("a tag must start with a letter, digit or '_'")),
            _ if b.len() > TAG_MAX_LEN => Err(err("a tag is at most 128 characters long")),
            _ if !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') => {
                Err(err("a tag may only hold letters, digits, '_', '.' and '-'"))
            }
            _ => Ok(Self::Tag(s.to_owned())),
        }
    }
}

impl fmt::Display for TagOrDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => f.write_str(t),
            Self::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A parsed `/v2/...` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Path {
    /// `/v2/` (or `/v2`).
    Base,
    Manifest {
        name: RepoName,
        reference: TagOrDigest,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
}

/// Parses the raw (not percent-decoded) path of a request. The last segment is the reference;
/// the segment before it must be `manifests` or `blobs`; everything before is the name, so names
/// holding `manifests` or `blobs` components (`a/blobs/b/manifests/x`) parse correctly.
pub fn parse_v2_path(path: &str) -> Result<V2Path, ProxyError> {
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(V2Path::Base),
        Some(rest) => rest.strip_prefix('/').ok_or(ProxyError::RouteUnknown)?,
        None => return Err(ProxyError::RouteUnknown),
    };
    let (prefix, reference) = rest.rsplit_once('/').ok_or(ProxyError::RouteUnknown)?;
    if let Some(name) = prefix.strip_suffix("/manifests") {
        let name = RepoName::parse(name)?;
        let reference = TagOrDigest::parse(reference)?;
        Ok(V2Path::Manifest { name, reference })
    } else if let Some(name) = prefix.strip_suffix("/blobs") {
        let name = RepoName::parse(name)?;
        let digest = reference.parse()?;
        Ok(V2Path::Blob { name, digest })
    } else {
        Err(ProxyError::RouteUnknown)
    }
}

/// The `ns` query parameter (the upstream registry host containerd mirrors for), validated as
/// `host[:port]` or `[ipv6]:port`. `Ok(None)` when absent; the first `ns` wins.
pub fn parse_ns(query: Option<&str>) -> Result<Option<String>, ProxyError> {
    let Some(query) = query else { return Ok(None) };
    let Some(raw) = query.split('&').find_map(|kv| kv.strip_prefix("ns=")) else {
        return Ok(None);
    };
    let err = |reason| ProxyError::NameInvalid { reason };
    let host = percent_decode(raw).ok_or(err("the ns parameter is not valid percent-encoding"))?;
    if host.is_empty() || host.len() > HOST_MAX_LEN {
        return Err(err(
            "the ns parameter must be a registry host of 1 to 255 bytes",
        ));
    }
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok || host.starts_with(['.', '-', ':']) {
        return Err(err("the ns parameter must be a registry host name"));
    }
    Ok(Some(host))
}

/// Decodes `%XX` escapes (and `+` as space, which then fails host validation); `None` on a bad
/// escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            x => {
                out.push(x);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_paths() {
        assert_eq!(parse_v2_path("/v2/").unwrap(), V2Path::Base);
        assert_eq!(parse_v2_path("/v2").unwrap(), V2Path::Base);
        let m = parse_v2_path("/v2/library/nginx/manifests/1.25").unwrap();
        assert_eq!(
            m,
            V2Path::Manifest {
                name: RepoName::parse("library/nginx").unwrap(),
                reference: TagOrDigest::Tag("1.25".into()),
            }
        );
        let b = parse_v2_path(&format!("/v2/a/b/c/blobs/{D}")).unwrap();
        assert_eq!(
            b,
            V2Path::Blob {
                name: RepoName::parse("a/b/c").unwrap(),
                digest: D.parse().unwrap(),
            }
        );
        // Names holding the route words as components.
        let m = parse_v2_path("/v2/a/blobs/b/manifests/latest").unwrap();
        assert!(matches!(m, V2Path::Manifest { ref name, .. } if name.as_str() == "a/blobs/b"));
        let b = parse_v2_path(&format!("/v2/x/manifests/blobs/{D}")).unwrap();
        assert!(matches!(b, V2Path::Blob { ref name, .. } if name.as_str() == "x/manifests"));
        let m = parse_v2_path(&format!("/v2/r/manifests/{D}")).unwrap();
        assert!(matches!(
            m,
            V2Path::Manifest {
                reference: TagOrDigest::Digest(_),
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_paths() {
        let code = |p: &str| parse_v2_path(p).unwrap_err().code();
        assert_eq!(code("/v2/../etc/manifests/x"), "NAME_INVALID");
        assert_eq!(code("/v2/a/../b/manifests/x"), "NAME_INVALID");
        assert_eq!(code("/v2/a//b/manifests/x"), "NAME_INVALID");
        assert_eq!(code("/v2/A/manifests/x"), "NAME_INVALID");
        assert_eq!(code("/v2/a%2fb/manifests/x"), "NAME_INVALID");
        assert_eq!(code("/v2/manifests/x"), "NAME_UNKNOWN");
        assert_eq!(code("/v2/a/manifests/"), "TAG_INVALID");
        assert_eq!(code("/v2/a/manifests/-x"), "TAG_INVALID");
        assert_eq!(code("/v2/a/blobs/sha256:abc"), "DIGEST_INVALID");
        // Raw slashes make it another (unknown) route; escaped ones reach the digest parser.
        assert_eq!(code("/v2/a/blobs/sha256:../../x"), "NAME_UNKNOWN");
        assert_eq!(code("/v2/a/blobs/sha256:..%2F..%2Fx"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/blobs/md5:abc"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/manifests/sha256:..%2f"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/tags/list"), "NAME_UNKNOWN");
        assert_eq!(code("/v2/a"), "NAME_UNKNOWN");
        assert_eq!(code("/v3/a/manifests/x"), "NAME_UNKNOWN");
        assert_eq!(code("/v2x"), "NAME_UNKNOWN");
        let long = format!("/v2/{}/manifests/x", "a".repeat(256));
        assert_eq!(code(&long), "NAME_INVALID");
    }

    #[test]
    fn name_grammar() {
        for ok in ["a", "a0", "a.b", "a_b", "a__b", "a---b", "a/b/c", "0"] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "..", "a.", "-a", "a..b", "a___b", "a/", "/a", "a b", "é",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ns_parameter() {
        assert_eq!(parse_ns(None).unwrap(), None);
        assert_eq!(parse_ns(Some("x=1")).unwrap(), None);
        assert_eq!(
            parse_ns(Some("ns=docker.io")).unwrap().as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            parse_ns(Some("a=b&ns=localhost%3A5000&ns=x"))
                .unwrap()
                .as_deref(),
            Some("localhost:5000")
        );
        for bad in [
            "ns=", "ns=%zz", "ns=a/b", "ns=a%2Fb", "ns=a+b", "ns=%ff", "ns=.x",
        ] {
            assert!(parse_ns(Some(bad)).is_err(), "{bad}");
        }
    }
}
