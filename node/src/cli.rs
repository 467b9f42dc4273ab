//! Command-line interface: flags (each with an env twin) and the subcommands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use image_preheat::pull::{pull_image_via, PullError};
use image_preheat::registry::{RegistryClient, RegistryConfig, RetryPolicy};
use image_preheat::swarm_pull::PeerSource;
use preheat_core::manifest::Platform;
use preheat_core::reference::Reference;
use preheat_core::units;
use preheat_store::{Store, StoreConfig};

use crate::agent::{self, AgentArgs, ClientSwarmArgs, FetchBlobArgs};
use crate::logging::LogFormat;
use crate::progress::Progress;

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Gets container images onto every node fast without hammering the registry.
#[derive(Debug, Parser)]
#[command(name = "image-preheat", version, about)]
pub struct Cli {
    /// Log format: auto (JSON when stderr is not a terminal), json or text.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. info or image_preheat=debug.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image from its registry into the local store.
    Pull(PullArgs),
    /// List the images in the local store.
    Images(ImagesArgs),
    /// Run the node agent: keep the listed images in the store and the runtimes, serve peers and
    /// the node HTTP API, until SIGTERM or SIGINT.
    Agent(Box<AgentArgs>),
    /// Fetch one blob through the swarm into the local store (debugging aid), serve it a while, exit.
    FetchBlob(FetchBlobArgs),
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory of the content store.
    #[arg(
        long = "store",
        env = "STORE_DIR",
        default_value = "/var/lib/image-preheat"
    )]
    pub dir: PathBuf,
    /// Size cap of the store (e.g. 50GiB); least recently used blobs of unwanted images are evicted.
    #[arg(long, env = "STORE_MAX_BYTES", value_parser = parse_bytes)]
    pub store_max_bytes: Option<u64>,
    /// Chunk size of the per-blob chunk index (e.g. 4MiB).
    #[arg(long, env = "CHUNK_SIZE", default_value = "4MiB", value_parser = parse_chunk_size)]
    pub chunk_size: u32,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Platform to pick from a multi-platform image, OS/ARCH[/VARIANT] (default: this host's).
    #[arg(long, env = "PLATFORM")]
    pub platform: Option<Platform>,
    /// Registry (HOST:PORT) reached over plain HTTP; repeatable.
    #[arg(
        long = "insecure-registry",
        env = "INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure: Vec<String>,
    /// Extra CA certificate (PEM) trusted for registries; repeatable.
    #[arg(long = "registry-ca", env = "REGISTRY_CA_FILES", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,
    /// Docker config directory or config.json file holding registry credentials (a mounted pull secret).
    #[arg(long = "docker-config", env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. nginx:1.27, registry.example.com:5000/team/app@sha256:...
    pub reference: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// With --peer or --peers-dns, blobs are fetched through the swarm first and from the registry
    /// only when no peer has them.
    #[command(flatten)]
    pub swarm: ClientSwarmArgs,
    /// How long to look for a peer that has a blob before going to the registry (e.g. 10s).
    #[arg(long, env = "SWARM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub swarm_timeout: Duration,
    /// Bound on downloading one blob from peers once one was found (e.g. 10m); then the registry
    /// resumes from the chunks received.
    #[arg(long, env = "PEER_FETCH_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub peer_fetch_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    units::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    use preheat_core::chunk::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
    let v = parse_bytes(s)?;
    u32::try_from(v)
        .ok()
        .filter(|v| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(v))
        .ok_or_else(|| {
            format!("chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
        })
}

impl StoreArgs {
    pub(crate) async fn open(&self) -> Result<Store, u8> {
        let cfg = StoreConfig {
            dir: self.dir.clone(),
            max_bytes: self.store_max_bytes,
            chunk_size: self.chunk_size,
        };
        Store::open(cfg).await.map_err(|e| {
            eprintln!(
                "error: cannot open the store at {}: {e}",
                self.dir.display()
            );
            EXIT_RUNTIME
        })
    }
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        let docker_config = self.docker_config.as_ref().map(|p| {
            if p.is_dir() {
                p.join("config.json")
            } else {
                p.clone()
            }
        });
        RegistryConfig {
            insecure: self.insecure.iter().map(|s| s.trim().to_owned()).collect(),
            ca_files: self.ca_files.clone(),
            docker_config,
            platform: self.platform.clone().unwrap_or_else(Platform::host),
            retry: RetryPolicy::default(),
        }
    }
}

pub async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Pull(args) => pull(args).await,
        Command::Images(args) => images(args).await,
        Command::Agent(args) => agent::agent(*args).await,
        Command::FetchBlob(args) => agent::fetch_blob(args).await,
    }
}

async fn pull(args: PullArgs) -> u8 {
    let reference: Reference = match args.reference.parse() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: invalid image reference {:?}: {e}", args.reference);
            return EXIT_USAGE;
        }
    };
    let client = match RegistryClient::new(args.registry.config()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let store = match args.store.open().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let peers = if args.swarm.peers.any() {
        let cfg = args.swarm.peers.swarm_config(args.swarm.swarm_addr);
        match agent::start_node("pull", &args.store, store.clone(), cfg).await {
            Ok(h) => Some(PeerSource::new(
                h,
                args.swarm_timeout,
                args.peer_fetch_timeout,
            )),
            Err(code) => return code,
        }
    } else {
        None
    };
    let progress = Arc::new(Progress::new(&reference.to_string()));
    let started = Instant::now();
    let result = tokio::select! {
        r = pull_image_via(&client, &store, &reference, progress.as_ref(), peers.as_ref()) => r,
        _ = tokio::signal::ctrl_c() => Err(PullError::Interrupted),
    };
    progress.finish();
    if let Some(p) = &peers {
        agent::stop_node(p.handle()).await;
    }
    match result {
        Ok(report) => {
            tracing::info!(
                reference = %report.reference,
                digest = %report.manifest,
                total_bytes = report.total_bytes,
                registry_bytes = report.fetched_bytes,
                present_bytes = report.present_bytes,
                peer_bytes = report.peer_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "image pulled"
            );
            let from_peers = if peers.is_some() {
                format!("{} from peers, ", units::format_bytes(report.peer_bytes))
            } else {
                String::new()
            };
            println!(
                "pulled {} {} ({}, {from_peers}{} from the registry, {} already stored) in {:.1}s",
                report.reference,
                report.manifest,
                units::format_bytes(report.total_bytes),
                units::format_bytes(report.fetched_bytes),
                units::format_bytes(report.present_bytes),
                started.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) => {
            eprintln!(
                "error: pull of {reference} failed: {}",
                agent::error_chain(&e)
            );
            EXIT_RUNTIME
        }
    }
}

async fn images(args: ImagesArgs) -> u8 {
    let store = match args.store.open().await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let list = match store.images().await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot list images: {e}");
            return EXIT_RUNTIME;
        }
    };
    if args.json {
        let rows: Vec<_> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "reference": s.record.reference,
                    "digest": s.record.manifest.to_string(),
                    "size": s.size,
                    "storedBytes": s.stored_bytes,
                    "state": if s.complete { "complete" } else { "partial" },
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return 0;
    }
    println!("{:<50} {:<19} {:>10} STATE", "REFERENCE", "DIGEST", "SIZE");
    for s in &list {
        let digest = s.record.manifest.to_string();
        let short = digest.get(..19).unwrap_or(&digest);
        let state = if s.complete {
            "complete".to_owned()
        } else {
            format!("partial {}", units::format_bytes(s.stored_bytes))
        };
        println!(
            "{:<50} {:<19} {:>10} {state}",
            s.record.reference,
            short,
            units::format_bytes(s.size)
        );
    }
    0
}
