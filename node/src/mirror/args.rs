//! The mirror's command-line flags, each with its env twin.

use std::net::SocketAddr;
use std::time::Duration;

/// `--mirror-*` flags and their `MIRROR_*` env twins.
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorArgs {
    /// Address of the node-local registry mirror (containerd's hosts.toml points here). Keep it
    /// on 127.0.0.1: anything that reaches it can read what the node's store holds (see README).
    #[arg(
        long = "mirror-addr",
        env = "MIRROR_ADDR",
        default_value = "127.0.0.1:5000"
    )]
    pub addr: SocketAddr,
    /// Longest time the mirror looks for a manifest or blob (store, swarm, upstream) before it
    /// answers 404 and containerd goes to the registry itself.
    #[arg(long = "mirror-resolve-timeout", env = "MIRROR_RESOLVE_TIMEOUT", default_value = "3s",
          value_parser = parse_positive_duration)]
    pub resolve_timeout: Duration,
    /// How much longer a request may wait while the mirror's background fetch of its image (through
    /// the registry election) is making progress; a request with no fetch running is not held.
    #[arg(long = "mirror-upstream-timeout", env = "MIRROR_UPSTREAM_TIMEOUT", default_value = "30s",
          value_parser = parse_positive_duration)]
    pub upstream_timeout: Duration,
    /// How long a tag is looked up in the swarm (peers' tag records).
    #[arg(long = "mirror-tag-timeout", env = "MIRROR_TAG_TIMEOUT", default_value = "1s",
          value_parser = parse_positive_duration)]
    pub tag_timeout: Duration,
    /// Tags the mirror never resolves (comma-separated, e.g. `latest`): 404, so containerd asks
    /// the registry, which always has the newest. Digests are unaffected.
    #[arg(long = "mirror-never-resolve-tags", env = "MIRROR_NEVER_RESOLVE_TAGS",
          value_delimiter = ',', value_parser = parse_tag)]
    pub never_resolve_tags: Vec<String>,
    /// Serve every repository to anyone who reaches the mirror (as Spegel does), without checking
    /// that the upstream accepts the client's credentials for repositories that need them.
    #[arg(long = "mirror-open", env = "MIRROR_OPEN")]
    pub open: bool,
    /// Registry of requests without the `ns` parameter (Docker's `registry-mirrors` sends none).
    #[arg(
        long = "mirror-default-registry",
        env = "MIRROR_DEFAULT_REGISTRY",
        default_value = "docker.io"
    )]
    pub default_registry: String,
    /// A blob body that gets no new byte for this long is aborted (its source stalled).
    #[arg(long = "mirror-stall-timeout", env = "MIRROR_STALL_TIMEOUT", default_value = "30s",
          value_parser = parse_positive_duration)]
    pub stall_timeout: Duration,
    /// Requests served at once; more get 429 TOOMANYREQUESTS.
    #[arg(long = "mirror-max-requests", env = "MIRROR_MAX_REQUESTS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests: u32,
    /// How long the upstream's verdict on a client's credentials is kept.
    #[arg(long = "mirror-credential-ttl", env = "MIRROR_CREDENTIAL_TTL", default_value = "1m",
          value_parser = parse_positive_duration)]
    pub credential_ttl: Duration,
    /// Background image fetches the mirror starts at most (each runs the registry election).
    #[arg(long = "mirror-max-fetches", env = "MIRROR_MAX_FETCHES", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_fetches: u32,
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = preheat_core::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

fn parse_tag(s: &str) -> Result<String, String> {
    match registry_proxy::TagOrDigest::parse(s) {
        Ok(registry_proxy::TagOrDigest::Tag(t)) => Ok(t),
        Ok(_) => Err(format!("{s:?} is a digest, not a tag")),
        Err(e) => Err(e.to_string()),
    }
}

impl MirrorArgs {
    /// Checks what the parser cannot: the default registry must be a registry host.
    pub fn validate(&self) -> Result<(), String> {
        let probe = format!("{}/x/y:z", self.default_registry);
        match probe.parse::<preheat_core::reference::Reference>() {
            Ok(r) if r.registry() == self.default_registry => Ok(()),
            _ => Err(format!(
                "MIRROR_DEFAULT_REGISTRY (--mirror-default-registry) {:?} is not a registry host",
                self.default_registry
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        mirror: MirrorArgs,
    }

    #[test]
    fn defaults() {
        let m = Cli::try_parse_from(["x"]).expect("parse").mirror;
        assert_eq!(m.addr, "127.0.0.1:5000".parse().expect("addr"));
        assert_eq!(m.resolve_timeout, Duration::from_secs(3));
        assert!(m.never_resolve_tags.is_empty());
        assert!(!m.open);
        assert_eq!(m.default_registry, "docker.io");
        m.validate().expect("valid");
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let m = Cli::try_parse_from([
            "x",
            "--mirror-addr",
            "127.0.0.1:0",
            "--mirror-never-resolve-tags",
            "latest,edge",
            "--mirror-open",
            "--mirror-default-registry",
            "registry.example:5000",
        ])
        .expect("parse")
        .mirror;
        assert_eq!(m.never_resolve_tags, ["latest", "edge"]);
        assert!(m.open);
        m.validate().expect("valid");
        for bad in [
            ["x", "--mirror-resolve-timeout", "0s"],
            ["x", "--mirror-never-resolve-tags", "a/b"],
            ["x", "--mirror-max-requests", "0"],
            ["x", "--mirror-addr", "localhost"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
        let m = Cli::try_parse_from(["x", "--mirror-default-registry", "Not A Host"])
            .expect("parse")
            .mirror;
        assert!(m.validate().is_err());
    }
}
