//! Test images: N layers of exact sizes, each a valid uncompressed tar holding one random file,
//! a config whose `rootfs.diff_ids` match the layers, an OCI or Docker v2 manifest, and optionally an
//! OCI index / Docker manifest list over several platforms. Layers are generated in 1 MiB steps and
//! pushed in 8 MiB PATCHes, so a 256 MiB layer never sits whole in memory.
//! Same seed, sizes, format and platform => byte-identical image (same digests).

use anyhow::{bail, Result};
use bytes::Bytes;
use preheat_core::Digest;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;

use crate::push::{push_blob, push_blob_chunks, push_manifest, UPLOAD_CHUNK};
use crate::registry::Registry;

/// Media types used by the builder.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// Smallest layer: a tar header plus the two zero end blocks (the file inside is then empty).
pub const MIN_LAYER_SIZE: u64 = 1536;

/// OCI (default) or Docker schema 2 media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    #[default]
    Oci,
    Docker,
}

impl ManifestFormat {
    fn manifest(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_MANIFEST,
            Self::Docker => media::DOCKER_MANIFEST,
        }
    }
    fn index(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_INDEX,
            Self::Docker => media::DOCKER_LIST,
        }
    }
    fn config(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_CONFIG,
            Self::Docker => media::DOCKER_CONFIG,
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_LAYER_TAR,
            Self::Docker => media::DOCKER_LAYER_TAR,
        }
    }
}

/// `(os, architecture, variant)`, e.g. `("linux", "arm64", Some("v8"))`.
pub type PlatformSpec<'a> = (&'a str, &'a str, Option<&'a str>);

/// What [`ImageBuilder::push`] stored in the registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `127.0.0.1:PORT/repo:tag`, or `127.0.0.1:PORT/repo@sha256:..` for an index member.
    pub reference: String,
    /// Repository name, e.g. `test/app`.
    pub repository: String,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// Byte-exact manifest as pushed.
    pub manifest_bytes: Bytes,
    pub config_digest: Digest,
    pub config_bytes: Bytes,
    /// `(digest, size)` of each layer, in manifest order.
    pub layers: Vec<(Digest, u64)>,
    /// Config plus layer sizes (what a pull writes as blobs; manifests not included).
    pub total_size: u64,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl PushedImage {
    /// The same reference on another host, e.g. a [`crate::CountingProxy`]'s `host()`.
    pub fn reference_via(&self, host: &str) -> String {
        match self.reference.split_once('/') {
            Some((_, rest)) => format!("{host}/{rest}"),
            None => self.reference.clone(),
        }
    }

    /// `127.0.0.1:PORT/repo@<manifest digest>`.
    pub fn digest_reference(&self) -> String {
        let host = self.reference.split('/').next().unwrap_or_default();
        format!("{host}/{}@{}", self.repository, self.manifest_digest)
    }

    /// Config first, then layers: the blobs a pull fetches.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        let mut v = vec![(self.config_digest, self.config_bytes.len() as u64)];
        v.extend(self.layers.iter().copied());
        v
    }
}

/// What [`ImageBuilder::push_index`] stored in the registry.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    /// `127.0.0.1:PORT/repo:tag` (the tag points at the index).
    pub reference: String,
    pub index_digest: Digest,
    pub index_media_type: String,
    pub index_bytes: Bytes,
    /// `("linux/arm64/v8", image)` in the order given.
    pub per_platform: Vec<(String, PushedImage)>,
}

impl PushedIndex {
    /// The member image for `os/arch[/variant]`.
    pub fn platform(&self, platform: &str) -> Option<&PushedImage> {
        self.per_platform
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, img)| img)
    }
}

/// Builds and pushes test images. Defaults: no layers (add some), random seed, OCI, linux/amd64.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<u64>,
    seed: u64,
    format: ManifestFormat,
    platform: (String, String, Option<String>),
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            seed: rand::random(),
            format: ManifestFormat::Oci,
            platform: ("linux".into(), "amd64".into(), None),
        }
    }

    /// Adds a layer whose blob is exactly `size` bytes (at least [`MIN_LAYER_SIZE`]).
    pub fn layer(mut self, size: u64) -> Self {
        self.layers.push(size);
        self
    }

    /// Adds layers of these exact blob sizes.
    pub fn layers(mut self, sizes: &[u64]) -> Self {
        self.layers.extend_from_slice(sizes);
        self
    }

    /// Deterministic content: same seed => same digests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn format(mut self, format: ManifestFormat) -> Self {
        self.format = format;
        self
    }

    /// Platform written into the config of a single-platform image.
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.platform = (os.into(), arch.into(), variant.map(Into::into));
        self
    }

    /// Pushes layers, config and manifest; `repo_tag` is `repo:tag` (tag defaults to `latest`).
    pub async fn push(&self, reg: &Registry, repo_tag: &str) -> Result<PushedImage> {
        let (repo, tag) = split_repo_tag(repo_tag)?;
        let (os, arch, variant) = &self.platform;
        let mut img = self
            .push_one(
                reg,
                repo,
                Some(tag),
                (os, arch, variant.as_deref()),
                self.seed,
            )
            .await?;
        img.reference = format!("{}/{repo}:{tag}", reg.host());
        Ok(img)
    }

    /// Pushes one image per platform (same layer sizes, different content), each by digest, then an
    /// OCI index (or a Docker manifest list with [`ManifestFormat::Docker`]) tagged `repo:tag`.
    pub async fn push_index(
        &self,
        reg: &Registry,
        repo_tag: &str,
        platforms: &[PlatformSpec<'_>],
    ) -> Result<PushedIndex> {
        let (repo, tag) = split_repo_tag(repo_tag)?;
        let mut per_platform = Vec::with_capacity(platforms.len());
        let mut descriptors = Vec::with_capacity(platforms.len());
        for (i, &platform) in platforms.iter().enumerate() {
            let seed = mix(self.seed, 0x1000 + i as u64);
            let img = self.push_one(reg, repo, None, platform, seed).await?;
            let (os, arch, variant) = platform;
            let mut p = json!({ "os": os, "architecture": arch });
            if let Some(v) = variant {
                p["variant"] = json!(v);
            }
            descriptors.push(json!({
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest.to_string(),
                "size": img.manifest_bytes.len(),
                "platform": p,
            }));
            per_platform.push((img.platform.clone(), img));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.format.index(),
            "manifests": descriptors,
        });
        let bytes = Bytes::from(serde_json::to_vec_pretty(&index)?);
        let index_digest = push_manifest(reg, repo, tag, self.format.index(), &bytes).await?;
        Ok(PushedIndex {
            reference: format!("{}/{repo}:{tag}", reg.host()),
            index_digest,
            index_media_type: self.format.index().to_owned(),
            index_bytes: bytes,
            per_platform,
        })
    }

    async fn push_one(
        &self,
        reg: &Registry,
        repo: &str,
        tag: Option<&str>,
        (os, arch, variant): PlatformSpec<'_>,
        seed: u64,
    ) -> Result<PushedImage> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, &size) in self.layers.iter().enumerate() {
            let gen = LayerGen::new(size, mix(seed, i as u64), i)?;
            let (digest, pushed) = push_blob_chunks(reg, repo, gen).await?;
            debug_assert_eq!(pushed, size);
            layers.push((digest, size));
        }
        let diff_ids: Vec<String> = layers.iter().map(|(d, _)| d.to_string()).collect();
        let history: Vec<_> = (0..layers.len())
            .map(|i| json!({ "created": "2026-01-01T00:00:00Z", "created_by": format!("testkit layer {i}") }))
            .collect();
        let mut config = json!({
            "architecture": arch,
            "os": os,
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": { "org.preheat.testkit.seed": seed.to_string() },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config_bytes = Bytes::from(serde_json::to_vec(&config)?);
        let config_digest = push_blob(reg, repo, &config_bytes).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest(),
            "config": {
                "mediaType": self.format.config(),
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|(d, s)| json!({
                "mediaType": self.format.layer(),
                "digest": d.to_string(),
                "size": s,
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
        let manifest_digest = Digest::of(&manifest_bytes);
        let reference = tag.map_or_else(|| manifest_digest.to_string(), str::to_owned);
        push_manifest(
            reg,
            repo,
            &reference,
            self.format.manifest(),
            &manifest_bytes,
        )
        .await?;
        let platform = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        Ok(PushedImage {
            reference: format!("{}/{repo}@{manifest_digest}", reg.host()),
            repository: repo.to_owned(),
            manifest_digest,
            manifest_media_type: self.format.manifest().to_owned(),
            manifest_bytes,
            config_digest,
            total_size: config_bytes.len() as u64 + layers.iter().map(|(_, s)| s).sum::<u64>(),
            config_bytes,
            layers,
            platform,
        })
    }
}

fn split_repo_tag(repo_tag: &str) -> Result<(&str, &str)> {
    let (repo, tag) = match repo_tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (repo_tag, "latest"),
    };
    if repo.is_empty() || tag.is_empty() || repo.contains('@') {
        bail!("expected repo:tag, got {repo_tag:?}");
    }
    Ok((repo, tag))
}

/// SplitMix64 step: derives independent seeds for layers and platforms.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Generates one layer blob in pieces: tar header, `content` random bytes, zeros to `size`.
/// `content` is a multiple of 512 and at least 1024 zero bytes end the archive.
pub struct LayerGen {
    rng: StdRng,
    header: Option<[u8; 512]>,
    content: u64,
    pos: u64,
    size: u64,
}

impl LayerGen {
    /// `size` is the exact blob size; `index` names the file inside (`testkit/layer-<index>-<seed>.bin`).
    pub fn new(size: u64, seed: u64, index: usize) -> Result<Self> {
        if size < MIN_LAYER_SIZE {
            bail!("layer size {size} below the minimum of {MIN_LAYER_SIZE} bytes");
        }
        let content = (size - MIN_LAYER_SIZE) / 512 * 512;
        let name = format!("testkit/layer-{index}-{seed:016x}.bin");
        Ok(LayerGen {
            rng: StdRng::seed_from_u64(seed),
            header: Some(tar_header(&name, content)),
            content,
            pos: 0,
            size,
        })
    }

    /// The whole blob in memory (for small layers and tests).
    pub fn into_vec(self) -> Vec<u8> {
        self.flatten().collect()
    }
}

impl Iterator for LayerGen {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.pos >= self.size {
            return None;
        }
        let len = usize::try_from(self.size - self.pos)
            .unwrap_or(usize::MAX)
            .min(UPLOAD_CHUNK);
        let mut buf = vec![0u8; len];
        let mut at = 0usize;
        if let Some(header) = self.header.take() {
            buf[..512].copy_from_slice(&header);
            at = 512;
            self.pos = 512;
        }
        let content_end = 512 + self.content;
        if self.pos < content_end {
            let n = usize::try_from(content_end - self.pos)
                .unwrap_or(usize::MAX)
                .min(len - at);
            self.rng.fill_bytes(&mut buf[at..at + n]);
            at += n;
            self.pos += n as u64;
        }
        // The rest of `buf` is zero: padding and end-of-archive blocks.
        self.pos += (len - at) as u64;
        Some(buf)
    }
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_has_exact_size_and_is_deterministic() {
        for size in [1536u64, 1537, 2047, 2048, 4096 + 3, (9 << 20) + 11] {
            let a = LayerGen::new(size, 7, 0).unwrap().into_vec();
            let b = LayerGen::new(size, 7, 0).unwrap().into_vec();
            assert_eq!(a.len() as u64, size);
            assert_eq!(a, b);
            assert!(a[a.len() - 1024..].iter().all(|&x| x == 0));
        }
        let c = LayerGen::new(8192, 8, 0).unwrap().into_vec();
        assert_ne!(LayerGen::new(8192, 7, 0).unwrap().into_vec(), c);
        assert!(LayerGen::new(1535, 1, 0).is_err());
    }

    #[test]
    fn layer_is_a_tar_readable_by_the_tar_cli() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.tar");
        std::fs::write(&path, LayerGen::new(10_000, 3, 2).unwrap().into_vec()).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("testkit/layer-2-"), "{text}");
        assert!(text.contains(" 8192 "), "{text}");
    }

    #[test]
    fn repo_tag_split() {
        assert_eq!(split_repo_tag("a/b:v1").unwrap(), ("a/b", "v1"));
        assert_eq!(split_repo_tag("a/b").unwrap(), ("a/b", "latest"));
        assert!(split_repo_tag(":x").is_err());
    }
}
