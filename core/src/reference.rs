//! Image references, parsed by the Docker reference grammar (distribution/reference).
//!
//! ```text
//! reference := [domain "/"] path [":" tag] ["@" digest]
//! domain    := host [":" port]      host := domain-name | IPv4 | "[" IPv6 "]"
//! path      := component ("/" component)*   component := [a-z0-9]+ (separator [a-z0-9]+)*
//! separator := "." | "_" | "__" | "-"+      tag := [\w][\w.-]{0,127}
//! ```
//!
//! Invariants: a parsed [`Reference`] is normalised (`docker.io` for Docker Hub, `library/` for its
//! official images, tag `latest` when neither tag nor digest was given), and its `Display` is the
//! canonical form, which parses back to the same value.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Legacy alias of Docker Hub, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest `registry/repository` name distribution accepts.
pub const NAME_MAX_LEN: usize = 255;
const TAG_MAX_LEN: usize = 128;

/// A normalised image reference, e.g. `docker.io/library/nginx:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why an image reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty reference")]
    Empty,
    #[error("invalid reference {0:?}: a 64-character hex string is an image id, not a reference")]
    ImageId(String),
    #[error("invalid repository name {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("invalid repository name {name:?}: {reason}")]
    Repository { name: String, reason: &'static str },
    #[error("invalid registry host {host:?}: {reason}")]
    Registry { host: String, reason: &'static str },
    #[error("invalid tag {tag:?}: {reason}")]
    Tag { tag: String, reason: &'static str },
    #[error("invalid digest {digest:?}: {reason}")]
    Digest { digest: String, reason: DigestError },
    #[error(
        "repository name {name:?} is {len} characters long, more than the limit of {NAME_MAX_LEN}"
    )]
    TooLong { name: String, len: usize },
}

impl ReferenceError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::ImageId(_) => "image_id",
            Self::Uppercase(_) => "uppercase",
            Self::Repository { .. } => "repository",
            Self::Registry { .. } => "registry",
            Self::Tag { .. } => "tag",
            Self::Digest { .. } => "digest",
            Self::TooLong { .. } => "too_long",
        }
    }
}

impl Reference {
    /// Registry host, with port when one was given: `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path inside the registry: `library/nginx`, `a/b/c`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same reference pinned to `digest` (a tag, if any, is kept).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The host to send registry API requests to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest when there is one, else the tag.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // Parsing sets the default tag when there is no digest; kept total for safety.
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::ImageId(s.to_owned()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|reason| ReferenceError::Digest {
                        digest: d.to_owned(),
                        reason,
                    })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        let (registry, remainder) = split_domain(rest);
        // A tag follows the last ':' of the path part (the domain may hold a ':' for its port).
        let (path, tag) = match remainder.rsplit_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (remainder, None),
        };
        let registry = match registry {
            Some(host) => {
                check_domain(host)?;
                if host == DOCKER_HUB_LEGACY {
                    DOCKER_HUB
                } else {
                    host
                }
            }
            None => DOCKER_HUB,
        };
        check_path(path)?;
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let name_len = registry.len() + 1 + repository.len();
        if name_len > NAME_MAX_LEN {
            return Err(ReferenceError::TooLong {
                name: format!("{registry}/{repository}"),
                len: name_len,
            });
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits off the registry: the first component is one iff it contains '.' or ':', is
/// `localhost`, or has an uppercase letter (a repository never does) — distribution's rule.
fn split_domain(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, s),
    }
}

fn check_domain(host: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::Registry {
        host: host.to_owned(),
        reason,
    };
    let (name, port) = if let Some(inner) = host.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or(err("an IPv6 address needs a closing ']'"))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| err("not a valid IPv6 address between '[' and ']'"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(err("only ':port' may follow an IPv6 address"))?,
            ),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        if name.is_empty() {
            return Err(err("the host name is empty"));
        }
        for label in name.split('.') {
            check_domain_label(label).map_err(err)?;
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the port must be a number"));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err("the port must be between 1 and 65535"));
        }
    }
    Ok(())
}

fn check_domain_label(label: &str) -> Result<(), &'static str> {
    let b = label.as_bytes();
    if b.is_empty() {
        return Err(
            "a host name has an empty label (two dots in a row, or a leading or trailing dot)",
        );
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return Err("a host name may only hold letters, digits, '-' and '.'");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("a host name label may not start or end with '-'");
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::Repository {
        name: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(err("the repository name is empty"));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(path.to_owned()));
    }
    for component in path.split('/') {
        check_path_component(component).map_err(err)?;
    }
    Ok(())
}

/// Checks one `/`-separated repository path component against the distribution grammar
/// `[a-z0-9]+ (('.' | '_' | '__' | '-'+) [a-z0-9]+)*`; the error names what is wrong.
pub fn check_path_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("a path component is empty (leading, trailing or double '/')");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !b
        .iter()
        .all(|&x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
    {
        return Err("only lowercase letters, digits, '.', '_', '-' and '/' are allowed");
    }
    if !alnum(b[0]) {
        return Err("a path component must start with a lowercase letter or digit");
    }
    if !alnum(b[b.len() - 1]) {
        return Err("a path component must end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return Err("separators between letters must be one '.', one or two '_', or dashes");
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::Tag {
        tag: tag.to_owned(),
        reason,
    };
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    match b.first() {
        None => Err(err("the tag is empty")),
        Some(&first) if !word(first) => Err(err("a tag must start with a letter, digit or '_'")),
        _ if b.len() > TAG_MAX_LEN => Err(err("a tag may be at most 128 characters long")),
        _ if !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') => {
            Err(err("a tag may only hold letters, digits, '_', '.' and '-'"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Result<Reference, ReferenceError> {
        s.parse()
    }

    #[test]
    fn normalises_good_references() {
        let d = format!("sha256:{HEX}");
        let cases: Vec<(String, String)> = vec![
            ("nginx".into(), "docker.io/library/nginx:latest".into()),
            ("nginx:1.25".into(), "docker.io/library/nginx:1.25".into()),
            ("user/app".into(), "docker.io/user/app:latest".into()),
            (
                "docker.io/nginx".into(),
                "docker.io/library/nginx:latest".into(),
            ),
            (
                "index.docker.io/nginx:1".into(),
                "docker.io/library/nginx:1".into(),
            ),
            (
                "index.docker.io/u/app".into(),
                "docker.io/u/app:latest".into(),
            ),
            ("localhost/a".into(), "localhost/a:latest".into()),
            ("localhost:5000/a".into(), "localhost:5000/a:latest".into()),
            (
                "localhost:5000".into(),
                "docker.io/library/localhost:5000".into(),
            ),
            (
                "127.0.0.1:5000/a/b:v1".into(),
                "127.0.0.1:5000/a/b:v1".into(),
            ),
            ("[::1]:5000/a:t".into(), "[::1]:5000/a:t".into()),
            ("[fe80::1]/a".into(), "[fe80::1]/a:latest".into()),
            ("ghcr.io/a/b/c:tag".into(), "ghcr.io/a/b/c:tag".into()),
            (
                "host.io/a.b_c__d---e".into(),
                "host.io/a.b_c__d---e:latest".into(),
            ),
            ("a.b/c".into(), "a.b/c:latest".into()),
            ("a_b.c".into(), "docker.io/library/a_b.c:latest".into()),
            ("Registry/app".into(), "Registry/app:latest".into()),
            (
                "my-reg.example.com:443/x".into(),
                "my-reg.example.com:443/x:latest".into(),
            ),
            (format!("nginx@{d}"), format!("docker.io/library/nginx@{d}")),
            (format!("h:5000/a:v1@{d}"), format!("h:5000/a:v1@{d}")),
            ("a:_tag.-X".into(), "docker.io/library/a:_tag.-X".into()),
        ];
        for (input, want) in cases {
            let r = parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "{input}");
            assert_eq!(parse(&want), Ok(r), "{want}");
        }
    }

    #[test]
    fn accessors() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        let r = parse("nginx").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/nginx");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.tag_or_digest(), "latest");
        assert_eq!(r.name(), "docker.io/library/nginx");
        let pinned = r.with_digest(d);
        assert_eq!(pinned.tag(), Some("latest"));
        assert_eq!(pinned.digest(), Some(&d));
        assert_eq!(pinned.tag_or_digest(), d.to_string());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/nginx:latest@{d}")
        );

        let r = parse(&format!("localhost:5000/a/b@{d}")).unwrap();
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.tag(), None);
        assert_eq!(r.tag_or_digest(), d.to_string());
    }

    #[test]
    fn rejects_bad_references() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = format!("h.io/{}", "a".repeat(251));
        let cases: Vec<(&str, &str, &str)> = vec![
            ("", "empty", "empty reference"),
            (HEX, "image_id", "image id"),
            ("Nginx", "uppercase", "must be lowercase"),
            ("docker.io/User/app", "uppercase", "must be lowercase"),
            ("a:", "tag", "invalid tag \"\": the tag is empty"),
            ("a:..", "tag", "invalid tag \"..\": a tag must start"),
            ("a:t/x", "registry", "port must be a number"),
            (&long_tag, "tag", "at most 128"),
            ("a:b$", "tag", "may only hold"),
            ("a@sha256:abc", "digest", "invalid digest \"sha256:abc\""),
            ("a@md5:abc", "digest", "must start with \"sha256:\""),
            ("-a", "repository", "must start with a lowercase"),
            ("a-", "repository", "must end with a lowercase"),
            ("a._b", "repository", "separators"),
            ("a___b", "repository", "separators"),
            ("a..b", "repository", "separators"),
            ("a//b", "repository", "component is empty"),
            ("h.io/a/", "repository", "component is empty"),
            ("h.io/", "repository", "repository name is empty"),
            ("a b", "repository", "only lowercase letters"),
            ("h_x.io/a", "registry", "may only hold letters"),
            ("-h.io/a", "registry", "start or end with '-'"),
            ("h..io/a", "registry", "empty label"),
            ("h.io:/a", "registry", "port must be a number"),
            ("h.io:x1/a", "registry", "port must be a number"),
            ("h.io:70000/a", "registry", "between 1 and 65535"),
            (":5000/a", "registry", "host name is empty"),
            ("[::1/a", "registry", "closing ']'"),
            ("[zz::1]/a", "registry", "not a valid IPv6"),
            ("[::1]x/a", "registry", "only ':port'"),
            (&long_name, "too_long", "is 256 characters long"),
        ];
        for (input, kind, text) in cases {
            let e = parse(input).expect_err(input);
            assert_eq!(e.kind(), kind, "{input}: wrong variant {e:?}");
            assert!(e.to_string().contains(text), "{input}: {e} lacks {text:?}");
        }
        // Exactly at the limit is fine.
        let at_limit = format!("h.io/{}", "a".repeat(250));
        assert!(parse(&at_limit).is_ok());
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let r = parse("nginx:1").unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"docker.io/library/nginx:1\"");
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Reference>("\"UPPER\"").is_err());
    }

    fn domain_label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?"
    }

    /// Registries that are recognised as such: dotted names, IPs, localhost, or anything with a port.
    fn registry() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            prop::collection::vec(domain_label(), 2..4).prop_map(|v| v.join(".")),
            Just("localhost".to_owned()),
            Just("docker.io".to_owned()),
            Just("index.docker.io".to_owned()),
            (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=255)
                .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        ];
        let port = prop::option::of(1u16..);
        (host, port, domain_label()).prop_map(|(h, p, single)| match p {
            Some(p) => format!("{h}:{p}"),
            // A single lowercase label is only a registry with a port; keep those too.
            None if h == "localhost" || h.contains(['.', ':', '[']) => h,
            None => format!("{}:5000", single.to_lowercase()),
        })
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,4}(([._]|__|-{1,3})[a-z0-9]{1,4}){0,2}"
    }

    fn tag() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(
            reg in prop::option::of(registry()),
            mut path in prop::collection::vec(component(), 1..5),
            tag in prop::option::of(tag()),
            digest in prop::option::of(any::<[u8; 32]>().prop_map(Digest::from_bytes)),
        ) {
            if reg.is_none() && path.len() > 1 {
                // Without a registry, a dotted first component would be taken as one.
                path[0] = path[0].replace('.', "-");
            }
            let path = path.join("/");
            let mut input = match &reg {
                Some(r) => format!("{r}/{path}"),
                None => path.clone(),
            };
            if let Some(t) = &tag {
                input.push(':');
                input.push_str(t);
            }
            if let Some(d) = &digest {
                input.push('@');
                input.push_str(&d.to_string());
            }
            let r = parse(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;

            let want_reg = match reg.as_deref() {
                None | Some("index.docker.io") => "docker.io",
                Some(other) => other,
            };
            prop_assert_eq!(r.registry(), want_reg);
            if want_reg == "docker.io" && !path.contains('/') {
                prop_assert_eq!(r.repository(), format!("library/{path}"));
            } else {
                prop_assert_eq!(r.repository(), path.as_str());
            }
            let want_tag = match (&tag, &digest) {
                (None, None) => Some("latest"),
                (t, _) => t.as_deref(),
            };
            prop_assert_eq!(r.tag(), want_tag);
            prop_assert_eq!(r.digest(), digest.as_ref());

            let shown = r.to_string();
            let again = parse(&shown).map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
            prop_assert_eq!(&again, &r);
            prop_assert_eq!(again.to_string(), shown);
        }

        #[test]
        fn never_panics_on_arbitrary_input(s in "\\PC{0,80}") {
            if let Ok(r) = parse(&s) {
                prop_assert_eq!(parse(&r.to_string()), Ok(r));
            }
        }
    }
}
