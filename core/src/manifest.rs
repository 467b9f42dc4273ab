//! Image manifests and indexes: Docker v2 schema 2 and OCI, and platform selection from an index.
//!
//! Invariants: a document is at most [`MAX_MANIFEST_SIZE`] bytes; every descriptor carries a valid
//! sha256 digest; Docker schema 1 is refused. The raw bytes stay the caller's (manifests are stored
//! byte-exact); these types are a parsed view of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 manifests, refused.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Image configs.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Layers.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Manifest types this crate parses, most preferred first (for an HTTP `Accept` header).
pub const ACCEPTED_MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];
/// Largest manifest document accepted (distribution's own limit).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// An os/architecture/variant triple, e.g. `linux/arm64/v8`. Other platform fields of a
/// descriptor (`os.version`, `os.features`, `features`) are accepted and ignored: they only
/// matter for Windows images.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Why a `--platform` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch or os/arch/variant, like linux/amd64 or linux/arm64/v8")]
pub struct PlatformError(pub String);

impl Platform {
    /// `linux/<architecture of this binary>`, with Go's architecture names as registries use them.
    pub fn host() -> Platform {
        let (arch, variant) = go_arch(std::env::consts::ARCH);
        Platform {
            os: "linux".to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// True when an index entry for `self` can serve a request for `want`: same os and
    /// architecture, and the same variant if `want` names one (arm64 without a variant is v8).
    pub fn satisfies(&self, want: &Platform) -> bool {
        if self.os != want.os || self.architecture != want.architecture {
            return false;
        }
        match want.normalized_variant() {
            None => true,
            Some(v) => self.normalized_variant() == Some(v),
        }
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None | Some("8")) => Some("v8"),
            (_, Some("")) => None,
            (_, v) => v,
        }
    }
}

/// Maps Rust's `std::env::consts::ARCH` to the GOARCH name (and variant) images use.
fn go_arch(rust_arch: &str) -> (&str, Option<&str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips" if cfg!(target_endian = "little") => ("mipsle", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]`; common aliases (`x86_64`, `aarch64`) become Go names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PlatformError(s.to_owned());
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(err());
        }
        let (arch, mut variant) = match parts[1] {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "i386" | "i686" => ("386", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            a => (a, None),
        };
        if let Some(v) = parts.get(2) {
            variant = Some(v);
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// A content descriptor: what a manifest says about a blob or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// A single-platform image: one config blob and its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// The config, then the layers in order: every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> + '_ {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Sum of the sizes of [`Self::blobs`] (saturating).
    pub fn total_size(&self) -> u64 {
        self.blobs().fold(0u64, |acc, d| acc.saturating_add(d.size))
    }
}

/// A multi-platform index (OCI index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => &m.media_type,
            Manifest::Index(i) => &i.media_type,
        }
    }
}

/// Why a manifest document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, more than the limit of {MAX_MANIFEST_SIZE} bytes")]
    TooLarge { size: usize },
    #[error("docker schema 1 manifests are not supported (deprecated since 2017); push the image again with a current docker, buildah or skopeo")]
    Schema1,
    #[error("unsupported manifest schemaVersion {0}, expected 2")]
    SchemaVersion(u64),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("document is neither an image manifest (config and layers) nor an index (manifests)")]
    Unrecognized,
    #[error("malformed manifest json: {0}")]
    Json(serde_json::Error),
}

impl ManifestError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Schema1 => "schema1",
            Self::SchemaVersion(_) => "schema_version",
            Self::MediaType(_) => "media_type",
            Self::Unrecognized => "unrecognized",
            Self::Json(_) => "json",
        }
    }
}

/// The fields needed to decide what a document is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
    manifests: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ImageJson {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct IndexJson {
    manifests: Vec<Descriptor>,
}

#[derive(Clone, Copy)]
enum Kind {
    Image,
    Index,
}

fn kind_of(media_type: &str) -> Result<Option<Kind>, ManifestError> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Some(Kind::Image)),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Some(Kind::Index)),
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(ManifestError::Schema1),
        _ => Ok(None),
    }
}

/// Parses a manifest or index. The kind comes from the document's `mediaType`, else from the
/// HTTP `content_type`, else from its shape (`manifests` → index, `config` + `layers` → image).
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge { size: bytes.len() });
    }
    let head: Head = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    match head.schema_version {
        Some(1) => return Err(ManifestError::Schema1),
        Some(2) | None => {}
        Some(v) => return Err(ManifestError::SchemaVersion(v)),
    }
    let content_type = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty());
    let (kind, media_type) = if let Some(mt) = head.media_type.filter(|m| !m.is_empty()) {
        let kind = kind_of(&mt)?.ok_or_else(|| ManifestError::MediaType(mt.clone()))?;
        (kind, mt)
    } else if let Some(kind) = content_type.as_deref().map(kind_of).transpose()?.flatten() {
        // kind_of only recognises known types, so the content type is one of them here.
        (kind, content_type.unwrap_or_default())
    } else if head.manifests.is_some() {
        (Kind::Index, OCI_INDEX.to_owned())
    } else if head.config.is_some() && head.layers.is_some() {
        (Kind::Image, OCI_MANIFEST.to_owned())
    } else {
        return Err(ManifestError::Unrecognized);
    };
    Ok(match kind {
        Kind::Image => {
            let m: ImageJson = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
            Manifest::Image(ImageManifest {
                media_type,
                config: m.config,
                layers: m.layers,
            })
        }
        Kind::Index => {
            let i: IndexJson = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
            Manifest::Index(ImageIndex {
                media_type,
                manifests: i.manifests,
            })
        }
    })
}

/// The first entry of `idx` whose platform satisfies `want` (see [`Platform::satisfies`]). When
/// `want` has no variant, an entry without one (or arm64 v8) is preferred over other variants.
pub fn select_platform<'a>(idx: &'a ImageIndex, want: &Platform) -> Option<&'a Descriptor> {
    let mut candidates = idx
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(want)));
    let first = candidates.next()?;
    if want.variant.is_some() {
        return Some(first);
    }
    let plain = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.normalized_variant()
                .is_none_or(|v| v == "v8" && p.architecture == "arm64")
        })
    };
    Some(
        std::iter::once(first)
            .chain(candidates)
            .find(plain)
            .unwrap_or(first),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn docker_manifest() -> String {
        format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {{
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 1469,
      "digest": "{A}"
   }},
   "layers": [
      {{
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 3623807,
         "digest": "{B}"
      }},
      {{
         "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "size": 100,
         "digest": "{C}",
         "urls": ["https://example.com/layer"]
      }}
   ]
}}"#
        )
    }

    fn oci_index(with_media_type: bool) -> String {
        let mt = if with_media_type {
            r#""mediaType": "application/vnd.oci.image.index.v1+json","#
        } else {
            ""
        };
        format!(
            r#"{{
  "schemaVersion": 2, {mt}
  "manifests": [
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{A}", "size": 1000,
      "platform": {{"architecture": "amd64", "os": "linux"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{B}", "size": 1001,
      "platform": {{"architecture": "arm", "os": "linux", "variant": "v7"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{C}", "size": 1002,
      "platform": {{"architecture": "arm64", "os": "linux"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{A}", "size": 566,
      "annotations": {{"vnd.docker.reference.type": "attestation-manifest"}},
      "platform": {{"architecture": "unknown", "os": "unknown"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{B}", "size": 1003,
      "platform": {{"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1935",
                    "os.features": ["win32k"]}}}}
  ],
  "annotations": {{"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}
}}"#
        )
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn image(m: Manifest) -> ImageManifest {
        match m {
            Manifest::Image(i) => i,
            Manifest::Index(_) => panic!("expected an image manifest"),
        }
    }

    fn index(m: Manifest) -> ImageIndex {
        match m {
            Manifest::Index(i) => i,
            Manifest::Image(_) => panic!("expected an index"),
        }
    }

    #[test]
    fn parses_docker_schema2() {
        let m = image(parse_manifest(docker_manifest().as_bytes(), None).unwrap());
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.config.media_type, DOCKER_CONFIG);
        assert_eq!(m.config.size, 1469);
        assert_eq!(m.config.digest, A.parse().unwrap());
        assert_eq!(m.layers.len(), 2);
        assert_eq!(
            m.layers[1].urls,
            vec!["https://example.com/layer".to_owned()]
        );
        let blobs: Vec<String> = m.blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(blobs, vec![A, B, C]);
        assert_eq!(m.total_size(), 1469 + 3623807 + 100);
    }

    #[test]
    fn parses_oci_index_and_ignores_extra_platform_fields() {
        let i = index(parse_manifest(oci_index(true).as_bytes(), None).unwrap());
        assert_eq!(i.media_type, OCI_INDEX);
        assert_eq!(i.manifests.len(), 5);
        assert_eq!(i.manifests[1].platform, Some(p("linux/arm/v7")));
        assert_eq!(i.manifests[4].platform, Some(p("windows/amd64")));
    }

    #[test]
    fn kind_without_media_type_comes_from_content_type_then_shape() {
        let doc = oci_index(false);
        // The content type decides, parameters and case aside.
        let i = index(
            parse_manifest(
                doc.as_bytes(),
                Some("Application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
            )
            .unwrap(),
        );
        assert_eq!(i.media_type, DOCKER_MANIFEST_LIST);
        // No useful content type: the shape decides.
        let i = index(parse_manifest(doc.as_bytes(), Some("application/json")).unwrap());
        assert_eq!(i.media_type, OCI_INDEX);
        let oci_image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{A}","size":2}},
               "layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{B}","size":3}}]}}"#
        );
        let m = image(parse_manifest(oci_image.as_bytes(), None).unwrap());
        assert_eq!(m.media_type, OCI_MANIFEST);
        let m = image(parse_manifest(oci_image.as_bytes(), Some(DOCKER_MANIFEST)).unwrap());
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        // The document's own mediaType wins over the content type.
        let m = image(parse_manifest(docker_manifest().as_bytes(), Some(OCI_MANIFEST)).unwrap());
        assert_eq!(m.media_type, DOCKER_MANIFEST);
    }

    #[test]
    fn rejects_schema1() {
        let v1 = r#"{"schemaVersion": 1, "name": "library/hello", "tag": "latest",
            "architecture": "amd64", "fsLayers": [{"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
            "history": [{"v1Compatibility": "{}"}], "signatures": []}"#;
        let e = parse_manifest(v1.as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1), "{e:?}");
        assert!(e.to_string().contains("schema 1"), "{e}");
        let no_version = r#"{"name": "x", "fsLayers": []}"#;
        let e = parse_manifest(no_version.as_bytes(), Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1), "{e:?}");
    }

    #[test]
    fn rejects_bad_documents() {
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        let e = parse_manifest(&big, None).unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { size } if size == MAX_MANIFEST_SIZE + 1));

        let e = parse_manifest(b"<html>nope</html>", Some("text/html")).unwrap_err();
        assert_eq!(e.kind(), "json");
        assert!(
            e.to_string().starts_with("malformed manifest json: "),
            "{e}"
        );

        let e = parse_manifest(br#"{"schemaVersion": 3}"#, None).unwrap_err();
        assert!(matches!(e, ManifestError::SchemaVersion(3)), "{e:?}");

        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json","blobs":[]}"#;
        let e = parse_manifest(artifact, None).unwrap_err();
        assert!(e.to_string().contains("vnd.oci.artifact"), "{e}");

        let e = parse_manifest(br#"{"schemaVersion":2}"#, None).unwrap_err();
        assert!(matches!(e, ManifestError::Unrecognized), "{e:?}");

        // Declared an image but has no config.
        let no_config =
            format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[]}}"#);
        let e = parse_manifest(no_config.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("missing field `config`"), "{e}");

        // A descriptor with a bad digest or a negative size.
        let bad_digest = docker_manifest().replace(A, "sha256:1234");
        assert_eq!(
            parse_manifest(bad_digest.as_bytes(), None)
                .unwrap_err()
                .kind(),
            "json"
        );
        let bad_size = docker_manifest().replace("1469", "-1");
        assert_eq!(
            parse_manifest(bad_size.as_bytes(), None)
                .unwrap_err()
                .kind(),
            "json"
        );
    }

    #[test]
    fn platform_strings() {
        assert_eq!(
            p("linux/arm64/v8"),
            Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into())
            }
        );
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("Linux/AMD64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/arm/v7/x",
            "linux/am d64",
        ] {
            let e = bad.parse::<Platform>().unwrap_err();
            assert!(e.to_string().contains("expected os/arch"), "{e}");
        }
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_eq!(host.to_string().parse::<Platform>().unwrap(), host);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn selects_platforms() {
        let i = index(parse_manifest(oci_index(true).as_bytes(), None).unwrap());
        let pick = |s: &str| select_platform(&i, &p(s)).map(|d| d.size);
        assert_eq!(pick("linux/amd64"), Some(1000));
        assert_eq!(pick("linux/arm/v7"), Some(1001));
        assert_eq!(pick("linux/arm"), Some(1001));
        assert_eq!(pick("linux/arm/v6"), None);
        // arm64 without a variant is v8, both ways.
        assert_eq!(pick("linux/arm64"), Some(1002));
        assert_eq!(pick("linux/arm64/v8"), Some(1002));
        assert_eq!(pick("linux/arm64/8"), Some(1002));
        assert_eq!(pick("linux/arm64/v9"), None);
        assert_eq!(pick("windows/amd64"), Some(1003));
        assert_eq!(pick("linux/s390x"), None);
        // The wanted platform's os and architecture must match exactly.
        assert_eq!(pick("darwin/amd64"), None);
    }

    #[test]
    fn select_prefers_the_plain_variant_when_none_is_wanted() {
        let entry = |arch: &str, variant: Option<&str>, size: u64| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: A.parse().unwrap(),
            size,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            urls: vec![],
        };
        let i = ImageIndex {
            media_type: OCI_INDEX.into(),
            manifests: vec![
                entry("amd64", Some("v3"), 1),
                entry("amd64", None, 2),
                entry("arm64", Some("v9"), 3),
                entry("arm64", Some("v8"), 4),
                entry("arm", Some("v6"), 5),
                entry("arm", Some("v7"), 6),
            ],
        };
        let pick = |s: &str| select_platform(&i, &p(s)).map(|d| d.size);
        assert_eq!(pick("linux/amd64"), Some(2));
        assert_eq!(pick("linux/amd64/v3"), Some(1));
        assert_eq!(pick("linux/arm64"), Some(4));
        assert_eq!(pick("linux/arm64/v9"), Some(3));
        assert_eq!(pick("linux/arm"), Some(5));
    }

    #[test]
    fn descriptor_serde_uses_registry_field_names() {
        let d = Descriptor {
            media_type: OCI_LAYER.into(),
            digest: A.parse().unwrap(),
            size: 7,
            platform: Some(p("linux/arm64/v8")),
            urls: vec![],
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"mediaType":"{OCI_LAYER}","digest":"{A}","size":7,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}"#
            )
        );
        assert_eq!(serde_json::from_str::<Descriptor>(&json).unwrap(), d);
    }
}
