//! One request through the waterfall (see `stages` for the picture):
//! accept limits, route, stages on the request, the backend, stages on
//! the response in reverse, and the record stage, which always runs.
//! Errors become answers in one place: [`ProxyError::to_response`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header, request};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

use crate::body::{RequestBody, ResponseBody, is_length_limit};
use crate::errors::ProxyError;
use crate::exchange::Exchange;
use crate::record::{Record, RecordBody};
use crate::router::RequestView;
use crate::stages::Flow;
use crate::state::{BackendRuntime, Compiled, Gateway, RouteRuntime};
use crate::upstream::{Payload, random, strip_hop_by_hop};

/// Bodies up to this size are buffered on routes with retries, so a retry
/// can send them again.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// How the client connected.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP, as `X-Forwarded-For` carries it.
    pub client_ip: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Connection {
    /// Describes a new client connection.
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        let client_ip =
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Connection { client, client_ip, tls }
    }
}

/// Serves one request.
pub async fn handle(gateway: &Gateway, conn: Connection, req: Request<Incoming>) -> Response<RecordBody> {
    let started = Instant::now();
    let (request_id, request_id_value) = match req
        .headers()
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .and_then(|v| Some((v.to_str().ok()?.to_owned(), v.clone())))
    {
        Some(kept) => kept,
        None => new_request_id(),
    };
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| req.headers().get(header::HOST).cloned());
    let host = authority.as_ref().and_then(|a| a.to_str().ok()).map(host_only).unwrap_or_default();
    let current = gateway.current.load_full();
    let mut ex = Exchange {
        request_id,
        request_id_value,
        client: conn.client,
        client_ip: conn.client_ip,
        scheme: if conn.tls { "https" } else { "http" },
        host,
        authority,
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        started,
        route_id: None,
        tenant: None,
        app: None,
        prefix_len: None,
        upstream: None,
        upstream_latency: None,
        error: None,
        cors_origin: None,
        bytes_in: content_length(req.headers()).unwrap_or(0),
        bytes_in_streamed: None,
        snapshot_version: current.as_ref().map(|c| c.version.clone()).unwrap_or_else(|| Arc::from("")),
    };
    let Some(compiled) = current else {
        let response = error_response(&mut ex, &ProxyError::NotReady);
        return finish(gateway, None, ex, response, None);
    };
    let found = compiled.router.find(&RequestView {
        host: &ex.host,
        path: req.uri().path(),
        method: req.method(),
        headers: req.headers(),
        query: req.uri().query(),
    });
    let Some(found) = found else {
        let error = ProxyError::NoRoute { method: ex.method.to_string(), host: ex.host.clone(), path: ex.path.clone() };
        let response = error_response(&mut ex, &error);
        return finish(gateway, Some(&compiled), ex, response, None);
    };
    let route = &compiled.routes[found.route];
    ex.route_id = Some(route.id.clone());
    ex.tenant = route.tenant.clone();
    ex.prefix_len = found.prefix_len;
    let response = run(gateway, route, &mut ex, req).await;
    finish(gateway, Some(&compiled), ex, response, Some(found.route))
}

/// The routed part of the waterfall: stages, backend, stages in reverse.
async fn run(
    gateway: &Gateway,
    route: &RouteRuntime,
    ex: &mut Exchange,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let limit = gateway.limits.max_body_bytes;
    if ex.bytes_in > limit {
        let response = error_response(ex, &ProxyError::BodyTooLarge { limit });
        return respond_through(route, ex, response, 0);
    }
    let mut ran = 0;
    let mut early = None;
    for stage in &route.stages {
        ran += 1;
        if let Flow::Respond(response) = stage.on_request(ex, &mut parts) {
            early = Some(response.map(ResponseBody::full));
            break;
        }
    }
    let response = match early {
        Some(response) => response,
        None => match backend(gateway, route, ex, &mut parts, body).await {
            Ok(response) => response,
            Err(error) => {
                let error = match error {
                    // The upstream call does not know the limit; the gateway does.
                    ProxyError::BodyTooLarge { .. } => ProxyError::BodyTooLarge { limit },
                    other => other,
                };
                if let Some(upstream) = &ex.upstream
                    && matches!(error.source_side(), crate::errors::ErrorSource::Upstream)
                {
                    gateway.metrics.upstream_error(&route.metrics, upstream, error.kind());
                }
                error_response(ex, &error)
            }
        },
    };
    respond_through(route, ex, response, ran)
}

/// Runs the response hooks of the first `ran` stages, last first.
fn respond_through(
    route: &RouteRuntime,
    ex: &Exchange,
    response: Response<ResponseBody>,
    ran: usize,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    for stage in route.stages[..ran].iter().rev() {
        stage.on_response(ex, &mut parts);
    }
    Response::from_parts(parts, body)
}

async fn backend(
    gateway: &Gateway,
    route: &RouteRuntime,
    ex: &mut Exchange,
    parts: &mut request::Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, ProxyError> {
    match &route.backend {
        BackendRuntime::Direct { status, headers, body: answer } => {
            let mut response = Response::new(ResponseBody::full(answer.clone()));
            *response.status_mut() = *status;
            *response.headers_mut() = headers.clone();
            Ok(response)
        }
        BackendRuntime::Ai => Err(ProxyError::BackendUnsupported(format!(
            "route {} has an AI backend, which this proxy does not serve yet",
            route.id
        ))),
        BackendRuntime::Upstreams(set) => {
            let upgrade = is_upgrade(parts);
            let client_upgrade = if upgrade { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
            let payload = payload(gateway, route, ex, parts, body).await?;
            let (response, checkin) = set.call(ex, parts, payload, upgrade).await?;
            let (mut res_parts, res_body) = response.into_parts();
            if res_parts.status == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = res_parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
                }
            } else {
                strip_hop_by_hop(&mut res_parts.headers, false);
            }
            // An upgraded connection belongs to the tunnel, not to the pool.
            let checkin = checkin.filter(|_| res_parts.status != StatusCode::SWITCHING_PROTOCOLS);
            let body = match checkin {
                Some(checkin) => ResponseBody::Pooled(res_body, Some(checkin)),
                None => ResponseBody::Upstream(res_body),
            };
            Ok(Response::from_parts(res_parts, body))
        }
    }
}

/// Turns the request body into something the upstream call can send:
/// nothing, a buffered copy (replayable, on routes with retries), or the
/// stream with the size limit.
async fn payload(
    gateway: &Gateway,
    route: &RouteRuntime,
    ex: &mut Exchange,
    parts: &request::Parts,
    body: Incoming,
) -> Result<Payload, ProxyError> {
    let limit = gateway.limits.max_body_bytes;
    if body.is_end_stream() {
        return Ok(Payload::Empty);
    }
    let length = content_length(&parts.headers);
    if route.retries && length.is_some_and(|l| l <= REPLAY_LIMIT) {
        let collected = Limited::new(body, REPLAY_LIMIT as usize).collect().await.map_err(|e| {
            if is_length_limit(e.as_ref()) {
                ProxyError::BodyTooLarge { limit: REPLAY_LIMIT }
            } else {
                ProxyError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        let bytes: Bytes = collected.to_bytes();
        ex.bytes_in = bytes.len() as u64;
        return Ok(Payload::Buffered(bytes));
    }
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    ex.bytes_in_streamed = Some(sent.clone());
    Ok(Payload::Stream(Some(RequestBody::Stream(Limited::new(body, limit as usize), sent))))
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Option<hyper::upgrade::OnUpgrade>) {
    let Some(upstream) = upstream else { return };
    if let (Ok(client), Ok(upstream)) = (client.await, upstream.await) {
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

fn is_upgrade(parts: &request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn error_response(ex: &mut Exchange, error: &ProxyError) -> Response<ResponseBody> {
    ex.error = Some(error.kind());
    error.to_response(&ex.request_id).map(ResponseBody::full)
}

/// Adds `x-request-id` and wraps the body in the record stage.
fn finish(
    gateway: &Gateway,
    compiled: Option<&Arc<Compiled>>,
    ex: Exchange,
    response: Response<ResponseBody>,
    route: Option<usize>,
) -> Response<RecordBody> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert("x-request-id", ex.request_id_value.clone());
    let metrics = match (compiled, route) {
        (Some(c), Some(i)) => c.routes[i].metrics.clone(),
        (Some(c), None) => c.unrouted.clone(),
        (None, _) => gateway.metrics.route(""),
    };
    let record = Record {
        time: std::time::SystemTime::now(),
        request_id: ex.request_id,
        route: ex.route_id,
        tenant: ex.tenant,
        app: ex.app,
        method: ex.method,
        host: ex.host,
        path: ex.path,
        status: parts.status.as_u16(),
        upstream: ex.upstream,
        upstream_latency: ex.upstream_latency,
        started: ex.started,
        bytes_in: ex.bytes_in,
        bytes_in_streamed: ex.bytes_in_streamed,
        error: ex.error,
        snapshot: ex.snapshot_version,
        metrics,
    };
    Response::from_parts(parts, RecordBody::new(body, record))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `Host` without port, lower-case.
fn host_only(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(authority)
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A 128-bit random id, as 32 hex digits, and as a header value.
fn new_request_id() -> (String, HeaderValue) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (half, value) in [random(), random()].into_iter().enumerate() {
        for i in 0..16 {
            digits[half * 16 + i] = HEX[((value >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    let id = std::str::from_utf8(&digits).unwrap_or("0").to_owned();
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"));
    (id, value)
}

#[cfg(test)]
mod tests {
    use super::host_only;

    #[test]
    fn hosts_lose_ports_and_case() {
        assert_eq!(host_only("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_only("example.com"), "example.com");
        assert_eq!(host_only("[::1]:80"), "::1");
        assert_eq!(host_only("example.com."), "example.com");
    }
}
