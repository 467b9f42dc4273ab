//! `preheat-sim`: simulate getting one image onto N nodes with image-preheat's real transfer
//! state machine, and print completion percentiles beside the Kumar–Ross bound.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use preheat_core::units;
use preheat_simulations::report::{self, Row};
use preheat_simulations::{bps, Churn, Links, SimConfig, StartPattern, Victim};

/// Deterministic flow-level simulation of one image reaching N nodes.
#[derive(Debug, Parser)]
#[command(name = "preheat-sim", version)]
struct Args {
    /// Number of nodes.
    #[arg(long, env = "SIM_NODES", default_value_t = 16)]
    nodes: usize,
    /// Image size (e.g. 128MiB, 1GiB).
    #[arg(long, env = "SIM_IMAGE_SIZE", default_value = "128MiB", value_parser = parse_bytes)]
    image_size: u64,
    /// Layers the image is cut into (equal sizes).
    #[arg(long, env = "SIM_LAYERS", default_value_t = 4)]
    layers: u64,
    /// Size of the image's config blob, fetched before the layers as real pulls do (0: none).
    #[arg(long, env = "SIM_CONFIG_BLOB", default_value = "0", value_parser = parse_bytes)]
    config_blob: u64,
    /// Node upload rate (e.g. 100Mbit, 1Gbit, 50MiB/s).
    #[arg(long, env = "SIM_UP", default_value = "100Mbit", value_parser = parse_link)]
    up: f64,
    /// Node download rate.
    #[arg(long, env = "SIM_DOWN", default_value = "100Mbit", value_parser = parse_link)]
    down: f64,
    /// Origin (registry) upload rate.
    #[arg(long, env = "SIM_ORIGIN_UP", default_value = "50Mbit", value_parser = parse_link)]
    origin_up: f64,
    /// Chunk size.
    #[arg(long, env = "SIM_CHUNK_SIZE", default_value = "4MiB", value_parser = parse_bytes)]
    chunk_size: u64,
    /// Round-trip time between hosts (e.g. 1ms).
    #[arg(long, env = "SIM_RTT", default_value = "1ms", value_parser = parse_duration)]
    rtt: Duration,
    /// Delay of a node's first peer lookup (DHT).
    #[arg(long, env = "SIM_DHT_LOOKUP", default_value = "50ms", value_parser = parse_duration)]
    dht_lookup: Duration,
    /// Peers one download tracks.
    #[arg(long, env = "SIM_MAX_PEERS", default_value_t = 64)]
    max_peers: usize,
    /// Chunk uploads a node serves at once; more are answered busy.
    #[arg(long, env = "SIM_MAX_UPLOADS", default_value_t = 8)]
    max_uploads: usize,
    /// How long a downloader leaves a peer alone after a busy answer.
    #[arg(long, env = "SIM_BUSY_BACKOFF", default_value = "250ms", value_parser = parse_duration)]
    busy_backoff: Duration,
    /// A node declines a chunk it sent this recently (super-seeding; 0s turns it off).
    #[arg(long, env = "SIM_RESEND_AFTER", default_value = "1s", value_parser = parse_duration)]
    resend_after: Duration,
    /// How long a downloader does not ask a peer again for a chunk it declined.
    #[arg(long, env = "SIM_DECLINE_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    decline_backoff: Duration,
    /// How long a request an uploader cannot serve now waits there before it is refused (0s,
    /// production's default: refused at once).
    #[arg(long, env = "SIM_MAX_WAIT", default_value = "0s", value_parser = parse_duration)]
    max_wait: Duration,
    /// Requests one uploader holds waiting at once.
    #[arg(long, env = "SIM_MAX_WAITING", default_value_t = 64)]
    max_waiting: usize,
    /// Rolling update: this fraction of the nodes at a time (e.g. 0.2); default all at once.
    #[arg(long, env = "SIM_ROLLING")]
    rolling: Option<f64>,
    /// Kill the origin puller at this time (e.g. 10s).
    #[arg(long, env = "SIM_KILL_PULLER_AT", value_parser = parse_duration)]
    kill_puller_at: Option<Duration>,
    /// Kill one other node at this time.
    #[arg(long, env = "SIM_KILL_NODE_AT", value_parser = parse_duration)]
    kill_node_at: Option<Duration>,
    /// Shared-CPU model: cores all hosts share (0: no CPU model, the network alone).
    #[arg(long, env = "SIM_CPU_CORES", default_value_t = 0.0)]
    cpu_cores: f64,
    /// Shared-CPU model: CPU-seconds each GiB delivered costs (0: no CPU model).
    #[arg(long, env = "SIM_CPU_PER_GIB", default_value_t = 0.0)]
    cpu_per_gib: f64,
    /// Random seed.
    #[arg(long, env = "SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Print the whole result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG plot of per-node completion times here.
    #[arg(long, env = "SIM_SVG")]
    svg: Option<PathBuf>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    units::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}

/// `100Mbit`, `1Gbit`, `500kbit` (bits per second) or a byte rate such as `50MiB/s`; bytes/s out.
pub fn parse_link(s: &str) -> Result<f64, String> {
    let lower = s.trim().to_ascii_lowercase();
    for (suffix, mult) in [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
        if let Some(num) = lower.strip_suffix(suffix) {
            let v: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("invalid rate {s:?}: expected e.g. 100Mbit or 50MiB/s"))?;
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("invalid rate {s:?}: must be positive"));
            }
            return Ok(bps(v * mult));
        }
    }
    units::parse_rate(s)
        .map(|v| v as f64)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let chunk_size = match u32::try_from(args.chunk_size) {
        Ok(c) => c,
        Err(_) => {
            eprintln!("error: chunk size too large");
            return ExitCode::from(2);
        }
    };
    let layers = args.layers.max(1);
    let mut sizes = vec![args.image_size / layers; usize::try_from(layers).unwrap_or(1)];
    if let Some(last) = sizes.last_mut() {
        *last += args.image_size % layers;
    }
    if args.config_blob > 0 {
        sizes.insert(0, args.config_blob);
    }
    let links = Links {
        up: args.up,
        down: args.down,
    };
    let mut cfg = SimConfig::uniform(args.nodes, links, args.origin_up, sizes);
    cfg.chunk_size = chunk_size;
    cfg.rtt = args.rtt;
    cfg.dht_lookup = args.dht_lookup;
    cfg.max_peers = args.max_peers;
    cfg.max_uploads = args.max_uploads;
    cfg.transfer.busy_backoff = args.busy_backoff;
    cfg.resend_after = args.resend_after;
    cfg.transfer.decline_backoff = args.decline_backoff;
    cfg.max_wait = args.max_wait;
    cfg.max_waiting = args.max_waiting;
    cfg.seed = args.seed;
    cfg.cpu_cores = args.cpu_cores;
    cfg.cpu_per_gib = args.cpu_per_gib;
    if let Some(fraction) = args.rolling {
        cfg.start = StartPattern::Rolling { fraction };
    }
    if let Some(at) = args.kill_puller_at {
        cfg.churn.push(Churn {
            at: at.as_secs_f64(),
            victim: Victim::Puller,
        });
    }
    if let Some(at) = args.kill_node_at {
        cfg.churn.push(Churn {
            at: at.as_secs_f64(),
            victim: Victim::Other,
        });
    }
    let res = match preheat_simulations::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let row = Row::new(
        "image-preheat (simulated)",
        res.completions(),
        Some(res.origin_bytes),
        res.bound_seconds,
    );
    if let Some(path) = &args.svg {
        let title = format!("{} nodes, simulated", args.nodes);
        if let Err(e) = std::fs::write(
            path,
            report::svg(&title, std::slice::from_ref(&row), res.bound_seconds),
        ) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&res) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let title = format!(
            "{} nodes, {} image in {} layers, bound {:.1} s (origin {:.1}, download {:.1}, aggregate {:.1}), {} events",
            res.nodes,
            units::format_bytes(res.image_bytes),
            layers,
            res.bound_seconds,
            res.bound.origin,
            res.bound.download,
            res.bound.aggregate,
            res.events
        );
        print!("{}", report::markdown(&title, &[row], res.image_bytes));
        let c = &res.counters;
        println!(
            "\nrequests {}, busy {}, declined {}, duplicates {}",
            c.requests, c.busy, c.declined, c.duplicates
        );
        if res.unfinished > 0 {
            println!("\n{} nodes did not finish", res.unfinished);
        }
    }
    ExitCode::SUCCESS
}
