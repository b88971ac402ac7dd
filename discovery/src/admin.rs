//! The agent's admin HTTP server: `/healthz`, `/readyz`, `/status`,
//! `/metrics`, and the service map (`/ui`, `/ui/graph.json`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ads::{SidecarRegistry, unix_now};
use crate::metrics::Metrics;
use crate::servicemap::{CallMap, ui};
use crate::snapshot::Snapshot;
use crate::store::MeshStore;

pub struct AdminState {
    /// "consul http://127.0.0.1:8500" or "config-dir /etc/weft".
    pub backend: String,
    pub started_at_unix: u64,
    pub store: Arc<MeshStore>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub registry: Arc<SidecarRegistry>,
    pub metrics: Arc<Metrics>,
    /// The calls sidecars report (the service map).
    pub calls: Arc<CallMap>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    // Accept errors pause (out of descriptors) and are logged at most once
    // a second: a bare `continue` here once wrote 13 GB of warnings.
    let mut errors = weft_runtime::AcceptErrors::new("admin");
    loop {
        let (stream, _) = weft_runtime::accept(&listener, &mut errors).await;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, request)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on admin address {addr}: {error}"))
}

fn respond(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if state.snapshots.borrow().is_some() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: waiting for the first full sync from {}\n",
                        state.backend
                    ),
                )
            }
        }
        "/status" => json(&status(state)),
        "/metrics" => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.metrics.encode())))
            .unwrap_or_default(),
        "/ui" | "/ui/" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            // The page runs only its own inline script and fetches only
            // from this server.
            .header(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            )
            .body(Full::new(Bytes::from_static(ui::PAGE.as_bytes())))
            .unwrap_or_default(),
        "/ui/graph.json" => {
            let services = state.store.state().services;
            json(&ui::graph(&services, state.registry.list(), &state.calls))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /status, /metrics, /ui\n".into(),
        ),
    }
}

fn status(state: &AdminState) -> serde_json::Value {
    let snapshot = state.snapshots.borrow().clone();
    let rejected = snapshot
        .as_ref()
        .map(|snapshot| snapshot.rejected.clone())
        .unwrap_or_default();
    serde_json::json!({
        "ready": snapshot.is_some(),
        "backend": state.backend,
        "started_at_unix": state.started_at_unix,
        "services": state.store.state().services.len(),
        "sidecars": state.registry.list(),
        "rejected_documents": rejected,
        // Estimated from weft_discovery_convergence_seconds' buckets; null
        // before the first change reached a sidecar.
        "convergence": state.metrics.convergence.quantiles(),
        "counters": {
            "documents_rejected_total": state.metrics.documents_rejected.get(),
            "responses_sent_total": state.metrics.responses_sent.get(),
            "nacks_received_total": state.metrics.nacks_received.get(),
            "snapshot_builds_total": state.metrics.snapshot_builds.get(),
        },
        "now_unix": unix_now(),
    })
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
