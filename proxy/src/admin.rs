//! The admin listener: readiness, liveness, the effective config, cluster state and metrics,
//! read from [`State`]; `POST /reload` goes to the [`Reload`] it is handed. The probe listener
//! serves only its readiness and liveness.
//!
//! Runs on the control thread so that a busy data plane never delays a probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::state::State;

/// Reloads the config on `POST /reload`: the new version, or why it was rejected.
pub trait Reload: Send + Sync {
    fn reload(&self) -> Result<(String, Vec<&'static str>), String>;
}

/// What the admin server serves.
#[derive(Clone)]
pub struct Admin {
    pub state: Arc<State>,
    pub reload: Arc<dyn Reload>,
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything: probes, views, metrics and `POST /reload`.
    Admin,
    /// `GET /ready` and `GET /healthz` only, safe to expose beyond loopback.
    Probes,
}

/// Binds `addr` and serves `surface` on the control thread. Returns the bound address. An
/// address another process listens on (a second Legate's admin) is refused.
pub fn start(
    addr: SocketAddr,
    surface: Surface,
    admin: Admin,
    control: &tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    crate::listener::holder::check_unheld(addr)?;
    start_on(crate::listener::bind(addr, 128)?, surface, admin, control)
}

/// Serves `surface` on a bound listening socket, on the control thread. Returns its address.
pub fn start_on(
    std_listener: std::net::TcpListener,
    surface: Surface,
    admin: Admin,
    control: &tokio::runtime::Handle,
) -> std::io::Result<SocketAddr> {
    start_accepting(std_listener, surface, admin, control).map(|(bound, _)| bound)
}

/// Like [`start_on`], also returning the accept loop's handle: aborting it stops accepting
/// (connections already accepted are served to their end).
pub fn start_accepting(
    std_listener: std::net::TcpListener,
    surface: Surface,
    admin: Admin,
    control: &tokio::runtime::Handle,
) -> std::io::Result<(SocketAddr, tokio::task::AbortHandle)> {
    let bound = std_listener.local_addr()?;
    let task = control.spawn(async move {
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => {
                let metrics = Arc::new(Metrics::new(admin.state.clone()));
                serve(listener, surface, admin, metrics).await
            }
            Err(e) => warn!(error = %e, ?surface, "admin listener unusable"),
        }
    });
    Ok((bound, task.abort_handle()))
}

async fn serve(
    listener: tokio::net::TcpListener,
    surface: Surface,
    admin: Admin,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                // Out of descriptors: back off rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (admin, metrics) = (admin.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (admin, metrics) = (admin.clone(), metrics.clone());
                async move {
                    Ok::<_, Infallible>(match surface {
                        Surface::Admin => route(&admin, &metrics, &req),
                        Surface::Probes => probe(&admin.state, &req),
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

/// The probe listener: its two paths, `GET` only.
fn probe(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/ready" && path != "/healthz" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the probe listener serves only GET /ready and GET /healthz\n",
        );
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/ready" => ready(state),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

/// `/ready`: 200 once the proxy should take traffic, else 503 with the reason.
fn ready(state: &State) -> Response<Full<Bytes>> {
    if state.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !state.xds.is_ready() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first config from the control plane\n",
        );
    }
    // Ready once every cluster has its first DNS answers and health check results, so a new
    // proxy does not take traffic it would answer with 503s; a cluster that is not warm
    // within its warmup_timeout stops holding it back.
    let snapshot = state.snapshot.load();
    if snapshot.clusters.values().any(|c| c.warming()) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "warming clusters\n");
    }
    let mut cold: Vec<&str> = snapshot
        .clusters
        .values()
        .filter(|c| !c.state.warmed.load(Ordering::Acquire))
        .map(|c| &*c.name)
        .collect();
    if cold.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        cold.sort_unstable();
        text(
            StatusCode::OK,
            format!("ready; not warmed: {}\n", cold.join(", ")),
        )
    }
}

fn route(admin: &Admin, metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &*admin.state;
    if req.method() == Method::POST && req.uri().path() == "/reload" {
        return match admin.reload.reload() {
            Ok((version, not_in_effect)) if not_in_effect.is_empty() => {
                json(&serde_json::json!({ "result": "ok", "version": version }))
            }
            // Applied, but not all of it: never "ok" for a change that is not in effect.
            Ok((version, not_in_effect)) => json(&serde_json::json!({
                "result": "restart-required",
                "version": version,
                "not_in_effect": not_in_effect,
            })),
            Err(error) => {
                let mut resp = json(&serde_json::json!({ "result": "rejected", "error": error }));
                *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                resp
            }
        };
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::status_page::render(state))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        "/ready" => ready(state),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            // Prometheus text unless the scraper asks for OpenMetrics (Prometheus does, when
            // configured to; promtool and most other tools read the text format).
            let openmetrics = legate_xds::exposition::prefers_openmetrics(req.headers());
            let (body, content_type) = if openmetrics {
                (
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    metrics.render_prometheus_text(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        "/config" => {
            let snapshot = state.snapshot.load();
            let last_reload = state.reloads.last.load();
            json(&serde_json::json!({
                "build": { "version": crate::VERSION, "revision": crate::REVISION },
                "version": snapshot.version,
                "loaded_at": humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
                "last_reload": &**last_reload,
                "reloads": {
                    "ok": state.reloads.ok.load(Ordering::Relaxed),
                    "rejected": state.reloads.rejected.load(Ordering::Relaxed),
                },
                "listeners": state.listener_addrs(),
                "xds": snapshot.config.xds.as_ref().map(|_| state.xds.status()),
                "config": &snapshot.config,
            }))
        }
        "/clusters" => {
            let snapshot = state.snapshot.load();
            let mut clusters: Vec<_> = snapshot.clusters.values().map(|c| c.status()).collect();
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            json(&serde_json::json!({
                "version": snapshot.version,
                "clusters": clusters,
            }))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
