//! The node HTTP API (axum): health, readiness, per-image state, docker-archive download,
//! Prometheus metrics, node status and on-demand preheat. JSON is camelCase; every error is JSON
//! `{"message": ...}` with a 4xx/5xx status; a bad image reference is 400.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use preheat_core::reference::Reference;
use preheat_store::Store;
use preheat_swarm::SwarmHandle;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::download::Download;
use super::image_list::ImageList;
use super::reconcile::Reconciler;
use super::state::{ImageView, State as ImageState};

/// Shared by every handler.
pub struct Api {
    pub node_name: String,
    pub store: Store,
    pub swarm: SwarmHandle,
    pub reconciler: Reconciler,
    pub registry: Registry,
    pub list: watch::Receiver<Arc<ImageList>>,
    pub list_path: PathBuf,
    /// Where the registry mirror listens (None: switched off).
    pub mirror_addr: Option<std::net::SocketAddr>,
    pub download: Download,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/images/check", get(check))
        .route("/images/download", get(download))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/preheat", post(preheat))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(api)
}

/// An error answer: `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "message": self.message }))).into_response()
    }
}

/// Parses `image` or answers 400 naming it.
pub fn parse_image(image: &str) -> Result<Reference, ApiError> {
    image.trim().parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid image reference {image:?}: {e}"),
        )
    })
}

#[derive(Debug, Deserialize)]
struct ImageQuery {
    image: Option<String>,
}

impl ImageQuery {
    fn reference(&self) -> Result<Reference, ApiError> {
        match &self.image {
            Some(i) => parse_image(i),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing query parameter image=REFERENCE",
            )),
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(api): State<Arc<Api>>) -> Response {
    let store_ok = tokio::fs::metadata(api.store.dir())
        .await
        .is_ok_and(|m| m.is_dir());
    let swarm_ok = api.swarm.listen_addrs().await.is_ok_and(|a| !a.is_empty());
    let peers = api.swarm.connected_peers().await.map_or(0, |p| p.len());
    let body = Json(json!({
        "ready": store_ok && swarm_ok,
        "store": store_ok,
        "swarm": swarm_ok,
        "peers": peers,
    }));
    let code = if store_ok && swarm_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

/// The state of `reference` on this node, also for images the agent was never asked about.
async fn image_view(api: &Api, reference: &Reference) -> ImageView {
    let key = reference.to_string();
    if let Some(v) = api.reconciler.status.get(&key) {
        return v;
    }
    let mut entry = super::state::Entry::new(reference.clone());
    let stored = api
        .store
        .images()
        .await
        .ok()
        .and_then(|images| images.into_iter().find(|s| s.record.reference == key));
    if let Some(s) = stored {
        entry.manifest = Some(s.record.manifest);
        entry.total_bytes = s.size;
        entry.done_bytes = s.stored_bytes;
        if s.complete {
            entry.state = ImageState::Complete;
            let mut all = !api.reconciler.runtimes.is_empty();
            for rt in api.reconciler.runtimes.iter() {
                all &= rt
                    .has_image(reference, &s.record.manifest)
                    .await
                    .unwrap_or(false);
            }
            entry.in_runtime = all;
        }
    }
    entry.view()
}

async fn check(
    State(api): State<Arc<Api>>,
    Query(q): Query<ImageQuery>,
) -> Result<Json<ImageView>, ApiError> {
    let reference = q.reference()?;
    Ok(Json(image_view(&api, &reference).await))
}

async fn download(
    State(api): State<Arc<Api>>,
    Query(q): Query<ImageQuery>,
) -> Result<Response, ApiError> {
    let reference = q.reference()?;
    let key = reference.to_string();
    let stored = api
        .store
        .images()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .into_iter()
        .find(|s| s.record.reference == key && s.complete);
    let Some(s) = stored else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{key} is not complete on this node"),
        ));
    };
    api.download
        .respond(api.store.clone(), reference, s.record.manifest)
}

/// OpenMetrics when the client asks for it (Prometheus does), else Prometheus text 0.0.4.
async fn metrics(
    State(api): State<Arc<Api>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    api.reconciler
        .metrics
        .store(api.store.usage(), api.store.max_bytes());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &api.registry)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::to_prometheus_text(&text),
        )
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn status(State(api): State<Arc<Api>>) -> Json<serde_json::Value> {
    let peers: Vec<String> = api
        .swarm
        .connected_peers()
        .await
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    let listen: Vec<String> = api
        .swarm
        .listen_addrs()
        .await
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    let list = api.list.borrow().clone();
    Json(json!({
        "node": api.node_name,
        "peerId": api.swarm.local_peer_id().to_string(),
        "listenAddrs": listen,
        "mirrorAddr": api.mirror_addr.map(|a| a.to_string()),
        "peers": peers,
        "store": { "usage": api.store.usage(), "maxBytes": api.store.max_bytes() },
        "imageList": {
            "path": api.list_path.display().to_string(),
            "images": list.images.len(),
            "invalidLines": list.invalid,
        },
        "images": api.reconciler.status.views(),
    }))
}

#[derive(Debug, Deserialize)]
struct PreheatBody {
    images: Vec<String>,
}

async fn preheat(
    State(api): State<Arc<Api>>,
    body: Result<Json<PreheatBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON body {{\"images\": [REFERENCE, ...]}}: {e}"),
        )
    })?;
    let refs = body
        .images
        .iter()
        .map(|i| parse_image(i))
        .collect::<Result<Vec<_>, _>>()?;
    api.reconciler.request(&refs);
    let mut out = Vec::with_capacity(refs.len());
    for r in &refs {
        out.push(image_view(&api, r).await);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "images": out }))).into_response())
}
