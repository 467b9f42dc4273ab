//! An in-test Kubernetes API server for `coordination.k8s.io/v1` Leases.
//!
//! No Kubernetes API server can be installed here, so this server implements the exact Lease REST
//! subset the kube client uses, with the API server's semantics: GET (404 `Status` when absent),
//! LIST (with an equality `labelSelector`), POST create (409 `AlreadyExists`), PUT replace (409
//! `Conflict` when `metadata.resourceVersion` is stale; no resourceVersion = unconditional, as
//! Leases allow), DELETE (404 when absent, 409 when `preconditions.resourceVersion` is stale).
//! Every write moves a cluster-wide resourceVersion forward. It serves plain HTTP on
//! 127.0.0.1:free port; point a `kube::Config::new("http://127.0.0.1:PORT")` at [`KubeApi::url`].
//!
//! Faults: [`ApiMode::Unavailable`] answers every request with a 503 `Status`;
//! [`ApiMode::Refuse`] resets every connection (new ones right after accept, kept-alive ones on their
//! next read), so clients see transport errors. Calls are counted per verb and status code.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMode {
    Up,
    /// Every request gets 503 with a `Status` body.
    Unavailable,
    /// Every connection is reset; nothing is answered.
    Refuse,
}

/// The REST verb of a call, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Create,
    Replace,
    Delete,
}

#[derive(Debug)]
struct Inner {
    /// (namespace, name) → the stored Lease JSON.
    leases: BTreeMap<(String, String), Value>,
    last_rv: u64,
    next_uid: u64,
    mode: ApiMode,
    calls: BTreeMap<(Verb, u16), u64>,
}

#[derive(Debug, Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every switch to `Refuse`; connections from an older epoch are reset.
    epoch: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a test failure already; keep serving the state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; stops on drop.
#[derive(Debug)]
pub struct KubeApi {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl KubeApi {
    /// Starts the server on 127.0.0.1 with a free port, mode [`ApiMode::Up`], no Leases.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                leases: BTreeMap::new(),
                last_rv: 1000,
                next_uid: 1,
                mode: ApiMode::Up,
                calls: BTreeMap::new(),
            })),
            epoch: Arc::new(AtomicU64::new(0)),
        };
        let base = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = Router::new()
            .route(base, get(list).post(create))
            .route(
                &format!("{base}/{{name}}"),
                get(read).put(replace).delete(delete),
            )
            .fallback(not_routed)
            .with_state(shared.clone());
        let listener = ResettingListener {
            inner: listener,
            epoch: shared.epoch.clone(),
            shared: shared.clone(),
        };
        let task = tokio::spawn(async move {
            // Serving only ends with the task's abort on drop.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the cluster URL for a kube `Config`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: ApiMode) {
        self.shared.lock().mode = mode;
        if mode == ApiMode::Refuse {
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The stored Lease, as JSON.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .leases
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Names of the stored Leases in `namespace`.
    pub fn lease_names(&self, namespace: &str) -> Vec<String> {
        let g = self.shared.lock();
        g.leases
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Calls of `verb` answered with HTTP `code` (503s included, reset connections not).
    pub fn calls(&self, verb: Verb, code: u16) -> u64 {
        self.shared
            .lock()
            .calls
            .get(&(verb, code))
            .copied()
            .unwrap_or(0)
    }

    /// All answered calls.
    pub fn total_calls(&self) -> u64 {
        self.shared.lock().calls.values().sum()
    }

    /// Calls answered per (verb, code).
    pub fn call_counts(&self) -> BTreeMap<(Verb, u16), u64> {
        self.shared.lock().calls.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: String, name: Option<&str>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    if let Some(name) = name {
        body["details"] = json!({"name": name, "group": "coordination.k8s.io", "kind": "leases"});
    }
    (code, Json(body)).into_response()
}

/// Answers with `res` when up, 503 otherwise; counts the call by verb and code.
fn gate(s: &Shared, verb: Verb, res: impl FnOnce(&mut Inner) -> Response) -> Response {
    let mut g = s.lock();
    let resp = if g.mode == ApiMode::Up {
        res(&mut g)
    } else {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            None,
        )
    };
    *g.calls.entry((verb, resp.status().as_u16())).or_default() += 1;
    resp
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("leases.coordination.k8s.io \"{name}\" not found"),
        Some(name),
    )
}

fn conflict(name: &str, why: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": {why}"),
        Some(name),
    )
}

fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Checks kind, apiVersion and namespace of a body; returns its name.
fn validate(ns: &str, body: &Value) -> Result<String, String> {
    if body.get("kind").and_then(Value::as_str) != Some("Lease")
        || body.get("apiVersion").and_then(Value::as_str) != Some("coordination.k8s.io/v1")
    {
        return Err("body must be a coordination.k8s.io/v1 Lease".into());
    }
    if let Some(other) = meta_str(body, "namespace").filter(|n| *n != ns) {
        return Err(format!("the namespace of the provided object ({other}) does not match the namespace sent on the request ({ns})"));
    }
    meta_str(body, "name")
        .map(str::to_string)
        .ok_or_else(|| "metadata.name is required".into())
}

async fn read(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    gate(&s, Verb::Get, |g| match g.leases.get(&(ns, name.clone())) {
        Some(l) => Json(l.clone()).into_response(),
        None => not_found(&name),
    })
}

async fn list(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    gate(&s, Verb::List, |g| {
        let mut wanted = Vec::new();
        for term in q
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            match term.split_once('=') {
                Some((k, v)) if !k.ends_with('!') => {
                    wanted.push((k.to_string(), v.trim_start_matches('=').to_string()))
                }
                _ => {
                    return bad_request(format!(
                        "unsupported label selector term {term:?} (only k=v)"
                    ))
                }
            }
        }
        let items: Vec<Value> = g
            .leases
            .iter()
            .filter(|((n, _), l)| {
                *n == ns
                    && wanted
                        .iter()
                        .all(|(k, v)| l["metadata"]["labels"][k].as_str() == Some(v))
            })
            .map(|(_, l)| l.clone())
            .collect();
        Json(json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1", "metadata": {"resourceVersion": g.last_rv.to_string()}, "items": items})).into_response()
    })
}

async fn create(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    Json(mut body): Json<Value>,
) -> Response {
    gate(&s, Verb::Create, |g| {
        let name = match validate(&ns, &body) {
            Ok(n) => n,
            Err(m) => return bad_request(m),
        };
        if meta_str(&body, "resourceVersion").is_some() {
            return bad_request(
                "resourceVersion should not be set on objects to be created".into(),
            );
        }
        let key = (ns.clone(), name.clone());
        if g.leases.contains_key(&key) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("leases.coordination.k8s.io \"{name}\" already exists"),
                Some(&name),
            );
        }
        g.last_rv += 1;
        g.next_uid += 1;
        let meta = &mut body["metadata"];
        meta["namespace"] = json!(ns);
        meta["resourceVersion"] = json!(g.last_rv.to_string());
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", g.next_uid));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        g.leases.insert(key, body.clone());
        (StatusCode::CREATED, Json(body)).into_response()
    })
}

async fn replace(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    Json(mut body): Json<Value>,
) -> Response {
    gate(&s, Verb::Replace, |g| {
        match validate(&ns, &body) {
            Ok(n) if n == name => {}
            Ok(n) => {
                return bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                ))
            }
            Err(m) => return bad_request(m),
        }
        let key = (ns.clone(), name.clone());
        let Some(old) = g.leases.get(&key) else {
            return not_found(&name);
        };
        if let Some(rv) = meta_str(&body, "resourceVersion") {
            if Some(rv) != meta_str(old, "resourceVersion") {
                return conflict(&name, "the object has been modified; please apply your changes to the latest version and try again");
            }
        }
        let (uid, created) = (
            old["metadata"]["uid"].clone(),
            old["metadata"]["creationTimestamp"].clone(),
        );
        g.last_rv += 1;
        let meta = &mut body["metadata"];
        meta["namespace"] = json!(ns);
        meta["resourceVersion"] = json!(g.last_rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        g.leases.insert(key, body.clone());
        Json(body).into_response()
    })
}

async fn delete(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    gate(&s, Verb::Delete, |g| {
        let opts: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return bad_request(format!("invalid DeleteOptions: {e}")),
            }
        };
        let key = (ns, name.clone());
        let Some(old) = g.leases.get(&key) else {
            return not_found(&name);
        };
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let have = meta_str(old, "resourceVersion").unwrap_or("");
            if rv != have {
                return conflict(&name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"));
            }
        }
        let uid = old["metadata"]["uid"].clone();
        g.leases.remove(&key);
        g.last_rv += 1;
        Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases", "uid": uid}}))
        .into_response()
    })
}

async fn not_routed() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
        None,
    )
}

/// Accepts connections, resetting them while the mode is `Refuse`.
struct ResettingListener {
    inner: TcpListener,
    epoch: Arc<AtomicU64>,
    shared: Shared,
}

impl axum::serve::Listener for ResettingListener {
    type Io = ResettingStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((io, addr)) = self.inner.accept().await else {
                continue;
            };
            if self.shared.lock().mode == ApiMode::Refuse {
                drop(io);
                continue;
            }
            let born = self.epoch.load(Ordering::SeqCst);
            return (
                ResettingStream {
                    io,
                    born,
                    epoch: self.epoch.clone(),
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its next I/O once the server switched to `Refuse` after it was accepted.
struct ResettingStream {
    io: TcpStream,
    born: u64,
    epoch: Arc<AtomicU64>,
}

impl ResettingStream {
    fn check(&self) -> io::Result<()> {
        if self.epoch.load(Ordering::SeqCst) == self.born {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "api server refusing",
            ))
        }
    }
}

impl AsyncRead for ResettingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
