//! A small tmpfs mounted on a private temp dir, for disk-full tests. Needs root (CAP_SYS_ADMIN).
//! Invariant: unmounted (lazily, so open files cannot block it) and removed on drop.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// A mounted tmpfs of a fixed size.
#[derive(Debug)]
pub struct TmpfsMount {
    dir: TempDir,
    size: u64,
}

/// Effective uid from /proc/self/status (no libc needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_bytes` (rounded up to pages by the kernel).
    pub fn new(size_bytes: u64) -> Result<TmpfsMount> {
        if effective_uid() != Some(0) {
            bail!("TmpfsMount needs root (mount -t tmpfs); run the test as root or skip it");
        }
        let dir = tempfile::Builder::new()
            .prefix("preheat-tmpfs-")
            .tempdir()
            .context("creating mount point")?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode=0755"))
            .arg("preheat-testkit")
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs on {} failed: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(TmpfsMount {
            dir,
            size: size_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            tracing::warn!(path = %self.dir.path().display(), "tmpfs unmount failed");
        }
    }
}
