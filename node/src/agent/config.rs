//! `image-preheat agent` configuration: clap flags, each with the seed deployment's env twin and
//! default, and the exit-code rule for bad values.
//!
//! Rule: a bad value given on the command line is a usage error (clap's message, exit 2); a bad
//! value that came from an environment variable, or a missing `NODE_NAME`, is a configuration
//! error (exit 64, the message names the variable and what it expects). Everything is parsed and
//! checked before any port is bound.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser};
use image_preheat::fetch::LeaseArgs;
use image_preheat::mirror::MirrorArgs;
use image_preheat::runtime::RuntimeKind;

use super::swarm_args::{parse_duration, PeerArgs};
use crate::cli::{Cli, RegistryArgs, StoreArgs};

/// Exit code of a bad configuration (sysexits `EX_USAGE`, as the seed deployment used).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Args)]
#[command(
    after_long_help = "Exit codes: 0 after SIGTERM/SIGINT, 1 runtime failure, 2 bad \
command-line value (clap's message), 64 bad value from an environment variable or missing \
NODE_NAME (the message names the variable and what it expects)."
)]
pub struct AgentArgs {
    /// This node's name (the Kubernetes node name, from the downward API); required.
    #[arg(long, env = "NODE_NAME", value_parser = parse_node_name)]
    pub node_name: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Address the swarm listens on.
    #[arg(long, env = "SWARM_ADDR", default_value = "0.0.0.0:4001")]
    pub swarm_addr: SocketAddr,
    #[command(flatten)]
    pub peers: PeerArgs,
    /// Address of the node HTTP API (/health, /ready, /images/*, /metrics, /api/v1/*).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// The image list: one reference per line, `#` comments (a mounted ConfigMap key).
    #[arg(
        long,
        env = "IMAGE_LIST_PATH",
        default_value = "/etc/preheater/images.list"
    )]
    pub image_list: PathBuf,
    /// Directory of docker-archive or OCI-layout tarballs ingested at start, with no network.
    #[arg(long, env = "MOUNT_DIR", default_value = "/etc/preheater")]
    pub mount_dir: PathBuf,
    /// How often every listed image is checked again (e.g. 1m).
    #[arg(long, env = "INTERVAL", default_value = "1m", value_parser = parse_positive_duration)]
    pub interval: Duration,
    /// Images fetched at the same time.
    #[arg(long, env = "PREHEAT_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub preheat_concurrency: u16,
    /// Bound on fetching one image (e.g. 5m); then it fails and is retried with backoff.
    #[arg(long, env = "PULLING_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub pulling_timeout: Duration,
    /// /images/download responses streamed at once; more are answered 429.
    #[arg(long, env = "DOWNLOAD_API_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub download_api_concurrency: u16,
    /// How long one swarm attempt looks for a peer that has a blob (e.g. 10s).
    #[arg(long, env = "SWARM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub swarm_timeout: Duration,
    /// Election of the one registry puller per image (Kubernetes Leases or none).
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Container runtime images are imported into.
    #[arg(long, env = "RUNTIME", value_enum, default_value = "auto")]
    pub runtime: RuntimeKind,
    /// Docker daemon socket (unix:///var/run/docker.sock when unset).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// containerd socket.
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_address: PathBuf,
    /// containerd namespace images are created in (kubelet uses k8s.io).
    #[arg(long, env = "CONTAINERD_NAMESPACE", default_value = "k8s.io")]
    pub containerd_namespace: String,
    /// After loading an image into Docker, let dockerd pull `repo@digest` (the manifest only, its
    /// layers are present) so the image shows the RepoDigest a `docker pull` records.
    #[arg(long, env = "DOCKER_REPO_DIGESTS", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub docker_repo_digests: bool,
    /// Serve the node-local registry mirror on --mirror-addr (containerd's hosts.toml points
    /// there); `false` for nodes whose runtime does not use it.
    #[arg(long = "mirror", env = "MIRROR_ENABLED", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub mirror_enabled: bool,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

fn parse_node_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 253 {
        return Err("expected a non-empty node name of at most 253 characters".into());
    }
    Ok(s.to_owned())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {s:?}: must be positive; expected a duration like 30s or 5m"
        ));
    }
    Ok(d)
}

/// Parses the command line; see the module docs for the exit codes.
pub fn parse_cli() -> Result<Cli, u8> {
    Cli::try_parse().map_err(|e| {
        let argv: Vec<OsString> = std::env::args_os().collect();
        match config_error(&e, &argv) {
            Some(msg) => {
                eprintln!("error: bad configuration: {msg}");
                EXIT_CONFIG
            }
            None => {
                // Help and version go to stdout with 0; usage errors to stderr with 2.
                let _ = e.print();
                u8::try_from(e.exit_code()).unwrap_or(2)
            }
        }
    })
}

/// The configuration error behind a clap error, when the bad value came from an environment
/// variable (its flag is not on the command line) or a required variable is missing.
fn config_error(e: &clap::Error, argv: &[OsString]) -> Option<String> {
    let arg = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.clone(),
        ContextValue::Strings(v) => v.first()?.clone(),
        _ => return None,
    };
    let long = arg
        .split_whitespace()
        .next()?
        .strip_prefix("--")?
        .to_owned();
    let env = find_env(&Cli::command(), &long, argv)?;
    let on_command_line = argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    match e.kind() {
        ErrorKind::MissingRequiredArgument => Some(format!(
            "{env} is required (set {env} or pass --{long}): expected this node's name"
        )),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation if !on_command_line => {
            let value = std::env::var_os(&env)?.to_string_lossy().into_owned();
            let expected = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => format!("expected one of {}", v.join(", ")),
                _ => std::error::Error::source(e)
                    .map_or_else(|| "invalid value".to_owned(), ToString::to_string),
            };
            Some(format!("{env}={value:?}: {expected}"))
        }
        _ => None,
    }
}

/// The env twin of the flag `--long` of the subcommand named in `argv` (or of the top level).
fn find_env(cmd: &clap::Command, long: &str, argv: &[OsString]) -> Option<String> {
    let sub = cmd.get_subcommands().find(|c| {
        argv.iter()
            .skip(1)
            .any(|a| a.to_str() == Some(c.get_name()))
    });
    sub.and_then(|c| find_env(c, long, argv)).or_else(|| {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(args).unwrap_err()
    }

    #[test]
    fn command_line_errors_stay_usage_errors() {
        let e = err(&[
            "image-preheat",
            "agent",
            "--node-name",
            "n",
            "--interval",
            "soon",
        ]);
        let argv: Vec<OsString> = ["image-preheat", "agent", "--interval", "soon"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(config_error(&e, &argv), None);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn flags_have_env_twins() {
        for (long, env) in [
            ("interval", "INTERVAL"),
            ("preheat-concurrency", "PREHEAT_CONCURRENCY"),
            ("download-rate-limit", "DOWNLOAD_RATE_LIMIT"),
            ("store", "STORE_DIR"),
            ("runtime", "RUNTIME"),
            ("swarm-addr", "SWARM_ADDR"),
        ] {
            let argv = ["image-preheat".into(), "agent".into()];
            assert_eq!(find_env(&Cli::command(), long, &argv).as_deref(), Some(env));
        }
    }

    #[test]
    fn positive_durations() {
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("2m").unwrap(),
            Duration::from_secs(120)
        );
    }
}
