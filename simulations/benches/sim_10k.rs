//! Benchmark (not a test): 10,000 nodes and a 1 GiB image on 1 Gbit/s links, origin 10 Gbit/s.
//! `cargo bench -p preheat-simulations` prints wall time and the result; set SIM_BENCH_NODES or
//! SIM_BENCH_IMAGE_MIB for a smaller run.

use std::time::Instant;

use preheat_simulations::{bps, run, Links, SimConfig};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = usize::try_from(env("SIM_BENCH_NODES", 10_000)).unwrap_or(10_000);
    let image = env("SIM_BENCH_IMAGE_MIB", 1024) << 20;
    let links = Links {
        up: bps(1e9),
        down: bps(1e9),
    };
    let cfg = SimConfig::uniform(nodes, links, bps(10e9), vec![image / 4; 4]);
    let started = Instant::now();
    match run(&cfg) {
        Ok(res) => println!(
            "{nodes} nodes, {} MiB: wall {:.1} s, {} events, simulated p50 {:?} s p100 {:?} s, bound {:.1} s",
            image >> 20,
            started.elapsed().as_secs_f64(),
            res.events,
            res.p50,
            res.p100,
            res.bound_seconds
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
