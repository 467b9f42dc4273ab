//! The scenarios run on one profile's lab: registry-direct (every host pulls from the origin
//! with skopeo) and the BitTorrent reference (aria2c seeding from the origin's namespace, aria2c
//! on every host, opentracker with a whitelist). Each returns per-host completion seconds
//! (`None`: did not finish within the bound) and the bytes the origin sent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use preheat_testkit::netns::LabProcess;

use crate::setup::Env;
use crate::torrent;

/// What one scenario measured.
pub struct Measured {
    pub completions: Vec<Option<f64>>,
    pub origin_bytes: u64,
    pub note: String,
    /// CPU-seconds (all cores) per GiB delivered, where measured.
    pub cpu_per_gib: Option<f64>,
}

/// Waits for every process to exit (at most `bound` after `start`); completion = exit time, or
/// `None` for a failure or a timeout (the process is then killed).
pub fn wait_exits(
    procs: &mut [(usize, LabProcess, PathBuf)],
    start: Instant,
    bound: Duration,
) -> Vec<Option<f64>> {
    let mut done: Vec<Option<f64>> = vec![None; procs.len()];
    let mut open: Vec<bool> = vec![true; procs.len()];
    while open.iter().any(|o| *o) && start.elapsed() < bound {
        for (k, (i, p, log)) in procs.iter_mut().enumerate() {
            if !open[k] {
                continue;
            }
            if let Ok(Some(status)) = p.try_wait() {
                open[k] = false;
                if status.success() {
                    done[k] = Some(start.elapsed().as_secs_f64());
                } else {
                    let err = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    eprintln!("host {i}: exited with {status}: {tail}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done
}

/// (b) Every host copies the image from the origin with skopeo, all at once.
pub fn registry_direct(env: &Env, bound: Duration) -> Result<Measured> {
    let dir = env.dir.join("direct");
    std::fs::create_dir_all(&dir)?;
    let before = env.origin_body_bytes()?;
    let start = Instant::now();
    let mut procs = Vec::new();
    for h in env.hosts() {
        let log = dir.join(format!("h{}.log", h.index()));
        let mut cmd = h.command("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--quiet",
        ])
        .arg(format!("docker://{}", env.reference))
        .arg(format!(
            "dir:{}",
            dir.join(format!("h{}", h.index())).display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?);
        procs.push((h.index(), h.spawn(&mut cmd)?, log));
    }
    let completions = wait_exits(&mut procs, start, bound);
    drop(procs);
    std::thread::sleep(Duration::from_millis(300));
    let origin_bytes = env.origin_body_bytes()? - before;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        completions,
        origin_bytes,
        note: "skopeo copy, all hosts at once".into(),
        cpu_per_gib: None,
    })
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// aria2c options shared by seeder and leechers: tracker only, keep seeding.
fn aria2_common(cmd: &mut std::process::Command, dir: &Path) {
    cmd.arg(format!("--dir={}", dir.display())).args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-ratio=0.0",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--bt-tracker-interval=2",
        "--bt-max-peers=0",
        "--max-overall-upload-limit=0",
        "--listen-port=6881",
        "--disable-ipv6=true",
    ]);
}

/// (c) The same blobs as one torrent: aria2c seeding in the origin namespace, opentracker (with
/// a whitelist holding just this torrent) beside it, aria2c on every host.
pub fn bittorrent(env: &Env, bound: Duration) -> Result<Measured> {
    let dir = env.dir.join("bt");
    let name = "image";
    let seed_dir = dir.join("seed");
    std::fs::create_dir_all(seed_dir.join(name))?;
    let mut files = Vec::new();
    for (d, _) in env.image.blobs() {
        let f = d.hex();
        let to = seed_dir.join(name).join(&f);
        if std::fs::hard_link(env.blob_file(&d), &to).is_err() {
            std::fs::copy(env.blob_file(&d), &to).context("copying a blob for the seeder")?;
        }
        files.push(f);
    }
    let origin = env.origin();
    let announce = format!("http://{}:6969/announce", origin.ip());
    let t = torrent::create(&seed_dir, name, &files, 1 << 20, &announce)?;
    let torrent_path = dir.join("image.torrent");
    std::fs::write(&torrent_path, &t.bytes)?;
    let tracker_dir = dir.join("tracker");
    std::fs::create_dir_all(&tracker_dir)?;
    std::fs::write(tracker_dir.join("whitelist"), format!("{}\n", t.info_hash))?;
    let mut cmd = origin.command("opentracker");
    // No -d/-u: with them this build exits at once when started as root.
    cmd.args([
        "-i",
        &origin.ip().to_string(),
        "-p",
        "6969",
        "-P",
        "6969",
        "-w",
    ])
    .arg(tracker_dir.join("whitelist"))
    .current_dir(&tracker_dir)
    .stdin(Stdio::null())
    .stdout(File::create(dir.join("tracker.log"))?)
    .stderr(File::create(dir.join("tracker.err"))?);
    let _tracker = origin.spawn(&mut cmd)?;
    let mut cmd = origin.command("aria2c");
    aria2_common(&mut cmd, &seed_dir);
    cmd.args(["--bt-seed-unverified=true", "--check-integrity=false"])
        .arg(&torrent_path)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("seeder.log"))?)
        .stderr(File::create(dir.join("seeder.err"))?);
    let _seeder = origin.spawn(&mut cmd)?;
    std::thread::sleep(Duration::from_secs(2));

    let hook = dir.join("done-hook.sh");
    std::fs::write(&hook, "#!/bin/sh\ndate +%s.%N > \"$PREHEAT_DONE_FILE.tmp\" && mv \"$PREHEAT_DONE_FILE.tmp\" \"$PREHEAT_DONE_FILE\"\n")?;
    set_executable(&hook)?;
    let before = origin.tx_bytes()?;
    let start = Instant::now();
    let t0 = epoch();
    let mut leechers = Vec::new();
    let mut done_files = Vec::new();
    for h in env.hosts() {
        let hd = dir.join(format!("h{}", h.index()));
        std::fs::create_dir_all(&hd)?;
        let done = dir.join(format!("done-h{}", h.index()));
        let mut cmd = h.command("aria2c");
        aria2_common(&mut cmd, &hd);
        cmd.arg(format!("--on-bt-download-complete={}", hook.display()))
            .env("PREHEAT_DONE_FILE", &done)
            .arg(&torrent_path)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("h{}.log", h.index())))?)
            .stderr(File::create(dir.join(format!("h{}.err", h.index())))?);
        leechers.push(h.spawn(&mut cmd)?);
        done_files.push(done);
    }
    let mut completions: Vec<Option<f64>> = vec![None; done_files.len()];
    while completions.iter().any(Option::is_none) && start.elapsed() < bound {
        for (c, f) in completions.iter_mut().zip(&done_files) {
            if c.is_none() {
                if let Some(t) = std::fs::read_to_string(f)
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                {
                    *c = Some(t - t0);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let origin_bytes = origin.tx_bytes()? - before;
    drop(leechers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        completions,
        origin_bytes,
        note: "aria2c 1.36 + opentracker (whitelist), 1 MiB pieces; origin bytes on the wire"
            .into(),
        cpu_per_gib: None,
    })
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut p = std::fs::metadata(path)?.permissions();
    p.set_mode(0o755);
    std::fs::set_permissions(path, p)?;
    Ok(())
}
