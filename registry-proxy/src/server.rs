//! The accept loop: HTTP/1.1 connections served by hyper with a connection cap, a header read
//! timeout (so a slow or idle client cannot hold a connection before sending a request) and a
//! bounded read buffer; graceful shutdown waits for open responses.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::router::router;
use crate::source::Source;
use crate::ProxyConfig;

/// hyper's read buffer per connection, which also caps a request head (hyper answers 431 above).
const READ_BUF: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the mirror on `listener` until `shutdown` completes, then waits for open responses.
/// Registers the `mirror_*` metrics in `registry`. At most `cfg.max_connections` connections are
/// open at once; further clients wait in the listen backlog.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn Source>,
    cfg: ProxyConfig,
    registry: &mut Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Metrics::new(registry);
    let (max_connections, header_timeout) = (cfg.max_connections, cfg.header_read_timeout);
    let app = router(source, cfg, metrics);
    serve_app(listener, app, max_connections, header_timeout, shutdown).await
}

/// Serves `app` (a [`crate::router`] or [`crate::router_with_access`]) on `listener` as [`serve`]
/// does, with its connection cap and header read timeout; holds no borrow, so it can be spawned.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed: the semaphore lives in this function.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "mirror accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(READ_BUF)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "mirror connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
