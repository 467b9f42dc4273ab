//! Processes started inside lab namespaces, and bounded runs of short commands.
//!
//! Invariant: a [`LabProcess`] is killed (SIGKILL) and reaped when dropped; [`output_within`] never
//! waits longer than its timeout and kills the command when the time is up.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often bounded waits poll a child.
const POLL: Duration = Duration::from_millis(10);
/// Bound for the `ip`/`tc` administration commands the lab runs.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

/// `ip netns exec <netns> <program>`: a command that runs `program` inside the namespace (with
/// `/etc/netns/<netns>/*` bind-mounted over `/etc`, which is how the lab's resolv.conf applies).
pub fn netns_command(netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    cmd
}

/// True when `cmd` was made by [`netns_command`] for `netns`.
pub(crate) fn runs_in(cmd: &Command, netns: &str) -> bool {
    let args: Vec<&OsStr> = cmd.get_args().take(3).collect();
    cmd.get_program() == "ip" && args == [OsStr::new("netns"), "exec".as_ref(), netns.as_ref()]
}

/// A process started in a lab namespace. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    label: String,
    reaped: Option<ExitStatus>,
}

impl LabProcess {
    /// Spawns `cmd`; `label` names it in errors.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        let child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
        Ok(Self {
            child,
            label,
            reaped: None,
        })
    }

    /// The process id (`ip netns exec` execs the program, so this is the program's pid).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The underlying child, e.g. to take piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Exit status if the process has ended (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.label))?;
        self.reaped = status;
        Ok(status)
    }

    /// Waits at most `timeout` for the process to end; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // Err here means the process already ended; `wait` below reaps it either way.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.reaped = Some(status);
        Ok(status)
    }

    /// Sends a signal by name (`HUP`, `TERM`, …) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let out = output_within(
            Command::new("kill")
                .args(["-s", signal])
                .arg(self.id().to_string()),
            ADMIN_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "kill -s {signal} {} ({}): {}",
                self.id(),
                self.label,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(label = %self.label, error = %e, "could not kill lab process");
        }
    }
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured; kills it and fails if it
/// takes longer than `timeout`. The exit status is returned, not checked.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Err only if it ended meanwhile; wait() reaps in both cases.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    let stdout = stdout.map(join).unwrap_or_default();
    let stderr = stderr.map(join).unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{what} did not finish within {timeout:?} (killed); stderr: {}",
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

/// Runs an administration command (`ip`, `tc`, …) and returns its stdout; non-zero exit is an error
/// carrying stderr.
pub(crate) fn admin(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = output_within(cmd, ADMIN_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `admin(Command::new(program).args(args))`.
pub(crate) fn admin_args(program: &str, args: &[&str]) -> Result<String> {
    admin(Command::new(program).args(args))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is still returned.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join(handle: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}
