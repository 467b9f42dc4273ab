//! A TCP proxy on 127.0.0.1:<free port> in front of an upstream (usually a [`crate::Registry`]),
//! counting the bytes it sends to clients, able to cut every connection after N more bytes
//! (a registry dying mid-layer), to refuse new connections (a registry that is down), and to answer
//! new connections with a canned HTTP error such as 429 or 503 (plain-HTTP upstreams only), and to
//! pace what it sends to clients to a rate (a slow registry).
//! TLS passes through untouched (the registry's certificate is valid for 127.0.0.1).
//!
//! Invariants: one accept task owns the listener and every connection task; dropping the proxy
//! aborts it, which aborts them all. The command channel is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone, Copy)]
enum Budget {
    Unlimited,
    Remaining(u64),
    /// The cut fired and is being carried out; every connection stops.
    Exhausted,
}

#[derive(Debug)]
struct Inner {
    to_client: AtomicU64,
    to_upstream: AtomicU64,
    conns: Mutex<Vec<Arc<AtomicU64>>>,
    budget: Mutex<Budget>,
    faults: Mutex<VecDeque<HttpFault>>,
    faults_served: AtomicU64,
    /// Bumped to drop every open connection.
    cut: watch::Sender<u64>,
    /// Bytes per second to clients, all connections together; 0 = unpaced.
    rate: AtomicU64,
    /// When the paced stream to clients is free again.
    paced_until: Mutex<Option<tokio::time::Instant>>,
}

impl Inner {
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // Poisoning only means a panic in another test task; the data is plain counters.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many of `n` bytes may go to the client; `true` when this write fires the cut.
    fn take(&self, n: usize) -> (usize, bool) {
        let mut b = Self::lock(&self.budget);
        match *b {
            Budget::Unlimited => (n, false),
            Budget::Exhausted => (0, false),
            Budget::Remaining(rem) if (n as u64) < rem => {
                *b = Budget::Remaining(rem - n as u64);
                (n, false)
            }
            Budget::Remaining(rem) => {
                *b = Budget::Exhausted;
                // rem <= n here, so the conversion cannot fail.
                (usize::try_from(rem).unwrap_or(n), true)
            }
        }
    }

    /// Waits until `n` more bytes fit the rate (shared by every connection).
    async fn pace(&self, n: usize) {
        let rate = self.rate.load(Ordering::SeqCst);
        if rate == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        let at = {
            let mut next = Self::lock(&self.paced_until);
            let now = tokio::time::Instant::now();
            let end = next.map_or(now, |t| t.max(now)) + cost;
            *next = Some(end);
            end
        };
        tokio::time::sleep_until(at).await;
    }

    fn fire_cut(&self) {
        *Self::lock(&self.budget) = Budget::Unlimited;
        self.cut.send_modify(|g| *g += 1);
    }
}

/// A canned HTTP answer that replaces the upstream for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpFault {
    /// E.g. 429, 500, 503.
    pub status: u16,
    /// `Retry-After` header value in seconds.
    pub retry_after: Option<u64>,
}

enum Cmd {
    Down(bool, oneshot::Sender<Result<()>>),
}

/// See the module docs. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct CountingProxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    upstream: SocketAddr,
    cmds: mpsc::Sender<Cmd>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on 127.0.0.1:<free port> and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<CountingProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding proxy")?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            to_client: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            budget: Mutex::new(Budget::Unlimited),
            faults: Mutex::new(VecDeque::new()),
            faults_served: AtomicU64::new(0),
            cut,
            rate: AtomicU64::new(0),
            paced_until: Mutex::new(None),
        });
        let (cmds, rx) = mpsc::channel(4);
        let task = tokio::spawn(accept_loop(inner.clone(), listener, addr, upstream, rx));
        Ok(CountingProxy {
            inner,
            addr,
            upstream,
            cmds,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"127.0.0.1:PORT"`, for image references through the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Bytes sent to clients so far (all connections).
    pub fn bytes_to_client(&self) -> u64 {
        self.inner.to_client.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from clients to the upstream so far.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.inner.to_upstream.load(Ordering::SeqCst)
    }

    /// Bytes sent to the client on each connection, in accept order.
    pub fn connection_bytes(&self) -> Vec<u64> {
        Inner::lock(&self.inner.conns)
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    /// Connections accepted and forwarded so far.
    pub fn connection_count(&self) -> usize {
        Inner::lock(&self.inner.conns).len()
    }

    /// One shot: after `bytes` more bytes went to clients (all connections together), every open
    /// connection is dropped; the byte that crosses the limit is not sent. Later connections are
    /// forwarded normally. `None` disarms.
    pub fn cut_after(&self, bytes: Option<u64>) {
        *Inner::lock(&self.inner.budget) = match bytes {
            Some(0) => Budget::Exhausted,
            Some(n) => Budget::Remaining(n),
            None => Budget::Unlimited,
        };
        if bytes == Some(0) {
            self.inner.fire_cut();
        }
    }

    /// The next `n` new connections get `fault` as the answer to their first request (then close)
    /// instead of reaching the upstream. Only for plain-HTTP upstreams. Open connections are dropped
    /// when armed, so a client's pooled keep-alive connection cannot bypass the fault.
    pub fn fail_next_connections(&self, n: usize, fault: HttpFault) {
        Inner::lock(&self.inner.faults).extend(std::iter::repeat_n(fault, n));
        self.inner.fire_cut();
    }

    /// Canned faults answered so far.
    pub fn faults_served(&self) -> u64 {
        self.inner.faults_served.load(Ordering::SeqCst)
    }

    /// Paces the bytes sent to clients (all connections together) to `bytes_per_sec`; `None`
    /// sends as fast as the upstream does.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.inner
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Drops every open connection now.
    pub fn cut_now(&self) {
        self.inner.fire_cut();
    }

    /// `true`: stop listening, so new connections are refused, and drop the open ones (pooled
    /// keep-alive connections would otherwise bypass the outage). `false`: listen again on the same
    /// port. Returns once in effect.
    pub async fn set_down(&self, down: bool) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Down(down, tx))
            .await
            .context("proxy task ended")?;
        rx.await.context("proxy task ended")??;
        if down {
            self.inner.fire_cut();
        }
        Ok(())
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let cmd = match &listener {
            Some(l) => tokio::select! {
                res = l.accept() => {
                    match res {
                        Ok((sock, _)) => { conns.spawn(forward(inner.clone(), sock, upstream)); }
                        Err(e) => tracing::debug!(error = %e, "proxy accept failed"),
                    }
                    continue;
                }
                cmd = cmds.recv() => cmd,
            },
            None => cmds.recv().await,
        };
        let Some(Cmd::Down(down, reply)) = cmd else {
            return;
        };
        let res = if down {
            listener = None;
            Ok(())
        } else if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    Ok(())
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("re-binding proxy on {addr}"))),
            }
        } else {
            Ok(())
        };
        let _ = reply.send(res);
    }
}

async fn forward(inner: Arc<Inner>, client: TcpStream, upstream: SocketAddr) {
    let mut cut = inner.cut.subscribe();
    let fault = Inner::lock(&inner.faults).pop_front();
    if let Some(fault) = fault {
        if let Err(e) = serve_fault(client, fault).await {
            tracing::debug!(error = %e, "proxy fault answer failed");
        }
        inner.faults_served.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        tracing::debug!(%upstream, "proxy upstream refused");
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let counter = Arc::new(AtomicU64::new(0));
    Inner::lock(&inner.conns).push(counter.clone());
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    inner.to_upstream.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            inner.pace(n).await;
            let (allowed, fires) = inner.take(n);
            if allowed > 0 && cw.write_all(&buf[..allowed]).await.is_err() {
                break;
            }
            counter.fetch_add(allowed as u64, Ordering::SeqCst);
            inner.to_client.fetch_add(allowed as u64, Ordering::SeqCst);
            if fires {
                inner.fire_cut();
            }
            if allowed < n {
                return;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {}
    }
}

/// Reads the request head (bounded to 64 KiB) and answers with `fault`, `Connection: close`.
async fn serve_fault(mut client: TcpStream, fault: HttpFault) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < (64 << 10) {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (reason, code) = match fault.status {
        429 => ("Too Many Requests", "TOOMANYREQUESTS"),
        500 => ("Internal Server Error", "UNKNOWN"),
        502 => ("Bad Gateway", "UNAVAILABLE"),
        503 => ("Service Unavailable", "UNAVAILABLE"),
        _ => ("Injected Fault", "UNKNOWN"),
    };
    let body = format!(
        "{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"injected by preheat-testkit\"}}]}}"
    );
    let retry = fault
        .retry_after
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{retry}\r\n{body}",
        fault.status,
        body.len()
    );
    client.write_all(resp.as_bytes()).await?;
    client.shutdown().await
}
