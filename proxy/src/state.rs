//! The gateway's shared state: the installed snapshot (compiled for
//! serving) behind an atomic pointer, the status report, metrics, and the
//! upstream pools that outlive snapshots.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use snapshot::status::ObjectRef;
use snapshot::{Backend, Feature, Snapshot};

use crate::metrics::{Metrics, RouteMetrics};
use crate::router::Router;
use crate::stages::{self, Stage};
use crate::tls::Certificates;
use crate::upstream::{UpstreamSet, Upstreams};

/// Request limits and ingress settings, enforced before routing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request head (HTTP/1.1).
    pub max_headers: usize,
    /// Longest request target (path and query), bytes; longer gets 414.
    pub max_uri_bytes: usize,
    /// Time allowed to read a request head, ms.
    pub header_read_timeout_ms: u64,
    /// Longest silence while a request body is read, ms (408 after it).
    pub body_idle_timeout_ms: u64,
    /// Grace period for in-flight requests at shutdown, ms.
    pub shutdown_grace_ms: u64,
    /// Longest time a connection may stay open without a request in
    /// flight, ms (as nginx's `keepalive_timeout`).
    pub keep_alive_timeout_ms: u64,
    /// Most client connections one worker serves at once; more are
    /// refused (a plain-HTTP client gets a 503 problem first).
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` and `Forwarded` headers are believed
    /// (load balancers in front of the gateway). From anyone else they are
    /// replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether every traffic connection starts with a PROXY protocol v2
    /// header (from a load balancer), whose client address then stands for
    /// the peer's.
    pub proxy_protocol: bool,
    /// Bytes of answers the response cache keeps at most.
    pub cache_max_bytes: u64,
    /// Redis shared by every proxy for fleet-wide rate limits
    /// (`redis://host:port`); none: each proxy limits on its own.
    pub redis_url: Option<String>,
    /// Longest wait for Redis per request, ms.
    pub redis_timeout_ms: u64,
    /// When Redis cannot be asked: each proxy's own budget decides (true)
    /// or limited routes answer 503 (false).
    pub redis_fail_open: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            header_read_timeout_ms: 10_000,
            body_idle_timeout_ms: 60_000,
            shutdown_grace_ms: 30_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 16_384,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            cache_max_bytes: crate::cache::MAX_BYTES,
            redis_url: None,
            redis_timeout_ms: 5,
            redis_fail_open: true,
        }
    }
}

/// How a route's requests are answered.
#[derive(Debug)]
pub enum BackendRuntime {
    /// A fixed answer.
    Direct {
        /// Status.
        status: StatusCode,
        /// Headers (boxed: a `HeaderMap` is 96 bytes, and most routes
        /// are not direct answers).
        headers: Box<HeaderMap>,
        /// Body.
        body: Bytes,
        /// Whether the body is a problem document (a retired API's 410),
        /// which gets the request id like every other problem.
        problem: bool,
    },
    /// Load-balanced upstreams.
    Upstreams(Box<UpstreamSet>),
    /// Not served: the route needs what this proxy cannot enforce (the
    /// fields, comma-separated). Requests get 503, never the backend.
    Unservable(String),
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct RouteRuntime {
    /// Route id.
    pub id: Arc<str>,
    /// Owning tenant.
    pub tenant: Option<Arc<str>>,
    /// Stages in waterfall order.
    pub stages: Vec<Stage>,
    /// Whether a stage wants the outcome once the request is over.
    pub wants_finish: bool,
    /// The backend.
    pub backend: BackendRuntime,
    /// Whether the backend retries (so small bodies are buffered).
    pub retries: bool,
    /// Whether WebSocket upgrades are tunnelled.
    pub websocket: bool,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle: std::time::Duration,
    /// Whether repeated slashes are merged in the forwarded path.
    pub merge_slashes: bool,
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
}

/// A snapshot compiled for serving.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// Its version.
    pub version: Arc<str>,
    /// The routing table.
    pub router: Router,
    /// Routes, indexed like `snapshot.routes`.
    pub routes: Vec<RouteRuntime>,
    /// Handles for requests no route matched.
    pub unrouted: Arc<RouteMetrics>,
    /// TLS certificates by SNI.
    pub certificates: Certificates,
    /// Routes in the snapshot that are not served, and why (the fields
    /// this proxy cannot enforce), for `/status`.
    pub unservable: Vec<(ObjectRef, String)>,
}

impl Compiled {
    /// Compiles a snapshot, reusing the pools and endpoint states in
    /// `upstreams`.
    pub fn new(
        snapshot: Arc<Snapshot>,
        upstreams: &Upstreams,
        limiters: &crate::limits::Limiters,
        cache: &Arc<crate::cache::ResponseCache>,
        jwks: &crate::jwks::JwksCache,
        fleet: Option<&Arc<crate::limits::Fleet>>,
        metrics: &Metrics,
    ) -> Compiled {
        let keys = Arc::new(stages::KeyIndex::new(&snapshot.api_keys));
        let clients = Arc::new(stages::ClientIndex::new(&snapshot));
        let routes: Vec<RouteRuntime> = snapshot
            .routes
            .iter()
            .map(|route| {
                let backend = compile_backend(&snapshot, route, upstreams, metrics);
                let stages = stages::compile(stages::Context {
                    snapshot: &snapshot,
                    route,
                    keys: &keys,
                    limiters,
                    cache,
                    clients: &clients,
                    jwks,
                    fleet,
                });
                RouteRuntime {
                    id: Arc::from(route.id.as_str()),
                    tenant: route.tenant.as_deref().map(Arc::from),
                    wants_finish: stages.iter().any(Stage::wants_finish),
                    stages,
                    backend,
                    retries: route.traffic.retries.as_ref().is_some_and(|r| r.attempts > 0),
                    websocket: route.websocket,
                    tunnel_idle: std::time::Duration::from_millis(route.traffic.idle_timeout_ms),
                    merge_slashes: route.merge_slashes,
                    metrics: metrics.route(&route.id),
                }
            })
            .collect();
        let unservable = routes
            .iter()
            .zip(&snapshot.routes)
            .filter_map(|(runtime, route)| match &runtime.backend {
                BackendRuntime::Unservable(fields) => Some((route.source.clone(), fields.clone())),
                _ => None,
            })
            .collect();
        upstreams.retain(&snapshot);
        limiters.retain(&snapshot);
        let issuers: Vec<&str> =
            snapshot.routes.iter().filter_map(|r| r.auth.jwt.as_deref()?.jwks_uri.as_deref()).collect();
        jwks.retain(&issuers);
        Compiled {
            version: Arc::from(snapshot.version.as_str()),
            router: Router::new(&snapshot.routes, &snapshot.reserved_hosts),
            routes,
            unrouted: metrics.route(crate::metrics::UNROUTED),
            certificates: Certificates::new(&snapshot.certificates),
            unservable,
            snapshot,
        }
    }
}

/// How a route is answered: its backend, or 503 when the route needs what
/// this proxy cannot enforce (fail closed).
fn compile_backend(
    snapshot: &Snapshot,
    route: &snapshot::Route,
    upstreams: &Upstreams,
    metrics: &Metrics,
) -> BackendRuntime {
    let missing = unsupported(snapshot, route);
    if !missing.is_empty() {
        return BackendRuntime::Unservable(missing);
    }
    match &route.backend {
        Backend::Direct(d) => direct(d),
        Backend::Upstreams { groups } => match upstreams.compile(groups, &route.traffic, &route.id, metrics) {
            Ok(set) => BackendRuntime::Upstreams(Box::new(set)),
            // NB: translate checks the PEM shapes; what it cannot check (a
            // key rustls refuses) fails closed here.
            Err(e) => BackendRuntime::Unservable(format!("backend TLS ({e})")),
        },
        Backend::Ai(_) => BackendRuntime::Unservable(Feature::AiBackend.field().to_owned()),
    }
}

/// The features this proxy enforces. A route that needs any other is not
/// served (fail closed): see [`unsupported`].
pub const SUPPORTED_FEATURES: &[Feature] = &[
    Feature::ApiKeys,
    Feature::Subscriptions,
    Feature::DraftAccess,
    Feature::RateLimit,
    Feature::TenantQuotas,
    Feature::Cache,
    Feature::Jwt,
];

/// The fields of `route` that ask for something this proxy cannot
/// enforce, comma-separated; empty when it can serve the route.
pub fn unsupported(snapshot: &Snapshot, route: &snapshot::Route) -> String {
    let fields: Vec<&str> =
        snapshot.features(route).into_iter().filter(|f| !SUPPORTED_FEATURES.contains(f)).map(Feature::field).collect();
    fields.join(", ")
}

fn direct(d: &snapshot::DirectResponse) -> BackendRuntime {
    let mut headers = HeaderMap::new();
    for h in &d.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_str(&h.value)) {
            headers.append(n, v);
        }
    }
    let problem = headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v == "application/problem+json")
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&d.body).is_ok_and(|m| !m.is_empty())
        && d.body.trim_end().ends_with('}');
    match StatusCode::from_u16(d.status) {
        Ok(status) => {
            BackendRuntime::Direct { status, headers: Box::new(headers), body: Bytes::from(d.body.clone()), problem }
        }
        // NB: translate refuses such a status; a snapshot from elsewhere
        // that carries one is not served rather than answered 200.
        Err(_) => BackendRuntime::Unservable(format!("spec.backend.directResponse.status {}", d.status)),
    }
}

/// What `/status` shows.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Where the config comes from.
    pub source: String,
    /// Version of the snapshot being served.
    pub version: Option<String>,
    /// When it was installed (RFC 3339).
    pub installed_at: Option<String>,
    /// The last reload attempt: what happened.
    pub last_reload: Option<ReloadReport>,
    /// Files that could not be loaded, in the config being served or in
    /// the rejected attempt.
    pub load_errors: Vec<String>,
    /// Every object's conditions in the config being served.
    pub statuses: Vec<ObjectReport>,
}

/// A reload attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// When (RFC 3339).
    pub at: String,
    /// `installed`, `unchanged` or `rejected`.
    pub outcome: &'static str,
    /// Why, for a rejection.
    pub problems: Vec<String>,
}

/// One object's conditions, and the file it came from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    /// The file, when known.
    pub file: Option<String>,
    /// The status.
    #[serde(flatten)]
    pub status: snapshot::status::ObjectStatus,
}

/// Everything the workers share.
#[derive(Debug)]
pub struct Gateway {
    /// The snapshot being served.
    pub current: ArcSwapOption<Compiled>,
    /// The `/status` report.
    pub report: ArcSwap<Report>,
    /// Metrics.
    pub metrics: Metrics,
    /// Pools and endpoint health.
    pub upstreams: Upstreams,
    /// Rate-limit and quota state.
    pub limiters: crate::limits::Limiters,
    /// The response cache.
    pub cache: Arc<crate::cache::ResponseCache>,
    /// Token issuers' keys.
    pub jwks: crate::jwks::JwksCache,
    /// The fleet-wide limits store, when `--redis-url` names one.
    pub fleet: Option<Arc<crate::limits::Fleet>>,
    /// Request limits.
    pub limits: Limits,
}

impl Gateway {
    /// A gateway with nothing installed.
    pub fn new(limits: Limits, source: impl Into<String>) -> Arc<Gateway> {
        Arc::new(Gateway {
            current: ArcSwapOption::empty(),
            report: ArcSwap::from_pointee(Report { source: source.into(), ..Report::default() }),
            metrics: Metrics::default(),
            upstreams: Upstreams::default(),
            limiters: Default::default(),
            cache: Arc::new(crate::cache::ResponseCache::new(limits.cache_max_bytes)),
            jwks: Default::default(),
            fleet: limits.redis_url.as_deref().and_then(|url| {
                let timeout = std::time::Duration::from_millis(limits.redis_timeout_ms.max(1));
                crate::limits::Fleet::new(url, timeout, limits.redis_fail_open)
                    .map_err(|e| crate::say!("{e}; limits stay local"))
                    .ok()
                    .map(Arc::new)
            }),
            limits,
        })
    }

    /// Compiles and installs a snapshot. In-flight requests finish on the
    /// snapshot they started with.
    pub fn install(&self, snapshot: Snapshot) -> Arc<Compiled> {
        let compiled = Arc::new(Compiled::new(
            Arc::new(snapshot),
            &self.upstreams,
            &self.limiters,
            &self.cache,
            &self.jwks,
            self.fleet.as_ref(),
            &self.metrics,
        ));
        let previous = self.current.swap(Some(compiled.clone()));
        // Routes that are gone take their series with them.
        for route in previous.iter().flat_map(|p| &p.snapshot.routes) {
            if compiled.snapshot.route(&route.id).is_none() {
                let upstreams: Vec<String> = match &route.backend {
                    Backend::Upstreams { groups } => groups.iter().map(|g| g.name.clone()).collect(),
                    _ => Vec::new(),
                };
                self.metrics.forget_route(&route.id, &upstreams);
            }
        }
        compiled
    }

    /// Whether a snapshot is installed.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(yaml: &str, edit: impl FnOnce(&mut Snapshot)) -> Compiled {
        let mut inputs = snapshot::Inputs::default();
        inputs.load_yaml("test.yaml", yaml).expect("the YAML loads");
        let mut snapshot = snapshot::translate(&inputs).snapshot;
        edit(&mut snapshot);
        Compiled::new(
            Arc::new(snapshot),
            &Upstreams::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            None,
            &Metrics::default(),
        )
    }

    const DIRECT: &str = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: mock }\nspec:\n  backend: { directResponse: { status: 200, body: ok } }\n";

    #[test]
    fn a_direct_answer_with_an_invalid_status_is_not_served_as_200() {
        let ok = compiled(DIRECT, |_| {});
        assert!(matches!(ok.routes[0].backend, BackendRuntime::Direct { status: StatusCode::OK, .. }));
        let bad = compiled(DIRECT, |s| {
            if let Backend::Direct(d) = &mut s.routes[0].backend {
                d.status = 1000;
            }
        });
        assert!(matches!(&bad.routes[0].backend, BackendRuntime::Unservable(f) if f.contains("status 1000")));
        assert_eq!(bad.unservable.len(), 1);
    }

    #[test]
    fn routes_needing_unsupported_features_are_unservable() {
        let compiled = compiled(DIRECT, |s| {
            s.routes[0].backend =
                Backend::Ai(Box::new(snapshot::AiRoute { targets: Vec::new(), fallback: Vec::new(), prompt: None }));
        });
        assert!(
            matches!(&compiled.routes[0].backend, BackendRuntime::Unservable(f) if f == "spec.backend.ai"),
            "{:?}",
            compiled.routes[0].backend
        );
    }
}
