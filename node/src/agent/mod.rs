//! `image-preheat agent`: the node agent — image list, reconcile loop, swarm node, HTTP API and
//! metrics — plus the swarm commands `fetch-blob` and the swarm flags `pull` shares.
//!
//! ```text
//!  IMAGE_LIST_PATH ─watch─► image_list ─► reconcile ─► ImageFetcher (swarm, election) ─► store
//!                                            │  └──► ImageRuntime::import (docker, containerd)
//!  HTTP_ADDR ─► http (status, check, download, preheat, metrics) ◄── state ◄┘
//! ```
//!
//! Shutdown (SIGTERM/SIGINT): stop scheduling, abandon fetches, give imports a grace period,
//! let abandoned elections hand their Leases over, stop the HTTP server, withdraw provider records,
//! stop the swarm — all within [`EXIT_BOUND`].

mod config;
mod download;
mod fetch_blob;
mod fetcher;
mod http;
mod image_list;
mod metrics;
mod reconcile;
mod runtimes;
mod state;
mod swarm_args;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image_preheat::fetch::{FetchConfig, FetchMetrics, ImageFetcher};
use image_preheat::lease::{LeaseElector, LeaseMetrics};
use image_preheat::mirror::{self, Upstream};
use image_preheat::registry::RegistryClient;
use preheat_core::manifest::Platform;
use preheat_swarm::SwarmHandle;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub use config::{parse_cli, AgentArgs, EXIT_CONFIG};
pub use fetch_blob::{fetch_blob, ClientSwarmArgs, FetchBlobArgs};
pub use swarm_args::{start_node, stop_node};

use crate::cli::EXIT_RUNTIME;

/// Everything after SIGTERM finishes within this (the issue's bound is 10 s).
pub const EXIT_BOUND: Duration = Duration::from_secs(9);
/// Running imports may finish within this after SIGTERM; fetches stop at once.
const IMPORT_GRACE: Duration = Duration::from_secs(4);
/// Elections get this long after the reconciler stopped to hand their Leases over.
const LEASE_GRACE: Duration = Duration::from_secs(2);
/// Open HTTP responses (downloads) are cut after this.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// `error: a: b: c` text of an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// SIGTERM and SIGINT, installed before anything starts.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for SIGTERM or SIGINT and names it.
pub(crate) async fn shutdown_signal() -> std::io::Result<&'static str> {
    Ok(Signals::install()?.recv().await)
}

/// Runs the node agent until SIGTERM or SIGINT.
pub async fn agent(args: AgentArgs) -> u8 {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return EXIT_RUNTIME;
        }
    };
    let client = match RegistryClient::new(args.registry.config()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: bad configuration: {}", error_chain(&e));
            return EXIT_CONFIG;
        }
    };
    let lease_cfg = match args.lease.config(&args.node_name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: bad configuration: {}", error_chain(&e));
            return EXIT_CONFIG;
        }
    };
    if let Err(e) = args.mirror.validate() {
        eprintln!("error: bad configuration: {e}");
        return EXIT_CONFIG;
    }
    log_config(&args);
    let store = match args.store.open().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let ingested = runtimes::ingest(&store, &args.mount_dir).await;
    let listener = match tokio::net::TcpListener::bind(args.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on HTTP_ADDR {}: {e}", args.http_addr);
            return EXIT_RUNTIME;
        }
    };
    let mirror_listener = if args.mirror_enabled {
        match tokio::net::TcpListener::bind(args.mirror.addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "error: cannot listen on MIRROR_ADDR {}: {e}",
                    args.mirror.addr
                );
                return EXIT_RUNTIME;
            }
        }
    } else {
        None
    };
    let mirror_addr = mirror_listener.as_ref().and_then(|l| l.local_addr().ok());
    let mut registry = Registry::default();
    let metrics = metrics::AgentMetrics::register(&mut registry);
    let swarm_cfg = args
        .peers
        .swarm_config(args.swarm_addr)
        .named(&args.node_name);
    let handle = match swarm_args::start_node_with(
        "agent",
        &args.store,
        store.clone(),
        swarm_cfg,
        &mut registry,
    )
    .await
    {
        Ok(h) => h,
        Err(code) => return code,
    };
    let runtimes = match runtimes::connect(&args, &store).await {
        Ok(r) => r,
        Err(code) => {
            stop_node(&handle).await;
            return code;
        }
    };
    let member = handle.local_peer_id().to_string();
    let elector = match LeaseElector::from_environment(
        lease_cfg,
        member,
        LeaseMetrics::register(&mut registry),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: bad configuration: {}", error_chain(&e));
            stop_node(&handle).await;
            return EXIT_CONFIG;
        }
    };
    let fetch_cfg = FetchConfig {
        platform: args
            .registry
            .platform
            .clone()
            .unwrap_or_else(Platform::host),
        swarm_find_timeout: args.swarm_timeout,
        pulling_timeout: args.pulling_timeout,
        ..FetchConfig::new(args.node_name.clone())
    };
    let image_fetcher = ImageFetcher::new(
        store.clone(),
        client,
        Some(handle.clone()),
        Some(elector.clone()),
        fetch_cfg,
        FetchMetrics::register(&mut registry),
    );
    let cancel = CancellationToken::new();
    let mirroring = match mirror_listener {
        Some(listener) => {
            let upstream = Upstream {
                fetcher: Some(Arc::new(image_fetcher.clone())),
                registry: args.registry.config(),
            };
            match mirror::serve_on(
                listener,
                &args.mirror,
                store.clone(),
                Some(handle.clone()),
                upstream,
                &mut registry,
                cancel.clone().cancelled_owned(),
            ) {
                Ok(serving) => Some(tokio::spawn(serving)),
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    stop_node(&handle).await;
                    return if e.is_config() {
                        EXIT_CONFIG
                    } else {
                        EXIT_RUNTIME
                    };
                }
            }
        }
        None => None,
    };
    let source = fetcher::ElectedSource(image_fetcher);
    let reconciler = reconcile::Reconciler::new(
        store.clone(),
        Arc::new(source),
        runtimes.importers,
        metrics.clone(),
        reconcile::ReconcileConfig {
            interval: args.interval,
            concurrency: usize::from(args.preheat_concurrency),
            pulling_timeout: args.pulling_timeout,
            import_grace: IMPORT_GRACE,
            retry_min: reconcile::RETRY_MIN,
        },
    );
    if !ingested.is_empty() {
        // Kept and imported like listed images, with no network (their blobs are stored).
        reconciler.request(&ingested);
    }
    let list = image_list::spawn(
        args.image_list.clone(),
        args.interval,
        metrics,
        cancel.clone(),
    );
    let reconciling = tokio::spawn(reconciler.clone().run(list.clone(), cancel.clone()));
    let api = Arc::new(http::Api {
        node_name: args.node_name.clone(),
        store: store.clone(),
        swarm: handle.clone(),
        reconciler,
        registry,
        list,
        list_path: args.image_list.clone(),
        mirror_addr,
        download: download::Download::new(
            usize::from(args.download_api_concurrency),
            args.peers.download_rate_limit,
            runtimes.archive,
        ),
    });
    let server = tokio::spawn(
        axum::serve(listener, http::router(api))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(node = %args.node_name, peer_id = %handle.local_peer_id(),
        http = %args.http_addr, mirror = ?mirror_addr, "agent started");

    let signal = signals.recv().await;
    let deadline = Instant::now() + EXIT_BOUND;
    tracing::info!(signal, "agent stopping");
    cancel.cancel();
    let drain = async {
        let _ = tokio::time::timeout(IMPORT_GRACE + Duration::from_millis(500), reconciling).await;
        // Abandoned elections hand their Leases over from their own tasks; let them.
        if tokio::time::timeout(LEASE_GRACE, elector.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("lease elections still running at shutdown; their Leases will expire");
        }
    };
    let mirrored = async {
        let Some(m) = mirroring else { return };
        match tokio::time::timeout(HTTP_GRACE, m).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %error_chain(&e), "mirror server failed"),
            Err(_) => tracing::warn!("cutting open mirror responses at shutdown"),
            _ => {}
        }
    };
    let (_, served, ()) = tokio::join!(drain, tokio::time::timeout(HTTP_GRACE, server), mirrored);
    if served.is_err() {
        tracing::warn!("cutting open HTTP responses at shutdown");
    }
    withdraw_all(&handle, &store, deadline).await;
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, handle.shutdown()).await.is_err() {
        tracing::warn!("swarm shutdown timed out");
    }
    tracing::info!(
        bytes_sent = handle.bytes_sent(),
        bytes_received = handle.bytes_received(),
        "agent stopped"
    );
    0
}

/// Withdraws this node's provider records (complete and partial blobs), bounded by `deadline`
/// less a second kept for the swarm shutdown.
async fn withdraw_all(handle: &SwarmHandle, store: &preheat_store::Store, deadline: Instant) {
    let until = deadline
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(deadline);
    let blobs = store
        .complete_blobs()
        .into_iter()
        .chain(store.partial_blobs());
    let left = until.saturating_duration_since(Instant::now());
    let withdraw = async {
        for d in blobs {
            if handle.withdraw(d).await.is_err() {
                break;
            }
        }
    };
    if tokio::time::timeout(left, withdraw).await.is_err() {
        tracing::warn!("withdrawing provider records timed out");
    }
}

/// Logs the effective agent configuration once (no secrets: DOCKER_CONFIG is a path).
fn log_config(a: &AgentArgs) {
    tracing::info!(
        node = %a.node_name,
        http_addr = %a.http_addr,
        image_list = %a.image_list.display(),
        mount_dir = %a.mount_dir.display(),
        interval = ?a.interval,
        preheat_concurrency = a.preheat_concurrency,
        pulling_timeout = ?a.pulling_timeout,
        download_api_concurrency = a.download_api_concurrency,
        download_rate_limit = a.peers.download_rate_limit,
        lease = ?a.lease.lease,
        k8s_namespace = %a.lease.namespace,
        k8s_lock_timeout = ?a.lease.lock_timeout,
        lease_contenders = a.lease.contenders,
        runtime = ?a.runtime,
        docker_host = ?a.docker_host,
        containerd_address = %a.containerd_address.display(),
        containerd_namespace = %a.containerd_namespace,
        mirror = a.mirror_enabled,
        mirror_addr = %a.mirror.addr,
        mirror_open = a.mirror.open,
        insecure_registries = ?a.registry.insecure,
        docker_config = ?a.registry.docker_config,
        "agent configuration"
    );
}
