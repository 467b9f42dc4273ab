//! Single-host figures: a 1 GiB blob from one agent to `fetch-blob` over loopback (libp2p with
//! noise encryption, default chunking), beside `curl` fetching the same file from a plain HTTP
//! server (python3 -m http.server). Reported: throughput, the serving agent's and the fetcher's
//! peak RSS (VmHWM), CPU seconds per GiB. Processes are killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use preheat_core::Digest;
use preheat_store::{Store, StoreConfig};
use rand::{RngCore, SeedableRng};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Blob size.
    #[arg(long, env = "BENCH_LOOPBACK_SIZE", default_value = "1GiB", value_parser = crate::parse_bytes)]
    size: u64,
    /// The image-preheat binary (a release build).
    #[arg(
        long,
        env = "IMAGE_PREHEAT_BIN",
        default_value = "target/release/image-preheat"
    )]
    bin: PathBuf,
    /// Directory for the two stores (tmpfs keeps the disk out of the measurement).
    #[arg(long, env = "BENCH_WORK_DIR", default_value = "/dev/shm")]
    work_dir: PathBuf,
    /// Where loopback.md and loopback.json go.
    #[arg(long, env = "BENCH_OUT", default_value = "bench/results")]
    out: PathBuf,
}

/// Kills and reaps its child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // Err only when it already exited; wait reaps either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    preheat_testkit::free_port()
}

/// (peak RSS KiB, CPU seconds) of a live process.
fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    (hwm, ticks / 100.0)
}

/// `/usr/bin/time -f` output: elapsed, user, sys, max RSS KiB (last line of stderr).
fn gnu_time(stderr: &str) -> Option<(f64, f64, f64, u64)> {
    let l = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: Vec<&str> = l.split_whitespace().collect();
    Some((
        v.first()?.parse().ok()?,
        v.get(1)?.parse().ok()?,
        v.get(2)?.parse().ok()?,
        v.get(3)?.parse().ok()?,
    ))
}

async fn seed(dir: &Path, size: u64) -> Result<(Digest, PathBuf)> {
    let len = usize::try_from(size).context("blob size")?;
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
    let digest = Digest::of(&data);
    let store = Store::open(StoreConfig::new(dir)).await?;
    let mut w = store.writer(digest, size).await?;
    for piece in data.chunks(4 << 20) {
        w.write(piece).await?;
    }
    w.finish().await?;
    Ok((digest, store.blob_path(&digest)))
}

fn wait_for(path: &Path, needle: &str, bound: Duration) -> Result<()> {
    let until = Instant::now() + bound;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        if Instant::now() >= until {
            bail!("{needle:?} not in {} within {bound:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(a: &Args) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("preheat-loopback-")
        .tempdir_in(&a.work_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (digest, blob) = rt.block_on(seed(&tmp.path().join("a"), a.size))?;
    let gib = a.size as f64 / f64::from(1u32 << 30);

    // The serving agent.
    let port = free_port()?;
    let (list, mount) = (tmp.path().join("images.list"), tmp.path().join("mount"));
    std::fs::write(&list, "")?;
    std::fs::create_dir_all(&mount)?;
    let alog = tmp.path().join("agent.log");
    let agent = Guard(
        Command::new(&a.bin)
            .arg("agent")
            .args([
                "--node-name",
                "loopback-a",
                "--lease",
                "none",
                "--runtime",
                "none",
                "--mirror",
                "false",
            ])
            .arg("--store")
            .arg(tmp.path().join("a"))
            .arg("--image-list")
            .arg(&list)
            .arg("--mount-dir")
            .arg(&mount)
            .args(["--swarm-addr", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--upload-rate-limit", "0"])
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&alog)?)
            .spawn()
            .context("starting the agent")?,
    );
    wait_for(&alog, "agent started", Duration::from_secs(30))?;
    let (_, cpu_before) = proc_usage(agent.0.id());
    let flog = tmp.path().join("fetch.log");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M"])
        .arg(&a.bin)
        .arg("fetch-blob")
        .arg(digest.to_string())
        .args([
            "--size",
            &a.size.to_string(),
            "--linger",
            "0s",
            "--timeout",
            "5m",
        ])
        .args(["--download-rate-limit", "0"])
        .arg("--store")
        .arg(tmp.path().join("b"))
        .args(["--peer", &format!("127.0.0.1:{port}")])
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&flog)?)
        .output()
        .context("running fetch-blob")?;
    let flog_text = std::fs::read_to_string(&flog).unwrap_or_default();
    if !out.status.success() {
        bail!(
            "fetch-blob failed: {}",
            flog_text
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let (agent_rss, cpu_after) = proc_usage(agent.0.id());
    drop(agent);
    let fetched_secs = flog_text
        .lines()
        .find(|l| l.contains("blob fetched"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| {
            // Flattened JSON events; nested `fields` is tracing's default.
            v.get("seconds")
                .or_else(|| v.pointer("/fields/seconds"))
                .and_then(serde_json::Value::as_f64)
        });
    let (f_wall, f_user, f_sys, f_rss) =
        gnu_time(&flog_text).context("parsing /usr/bin/time output")?;
    let swarm_secs = fetched_secs.unwrap_or(f_wall);

    // The plain HTTP reference.
    let hport = free_port()?;
    let dir = blob.parent().context("blob path")?;
    let name = blob
        .file_name()
        .context("blob name")?
        .to_string_lossy()
        .into_owned();
    let _http = Guard(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &hport.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?,
    );
    let url = format!("http://127.0.0.1:{hport}/{name}");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", hport)).is_err() {
        if Instant::now() >= until {
            bail!("http.server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "curl", "-sf", "-o", "/dev/null", &url])
        .output()
        .context("running curl")?;
    let curl_err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("curl failed: {curl_err}");
    }
    let (c_wall, c_user, c_sys, c_rss) = gnu_time(&curl_err).context("parsing curl timing")?;

    let agent_cpu = cpu_after - cpu_before;
    let doc = json!({
        "machine": crate::machine(),
        "bytes": a.size,
        "swarm": {
            "seconds": swarm_secs,
            "gibPerSecond": gib / swarm_secs,
            "fetcherWallSeconds": f_wall,
            "servingAgentPeakRssMib": agent_rss as f64 / 1024.0,
            "fetcherPeakRssMib": f_rss as f64 / 1024.0,
            "servingAgentCpuSecondsPerGib": agent_cpu / gib,
            "fetcherCpuSecondsPerGib": (f_user + f_sys) / gib,
        },
        "curl": {
            "seconds": c_wall,
            "gibPerSecond": gib / c_wall,
            "curlPeakRssMib": c_rss as f64 / 1024.0,
            "curlCpuSecondsPerGib": (c_user + c_sys) / gib,
        },
    });
    let md = format!(
        "### Loopback, one {:.0} MiB blob ({})\n\n\
         | path | throughput | peak RSS | CPU s per GiB |\n|---|---:|---:|---:|\n\
         | agent → fetch-blob (libp2p, noise) | {:.2} GiB/s ({:.1} s) | agent {:.0} MiB, fetcher {:.0} MiB | agent {:.2}, fetcher {:.2} |\n\
         | python3 http.server → curl | {:.2} GiB/s ({:.1} s) | curl {:.0} MiB | curl {:.2} |\n",
        a.size as f64 / f64::from(1u32 << 20),
        crate::machine(),
        gib / swarm_secs,
        swarm_secs,
        agent_rss as f64 / 1024.0,
        f_rss as f64 / 1024.0,
        agent_cpu / gib,
        (f_user + f_sys) / gib,
        gib / c_wall,
        c_wall,
        c_rss as f64 / 1024.0,
        (c_user + c_sys) / gib,
    );
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("loopback.md"), &md)?;
    std::fs::write(
        a.out.join("loopback.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_time_line_is_the_last_non_empty_line() {
        let err = "some log line\n1.52 0.40 0.61 58320\n\n";
        assert_eq!(gnu_time(err), Some((1.52, 0.40, 0.61, 58320)));
        assert_eq!(gnu_time("no timing here"), None);
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (hwm, cpu) = proc_usage(std::process::id());
        assert!(hwm > 0, "VmHWM of this test process");
        assert!(cpu >= 0.0);
    }
}
