//! The node-local registry mirror (issue 6): containerd's `hosts.toml` points every pull here.
//!
//! ```text
//!  containerd ─► registry_proxy router ─► Access (private repositories: upstream must accept the
//!     │                                    client's credentials; off with --mirror-open)
//!     ▼
//!  Learning (remembers blob sizes named by served manifests)
//!     ▼
//!  Chain: StoreSource   complete blobs, partials some writer is filling (streamed per chunk)
//!       → SwarmSource   tag records; blobs downloaded from peers into the store, streamed as
//!                       their chunks arrive
//!       → UpstreamSource background ImageFetcher (one registry puller per image in the cluster),
//!                       answered from the store as the fetch fills it; a manifest the store lacks
//!                       starts that fetch at once (Prefetching), and a running fetch gets
//!                       --mirror-upstream-timeout on top of the resolve timeout
//!       → miss: 404 within --mirror-resolve-timeout, containerd goes to the registry itself
//! ```
//!
//! Invariants: everything served comes from the store or a peer's checked tag record, so each
//! byte passed the store's or the swarm's checks; bodies are streamed with bounded memory; the
//! router holds the limits and the one error table.

mod access;
mod args;
mod local;
mod peer;
mod sizes;
mod stream;
mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use preheat_store::Store;
use preheat_swarm::SwarmHandle;
use prometheus_client::registry::Registry;
use registry_proxy::{Access, Chain, Metrics, ProxyConfig, Source, SourceKind};

pub use access::{AccessConfig, AccessError, UpstreamAccess};
pub use args::MirrorArgs;
pub use local::{request_reference, stored_blob, stored_manifest, stored_size, StoreSource};
pub use peer::{PeerConfig, SwarmSource};
pub use sizes::{Learning, Sizes};
pub use upstream::{Prefetching, UpstreamConfig, UpstreamFetch, UpstreamSource};

use crate::registry::RegistryConfig;

/// Longest download of one blob from peers started by the mirror.
const SWARM_FETCH_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// How long a repository's public/private status is remembered.
const STATUS_TTL: Duration = Duration::from_secs(10 * 60);

/// The upstream side of the mirror.
pub struct Upstream {
    /// Gets images through the election (the agent's `ImageFetcher`); `None`: the mirror serves
    /// only the store and the swarm.
    pub fetcher: Option<Arc<dyn UpstreamFetch>>,
    /// How registries are reached (insecure hosts, CA files) for the credential check.
    pub registry: RegistryConfig,
}

/// Why the mirror could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Bad configuration (exit code 64).
    #[error("invalid mirror configuration: {0}")]
    Config(String),
    #[error("invalid mirror configuration")]
    Access(#[from] AccessError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror server failed")]
    Serve(#[source] std::io::Error),
}

impl MirrorError {
    /// True when the configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Access(_))
    }
}

/// Builds the mirror, registers its `mirror_*` metrics in `metrics` and binds `args.addr` (all
/// before returning, so configuration and bind errors come first); the returned future serves
/// until `shutdown` completes and borrows nothing, so the caller can spawn it.
pub fn serve(
    args: &MirrorArgs,
    store: Store,
    swarm: Option<SwarmHandle>,
    upstream: Upstream,
    metrics: &mut Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), MirrorError>> + Send + 'static, MirrorError> {
    let addr = args.addr;
    let bind = |source| MirrorError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind)?;
    serve_on(listener, args, store, swarm, upstream, metrics, shutdown)
}

/// [`serve`] on a listener the caller bound (tests bind port 0).
pub fn serve_on(
    listener: tokio::net::TcpListener,
    args: &MirrorArgs,
    store: Store,
    swarm: Option<SwarmHandle>,
    upstream: Upstream,
    metrics: &mut Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), MirrorError>> + Send + 'static, MirrorError> {
    args.validate().map_err(MirrorError::Config)?;
    let access: Option<Arc<dyn Access>> = if args.open {
        None
    } else {
        Some(Arc::new(UpstreamAccess::new(AccessConfig {
            default_registry: args.default_registry.clone(),
            insecure: upstream.registry.insecure.clone(),
            ca_files: upstream.registry.ca_files.clone(),
            probe_timeout: args.resolve_timeout,
            verdict_ttl: args.credential_ttl,
            status_ttl: STATUS_TTL,
        })?))
    };
    let sizes = Sizes::new();
    let stall = args.stall_timeout;
    let default_registry = args.default_registry.clone();
    let local: Arc<dyn Source> = Arc::new(StoreSource::new(
        store.clone(),
        default_registry.clone(),
        stall,
    ));
    let mut rest = Chain::new(args.resolve_timeout);
    if let Some(h) = swarm {
        let peer_cfg = PeerConfig {
            default_registry: default_registry.clone(),
            tag_timeout: args.tag_timeout,
            fetch_deadline: SWARM_FETCH_DEADLINE,
            stall,
        };
        let peer = SwarmSource::new(h, store.clone(), sizes.clone(), peer_cfg);
        rest = rest.with(SourceKind::Peer, Arc::new(peer));
    }
    let mut resolve_timeout = args.resolve_timeout;
    let source: Arc<dyn Source> = match upstream.fetcher {
        Some(fetcher) => {
            let up_cfg = UpstreamConfig {
                default_registry,
                max_fetches: args.max_fetches as usize,
                stall,
            };
            let up = Arc::new(UpstreamSource::new(store, fetcher, up_cfg));
            // The store and swarm within the resolve timeout, then a running fetch gets longer.
            resolve_timeout += args.upstream_timeout;
            let rest = rest.with_timeout(SourceKind::Upstream, up.clone(), args.upstream_timeout);
            let full = Chain::new(args.resolve_timeout)
                .with(SourceKind::Local, local.clone())
                .then(&rest);
            Arc::new(Learning {
                inner: Prefetching {
                    local,
                    upstream: up,
                    rest,
                    full,
                },
                sizes,
            })
        }
        None => {
            let full = Chain::new(args.resolve_timeout)
                .with(SourceKind::Local, local)
                .then(&rest);
            Arc::new(Learning { inner: full, sizes })
        }
    };
    let cfg = ProxyConfig {
        resolve_timeout,
        max_concurrent: args.max_requests as usize,
        never_resolve_tags: args.never_resolve_tags.clone(),
        ..ProxyConfig::default()
    };
    let (max_connections, header_timeout) = (cfg.max_connections, cfg.header_read_timeout);
    let app = registry_proxy::router_with_access(source, access, cfg, Metrics::new(metrics));
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        open = args.open,
        default_registry = %args.default_registry,
        never_resolve_tags = ?args.never_resolve_tags,
        "mirror listening"
    );
    Ok(async move {
        registry_proxy::serve_app(listener, app, max_connections, header_timeout, shutdown)
            .await
            .map_err(MirrorError::Serve)
    })
}
