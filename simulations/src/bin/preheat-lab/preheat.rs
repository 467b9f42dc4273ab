//! Scenarios (a) and (e): `image-preheat agent` on every host (store only, coordination-free
//! election, peers from the lab DNS name); once all agents are up and connected, the image is
//! written to the hosts' image lists — all at once, in rolling waves, or all at once with the
//! registry puller or another host killed mid-transfer. A host completes when its agent logs
//! "image preheated".

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use preheat_testkit::netns::LabProcess;

use crate::scenarios::Measured;
use crate::setup::{Env, NAME, REGISTRY_PORT};

/// Time for agents to start and for DNS discovery (1 s rounds) to connect them.
const STARTUP: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(3);

pub struct PreheatRun {
    pub label: String,
    pub measured: Measured,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts one agent per host; returns them with their log paths and list files.
fn start_agents(env: &Env, bin: &Path, dir: &Path) -> Result<Vec<(LabProcess, PathBuf, PathBuf)>> {
    let origin = format!("{}:{REGISTRY_PORT}", env.origin().ip());
    let mut agents = Vec::new();
    for h in env.hosts() {
        let hd = dir.join(format!("h{}", h.index()));
        let list_dir = hd.join("list");
        let mount = hd.join("mount");
        std::fs::create_dir_all(&list_dir)?;
        std::fs::create_dir_all(&mount)?;
        let list = list_dir.join("images.list");
        std::fs::write(&list, "")?;
        let log = hd.join("agent.log");
        let mut cmd = h.command(bin);
        cmd.arg("agent")
            .args(["--node-name", &format!("lab-h{}", h.index())])
            .arg("--store")
            .arg(hd.join("store"))
            .arg("--image-list")
            .arg(&list)
            .arg("--mount-dir")
            .arg(&mount)
            .args(["--lease", "none", "--runtime", "none"])
            .arg("--chunk-size")
            .arg(crate::LAB_CHUNK_SIZE.to_string())
            .args([
                "--swarm-addr",
                "0.0.0.0:4001",
                "--http-addr",
                "127.0.0.1:8080",
            ])
            .args(["--peers-dns", NAME, "--peer-discovery-interval", "1s"])
            .args(["--external-addr", &h.ip().to_string()])
            .args(["--insecure-registry", &origin])
            .env("LOG_FORMAT", "json")
            .env(
                "LOG_LEVEL",
                std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(File::create(hd.join("agent.out"))?)
            .stderr(File::create(&log)?);
        agents.push((h.spawn(&mut cmd)?, log, list));
    }
    Ok(agents)
}

/// How the image reaches the hosts' lists, and who dies.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// (a) every host at once.
    AllAtOnce,
    /// (e) waves of this fraction of the hosts; a wave starts when the previous one completed.
    Rolling(f64),
    /// (e) every host at once; `at` after the start, the registry puller's (or another host's)
    /// agent is killed.
    Kill { puller: bool, at: Duration },
}

impl Plan {
    pub fn label(&self) -> String {
        match self {
            Plan::AllAtOnce => "image-preheat (agents, all at once)".into(),
            Plan::Rolling(f) => format!("image-preheat, rolling {:.0}%", f * 100.0),
            Plan::Kill { puller: true, at } => {
                format!("image-preheat, puller killed at {}s", at.as_secs())
            }
            Plan::Kill { puller: false, at } => {
                format!("image-preheat, a host killed at {}s", at.as_secs())
            }
        }
    }
}

/// Runs one image-preheat scenario on fresh agents.
pub fn run(env: &Env, bin: &Path, bound: Duration, plan: Plan) -> Result<PreheatRun> {
    let dir = env.dir.join("preheat");
    let mut agents = start_agents(env, bin, &dir)?;
    let until = Instant::now() + STARTUP;
    for (i, (p, log, _)) in agents.iter_mut().enumerate() {
        while !read(log).contains("agent started") {
            if let Ok(Some(status)) = p.try_wait() {
                bail!(
                    "agent on host {i} exited ({status}) at start:\n{}",
                    read(log)
                );
            }
            if Instant::now() >= until {
                bail!(
                    "agent on host {i} did not start within {STARTUP:?}:\n{}",
                    read(log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(SETTLE);
    let n = agents.len();
    let registry_lines = read(&env.registry_log).lines().count();
    let before = env.origin_body_bytes()?;
    let text = format!("{}\n", env.reference);
    let per_wave = match plan {
        // A fraction in (0, 1] of at most 240 hosts.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Plan::Rolling(f) => ((n as f64 * f).ceil() as usize).clamp(1, n),
        _ => n,
    };
    let idle = crate::cpu::idle_rate(Duration::from_secs(2));
    let cpu_before = crate::cpu::busy_seconds();
    let start = Instant::now();
    let mut started: Vec<Option<f64>> = vec![None; n];
    let mut completions: Vec<Option<f64>> = vec![None; n];
    let mut killed: Option<usize> = None;
    let mut next = 0;
    let mut registry_bytes = 0u64;
    while start.elapsed() < bound {
        let wave_done = (0..next).all(|i| completions[i].is_some() || killed == Some(i));
        if wave_done && next < n {
            let now = start.elapsed().as_secs_f64();
            for (i, (_, _, list)) in agents.iter().enumerate().skip(next).take(per_wave) {
                let tmp = list.with_extension("tmp");
                std::fs::write(&tmp, &text)?;
                std::fs::rename(&tmp, list).context("publishing the image list")?;
                started[i] = Some(now);
            }
            next = (next + per_wave).min(n);
        }
        if let Plan::Kill { puller, at } = plan {
            if killed.is_none() && start.elapsed() >= at {
                let ip = if puller {
                    puller_ip_since(env, registry_lines)
                } else {
                    None
                };
                let victim = match ip {
                    Some(ip) => env.hosts().iter().position(|h| h.ip().to_string() == ip),
                    None if puller => None,
                    // Not the puller: the first host still downloading that is not it.
                    None => {
                        let p = puller_ip_since(env, registry_lines);
                        (0..n).find(|&i| {
                            completions[i].is_none() && Some(env.hosts()[i].ip().to_string()) != p
                        })
                    }
                };
                if let Some(v) = victim {
                    agents[v].0.kill()?;
                    killed = Some(v);
                    eprintln!(
                        "killed the agent on host {v} at {:.1}s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        for (i, (_, log, _)) in agents.iter().enumerate() {
            let (Some(t0), None) = (started[i], completions[i]) else {
                continue;
            };
            if killed == Some(i) {
                continue;
            }
            let text = read(log);
            if let Some(line) = text.lines().find(|l| l.contains("image preheated")) {
                completions[i] = Some(start.elapsed().as_secs_f64() - t0);
                registry_bytes += serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| {
                        // Agents log flattened JSON events; nested `fields` is tracing's default.
                        v.get("registry_bytes")
                            .or_else(|| v.pointer("/fields/registry_bytes"))
                            .and_then(serde_json::Value::as_u64)
                    })
                    .unwrap_or(0);
            }
        }
        if next >= n && (0..n).all(|i| completions[i].is_some() || killed == Some(i)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu_busy = crate::cpu::busy_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before - idle.unwrap_or(0.0) * wall)
        .map(|b| b.max(0.0));
    std::thread::sleep(Duration::from_millis(300));
    let origin_bytes = env.origin_body_bytes()? - before;
    for (i, c) in completions.iter().enumerate() {
        if c.is_none() && killed != Some(i) {
            let log = read(&agents[i].1);
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!(
                "host {i} did not finish; agent log tail: {}",
                tail.join(" | ")
            );
        }
    }
    drop(agents);
    keep_logs(&dir, &plan.label(), env.hosts().len());
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(k) = killed {
        completions.remove(k);
    }
    let image: u64 = env.image.blobs().iter().map(|b| b.1).sum();
    let delivered = image * completions.iter().flatten().count() as u64;
    let cpu_per_gib = cpu_busy.and_then(|b| crate::cpu::per_gib(b, delivered));
    let mut note = format!(
        "coordination-free election (LEASE=none); agents reported {} MiB from the registry",
        registry_bytes >> 20
    );
    match (plan, killed) {
        (Plan::Kill { .. }, None) => {
            note.push_str("; nobody was killed (done before the kill time)")
        }
        (Plan::Kill { .. }, Some(k)) => {
            note.push_str(&format!("; host {k} killed, its time excluded"))
        }
        (Plan::Rolling(_), _) => note.push_str(&format!(
            "; waves of {per_wave}, times from each host's own start"
        )),
        _ => {}
    }
    if let (Some(per_gib), Some(busy)) = (cpu_per_gib, cpu_busy) {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        note.push_str(&format!(
            "; CPU {per_gib:.1} s per GiB delivered ({busy:.0} CPU-s above the idle {:.2} CPU-s/s, {:.0}% of {cores} cores)",
            idle.unwrap_or(0.0),
            100.0 * busy / (wall * cores as f64)
        ));
    }
    Ok(PreheatRun {
        label: plan.label(),
        measured: Measured {
            completions,
            origin_bytes,
            note,
            cpu_per_gib,
        },
    })
}

/// [`puller_ip`] over the registry log lines after the first `skip`.
fn puller_ip_since(env: &Env, skip: usize) -> Option<String> {
    let text = read(&env.registry_log);
    text.lines()
        .skip(skip)
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
        .find_map(|l| l.split_whitespace().next().map(str::to_owned))
}

/// With `BENCH_KEEP=DIR`, copies each host's agent log to `DIR/<scenario>/h<i>.log`.
fn keep_logs(dir: &Path, label: &str, hosts: usize) {
    let Some(keep) = std::env::var_os("BENCH_KEEP") else {
        return;
    };
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let to = Path::new(&keep).join(name);
    let _ = std::fs::create_dir_all(&to);
    for i in 0..hosts {
        let from = dir.join(format!("h{i}")).join("agent.log");
        let _ = std::fs::copy(from, to.join(format!("h{i}.log")));
    }
}
