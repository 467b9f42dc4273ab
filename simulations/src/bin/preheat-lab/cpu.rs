//! The machine's CPU use over a scenario, from /proc/stat: busy time summed over all CPUs
//! (user, nice, system, irq, softirq, steal), so CPU-seconds per GiB moved can calibrate the
//! simulator's shared-CPU model.

use std::process::Command;

/// Busy CPU-seconds of all CPUs since boot; `None` when /proc/stat is unreadable.
pub fn busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    Some(busy as f64 / ticks_per_second())
}

/// Busy CPU-seconds per second while nothing is transferred (the agents' and the machine's
/// background), sampled over `over`; subtracted so a scenario's figure is the marginal cost of moving
/// bytes, comparable between scenarios of different lengths (rolling waits between waves).
pub fn idle_rate(over: std::time::Duration) -> Option<f64> {
    let a = busy_seconds()?;
    std::thread::sleep(over);
    let b = busy_seconds()?;
    Some(((b - a) / over.as_secs_f64()).max(0.0))
}

/// USER_HZ (`getconf CLK_TCK`), 100 on Linux unless it says otherwise.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// CPU-seconds per GiB: `busy` seconds for `bytes` delivered.
pub fn per_gib(busy: f64, bytes: u64) -> Option<f64> {
    (bytes > 0 && busy >= 0.0).then(|| busy / (bytes as f64 / (1u64 << 30) as f64))
}
