//! Calling upstreams: pooled keep-alive clients, the load-balanced pick,
//! retries with a budget, timeouts and passive health.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crds::{LoadBalancerPolicy, RetryOn};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, header, request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use snapshot::{PassiveHealthPolicy, RetryPolicy, TrafficPolicy, UpstreamGroup};

use crate::balance::{self, EndpointState, PickInput};
use crate::body::{BodyProgress, RequestBody, UpstreamBody};
use crate::errors::ProxyError;
use crate::exchange::Exchange;
use crate::h1;
use crate::pool::{self, Checkin};

/// A pooled client (HTTP/1.1, or HTTP/2 when TLS negotiates it).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Milliseconds since the proxy started: the clock of ejections.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A small, fast per-thread random source (xorshift), for load balancing
/// and back-off jitter. Not for anything secret.
pub fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
            let local = 0u8;
            t ^ (std::ptr::addr_of!(local) as u64).rotate_left(32) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// State that outlives snapshots, in one registry keyed by route: the
/// connection clients, each route's endpoint states (passive health and
/// in-flight counts, per route so that ejection follows the route's own
/// policy), its retry budget and its round-robin position. A config reload
/// (or, under an operator, an EndpointSlice change during an outage) never
/// refills a budget or forgets an ejection.
#[derive(Debug, Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<(u64, u64, bool), Arc<HttpClient>>>,
    endpoints: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
    routes: Mutex<HashMap<String, Arc<RouteState>>>,
}

/// One route's state across snapshots.
#[derive(Debug, Default)]
pub struct RouteState {
    /// The retry budget.
    pub budget: RetryBudget,
    /// The round-robin position.
    pub counter: AtomicU64,
}

impl Upstreams {
    /// The client for these timeouts (`h2c`: HTTP/2 without TLS, for gRPC).
    /// NB: shared behind an Arc: a client is several hundred bytes, and
    /// every route with the same timeouts uses the same one.
    fn client(&self, connect_ms: u64, idle_ms: u64, h2c: bool) -> Arc<HttpClient> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry((connect_ms, idle_ms, h2c))
            .or_insert_with(|| Arc::new(build_client(connect_ms, idle_ms, h2c)))
            .clone()
    }

    /// The state of one endpoint of one route.
    pub fn endpoint(&self, route: &str, address: &str) -> Arc<EndpointState> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints
            .entry((route.to_owned(), address.to_owned()))
            .or_insert_with(|| Arc::new(EndpointState::new(address)))
            .clone()
    }

    /// The state of one route.
    pub fn route(&self, route: &str) -> Arc<RouteState> {
        let mut routes = self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.entry(route.to_owned()).or_default().clone()
    }

    /// Forgets routes and endpoints no snapshot uses any more.
    pub fn retain(&self, snapshot: &snapshot::Snapshot) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints.retain(|(route, address), _| {
            snapshot.route(route).is_some_and(|r| match &r.backend {
                snapshot::Backend::Upstreams { groups } => groups.iter().any(|g| g.endpoints.contains(address)),
                _ => false,
            })
        });
        let mut routes = self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        routes.retain(|route, _| snapshot.route(route).is_some());
    }

    /// Compiles one route's upstreams.
    pub fn compile(
        &self,
        groups: &[UpstreamGroup],
        traffic: &TrafficPolicy,
        route: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Result<UpstreamSet, String> {
        let mut compiled = Vec::with_capacity(groups.len());
        for g in groups {
            let tls = g.tls_options.as_ref().map(tls_target).transpose().map_err(|e| format!("{}: {e}", g.name))?;
            let endpoints: Vec<Arc<EndpointState>> = g.endpoints.iter().map(|e| self.endpoint(route, e)).collect();
            let targets = endpoints
                .iter()
                .map(|e| pool::Target {
                    key: match &tls {
                        // NB: the TLS identity is part of the key: a connection
                        // made with one CA or client certificate is never
                        // reused for another.
                        Some((_, id)) => Arc::from(format!("{}|tls|{id:016x}", e.address)),
                        None => e.address.clone(),
                    },
                    address: e.address.clone(),
                    tls: tls.as_ref().map(|(t, _)| t.clone()),
                })
                .collect();
            compiled.push(Group {
                metrics: metrics.upstream(route, &g.name),
                name: Arc::from(g.name.as_str()),
                weight: g.weight,
                tls: g.tls,
                shared_client: g.tls && tls.is_none(),
                h2c: g.h2c,
                host: g.host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
                path_prefix: g.path_prefix.clone(),
                endpoints,
                targets,
            });
        }
        let groups = compiled;
        Ok(UpstreamSet {
            total_weight: groups.iter().map(|g| u64::from(g.weight)).sum(),
            weights: groups.iter().map(|g| g.weight).collect(),
            connect_timeout: Duration::from_millis(traffic.connect_timeout_ms),
            idle_timeout: Duration::from_millis(traffic.idle_timeout_ms),
            groups,
            policy: traffic.load_balancer,
            hash_header: traffic.hash_header.as_deref().and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            request_timeout: Duration::from_millis(traffic.request_timeout_ms),
            retries: traffic.retries.clone(),
            health: traffic.passive_health.clone(),
            state: self.route(route),
            client: self.client(traffic.connect_timeout_ms, traffic.idle_timeout_ms, false),
            h2c: self.client(traffic.connect_timeout_ms, traffic.idle_timeout_ms, true),
        })
    }
}

/// The TLS client of a Service backend: its CA (or the public web roots),
/// its client certificate, HTTP/1.1 by ALPN; and an id of that identity.
fn tls_target(options: &snapshot::UpstreamTls) -> Result<(pool::TlsTarget, u64), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("the CA bundle holds an unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA bundle holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&options.client_cert_pem, &options.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|e| format!("the client key is not PEM: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("the client certificate is unusable: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(options.server_name.clone())
        .map_err(|_| format!("{:?} is not a server name", options.server_name))?;
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(&options.server_name, &options.ca_pem, &options.client_cert_pem), &mut hasher);
    let id = std::hash::Hasher::finish(&hasher);
    Ok((pool::TlsTarget { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name }, id))
}

pub(crate) fn build_client(connect_ms: u64, idle_ms: u64, h2c: bool) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_millis(connect_ms)));
    http.set_nodelay(true);
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let builder = match tls {
        Ok(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
        // The ring provider supports the default versions; this cannot fail.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    let connector = builder.https_or_http().enable_http1().enable_http2().wrap_connector(http);
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_millis(idle_ms)).pool_max_idle_per_host(1024);
    if h2c {
        client.http2_only(true);
    }
    client.build(connector)
}

/// A retry budget, as Linkerd's: each request deposits `budget_percent`% of
/// a retry, each retry withdraws one, and time adds 10 retries a second
/// (so a quiet route can still retry). The balance starts at 10 retries and
/// holds at most 100, so retries cannot multiply an outage's load.
#[derive(Debug)]
pub struct RetryBudget {
    /// Balance in thousandths of a retry.
    balance: AtomicI64,
    /// When time last added to the balance (ms since the proxy started).
    refilled_ms: AtomicU64,
}

/// Thousandths of a retry per retry.
const RETRY: i64 = 1_000;
/// The most the balance holds.
const MAX_BALANCE: i64 = 100 * RETRY;
/// Retries a second that time adds, in thousandths per millisecond.
const PER_MS: i64 = 10;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { balance: AtomicI64::new(10 * RETRY), refilled_ms: AtomicU64::new(now_ms()) }
    }
}

impl RetryBudget {
    fn deposit(&self, percent: u32) {
        self.add(i64::from(percent) * RETRY / 100);
    }

    fn add(&self, amount: i64) {
        let _ =
            self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + amount).min(MAX_BALANCE)));
    }

    /// Takes one retry, if the budget has one, at `now` (ms).
    fn withdraw_at(&self, now: u64) -> bool {
        let last = self.refilled_ms.swap(now, Ordering::Relaxed);
        if now > last {
            self.add(((now - last) as i64).saturating_mul(PER_MS));
        }
        self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= RETRY).then_some(b - RETRY)).is_ok()
    }

    fn withdraw(&self) -> bool {
        self.withdraw_at(now_ms())
    }

    /// The balance, in retries (for tests and status).
    pub fn balance(&self) -> f64 {
        self.balance.load(Ordering::Relaxed) as f64 / RETRY as f64
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_budget_caps_retries_and_refills_with_requests_and_time() {
        let budget = RetryBudget { balance: AtomicI64::new(10 * RETRY), refilled_ms: AtomicU64::new(0) };
        // Ten retries to start with, then none.
        assert_eq!((0..20).filter(|_| budget.withdraw_at(0)).count(), 10);
        // Five requests at 20 % pay for one retry.
        for _ in 0..5 {
            budget.deposit(20);
        }
        assert!(budget.withdraw_at(0));
        assert!(!budget.withdraw_at(0));
        // Half a second adds five retries.
        assert_eq!((0..20).filter(|_| budget.withdraw_at(500)).count(), 5);
        // The balance never exceeds a hundred retries.
        assert_eq!((0..200).filter(|_| budget.withdraw_at(1_000_000)).count(), 100);
    }
}

#[derive(Debug)]
struct Group {
    metrics: crate::metrics::UpstreamMetrics,
    name: Arc<str>,
    weight: u32,
    tls: bool,
    /// TLS by URL: the shared hyper-util client (host name, web roots).
    shared_client: bool,
    /// Cleartext HTTP/2 (`appProtocol: kubernetes.io/h2c`).
    h2c: bool,
    host: Option<HeaderValue>,
    path_prefix: String,
    endpoints: Vec<Arc<EndpointState>>,
    /// Pool targets, aligned with `endpoints`.
    targets: Vec<pool::Target>,
}

/// One route's upstreams and traffic policy.
#[derive(Debug)]
pub struct UpstreamSet {
    groups: Vec<Group>,
    weights: Vec<u32>,
    total_weight: u64,
    connect_timeout: Duration,
    idle_timeout: Duration,
    policy: LoadBalancerPolicy,
    hash_header: Option<HeaderName>,
    request_timeout: Duration,
    retries: Option<Box<RetryPolicy>>,
    health: Option<PassiveHealthPolicy>,
    /// Budget and round-robin position, shared with earlier snapshots.
    state: Arc<RouteState>,
    client: Arc<HttpClient>,
    h2c: Arc<HttpClient>,
}

/// A request body in a form that can be sent (again).
#[derive(Debug)]
pub enum Payload {
    /// No body: any number of tries.
    Empty,
    /// A small buffered body: any number of tries.
    Buffered(Bytes),
    /// A streamed body: one try; how reading it went.
    Stream(Option<RequestBody>, Arc<BodyProgress>),
}

impl Payload {
    fn take(&mut self) -> Option<RequestBody> {
        match self {
            Payload::Empty => Some(RequestBody::Empty),
            Payload::Buffered(b) => Some(RequestBody::Full(Full::new(b.clone()))),
            Payload::Stream(s, _) => s.take(),
        }
    }

    /// The whole body, when it is known up front: `Some(None)` for none.
    fn bytes(&self) -> Option<Option<&Bytes>> {
        match self {
            Payload::Empty => Some(None),
            Payload::Buffered(b) => Some(Some(b)),
            Payload::Stream(..) => None,
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, Payload::Stream(..))
    }

    /// The client's fault, when reading its body is what failed.
    fn client_error(&self) -> Option<ProxyError> {
        match self {
            Payload::Stream(_, progress) => progress.client_error(),
            _ => None,
        }
    }

    /// Whether the upstream call is waiting on the client's body.
    fn waiting_on_client(&self) -> bool {
        matches!(self, Payload::Stream(_, progress) if progress.waiting_on_client())
    }
}

enum Failure {
    /// Nothing of the request reached the upstream.
    Connect(String),
    Reset(String),
    Timeout(u64),
}

impl Failure {
    fn into_error(self, upstream: &str) -> ProxyError {
        match self {
            Failure::Connect(detail) | Failure::Reset(detail) => {
                ProxyError::UpstreamUnreachable { upstream: upstream.to_owned(), detail }
            }
            Failure::Timeout(ms) => ProxyError::UpstreamTimeout { upstream: upstream.to_owned(), timeout_ms: ms },
        }
    }
}

/// Counts a request in flight on an endpoint for as long as it lives, so a
/// cancelled request (the client went away) gives its count back.
struct InFlight<'a>(&'a EndpointState);

impl<'a> InFlight<'a> {
    fn new(endpoint: &'a EndpointState) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE].contains(method)
}

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1): credentials
/// for this proxy (`Proxy-Authorization`) and HTTP/2 upgrade settings
/// included.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. `Upgrade` is kept only for upgrade requests.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    // NB: one pass over the (few) names finds what is present; most
    // requests carry none, and removing absent names costs a hash each.
    let mut present: [Option<HeaderName>; 10] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        let hop = HOP_BY_HOP.contains(name) || (!keep_upgrade && *name == header::UPGRADE);
        if hop && count < present.len() {
            present[count] = Some(name.clone());
            count += 1;
        }
    }
    if count == 0 {
        return;
    }
    // The usual case on responses: only `Connection: keep-alive` (or close).
    if count == 1 && present[0].as_ref() == Some(&header::CONNECTION) {
        let usual = headers.get_all(header::CONNECTION).iter().all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .all(|t| ["keep-alive", "close", "upgrade"].iter().any(|c| t.trim().eq_ignore_ascii_case(c)))
            })
        });
        if usual {
            headers.remove(header::CONNECTION);
            return;
        }
    }
    // Headers the Connection header names are hop-by-hop too (its usual
    // tokens, keep-alive, close and upgrade, name no other header).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !["keep-alive", "close", "upgrade"].iter().any(|c| t.eq_ignore_ascii_case(c)))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(present.iter().flatten()) {
        headers.remove(name);
    }
}

impl UpstreamSet {
    /// Sends the request upstream: picks a group by weight and an endpoint
    /// by policy, then tries (and retries) within the request timeout.
    ///
    /// A try that may have reached the upstream is repeated only when that
    /// is safe: an idempotent method without a body, or a route that says
    /// so (`retries.nonIdempotent`). A connect failure is always safe. A
    /// failure caused by the client's body is the client's: never retried,
    /// never counted against the endpoint.
    pub async fn call(
        &self,
        ex: &mut Exchange,
        parts: &mut request::Parts,
        mut payload: Payload,
        upgrade: bool,
    ) -> Result<(Response<UpstreamBody>, Option<Checkin>), ProxyError> {
        let deadline = Instant::now() + self.request_timeout;
        let roll = if self.groups.len() == 1 || self.total_weight == 0 { 0 } else { random() % self.total_weight };
        let group = match balance::pick_weighted(&self.weights, roll) {
            Some(i) => &self.groups[i],
            None => {
                let name = self.groups.first().map(|g| g.name.to_string()).unwrap_or_default();
                return Err(ProxyError::NoHealthyEndpoint { upstream: name });
            }
        };
        ex.upstream = Some(group.name.clone());
        if let Some(retries) = &self.retries {
            self.state.budget.deposit(retries.budget_percent);
        }
        let max_tries = 1 + self.retries.as_ref().filter(|_| payload.replayable()).map_or(0, |r| r.attempts);
        let resend_safe = self.retries.as_ref().is_some_and(|r| r.non_idempotent)
            || (is_idempotent(&parts.method) && matches!(payload, Payload::Empty));
        let hash = self.hash_header.as_ref().and_then(|h| parts.headers.get(h)).map(|v| balance::fnv1a(v.as_bytes()));
        let h2c = group.h2c || (parts.version == Version::HTTP_2 && !group.tls && is_grpc(&parts.headers));
        let mut tried: Vec<usize> = Vec::new();
        let mut try_number = 0;
        loop {
            try_number += 1;
            let input = PickInput {
                policy: self.policy,
                counter: self.state.counter.fetch_add(1, Ordering::Relaxed),
                random: random(),
                hash,
                now_ms: now_ms(),
            };
            let index = balance::pick(&group.endpoints, input, &tried)
                .or_else(|| balance::pick(&group.endpoints, input, &[]))
                .ok_or_else(|| ProxyError::NoHealthyEndpoint { upstream: group.name.to_string() })?;
            tried.push(index);
            let endpoint = &group.endpoints[index];
            ex.endpoint = Some(endpoint.address.clone());
            let Some(body) = payload.take() else {
                return Err(ProxyError::UpstreamUnreachable {
                    upstream: group.name.to_string(),
                    detail: "the request body was already sent".into(),
                });
            };
            // NB: the headers are moved out when there will be no second try.
            let headers =
                if try_number >= max_tries { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
            let target = &group.targets[index];
            // NB: the usual request (no body, or a buffered one, over plain
            // TCP) takes the lean client, which writes the forwarding
            // fields with the head; see crate::h1.
            let lean = !(group.shared_client || h2c || upgrade)
                && target.tls.is_none()
                && payload.bytes().is_some()
                && h1::suits(&parts.method, &headers);
            let request = self.build_request(ex, parts, headers, group, endpoint, body, h2c, upgrade, lean)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let per_try = self
                .retries
                .as_ref()
                .and_then(|r| r.per_try_timeout_ms)
                .map(Duration::from_millis)
                .map_or(remaining, |t| t.min(remaining));
            let in_flight = InFlight::new(endpoint);
            let sent = Instant::now();
            let outcome = if group.shared_client || h2c {
                let client = if h2c { &self.h2c } else { &self.client };
                tokio::time::timeout(per_try, Box::pin(client.request(request)))
                    .await
                    .map(|r| r.map(|response| (response.map(UpstreamBody::Hyper), None)).map_err(|e| classify(&e)))
            } else if lean {
                let body = payload.bytes().flatten();
                tokio::time::timeout(
                    per_try,
                    h1::send(h1::Exchange {
                        key: &target.key,
                        address: &target.address,
                        connect_timeout: self.connect_timeout,
                        idle_timeout: self.idle_timeout,
                        request: &request,
                        body,
                        forwarding: (ex, parts.version),
                    }),
                )
                .await
                .map(|r| {
                    r.map(|response| (response.map(UpstreamBody::Lean), None)).map_err(|e| match e {
                        h1::Error::Connect(detail) => Failure::Connect(detail),
                        h1::Error::Protocol(detail) => Failure::Reset(detail),
                    })
                })
            } else {
                tokio::time::timeout(per_try, pool::send(target, self.connect_timeout, self.idle_timeout, request))
                    .await
                    .map(|r| {
                        r.map(|(response, checkin)| (response.map(UpstreamBody::Hyper), Some(checkin)))
                            .map_err(|e| classify_pooled(&e))
                    })
            };
            drop(in_flight);
            ex.upstream_latency = Some(sent.elapsed());
            if outcome.as_ref().is_ok_and(Result::is_err)
                && let Some(error) = payload.client_error()
            {
                return Err(error);
            }
            let failure = match outcome {
                Ok(Ok((response, checkin))) => {
                    let status = response.status().as_u16();
                    group.metrics.response(status);
                    if status >= 500 {
                        self.record_failure(group, endpoint);
                    } else {
                        self.record_success(endpoint);
                    }
                    // NB: a retryable status that cannot be retried (no tries,
                    // budget or time left) is the upstream's own answer.
                    let retry =
                        resend_safe && self.retry_wanted(|on| retries_status(on, status), try_number, max_tries);
                    match retry.then(|| self.back_off(try_number, deadline)).flatten() {
                        Some(wait) => {
                            drop(response);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        None => return Ok((response, checkin)),
                    }
                }
                Ok(Err(failure)) => failure,
                Err(_) if payload.waiting_on_client() => {
                    // The upstream is waiting for a body the client is slow to send.
                    return Err(ProxyError::RequestTimeout { timeout_ms: per_try.as_millis() as u64 });
                }
                Err(_) => Failure::Timeout(per_try.as_millis() as u64),
            };
            self.record_failure(group, endpoint);
            let written = !matches!(failure, Failure::Connect(_));
            let on = match &failure {
                Failure::Connect(_) => RetryOn::ConnectFailure,
                Failure::Reset(_) => RetryOn::Reset,
                Failure::Timeout(_) => RetryOn::Timeout,
            };
            let retry = (resend_safe || !written) && self.retry_wanted(|c| c.contains(&on), try_number, max_tries);
            match retry.then(|| self.back_off(try_number, deadline)).flatten() {
                Some(wait) => tokio::time::sleep(wait).await,
                // The last real failure, never a made-up timeout.
                None => return Err(failure.into_error(&group.name)),
            }
        }
    }

    /// The wait before the next try: the base back-off doubled per try,
    /// with jitter; `None` when it would cross the deadline.
    fn back_off(&self, try_number: u32, deadline: Instant) -> Option<Duration> {
        let r = self.retries.as_ref()?;
        let backoff = r.backoff_ms.saturating_mul(1 << (try_number - 1).min(6));
        let jitter = if backoff == 0 { 0 } else { random() % backoff };
        let wait = Duration::from_millis(backoff / 2 + jitter / 2);
        (Instant::now() + wait < deadline).then_some(wait)
    }

    /// Whether a failure of this kind may be retried now: the route retries
    /// on it, tries are left, and the budget pays for one.
    fn retry_wanted(&self, wanted: impl Fn(&[RetryOn]) -> bool, try_number: u32, max_tries: u32) -> bool {
        let Some(retries) = &self.retries else { return false };
        try_number < max_tries && wanted(&retries.retry_on) && self.state.budget.withdraw()
    }

    fn record_success(&self, endpoint: &EndpointState) {
        if self.health.is_some() {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            endpoint.ejections.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(&self, group: &Group, endpoint: &EndpointState) {
        let Some(health) = &self.health else { return };
        let failures = endpoint.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < health.consecutive_failures {
            return;
        }
        let now = now_ms();
        let ejected = group.endpoints.iter().filter(|e| !e.is_available(now)).count();
        // As Envoy does: eject while the ejected share is below the maximum,
        // so at least one endpoint can always be ejected.
        if ejected * 100 >= health.max_ejection_percent as usize * group.endpoints.len() {
            return;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let duration = health.base_ejection_ms.saturating_mul(1 << times);
        endpoint.ejected_until_ms.store(now + duration, Ordering::Relaxed);
        endpoint.consecutive_failures.store(0, Ordering::Relaxed);
    }

    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        ex: &Exchange,
        parts: &request::Parts,
        headers: http::HeaderMap,
        group: &Group,
        endpoint: &EndpointState,
        body: RequestBody,
        h2c: bool,
        upgrade: bool,
        lean: bool,
    ) -> Result<Request<RequestBody>, ProxyError> {
        let scheme = if group.tls { "https" } else { "http" };
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // The pooled HTTP/1.1 path connects by address and sends the
        // origin form; the shared client needs the absolute form to connect.
        let uri: Result<Uri, _> = if group.shared_client || h2c {
            format!("{scheme}://{}{}{}", endpoint.address, group.path_prefix, path_and_query).parse()
        } else if group.path_prefix.is_empty() {
            Ok(parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone())))
        } else {
            format!("{}{}", group.path_prefix, path_and_query).parse()
        };
        let uri = uri.map_err(|_| ProxyError::BadRequest(format!("cannot forward the path {path_and_query:?}")))?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = if h2c { Version::HTTP_2 } else { Version::HTTP_11 };
        let grpc = is_grpc(&headers);
        *request.headers_mut() = headers;
        let headers = request.headers_mut();
        // NB: room for what is added below (forwarding, identity, request
        // id) at once, instead of the map growing, and rehashing, twice.
        headers.reserve(10);
        // NB: hop-by-hop headers were removed at ingress, before any stage.
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if parts.version == Version::HTTP_2 && grpc {
            // gRPC needs trailers, so TE: trailers passes through.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // NB: the lean client writes these with the head instead.
        if !lean {
            forwarding_headers(ex, parts.version, headers);
        }
        match &group.host {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            None => {
                if !headers.contains_key(header::HOST)
                    && let Some(authority) = &ex.authority
                {
                    headers.insert(header::HOST, authority.clone());
                }
            }
        }
        Ok(request)
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `x-request-id`, kept or made by the gateway.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets `X-Forwarded-For/Proto/Host`, `Via` and `x-request-id`. From an
/// untrusted peer, `X-Forwarded-For` is replaced by the peer's address and
/// `Forwarded` and `X-Real-IP` are dropped; a trusted proxy's chain is
/// extended with it, and `X-Real-IP` names the client found in it.
pub fn forwarding_headers(ex: &Exchange, version: Version, headers: &mut http::HeaderMap) {
    // NB: one pass over the (few) names finds which of the replaced ones a
    // client sent; removing absent names would cost a hash each.
    let mut replaced = [false; 2];
    for name in headers.keys() {
        replaced[0] |= name == header::FORWARDED && !ex.peer_trusted;
        replaced[1] |= name == X_REAL_IP;
    }
    if replaced[0] {
        headers.remove(header::FORWARDED);
    }
    if replaced[1] {
        headers.remove(X_REAL_IP);
    }
    let mut fields = Vec::with_capacity(10);
    forwarding_fields(ex, version, headers, |name, value| fields.push((name, value)));
    for (name, value) in fields {
        if name == header::FORWARDED || name == header::VIA {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

/// [`forwarding_headers`] for a head written by hand (the lean client):
/// whether the request's own field `name` is replaced (and so left out),
/// and ([`forwarding_lines`]) the fields that replace it.
pub fn forwarding_replaces(ex: &Exchange, name: &HeaderName) -> bool {
    if *name == header::FORWARDED {
        return !ex.peer_trusted;
    }
    if *name == header::VIA {
        return false;
    }
    *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || *name == X_REAL_IP
        || *name == X_REQUEST_ID
        || (ex.caller.is_some() && crate::exchange::IDENTITY_FIELDS.contains(name))
}

/// Writes the fields [`forwarding_headers`] sets, as head lines.
pub fn forwarding_lines(ex: &Exchange, version: Version, headers: &http::HeaderMap, out: &mut Vec<u8>) {
    forwarding_fields(ex, version, headers, |name, value| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// The forwarding fields, in one place for both ways of sending them:
/// each is set (replacing the request's own) but `Forwarded` and `Via`,
/// which are appended.
fn forwarding_fields(
    ex: &Exchange,
    version: Version,
    headers: &http::HeaderMap,
    mut field: impl FnMut(HeaderName, HeaderValue),
) {
    if ex.peer_trusted {
        let peer = ex.client.ip();
        let prior: Vec<&str> = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        let chain = if prior.is_empty() { peer.to_string() } else { format!("{}, {peer}", prior.join(", ")) };
        field(X_FORWARDED_FOR, HeaderValue::from_str(&chain).unwrap_or_else(|_| ex.client_ip.clone()));
        let element = match peer {
            std::net::IpAddr::V4(ip) => format!("for={ip}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        if let Ok(value) = HeaderValue::from_str(&element) {
            field(header::FORWARDED, value);
        }
        field(X_REAL_IP, ex.client_ip.clone());
    } else {
        // NB: the client is the peer, whose address is made once per connection.
        field(X_FORWARDED_FOR, ex.client_ip.clone());
    }
    if let Some(caller) = &ex.caller {
        caller.identity_fields(&mut field);
    }
    field(X_FORWARDED_PROTO, HeaderValue::from_static(ex.scheme));
    if let Some(authority) = &ex.authority {
        field(X_FORWARDED_HOST, authority.clone());
    }
    let via = match version {
        Version::HTTP_2 => "2 sluice",
        Version::HTTP_10 => "1.0 sluice",
        _ => "1.1 sluice",
    };
    field(header::VIA, HeaderValue::from_static(via));
    field(X_REQUEST_ID, ex.request_id_value.clone());
}

/// Whether a route retrying on `retryOn` retries an upstream answer of `status`.
fn retries_status(on: &[RetryOn], status: u16) -> bool {
    on.iter().any(|c| match c {
        RetryOn::Status5xx => status >= 500,
        RetryOn::GatewayError => matches!(status, 502..=504),
        RetryOn::Status429 => status == 429,
        _ => false,
    })
}

fn classify_pooled(err: &pool::SendError) -> Failure {
    match err {
        pool::SendError::Connect(detail) => Failure::Connect(detail.clone()),
        pool::SendError::Http(e) => Failure::Reset(error_chain(e)),
    }
}

fn classify(err: &hyper_util::client::legacy::Error) -> Failure {
    let detail = error_chain(err);
    if err.is_connect() { Failure::Connect(detail) } else { Failure::Reset(detail) }
}

/// An error and its causes, as one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}
