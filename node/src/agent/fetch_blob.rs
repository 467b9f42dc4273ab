//! `fetch-blob`: fetch one blob through the swarm, serve it a while, exit (a debugging aid).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use preheat_core::{units, Digest};

use super::swarm_args::{parse_bytes, parse_duration, start_node, stop_node, PeerArgs};
use super::{error_chain, shutdown_signal};
use crate::cli::{StoreArgs, EXIT_RUNTIME};

/// Swarm flags of the commands that run a short-lived node (`pull`, `fetch-blob`).
#[derive(Debug, Args)]
pub struct ClientSwarmArgs {
    /// Address the command's own swarm node listens on while it runs (port 0: any free port). Not
    /// SWARM_ADDR, so a pull next to a running agent does not take the agent's port.
    #[arg(long, env = "CLIENT_SWARM_ADDR", default_value = "0.0.0.0:0")]
    pub swarm_addr: SocketAddr,
    #[command(flatten)]
    pub peers: PeerArgs,
}

#[derive(Debug, Args)]
pub struct FetchBlobArgs {
    /// Digest of the blob, sha256:<64 hex>.
    pub digest: Digest,
    /// Size of the blob in bytes (from the manifest that names it).
    #[arg(long, value_parser = parse_bytes)]
    pub size: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub swarm: ClientSwarmArgs,
    /// Give up when the blob is not complete after this long (e.g. 2m).
    #[arg(long, env = "FETCH_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Keep serving the blob to peers this long after it completed (e.g. 10s; 0s to exit at once).
    #[arg(long, env = "FETCH_LINGER", default_value = "10s", value_parser = parse_duration)]
    pub linger: Duration,
}

/// Fetches one blob through the swarm, serves it for `--linger`, exits.
pub async fn fetch_blob(args: FetchBlobArgs) -> u8 {
    let cfg = args.swarm.peers.swarm_config(args.swarm.swarm_addr);
    let store = match args.store.open().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let handle = match start_node("fetch-blob", &args.store, store, cfg).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    let started = Instant::now();
    let deadline = started + args.timeout;
    let result = tokio::select! {
        r = handle.fetch_blob(args.digest, args.size, deadline) => r.map_err(|e| error_chain(&e)),
        s = shutdown_signal() => Err(match s {
            Ok(sig) => format!("interrupted by {sig}"),
            Err(e) => format!("cannot install signal handlers: {e}"),
        }),
    };
    let code = match result {
        Ok(r) => {
            let how = if r.already_local {
                "already stored".to_owned()
            } else {
                format!(
                    "{} from {} peers",
                    units::format_bytes(r.bytes_from_peers),
                    r.peers_used
                )
            };
            println!(
                "fetched {} ({}, {how}) in {:.1}s",
                r.digest,
                units::format_bytes(r.size),
                started.elapsed().as_secs_f64()
            );
            tracing::info!(digest = %r.digest, bytes_from_peers = r.bytes_from_peers, peers = r.peers_used,
                bad_chunks = r.bad_chunks, seconds = started.elapsed().as_secs_f64(), "blob fetched");
            if !args.linger.is_zero() {
                tracing::info!(linger = ?args.linger, "serving peers before exit");
                tokio::select! {
                    _ = tokio::time::sleep(args.linger) => {}
                    _ = shutdown_signal() => {}
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: fetching {} from peers failed: {e}", args.digest);
            EXIT_RUNTIME
        }
    };
    tracing::info!(bytes_sent = handle.bytes_sent(), "fetch-blob stopping");
    stop_node(&handle).await;
    code
}
