//! Swarm flags shared by `agent`, `pull` and `fetch-blob`, and starting/stopping a swarm node.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;
use preheat_core::units;
use preheat_store::Store;
use preheat_swarm::{parse_peer, to_multiaddr, Multiaddr, Swarm, SwarmConfig, SwarmHandle};
use prometheus_client::registry::Registry;

use super::error_chain;
use crate::cli::{StoreArgs, EXIT_RUNTIME};

/// Swarm port assumed for `--peers-dns` when this node listens on port 0.
pub const DEFAULT_SWARM_PORT: u16 = 4001;
/// Bound on a graceful swarm shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How a node finds and treats peers (shared by `agent`, `pull` and `fetch-blob`).
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// A peer to dial: IP:PORT, HOST:PORT or a multiaddr (/ip4/10.0.0.5/tcp/4001); repeatable,
    /// comma-separated in the env variable (empty items are ignored).
    #[arg(long = "peer", env = "PEERS", value_delimiter = ',', value_parser = parse_peer_arg)]
    pub peers: Vec<PeerAddr>,
    /// DNS name whose every A/AAAA record is a peer (the headless Service), NAME or NAME:PORT;
    /// the port defaults to this node's swarm port (4001 when that is 0). Empty: none.
    #[arg(long, env = "PEERS_DNS", value_parser = parse_dns_name)]
    pub peers_dns: Option<DnsName>,
    /// How often PEERS_DNS is resolved again and lost peers are re-dialled (e.g. 30s).
    #[arg(long, env = "PEER_DISCOVERY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub peer_discovery_interval: Duration,
    /// This node's IP as other nodes reach it (the pod IP), advertised to peers.
    #[arg(long, env = "POD_IP")]
    pub external_addr: Option<IpAddr>,
    /// Node-wide byte rate of chunk uploads to peers, per second (e.g. 500MiB); 0 = unlimited.
    #[arg(long, env = "UPLOAD_RATE_LIMIT", default_value = "500MiB", value_parser = parse_rate)]
    pub upload_rate_limit: u64,
    /// Node-wide byte rate of chunk downloads from peers, per second (e.g. 500MiB); 0 = unlimited.
    #[arg(long, env = "DOWNLOAD_RATE_LIMIT", default_value = "500MiB", value_parser = parse_rate)]
    pub download_rate_limit: u64,
    /// Chunk uploads served at once; further requests are answered "busy" (the peer goes elsewhere).
    #[arg(long, env = "MAX_UPLOADS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_uploads: u16,
    /// How long a chunk request that finds every upload slot taken, or asks for a chunk this node
    /// sent moments ago, waits here before it is answered "busy"/"declined" (e.g. 1s); 0s answers
    /// at once.
    #[arg(long, env = "UPLOAD_WAIT", default_value = "0s", value_parser = parse_upload_wait)]
    pub upload_wait: Duration,
    /// Super-seeding: a chunk this node is sending, or started sending this recently, is not sent
    /// to another peer (who is told to take it from its new holder); 0s turns it off.
    #[arg(long, env = "RESEND_AFTER", default_value = "1s", value_parser = parse_upload_wait)]
    pub resend_after: Duration,
    /// `true`: per-peer fetch metrics name the peer (its NODE_NAME) in their `peer` label;
    /// `false`: `peer` stays empty, for large clusters (series grow with images × peers).
    #[arg(long, env = "PEER_METRICS_LABEL", default_value_t = true, action = clap::ArgAction::Set)]
    pub peer_metrics_label: bool,
}

/// A `--peer` value; `None` for an empty item (`PEERS=""` in a manifest means no peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr(pub Option<Multiaddr>);

/// A `--peers-dns` value; an empty `host` (`PEERS_DNS=""`) means none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    pub host: String,
    pub port: Option<u16>,
}

impl PeerArgs {
    /// Whether any peer source was given (else `pull` does not start a swarm node).
    pub fn any(&self) -> bool {
        self.static_peers().next().is_some() || self.dns().is_some()
    }

    fn static_peers(&self) -> impl Iterator<Item = &Multiaddr> {
        self.peers.iter().filter_map(|p| p.0.as_ref())
    }

    fn dns(&self) -> Option<&DnsName> {
        self.peers_dns.as_ref().filter(|d| !d.host.is_empty())
    }

    /// The swarm configuration for a node listening on `listen`.
    pub fn swarm_config(&self, listen: SocketAddr) -> SwarmConfig {
        let port = listen.port();
        let external = match self.external_addr {
            Some(ip) if port != 0 => vec![to_multiaddr(SocketAddr::new(ip, port))],
            _ => Vec::new(),
        };
        let peer_port = if port == 0 { DEFAULT_SWARM_PORT } else { port };
        SwarmConfig {
            listen: vec![to_multiaddr(listen)],
            external,
            peers: self.static_peers().cloned().collect(),
            peers_dns: self
                .dns()
                .map(|d| (d.host.clone(), d.port.unwrap_or(peer_port))),
            discovery_interval: self.peer_discovery_interval,
            upload_rate: (self.upload_rate_limit > 0).then_some(self.upload_rate_limit),
            download_rate: (self.download_rate_limit > 0).then_some(self.download_rate_limit),
            max_uploads: usize::from(self.max_uploads),
            upload_wait: self.upload_wait,
            resend_after: self.resend_after,
            peer_metrics_label: self.peer_metrics_label,
            ..SwarmConfig::default()
        }
    }
}

/// Logs the effective swarm configuration once.
fn log_config(command: &'static str, store: &StoreArgs, cfg: &SwarmConfig) {
    let peers: Vec<String> = cfg.peers.iter().map(ToString::to_string).collect();
    let external: Vec<String> = cfg.external.iter().map(ToString::to_string).collect();
    let listen: Vec<String> = cfg.listen.iter().map(ToString::to_string).collect();
    tracing::info!(
        command,
        store = %store.dir.display(),
        store_max_bytes = store.store_max_bytes,
        chunk_size = store.chunk_size,
        ?listen,
        ?external,
        ?peers,
        peers_dns = ?cfg.peers_dns,
        discovery_interval = ?cfg.discovery_interval,
        upload_rate = ?cfg.upload_rate,
        download_rate = ?cfg.download_rate,
        max_uploads = cfg.max_uploads,
        upload_wait = ?cfg.upload_wait,
        resend_after = ?cfg.resend_after,
        peer_metrics_label = cfg.peer_metrics_label,
        "effective configuration"
    );
}

/// Starts a swarm node serving `store` (opened from `args`), with throwaway metrics.
pub async fn start_node(
    command: &'static str,
    args: &StoreArgs,
    store: Store,
    cfg: SwarmConfig,
) -> Result<SwarmHandle, u8> {
    start_node_with(command, args, store, cfg, &mut Registry::default()).await
}

/// Starts a swarm node serving `store`, registering its metrics in `registry`.
pub async fn start_node_with(
    command: &'static str,
    args: &StoreArgs,
    store: Store,
    cfg: SwarmConfig,
    registry: &mut Registry,
) -> Result<SwarmHandle, u8> {
    log_config(command, args, &cfg);
    match Swarm::spawn(cfg, store, registry).await {
        Ok(h) => Ok(h),
        Err(e) => {
            eprintln!("error: cannot start the swarm node: {}", error_chain(&e));
            Err(EXIT_RUNTIME)
        }
    }
}

/// Shuts the node down, bounded by [`SHUTDOWN_WAIT`].
pub async fn stop_node(handle: &SwarmHandle) {
    if tokio::time::timeout(SHUTDOWN_WAIT, handle.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("swarm shutdown timed out");
    }
}

fn parse_peer_arg(s: &str) -> Result<PeerAddr, String> {
    if s.trim().is_empty() {
        return Ok(PeerAddr(None));
    }
    parse_peer(s.trim()).map(|a| PeerAddr(Some(a))).ok_or_else(|| {
        format!("{s:?} is not a peer address (IP:PORT, HOST:PORT or a multiaddr like /ip4/10.0.0.5/tcp/4001)")
    })
}

fn parse_dns_name(s: &str) -> Result<DnsName, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(DnsName {
            host: String::new(),
            port: None,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{p:?} is not a port"))?,
            ),
        ),
        None => (s, None),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid {
        return Err(format!("{host:?} is not a DNS name"));
    }
    Ok(DnsName {
        host: host.to_owned(),
        port,
    })
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}

/// A wait (or resend window) of at most half the downloaders' 30 s chunk timeout, so a waiting
/// request is always answered.
fn parse_upload_wait(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let max = SwarmConfig::default().chunk_timeout / 2;
    if d > max {
        return Err(format!(
            "at most {}s (half the chunk timeout)",
            max.as_secs()
        ));
    }
    Ok(d)
}

pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    units::parse_rate(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    units::parse_bytes(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dns_names_take_an_optional_port() {
        assert_eq!(
            parse_dns_name("image-preheat.ns.svc.cluster.local").unwrap(),
            DnsName {
                host: "image-preheat.ns.svc.cluster.local".into(),
                port: None
            }
        );
        assert_eq!(parse_dns_name("peers:4002").unwrap().port, Some(4002));
        assert!(parse_dns_name("peers:0").is_err());
        assert!(parse_dns_name("peers:x").is_err());
        assert!(parse_dns_name(":4001").is_err());
        assert!(parse_dns_name("a b").is_err());
    }

    #[test]
    fn upload_wait_stays_below_the_chunk_timeout() {
        assert_eq!(parse_upload_wait("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_upload_wait("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_upload_wait("15s").is_ok());
        assert!(parse_upload_wait("16s").is_err());
        assert!(parse_upload_wait("soon").is_err());
    }

    #[test]
    fn dns_peers_use_the_swarm_port_or_the_default() {
        let args = PeerArgs {
            peers: vec![],
            peers_dns: Some(parse_dns_name("svc").unwrap()),
            peer_discovery_interval: Duration::from_secs(30),
            external_addr: Some("10.1.2.3".parse().unwrap()),
            upload_rate_limit: 0,
            download_rate_limit: 1024,
            max_uploads: 8,
            upload_wait: Duration::from_millis(250),
            resend_after: Duration::from_secs(1),
            peer_metrics_label: true,
        };
        let cfg = args.swarm_config("0.0.0.0:4100".parse().unwrap());
        assert_eq!(cfg.peers_dns, Some(("svc".to_owned(), 4100)));
        assert_eq!(cfg.external[0].to_string(), "/ip4/10.1.2.3/tcp/4100");
        assert_eq!(cfg.upload_rate, None);
        assert_eq!(cfg.download_rate, Some(1024));
        let cfg = args.swarm_config("0.0.0.0:0".parse().unwrap());
        assert_eq!(cfg.peers_dns, Some(("svc".to_owned(), DEFAULT_SWARM_PORT)));
        assert!(cfg.external.is_empty(), "port 0 cannot be advertised");
    }

    #[test]
    fn empty_env_values_mean_no_peers() {
        let args = PeerArgs {
            peers: vec![parse_peer_arg("").unwrap(), parse_peer_arg(" ").unwrap()],
            peers_dns: Some(parse_dns_name("").unwrap()),
            peer_discovery_interval: Duration::from_secs(30),
            external_addr: None,
            upload_rate_limit: 0,
            download_rate_limit: 0,
            max_uploads: 8,
            upload_wait: Duration::from_millis(250),
            resend_after: Duration::from_secs(1),
            peer_metrics_label: true,
        };
        assert!(!args.any());
        let cfg = args.swarm_config("0.0.0.0:4001".parse().unwrap());
        assert!(cfg.peers.is_empty());
        assert_eq!(cfg.peers_dns, None);
        let one = parse_peer_arg("10.0.0.5:4001").unwrap();
        assert_eq!(one.0.unwrap().to_string(), "/ip4/10.0.0.5/tcp/4001");
    }
}
