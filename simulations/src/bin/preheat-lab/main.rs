//! `preheat-lab` (run as root by `make bench`): the emulated-network benchmark. Per profile it
//! builds a netns lab with tc-shaped links, serves a generated image from a real registry in
//! the origin's namespace, runs the scenarios one after another, runs the simulator with the
//! same parameters, and writes a markdown table, JSON and an SVG plot per profile.
//! `preheat-lab loopback` measures two agents on loopback against curl (see `loopback.rs`).
//! Namespaces and processes are removed on exit, also after a failure; `preheat-lab cleanup`
//! removes what a killed run left behind.

mod cpu;
mod loopback;
mod preheat;
mod scenarios;
mod setup;
mod torrent;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use preheat_core::units;
use preheat_simulations::report::{self, Row};
use preheat_simulations::{bps, Links, SimConfig};
use serde_json::json;

use crate::preheat::Plan;
use crate::scenarios::Measured;
use crate::setup::{Env, Profile};

/// Emulated-network benchmark of image-preheat against registry-direct, BitTorrent and the
/// Kumar–Ross bound.
#[derive(Debug, Parser)]
#[command(name = "preheat-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    lab: LabArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Remove namespaces and processes left by killed runs.
    Cleanup,
    /// Single-host figures: a blob between two agents on loopback vs curl from an HTTP server.
    Loopback(loopback::Args),
}

#[derive(Debug, clap::Args)]
struct LabArgs {
    /// Profiles to run: slow (origin 50 Mbit/s), fast (origin 1 Gbit/s); comma-separated.
    #[arg(
        long,
        env = "BENCH_PROFILES",
        value_delimiter = ',',
        default_value = "slow,fast"
    )]
    profiles: Vec<String>,
    /// Scenarios: preheat, direct, bittorrent, churn-host, churn-puller, rolling (20% of the hosts
    /// at a time); comma-separated (the bound and the simulator always run).
    #[arg(
        long,
        env = "BENCH_SCENARIOS",
        value_delimiter = ',',
        default_value = "preheat,direct,bittorrent,churn-host,churn-puller,rolling"
    )]
    scenarios: Vec<String>,
    /// Hosts per lab.
    #[arg(long, env = "BENCH_HOSTS", default_value_t = 16)]
    hosts: usize,
    /// Image size.
    #[arg(long, env = "BENCH_IMAGE_SIZE", default_value = "128MiB", value_parser = parse_bytes)]
    image_size: u64,
    /// Layers of the image.
    #[arg(long, env = "BENCH_LAYERS", default_value_t = 4)]
    layers: u64,
    /// The image-preheat binary (a release build).
    #[arg(
        long,
        env = "IMAGE_PREHEAT_BIN",
        default_value = "target/release/image-preheat"
    )]
    bin: PathBuf,
    /// Where tables, JSON and plots go.
    #[arg(long, env = "BENCH_OUT", default_value = "bench/results")]
    out: PathBuf,
    /// Directory for the lab's registry storage, stores and downloads (tmpfs keeps disks out
    /// of the measurement).
    #[arg(long, env = "BENCH_WORK_DIR", default_value = "/dev/shm")]
    work_dir: PathBuf,
    /// Bound on one scenario (e.g. 12m).
    #[arg(long, env = "BENCH_SCENARIO_TIMEOUT", default_value = "12m", value_parser = parse_duration)]
    scenario_timeout: Duration,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    units::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}

fn profile(name: &str, a: &LabArgs) -> Option<Profile> {
    let origin_bps = match name {
        "slow" => 50_000_000,
        "fast" => 1_000_000_000,
        _ => return None,
    };
    Some(Profile {
        name: if name == "slow" {
            "slow origin"
        } else {
            "fast origin"
        },
        hosts: a.hosts,
        host_bps: 100_000_000,
        origin_bps,
        image_bytes: a.image_size,
        layers: a.layers,
    })
}

/// A short description of this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}

fn row(name: &str, m: &Measured, bound: f64) -> Row {
    let finished: Vec<f64> = m.completions.iter().flatten().copied().collect();
    let missing = m.completions.len() - finished.len();
    let mut r = Row::new(name, finished, Some(m.origin_bytes), bound).with_note(m.note.clone());
    r.cpu_per_gib = m.cpu_per_gib;
    if missing > 0 {
        r.p100 = None;
        r.ratio_to_bound = None;
        r.note = format!("{} — {missing} hosts did not finish", r.note);
    }
    r
}

/// Chunk size of the lab's agents and of its simulator runs: 1 MiB (the default, 4 MiB, is for
/// large images; with 128 MiB on 16 hosts, smaller chunks pipeline better).
pub(crate) const LAB_CHUNK_SIZE: u32 = 1024 * 1024;

fn sim_config(p: &Profile, blobs: &[u64]) -> SimConfig {
    let links = Links {
        up: bps(p.host_bps as f64),
        down: bps(p.host_bps as f64),
    };
    let mut cfg = SimConfig::uniform(p.hosts, links, bps(p.origin_bps as f64), blobs.to_vec());
    cfg.chunk_size = LAB_CHUNK_SIZE;
    cfg
}

fn run_profile(
    p: &Profile,
    a: &LabArgs,
    rt: &tokio::runtime::Runtime,
) -> Result<serde_json::Value> {
    let tmp = tempfile::Builder::new()
        .prefix("preheat-lab-")
        .tempdir_in(&a.work_dir)
        .with_context(|| format!("creating a work dir in {}", a.work_dir.display()))?;
    eprintln!("== profile {}: building the lab", p.name);
    let env = rt.block_on(Env::start(p, tmp.path()))?;
    let blobs: Vec<u64> = env.image.blobs().iter().map(|b| b.1).collect();
    let cfg = sim_config(p, &blobs);
    let bound = cfg.bound();
    let b = bound.seconds();
    let mut rows = Vec::new();
    let want = |s: &str| a.scenarios.iter().any(|x| x == s);
    let mut measured_a = None;
    if want("preheat") {
        eprintln!("== {}: (a) image-preheat", p.name);
        let m = preheat::run(&env, &a.bin, a.scenario_timeout, Plan::AllAtOnce)?;
        rows.push(row(&m.label, &m.measured, b));
        measured_a = Some(rows.len() - 1);
    }
    // Kill mid-transfer: at 40% of (a)'s median, or of the bound without (a).
    let at = measured_a
        .and_then(|i| rows[i].p50)
        .map_or(b * 0.4, |p50| p50 * 0.4)
        .max(2.0);
    let plans = [
        ("rolling", Plan::Rolling(0.2)),
        (
            "churn-host",
            Plan::Kill {
                puller: false,
                at: Duration::from_secs_f64(at),
            },
        ),
        (
            "churn-puller",
            Plan::Kill {
                puller: true,
                at: Duration::from_secs_f64(at),
            },
        ),
    ];
    let mut rolling_cpu = None;
    for (name, plan) in plans {
        if want(name) {
            eprintln!("== {}: (e) {}", p.name, plan.label());
            let m = preheat::run(&env, &a.bin, a.scenario_timeout, plan)?;
            if name == "rolling" {
                rolling_cpu = m.measured.cpu_per_gib;
            }
            rows.push(row(&m.label, &m.measured, b));
        }
    }
    if want("direct") {
        eprintln!("== {}: (b) registry-direct", p.name);
        let m = scenarios::registry_direct(&env, a.scenario_timeout)?;
        rows.push(row("registry-direct", &m, b));
    }
    if want("bittorrent") {
        eprintln!("== {}: (c) BitTorrent", p.name);
        let m = scenarios::bittorrent(&env, a.scenario_timeout)?;
        rows.push(row("BitTorrent (aria2c)", &m, b));
    }
    drop(env);
    let sim = preheat_simulations::run(&cfg)?;
    let net_row = Row::new(
        "image-preheat, simulator (network only)",
        sim.completions(),
        Some(sim.origin_bytes),
        b,
    )
    .with_note("same links and blobs, production protocol defaults, CPU not modelled");
    rows.push(net_row.clone());
    // The shared-CPU model, calibrated on the rolling scenario (not on (a), which it predicts).
    let own_a = measured_a.and_then(|i| rows[i].cpu_per_gib);
    let calibration = rolling_cpu.map(|c| (c, "rolling")).or(own_a.map(|c| {
        (
            c,
            "(a) itself: rolling not run, so not an independent check",
        )
    }));
    let cpu_row = match calibration {
        Some((per_gib, from)) => {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            let mut c = cfg.clone();
            c.cpu_cores = cores as f64;
            c.cpu_per_gib = per_gib;
            let sim = preheat_simulations::run(&c)?;
            let r = Row::new(
                "image-preheat, simulator (shared CPU)",
                sim.completions(),
                Some(sim.origin_bytes),
                b,
            )
            .with_note(format!(
                "as network only, plus {cores} cores shared by all hosts at {per_gib:.1} CPU-s per GiB (measured in {from})"
            ));
            rows.push(r.clone());
            Some((r, per_gib, from))
        }
        None => None,
    };
    let mut bound_row = Row::new("Kumar–Ross bound", vec![b; p.hosts], None, b);
    bound_row.p50 = None;
    bound_row.note = format!(
        "max(F/u_s {:.1}, F/d_min {:.1}, N·F/(u_s+Σu_i) {:.1})",
        bound.origin, bound.download, bound.aggregate
    );
    bound_row.completions.clear();
    rows.push(bound_row);
    report::fill_speedups(&mut rows, "registry-direct");
    let fidelity = measured_a.map(|i| {
        let lab = &rows[i];
        let err = |s: Option<f64>, l: Option<f64>| s.zip(l).map(|(s, l)| (s - l) / l);
        // The headline error is the CPU model's when it ran, else the network-only one.
        let (best, per_gib, from) = match &cpu_row {
            Some((r, per_gib, from)) => (r, Some(*per_gib), Some(*from)),
            None => (&net_row, None, None),
        };
        json!({
            "labScenario": lab.scenario,
            "simulatorScenario": best.scenario,
            "p50Error": err(best.p50, lab.p50),
            "p100Error": err(best.p100, lab.p100),
            "cpuPerGib": per_gib,
            "cpuCalibratedOn": from,
            "networkOnly": {
                "p50Error": err(net_row.p50, lab.p50),
                "p100Error": err(net_row.p100, lab.p100),
            },
        })
    });
    let payload: u64 = blobs.iter().sum();
    let title = format!(
        "{}: {} hosts at {} Mbit/s each way, origin upload {} Mbit/s, {} image in {} layers",
        p.name,
        p.hosts,
        p.host_bps / 1_000_000,
        p.origin_bps / 1_000_000,
        units::format_bytes(p.image_bytes),
        p.layers
    );
    let mut md = report::markdown(&title, &rows, payload);
    if let Some(f) = &fidelity {
        md.push_str(&format!(
            "\nSimulator vs lab ({}): {}: p50 error {}, p100 error {}; network only: p50 error {}, p100 error {}\n",
            f["labScenario"].as_str().unwrap_or_default(),
            f["simulatorScenario"].as_str().unwrap_or_default(),
            pct(&f["p50Error"]),
            pct(&f["p100Error"]),
            pct(&f["networkOnly"]["p50Error"]),
            pct(&f["networkOnly"]["p100Error"])
        ));
    }
    let slug = p.name.replace(' ', "-");
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join(format!("{slug}.md")), &md)?;
    std::fs::write(
        a.out.join(format!("{slug}.svg")),
        report::svg(&title, &rows, b),
    )?;
    let doc = json!({
        "profile": p.name,
        "machine": machine(),
        "hosts": p.hosts,
        "hostBps": p.host_bps,
        "originBps": p.origin_bps,
        "payloadBytes": payload,
        "bound": bound,
        "boundSeconds": b,
        "rows": rows,
        "fidelity": fidelity,
    });
    std::fs::write(
        a.out.join(format!("{slug}.json")),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    print!("{md}");
    Ok(doc)
}

fn pct(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |e| format!("{:+.0}%", e * 100.0))
}

fn run_lab(a: &LabArgs) -> Result<()> {
    let removed = preheat_testkit::netns::cleanup_stale()?;
    if removed > 0 {
        eprintln!("removed {removed} namespaces left by earlier runs");
    }
    let agents = ["preheat", "rolling", "churn-host", "churn-puller"];
    if a.scenarios.iter().any(|s| agents.contains(&s.as_str())) && !Path::new(&a.bin).exists() {
        anyhow::bail!(
            "{} does not exist: build it with cargo build --release -p image-preheat",
            a.bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut docs = Vec::new();
    for name in &a.profiles {
        let p =
            profile(name, a).with_context(|| format!("unknown profile {name:?} (slow, fast)"))?;
        docs.push(run_profile(&p, a, &rt)?);
    }
    std::fs::write(a.out.join("lab.json"), serde_json::to_vec_pretty(&docs)?)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match &cli.command {
        Some(Cmd::Cleanup) => {
            preheat_testkit::netns::cleanup_stale().map(|n| eprintln!("removed {n} namespaces"))
        }
        Some(Cmd::Loopback(args)) => loopback::run(args),
        None => run_lab(&cli.lab),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
