//! The admin listener: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! It runs on its own address (never the client listener), served by hyper over HTTP/1.1:
//!
//! - `/healthz`: `200 ok` while the process runs.
//! - `/readyz`: `200` while the proxy accepts traffic, `503` once it drains; the JSON body
//!   lists each upstream's breaker state either way:
//!   `{"status":"ready","upstreams":[{"name":"http://10.0.0.7:8000","breaker":"closed"}]}`.
//! - `/metrics`: Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scraper's `Accept`
//!   asks for `application/openmetrics-text`.
//!
//! Only `GET` and `HEAD` are answered (others get 405); unknown paths get 404. Connections
//! are capped at [`MAX_ADMIN_CONNECTIONS`] and must send their request head within
//! [`ADMIN_HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Most admin connections served at once; more are closed on accept.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Time an admin client has to send its request head.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is signalled, how long open admin connections may finish their request.
pub const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Lists upstreams with their breaker state name (`closed`, `open`, `half-open`).
pub type UpstreamStates = Arc<dyn Fn() -> Vec<(String, &'static str)> + Send + Sync>;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// True while the proxy accepts traffic; set to false when draining starts.
    pub ready: Arc<AtomicBool>,
    /// Upstreams and their breaker states, for the `/readyz` body.
    pub upstreams: UpstreamStates,
    /// Re-read and install the configuration (`POST /reload`).
    pub reload: Reload,
}

/// Re-reads the configuration: `Err` holds why it was refused.
pub type Reload = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Serve the admin endpoints on `listener` until `shutdown` is cancelled, then let open
/// connections finish their current request for up to [`ADMIN_SHUTDOWN_GRACE`] and return.
///
/// Accept errors (such as running out of file descriptors) are logged and retried after a
/// short pause; they do not end the server. Cancel safety: dropping the future stops
/// accepting but leaves already spawned connection tasks to finish on their own.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(state);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection refused: too many open");
            drop(stream);
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(ADMIN_SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(ADMIN_SHUTDOWN_GRACE, tracker.wait()).await;
    Ok(())
}

/// The JSON body of `/readyz`.
pub fn readyz_body(ready: bool, upstreams: &[(String, &'static str)]) -> String {
    let list: Vec<serde_json::Value> = upstreams
        .iter()
        .map(|(name, breaker)| serde_json::json!({ "name": name, "breaker": breaker }))
        .collect();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "draining" },
        "upstreams": list,
    });
    let mut text = body.to_string();
    text.push('\n');
    text
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let (status, body) = match (state.reload)() {
            Ok(()) => (StatusCode::OK, serde_json::json!({ "status": "reloaded" })),
            Err(e) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "status": "refused", "error": e }),
            ),
        };
        return respond(status, "application/json", format!("{body}\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let ready = state.ready.load(Ordering::Acquire);
            let body = readyz_body(ready, &(state.upstreams)());
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body)
        }
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                respond(
                    StatusCode::OK,
                    OPENMETRICS_CONTENT_TYPE,
                    state.metrics.encode_openmetrics(),
                )
            } else {
                respond(
                    StatusCode::OK,
                    PROMETHEUS_CONTENT_TYPE,
                    state.metrics.encode(),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_body_lists_breakers() {
        let body = readyz_body(false, &[("http://a:1".to_string(), "open")]);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "draining");
        assert_eq!(v["upstreams"][0]["name"], "http://a:1");
        assert_eq!(v["upstreams"][0]["breaker"], "open");
    }
}
