//! `preheat-fixture`: starts a real docker-registry on loopback, pushes a generated test image to it,
//! writes "REFERENCE REGISTRY_HOST" to `--ready-file` (or stdout) and serves until SIGINT/SIGTERM.
//! Used by `make demo`; handy for trying the CLI by hand.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use preheat_testkit::{ImageBuilder, Registry, MIN_LAYER_SIZE};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(about = "Start a local docker-registry with a generated test image")]
struct Args {
    /// Directory for the registry's config, storage and log (kept afterwards).
    #[arg(long, env = "FIXTURE_DIR")]
    dir: PathBuf,
    /// Total image size, split evenly over the layers (e.g. 200MiB).
    #[arg(long, default_value = "200MiB", value_parser = parse_bytes)]
    size: u64,
    /// Number of layers.
    #[arg(long, default_value_t = 4)]
    layers: u64,
    /// Repository and tag to push.
    #[arg(long, default_value = "demo/app:1")]
    repo: String,
    /// Seed of the random layer content (same seed, same digests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// File (or FIFO) that receives "REFERENCE REGISTRY_HOST" once the image is pushed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    preheat_core::units::parse_bytes(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.layers == 0 || args.size / args.layers < MIN_LAYER_SIZE {
        bail!("each layer must be at least {MIN_LAYER_SIZE} bytes: raise --size or lower --layers");
    }
    let mut sizes = vec![args.size / args.layers; usize::try_from(args.layers)?];
    if let Some(last) = sizes.last_mut() {
        *last += args.size % args.layers;
    }
    let registry = Registry::builder().dir(&args.dir).start().await?;
    let image = ImageBuilder::new()
        .seed(args.seed)
        .layers(&sizes)
        .push(&registry, &args.repo)
        .await
        .context("pushing the test image")?;
    eprintln!(
        "preheat-fixture: registry {} serves {} ({} layers, {} bytes, manifest {})",
        registry.host(),
        image.reference,
        image.layers.len(),
        image.total_size,
        image.manifest_digest
    );
    let line = format!("{} {}\n", image.reference, registry.host());
    match &args.ready_file {
        Some(path) => tokio::fs::write(path, line)
            .await
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{line}"),
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(registry);
    Ok(())
}
