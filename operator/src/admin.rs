//! The operator's admin listener: `/healthz` (the process answers),
//! `/readyz` (its caches have synced and it has compiled once) and
//! `/metrics` (Prometheus text format 0.0.4).
//!
//! NB: the handful of unlabelled series is written by hand: no label set
//! can grow, and the text format is six lines a series.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// What the operator counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Caches synced and one compile done.
    pub ready: AtomicBool,
    /// This replica holds the lease.
    pub leading: AtomicBool,
    /// Compiles run.
    pub compiles: AtomicU64,
    /// Routes in the last snapshot.
    pub routes: AtomicU64,
    /// Objects with a False condition in the last compile.
    pub rejected: AtomicU64,
    /// Status writes sent.
    pub status_writes: AtomicU64,
    /// Status writes that failed.
    pub status_write_errors: AtomicU64,
    /// API key Secrets issued.
    pub keys_issued: AtomicU64,
    /// API key Secrets withdrawn.
    pub keys_withdrawn: AtomicU64,
    /// Changes to key Secrets that failed.
    pub key_errors: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let series: [(&str, &str, &str, u64); 10] = [
            (
                "sluice_operator_ready",
                "gauge",
                "1 once the caches synced and a first compile ran",
                self.ready.load(Ordering::Relaxed).into(),
            ),
            (
                "sluice_operator_leading",
                "gauge",
                "1 while this replica holds the lease (writes status and keys)",
                self.leading.load(Ordering::Relaxed).into(),
            ),
            (
                "sluice_operator_compiles_total",
                "counter",
                "Compiles of the cluster's objects into a snapshot",
                self.compiles.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_routes",
                "gauge",
                "Routes in the last compiled snapshot",
                self.routes.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_rejected_objects",
                "gauge",
                "Objects with a False condition in the last compile",
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_status_writes_total",
                "counter",
                "Status writes sent (only changed statuses are written)",
                self.status_writes.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_status_write_errors_total",
                "counter",
                "Status writes the API server refused or that failed",
                self.status_write_errors.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_api_keys_issued_total",
                "counter",
                "API key Secrets issued to approved apps",
                self.keys_issued.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_api_keys_withdrawn_total",
                "counter",
                "API key Secrets withdrawn (no approved subscription left)",
                self.keys_withdrawn.load(Ordering::Relaxed),
            ),
            (
                "sluice_operator_api_key_errors_total",
                "counter",
                "Changes to API key Secrets that failed",
                self.key_errors.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::with_capacity(2048);
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// Serves the admin endpoints on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "caches not synced yet\n"),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n"),
    }
}
