//! One request through the waterfall (see `stages` for the picture):
//! accept limits, route, stages on the request, the backend, stages on
//! the response in reverse, and the record stage, which always runs.
//! Errors become answers in one place: [`ProxyError::to_response`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use crate::body::{ClientBody, IdleTimer, RequestBody, ResponseBody, UpstreamBody};
use crate::conn::Activity;
use crate::errors::ProxyError;
use crate::exchange::Exchange;
use crate::record::{Record, RecordBody};
use crate::router::RequestView;
use crate::stages::Flow;
use crate::state::{BackendRuntime, Compiled, Gateway, RouteRuntime};
use crate::tunnel::{self, Tunnel};
use crate::upstream::{Payload, X_REQUEST_ID, strip_hop_by_hop};
use crate::{calllog, ingress};

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
    /// The TLS server name the client asked for (lower-case), if any.
    pub sni: Option<Arc<str>>,
    /// Requests in flight on the connection (for its idle deadline).
    pub activity: Arc<Activity>,
}

impl Connection {
    /// A plain connection.
    pub fn plain(client: SocketAddr) -> Self {
        let client_ip =
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Connection { client, client_ip, tls: false, sni: None, activity: Arc::default() }
    }

    /// A TLS connection for `sni`.
    pub fn tls(client: SocketAddr, sni: Option<Arc<str>>) -> Self {
        Connection { tls: true, sni, ..Connection::plain(client) }
    }
}

/// Serves one request.
pub async fn handle(gateway: &Gateway, conn: Connection, req: Request<Incoming>) -> Response<RecordBody> {
    let started = Instant::now();
    let activity = conn.activity.begin();
    let (mut parts, body) = req.into_parts();
    let (request_id, request_id_value) = request_id(&parts.headers);
    let current = gateway.current.load_full();
    let ex = Exchange {
        request_id,
        request_id_value,
        client: conn.client,
        client_ip: conn.client_ip,
        peer_trusted: false,
        scheme: if conn.tls { "https" } else { "http" },
        host: String::new(),
        authority: None,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        started,
        route_id: None,
        tenant: None,
        caller: None,
        state: Default::default(),
        prefix_len: None,
        upstream: None,
        endpoint: None,
        user_agent: if calllog::enabled() { parts.headers.get(header::USER_AGENT).cloned() } else { None },
        upstream_latency: None,
        error: None,
        detail: None,
        bytes_in: 0,
        bytes_in_streamed: None,
        snapshot_version: current.as_ref().map(|c| c.version.clone()).unwrap_or_else(|| Arc::from("")),
        activity: Some(activity),
    };
    // Until the answer is handed to hyper, a dropped future is a client
    // that went away: the guard records it as 499.
    let mut pending = Pending { gateway, compiled: current, route: None, ex, done: false };
    let ex = &mut pending.ex;
    let limit = gateway.limits.max_uri_bytes;
    if parts.uri.path_and_query().is_some_and(|pq| pq.as_str().len() > limit) {
        let response = error_response(ex, &ProxyError::UriTooLong { limit });
        return pending.finish(response);
    }
    let admitted = match ingress::admit(&mut parts) {
        Ok(admitted) => admitted,
        Err(error) => {
            let response = error_response(ex, &error);
            return pending.finish(response);
        }
    };
    ex.host = admitted.host;
    ex.authority = admitted.authority;
    let trusted = &gateway.limits.trusted_proxies;
    if !trusted.is_empty() && trusted.iter().any(|net| net.contains(&conn.client.ip())) {
        ex.peer_trusted = true;
        let client = ingress::client_ip(conn.client.ip(), &parts.headers, trusted);
        if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
            ex.client_ip = value;
        }
    }
    if ex.path != parts.uri.path() {
        ex.path = parts.uri.path().to_owned();
    }
    let Some(compiled) = pending.compiled.clone() else {
        let response = error_response(ex, &ProxyError::NotReady);
        return pending.finish(response);
    };
    // A connection's certificate vouches for some hosts only: a request for
    // another host (HTTP/2 connection reuse included) is misdirected.
    if conn.tls && !compiled.certificates.same_certificate(conn.sni.as_deref(), &ex.host) {
        let response = error_response(ex, &ProxyError::Misdirected { host: ex.host.clone() });
        return pending.finish(response);
    }
    let view = RequestView {
        host: &ex.host,
        path: parts.uri.path(),
        method: &parts.method,
        headers: &parts.headers,
        query: parts.uri.query(),
    };
    let found = compiled.router.find(&view).or_else(|| {
        // A CORS preflight asks about another method: routed as that
        // method, to a route whose CORS policy answers it.
        let asked = preflight_method(&parts)?;
        let found = compiled.router.find(&RequestView { method: &asked, ..view })?;
        compiled.snapshot.routes[found.route].cors.is_some().then_some(found)
    });
    let Some(found) = found else {
        let error = ProxyError::NoRoute { method: ex.method.to_string(), host: ex.host.clone(), path: ex.path.clone() };
        let response = error_response(ex, &error);
        return pending.finish(response);
    };
    let route = &compiled.routes[found.route];
    pending.route = Some(found.route);
    let ex = &mut pending.ex;
    ex.route_id = Some(route.id.clone());
    ex.tenant = route.tenant.clone();
    ex.prefix_len = found.prefix_len;
    if admitted.websocket && !route.websocket {
        parts.headers.remove(header::UPGRADE);
    }
    if !route.merge_slashes
        && let Some(unmerged) = &admitted.unmerged
    {
        // Routed with slashes merged, forwarded with them kept.
        let segments = ex.prefix_len.map(|len| parts.uri.path()[..len].matches('/').count());
        if let Err(error) = ingress::set_path(&mut parts, unmerged) {
            let response = error_response(ex, &error);
            return pending.finish(response);
        }
        ex.prefix_len = segments.map(|n| ingress::segments_end(unmerged, n));
    }
    // NB: boxed, so the future hyper stores per request stays small (the
    // upstream call's state is large and would be copied with it).
    let response = Box::pin(run(gateway, route, ex, parts, body)).await;
    pending.finish(response)
}

/// Records a request the gateway could not take (hyper's parser refused
/// its head): the unrouted series and one call log line, under the request
/// id its answer carried (a new one if none was sent).
pub fn record_unanswered(
    gateway: &Gateway,
    status: u16,
    kind: &'static str,
    detail: &str,
    request_id: Option<&str>,
    client_ip: &HeaderValue,
) {
    let metrics = match gateway.current.load().as_ref() {
        Some(compiled) => compiled.unrouted.clone(),
        None => gateway.metrics.route(crate::metrics::UNROUTED),
    };
    metrics.record(status, 0.0, 0, 0, Default::default());
    if !calllog::enabled() {
        return;
    }
    let request_id = match request_id {
        Some(id) => id.to_owned(),
        None => new_request_id().0,
    };
    let time = std::time::SystemTime::now();
    calllog::write(&calllog::CallLine {
        kind: None,
        time,
        request_id: &request_id,
        route: None,
        tenant: None,
        app: None,
        caller_tenant: None,
        auth: None,
        credential: None,
        subscription: None,
        client_ip: client_ip.to_str().unwrap_or_default(),
        user_agent: None,
        method: "",
        host: "",
        path: "",
        status,
        upstream: None,
        endpoint: None,
        upstream_us: None,
        duration_us: 0,
        bytes_in: 0,
        bytes_out: 0,
        error: Some(kind),
        detail: Some(detail),
        snapshot: "",
    });
}

/// The method a CORS preflight asks about.
fn preflight_method(parts: &request::Parts) -> Option<http::Method> {
    if parts.method != http::Method::OPTIONS || !parts.headers.contains_key(header::ORIGIN) {
        return None;
    }
    let asked = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    http::Method::from_bytes(asked.as_bytes()).ok()
}

/// A request between arrival and the hand-over of its answer. Dropped
/// before [`Pending::finish`] (hyper drops the service future when the
/// client goes away), it records the request as 499.
struct Pending<'g> {
    gateway: &'g Gateway,
    compiled: Option<Arc<Compiled>>,
    route: Option<usize>,
    ex: Exchange,
    done: bool,
}

impl Pending<'_> {
    /// Adds `x-request-id` and wraps the body in the record stage.
    fn finish(&mut self, response: Response<ResponseBody>) -> Response<RecordBody> {
        self.done = true;
        let (mut parts, body) = response.into_parts();
        let ex = &mut self.ex;
        parts.headers.insert(X_REQUEST_ID, ex.request_id_value.clone());
        // NB: the answer is the gateway's, in its own HTTP version (RFC 9110
        // §6.2), never the upstream's: an HTTP/1.0 upstream must not make
        // an HTTP/1.1 client's answer "HTTP/1.0" (and close its connection).
        parts.version = http::Version::HTTP_11;
        let metrics = match (&self.compiled, self.route) {
            (Some(c), Some(i)) => c.routes[i].metrics.clone(),
            (Some(c), None) => c.unrouted.clone(),
            (None, _) => self.gateway.metrics.route(crate::metrics::UNROUTED),
        };
        let record = Record {
            request_id: std::mem::take(&mut ex.request_id),
            route: ex.route_id.take(),
            tenant: ex.tenant.take(),
            app: ex.caller.as_ref().map(|c| c.app.clone()),
            client_ip: ex.client_ip.clone(),
            method: ex.method.clone(),
            host: std::mem::take(&mut ex.host),
            path: std::mem::take(&mut ex.path),
            status: parts.status.as_u16(),
            upstream: ex.upstream.take(),
            endpoint: ex.endpoint.take(),
            user_agent: ex.user_agent.take(),
            upstream_latency: ex.upstream_latency,
            started: ex.started,
            bytes_in: ex.bytes_in,
            bytes_in_streamed: ex.bytes_in_streamed.take(),
            error: ex.error,
            detail: ex.detail.take(),
            snapshot: ex.snapshot_version.clone(),
            activity: ex.activity.take(),
            metrics,
            caller: ex.caller.take(),
            subscription: ex.state.subscription.take(),
            finish_hooks: match (&self.compiled, self.route) {
                (Some(c), Some(i)) if c.routes[i].wants_finish => Some((c.clone(), i)),
                _ => None,
            },
        };
        Response::from_parts(parts, RecordBody::new(body, record))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.ex.error = Some(ProxyError::ClientClosed.kind());
        let mut response = Response::new(ResponseBody::full(Bytes::new()));
        *response.status_mut() = ProxyError::ClientClosed.status();
        // Dropping the recorded body writes the call log line and metrics.
        drop(self.finish(response));
    }
}

/// The routed part of the waterfall: stages, backend, stages in reverse.
async fn run(
    gateway: &Gateway,
    route: &RouteRuntime,
    ex: &mut Exchange,
    mut parts: request::Parts,
    body: Incoming,
) -> Response<ResponseBody> {
    if let BackendRuntime::Unservable(fields) = &route.backend {
        let error = ProxyError::RouteUnsupported { route: route.id.to_string(), fields: fields.clone() };
        return error_response(ex, &error);
    }
    let limit = gateway.limits.max_body_bytes;
    if content_length(&parts.headers).is_some_and(|length| length > limit) {
        let response = error_response(ex, &ProxyError::BodyTooLarge { limit });
        return respond_through(route, ex, response, 0);
    }
    let mut ran = 0;
    let mut early = None;
    for stage in &route.stages {
        ran += 1;
        match stage.on_request(ex, &mut parts).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(response)) => {
                early = Some(*response);
                break;
            }
            Err(error) => {
                early = Some(error_response(ex, &error));
                break;
            }
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
    ex: &mut Exchange,
    response: Response<ResponseBody>,
    ran: usize,
) -> Response<ResponseBody> {
    let (mut parts, mut body) = response.into_parts();
    // NB: room for the stages' headers and the request id at once.
    parts.headers.reserve(4);
    for stage in route.stages[..ran].iter().rev() {
        stage.on_response(ex, &mut parts);
        if let Some(filter) = stage.body_filter(ex, &parts) {
            body = body.filtered(filter);
        }
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
        BackendRuntime::Direct { status, headers, body: answer, problem } => {
            let answer = match problem {
                false => answer.clone(),
                // A problem document carries the request id, as the
                // gateway's own problems do.
                true => {
                    let trimmed = answer.trim_ascii_end();
                    let id = serde_json::to_string(&ex.request_id).unwrap_or_else(|_| "\"\"".into());
                    let mut body = Vec::with_capacity(trimmed.len() + id.len() + 16);
                    body.extend_from_slice(&trimmed[..trimmed.len() - 1]);
                    body.extend_from_slice(b",\"requestId\":");
                    body.extend_from_slice(id.as_bytes());
                    body.push(b'}');
                    Bytes::from(body)
                }
            };
            let mut response = Response::new(ResponseBody::full(answer));
            *response.status_mut() = *status;
            *response.headers_mut() = (**headers).clone();
            Ok(response)
        }
        BackendRuntime::Unservable(fields) => {
            Err(ProxyError::RouteUnsupported { route: route.id.to_string(), fields: fields.clone() })
        }
        BackendRuntime::Upstreams(set) => {
            let upgrade = parts.headers.contains_key(header::UPGRADE);
            let client_upgrade = if upgrade { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
            let payload = payload(gateway, route, ex, parts, body).await?;
            let (response, checkin) = set.call(ex, parts, payload, upgrade).await?;
            let (mut res_parts, res_body) = response.into_parts();
            if res_parts.status == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = res_parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
                    let tunnel = Tunnel {
                        request_id: ex.request_id.clone(),
                        route: route.id.clone(),
                        upstream: ex.upstream.clone(),
                        path: ex.path.clone(),
                        host: ex.host.clone(),
                        snapshot: ex.snapshot_version.clone(),
                        idle: route.tunnel_idle,
                    };
                    tokio::spawn(tunnel::run(tunnel, gateway.metrics.tunnels(), client_upgrade, upstream_upgrade));
                }
            } else {
                strip_hop_by_hop(&mut res_parts.headers, false);
            }
            // An upgraded connection belongs to the tunnel, not to the pool.
            let checkin = checkin.filter(|_| res_parts.status != StatusCode::SWITCHING_PROTOCOLS);
            let idle = IdleTimer::new(std::time::Duration::from_millis(gateway.limits.body_idle_timeout_ms));
            let body = match (res_body, checkin) {
                (UpstreamBody::Hyper(b), Some(checkin)) => ResponseBody::Pooled(b, idle, Some(checkin)),
                (UpstreamBody::Hyper(b), None) => ResponseBody::Upstream(b, idle),
                (UpstreamBody::Lean(b), _) => ResponseBody::Lean(b, idle),
            };
            Ok(Response::from_parts(res_parts, body))
        }
    }
}

/// Turns the request body into something the upstream call can send:
/// nothing, a buffered copy (replayable, on routes with retries), or the
/// stream, with the size limit and the body idle timeout either way.
async fn payload(
    gateway: &Gateway,
    route: &RouteRuntime,
    ex: &mut Exchange,
    parts: &request::Parts,
    body: Incoming,
) -> Result<Payload, ProxyError> {
    if body.is_end_stream() {
        return Ok(Payload::Empty);
    }
    let limits = &gateway.limits;
    let body =
        ClientBody::new(body, limits.max_body_bytes, std::time::Duration::from_millis(limits.body_idle_timeout_ms));
    let progress = body.progress();
    ex.bytes_in_streamed = Some(progress.clone());
    let length = content_length(&parts.headers);
    if route.retries && length.is_some_and(|l| l <= REPLAY_LIMIT) {
        let collected = body.collect().await.map_err(|_| {
            progress
                .client_error()
                .unwrap_or_else(|| ProxyError::BadRequest("the request body could not be read".into()))
        })?;
        return Ok(Payload::Buffered(collected.to_bytes()));
    }
    Ok(Payload::Stream(Some(RequestBody::Stream(body)), progress))
}

fn error_response(ex: &mut Exchange, error: &ProxyError) -> Response<ResponseBody> {
    ex.error = Some(error.kind());
    // The whole story goes to the call log; the client gets the problem
    // document's public detail only.
    if !matches!(error.source_side(), crate::errors::ErrorSource::Downstream) {
        ex.detail = Some(error.to_string());
    }
    error.to_response(&ex.request_id).map(ResponseBody::full)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The client's `x-request-id` when it is a sane token, else a new one.
fn request_id(headers: &http::HeaderMap) -> (String, HeaderValue) {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .and_then(|v| Some((v.to_str().ok()?.to_owned(), v.clone())))
        .unwrap_or_else(new_request_id)
}

/// A new request id: 128 bits from the operating system's CSPRNG, as 32
/// hex digits. Ids must not be guessable (a client could otherwise predict
/// and collide with another's), so they never come from the balancer's
/// xorshift. NB: the bytes are drawn 4 KiB at a time per thread, so the
/// hot path makes one `getrandom` call per 256 requests.
pub(crate) fn new_request_id() -> (String, HeaderValue) {
    use std::cell::RefCell;
    const BATCH: usize = 4096;
    thread_local! {
        static POOL: RefCell<(Box<[u8; BATCH]>, usize)> = RefCell::new((Box::new([0; BATCH]), BATCH));
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used + 16 > BATCH {
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes[..]).is_err() {
                // The OS generator failed: fall back to the clock and a
                // counter (unique, if predictable) rather than refusing.
                let nanos =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                for (i, chunk) in bytes.chunks_mut(16).enumerate() {
                    chunk.copy_from_slice(&(nanos.wrapping_add(i as u128)).to_le_bytes());
                }
            }
            *used = 0;
        }
        for (i, byte) in bytes[*used..*used + 16].iter().enumerate() {
            digits[2 * i] = HEX[usize::from(byte >> 4)];
            digits[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        *used += 16;
    });
    let id = std::str::from_utf8(&digits).unwrap_or_default().to_owned();
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"));
    (id, value)
}
