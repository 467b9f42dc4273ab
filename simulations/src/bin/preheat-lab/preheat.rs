//! Scenario (a): `image-preheat agent` on every host (store only, coordination-free election,
//! peers from the lab DNS name); once all agents are up and connected, the image is written to
//! every host's image list at the same moment. A host completes when its agent logs
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
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(File::create(hd.join("agent.out"))?)
            .stderr(File::create(&log)?);
        agents.push((h.spawn(&mut cmd)?, log, list));
    }
    Ok(agents)
}

/// (a) every host is given the image at once.
pub fn all_at_once(env: &Env, bin: &Path, bound: Duration) -> Result<PreheatRun> {
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
    let before = env.origin_body_bytes()?;
    let text = format!("{}\n", env.reference);
    let start = Instant::now();
    for (_, _, list) in &agents {
        let tmp = list.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, list).context("publishing the image list")?;
    }
    let mut completions: Vec<Option<f64>> = vec![None; agents.len()];
    let mut registry_bytes = 0u64;
    while completions.iter().any(Option::is_none) && start.elapsed() < bound {
        for (c, (_, log, _)) in completions.iter_mut().zip(&agents) {
            if c.is_some() {
                continue;
            }
            let text = read(log);
            if let Some(line) = text.lines().find(|l| l.contains("image preheated")) {
                *c = Some(start.elapsed().as_secs_f64());
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
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let origin_bytes = env.origin_body_bytes()? - before;
    for (i, c) in completions.iter().enumerate() {
        if c.is_none() {
            let log = read(&agents[i].1);
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!(
                "host {i} did not finish; agent log tail: {}",
                tail.join(" | ")
            );
        }
    }
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(PreheatRun {
        label: "image-preheat (agents, all at once)".into(),
        measured: Measured {
            completions,
            origin_bytes,
            note: format!(
                "coordination-free election (LEASE=none); agents reported {} MiB from the registry",
                registry_bytes >> 20
            ),
        },
    })
}
