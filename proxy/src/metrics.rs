//! Prometheus series. Label values come from enums or from the snapshot
//! (route ids, upstream names), never from requests; per-route handles are
//! resolved when a snapshot is compiled, so the hot path touches atomics.

use std::sync::{Arc, OnceLock};

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A status code's class.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    /// 1xx
    Informational,
    /// 2xx
    Success,
    /// 3xx
    Redirection,
    /// 4xx
    ClientError,
    /// 5xx
    ServerError,
}

impl StatusClass {
    /// The class of a status code.
    pub fn of(status: u16) -> Self {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        })
    }
}

impl EncodeLabelValue for ReloadOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            ReloadOutcome::Installed => "installed",
            ReloadOutcome::Rejected => "rejected",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerStatus {
    route: String,
    tenant: String,
    app: String,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailure {
    route: String,
    reason: String,
}

/// Requests by authenticated caller, and refused callers. NB: the handles
/// are kept by route, then caller (`tenant/app`), behind a read-mostly
/// lock, so a request makes no label strings once its caller has been
/// seen, and clones nothing to look them up.
#[derive(Debug, Default)]
pub struct CallerMetrics {
    requests: Family<CallerStatus, Counter>,
    refused: Family<AuthFailure, Counter>,
    handles: std::sync::RwLock<CallerHandles>,
}

/// Route -> caller id -> a counter per status class. The names come from
/// config (routes, apps), never from a request, so a fast hasher is safe.
type CallerHandles = rustc_hash::FxHashMap<Arc<str>, rustc_hash::FxHashMap<Arc<str>, CallerCounters>>;

/// `(tenant, app)` and its counters by status class, made on first use.
#[derive(Debug)]
struct CallerCounters {
    tenant: Arc<str>,
    app: Arc<str>,
    by_class: [Option<Counter>; 5],
}

impl CallerMetrics {
    /// Counts a request of an authenticated caller.
    pub fn record(&self, route: &Arc<str>, caller: &crate::exchange::Caller, status: u16) {
        let class = StatusClass::of(status);
        if let Ok(handles) = self.handles.read()
            && let Some(counter) =
                handles.get(&**route).and_then(|r| r.get(&*caller.id)).and_then(|c| c.by_class[class.index()].as_ref())
        {
            counter.inc();
            return;
        }
        let counter = self.requests.get_or_create_owned(&CallerStatus {
            route: route.to_string(),
            tenant: caller.tenant.to_string(),
            app: caller.app.to_string(),
            status_class: class,
        });
        counter.inc();
        if let Ok(mut handles) = self.handles.write() {
            let counters = handles.entry(route.clone()).or_default().entry(caller.id.clone()).or_insert_with(|| {
                CallerCounters { tenant: caller.tenant.clone(), app: caller.app.clone(), by_class: Default::default() }
            });
            counters.by_class[class.index()] = Some(counter);
        }
    }

    /// Counts a request refused by authentication or access (`reason` is
    /// the problem type).
    pub fn refused(&self, route: &str, reason: &str) {
        self.refused.get_or_create(&AuthFailure { route: route.to_owned(), reason: reason.to_owned() }).inc();
    }

    fn forget_route(&self, route: &str) {
        let Ok(mut handles) = self.handles.write() else { return };
        for counters in handles.remove(route).into_iter().flat_map(|callers| callers.into_values()) {
            for (class, counter) in counters.by_class.iter().enumerate() {
                if counter.is_some() {
                    self.requests.remove(&CallerStatus {
                        route: route.to_owned(),
                        tenant: counters.tenant.to_string(),
                        app: counters.app.to_string(),
                        status_class: StatusClass::ALL[class],
                    });
                }
            }
        }
        for reason in AUTH_FAILURES {
            self.refused.remove(&AuthFailure { route: route.to_owned(), reason: (*reason).to_owned() });
        }
    }
}

/// Every `reason` label of `sluice_auth_refused_total`.
pub(crate) const AUTH_FAILURES: &[&str] = &[
    "missing-credentials",
    "invalid-api-key",
    "invalid-authorization",
    "ambiguous-credentials",
    "api-key-in-query",
    "forbidden",
    "subscription-required",
    "subscription-pending",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatus {
    route: String,
    upstream: String,
    status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamError {
    route: String,
    upstream: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: ReloadOutcome,
}

/// How a config reload ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot was installed.
    Installed,
    /// The config was bad; the last good snapshot keeps serving.
    Rejected,
}

/// Every series the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    request_bytes: Family<RouteLabel, Counter>,
    response_bytes: Family<RouteLabel, Counter>,
    upstream_requests: Family<UpstreamStatus, Counter>,
    upstream_errors: Family<UpstreamError, Counter>,
    reloads: Family<ReloadResult, Counter>,
    callers: Arc<CallerMetrics>,
    /// Client connections open now.
    pub active_connections: Gauge,
    /// Client connections refused at a worker's connection cap.
    pub refused_connections: Counter,
    tunnels: TunnelMetrics,
    config_current: Gauge,
}

/// WebSocket tunnel series, made when a tunnel closes (most routes never
/// have one).
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    closed: Family<RouteLabel, Counter>,
    bytes: Family<TunnelBytes, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelBytes {
    route: String,
    direction: Direction,
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        })
    }
}

impl TunnelMetrics {
    /// Records a closed tunnel.
    pub fn record(&self, route: &str, up: u64, down: u64, seconds: f64) {
        let label = RouteLabel { route: route.to_owned() };
        self.closed.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(seconds);
        for (direction, bytes) in [(Direction::Upstream, up), (Direction::Downstream, down)] {
            self.bytes.get_or_create(&TunnelBytes { route: route.to_owned(), direction }).inc_by(bytes);
        }
    }
}

fn tunnel_histogram() -> Histogram {
    // 0.1 s .. ~1.8 h.
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RouteStatus, Counter>::default();
        let duration = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let request_bytes = Family::<RouteLabel, Counter>::default();
        let response_bytes = Family::<RouteLabel, Counter>::default();
        let upstream_requests = Family::<UpstreamStatus, Counter>::default();
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        let reloads = Family::<ReloadResult, Counter>::default();
        let active_connections = Gauge::default();
        let refused_connections = Counter::default();
        let config_current = Gauge::default();
        registry.register(
            "config_current",
            "1 when the config source loads and is served as it is; 0 while a change is rejected (the last good config serves)",
            config_current.clone(),
        );
        let tunnels = TunnelMetrics {
            closed: Family::default(),
            bytes: Family::default(),
            duration: Family::new_with_constructor(tunnel_histogram as fn() -> Histogram),
        };
        registry.register("tunnels", "WebSocket tunnels closed, by route", tunnels.closed.clone());
        registry.register(
            "tunnel_bytes",
            "Bytes through WebSocket tunnels, by route and direction",
            tunnels.bytes.clone(),
        );
        registry.register(
            "tunnel_duration_seconds",
            "How long WebSocket tunnels stayed open",
            tunnels.duration.clone(),
        );
        registry.register("requests", "Requests answered, by route and status class", requests.clone());
        registry.register("request_duration_seconds", "Time from request to the end of the response", duration.clone());
        registry.register("request_bytes", "Request body bytes read from clients", request_bytes.clone());
        registry.register("response_bytes", "Response body bytes sent to clients", response_bytes.clone());
        registry.register(
            "upstream_requests",
            "Responses from upstreams, by route, upstream and status class",
            upstream_requests.clone(),
        );
        registry.register("upstream_errors", "Upstream calls that failed, by error type", upstream_errors.clone());
        registry.register("config_reloads", "Configuration reloads, by outcome", reloads.clone());
        let callers = Arc::new(CallerMetrics::default());
        registry.register(
            "caller_requests",
            "Requests of authenticated callers, by route, caller tenant, app and status class",
            callers.requests.clone(),
        );
        registry.register(
            "auth_refused",
            "Requests refused by authentication or access rules, by route and problem type",
            callers.refused.clone(),
        );
        registry.register("active_connections", "Client connections open now", active_connections.clone());
        registry.register(
            "call_log_dropped_lines",
            "Call log lines dropped because stdout could not keep up",
            crate::calllog::dropped().clone(),
        );
        registry.register(
            "refused_connections",
            "Client connections refused at a worker's connection cap",
            refused_connections.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            upstream_requests,
            upstream_errors,
            reloads,
            callers,
            active_connections,
            refused_connections,
            tunnels,
            config_current,
        }
    }
}

/// One upstream group's handles, each made when first used.
#[derive(Debug)]
pub struct UpstreamMetrics {
    family: Family<UpstreamStatus, Counter>,
    route: String,
    upstream: String,
    responses: [OnceLock<Counter>; 5],
}

impl UpstreamMetrics {
    /// Counts an upstream response.
    pub fn response(&self, status: u16) {
        let class = StatusClass::of(status);
        self.responses[class.index()]
            .get_or_init(|| {
                self.family.get_or_create_owned(&UpstreamStatus {
                    route: self.route.clone(),
                    upstream: self.upstream.clone(),
                    status_class: class,
                })
            })
            .inc();
    }
}

/// One route's handles. NB: a series is made when first used (an idle
/// route costs no series), then reached through its handle with no lookup.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    families: RouteFamilies,
    requests: [OnceLock<Counter>; 5],
    duration: OnceLock<Histogram>,
    request_bytes: OnceLock<Counter>,
    response_bytes: OnceLock<Counter>,
}

/// The route series' families (cheap handles).
#[derive(Debug, Clone)]
struct RouteFamilies {
    requests: Family<RouteStatus, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    request_bytes: Family<RouteLabel, Counter>,
    response_bytes: Family<RouteLabel, Counter>,
    callers: Arc<CallerMetrics>,
}

/// Who asked and how it ended, for the caller series.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerOutcome<'a> {
    /// The authenticated caller.
    pub caller: Option<&'a crate::exchange::Caller>,
    /// The error type the request ended in.
    pub error: Option<&'a str>,
}

impl RouteMetrics {
    /// Records one finished request.
    pub fn record(&self, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64, who: CallerOutcome<'_>) {
        if let Some(caller) = who.caller {
            self.families.callers.record(&self.route, caller, status);
        } else if let Some(error) = who.error.filter(|e| AUTH_FAILURES.contains(e)) {
            self.families.callers.refused(&self.route, error);
        }
        let label = || RouteLabel { route: self.route.to_string() };
        let class = StatusClass::of(status);
        let f = &self.families;
        self.requests[class.index()]
            .get_or_init(|| {
                f.requests.get_or_create_owned(&RouteStatus { route: self.route.to_string(), status_class: class })
            })
            .inc();
        self.duration.get_or_init(|| f.duration.get_or_create_owned(&label())).observe(seconds);
        self.request_bytes.get_or_init(|| f.request_bytes.get_or_create_owned(&label())).inc_by(bytes_in);
        self.response_bytes.get_or_init(|| f.response_bytes.get_or_create_owned(&label())).inc_by(bytes_out);
    }
}

/// Every `error` label of `sluice_upstream_errors_total` (the upstream
/// side's `ProxyError` kinds).
pub(crate) const UPSTREAM_ERRORS: &[&str] = &["no-healthy-endpoint", "upstream-unreachable", "upstream-timeout"];

/// The `route` label of requests no route matched.
pub const UNROUTED: &str = "unrouted";

/// An upstream's label: a URL without its path (`https://api.example.com`),
/// or a Service's `service:NAMESPACE/NAME:PORT`.
fn upstream_label(upstream: &str) -> String {
    match upstream.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                format!("{scheme}://{}", authority.as_str().rsplit('@').next().unwrap_or(""))
            }
            _ => upstream.to_owned(),
        },
        _ => upstream.to_owned(),
    }
}

impl Metrics {
    /// The handles of one route ([`UNROUTED`] for unrouted requests).
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            route: Arc::from(route),
            families: RouteFamilies {
                requests: self.requests.clone(),
                duration: self.duration.clone(),
                request_bytes: self.request_bytes.clone(),
                response_bytes: self.response_bytes.clone(),
                callers: self.callers.clone(),
            },
            requests: Default::default(),
            duration: OnceLock::new(),
            request_bytes: OnceLock::new(),
            response_bytes: OnceLock::new(),
        })
    }

    /// The handles of one upstream group of a route.
    pub fn upstream(&self, route: &str, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            family: self.upstream_requests.clone(),
            route: route.to_owned(),
            upstream: upstream_label(upstream),
            responses: Default::default(),
        }
    }

    /// Drops the series of a route that is no longer served (and of its
    /// upstream groups), so removed routes do not linger in `/metrics`.
    pub fn forget_route(&self, route: &str, upstreams: &[String]) {
        self.callers.forget_route(route);
        let label = RouteLabel { route: route.to_owned() };
        self.duration.remove(&label);
        self.request_bytes.remove(&label);
        self.response_bytes.remove(&label);
        for status_class in StatusClass::ALL {
            self.requests.remove(&RouteStatus { route: route.to_owned(), status_class });
            for upstream in upstreams {
                self.upstream_requests.remove(&UpstreamStatus {
                    route: route.to_owned(),
                    upstream: upstream_label(upstream),
                    status_class,
                });
            }
        }
        for upstream in upstreams {
            for error in UPSTREAM_ERRORS {
                self.upstream_errors.remove(&UpstreamError {
                    route: route.to_owned(),
                    upstream: upstream_label(upstream),
                    error: (*error).to_owned(),
                });
            }
        }
    }

    /// The caller series (shared).
    pub fn callers(&self) -> &Arc<CallerMetrics> {
        &self.callers
    }

    /// Counts a failed upstream call.
    pub fn upstream_error(&self, route: &RouteMetrics, upstream: &str, error: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamError {
                route: route.route.to_string(),
                upstream: upstream_label(upstream),
                error: error.to_owned(),
            })
            .inc();
    }

    /// Whether the config source is served as it is now.
    pub fn config_current(&self, current: bool) {
        self.config_current.set(i64::from(current));
    }

    /// The tunnel series (cheap handles, for a tunnel's task).
    pub fn tunnels(&self) -> TunnelMetrics {
        self.tunnels.clone()
    }

    /// Counts a reload.
    pub fn reload(&self, outcome: ReloadOutcome) {
        self.reloads.get_or_create(&ReloadResult { result: outcome }).inc();
    }

    /// The Prometheus text exposition (format 0.0.4), for scrapers that do
    /// not ask for OpenMetrics. NB: prometheus-client writes OpenMetrics,
    /// where a counter's `# HELP`/`# TYPE` name lacks the `_total` its
    /// samples carry and the text ends with `# EOF`; in the 0.0.4 format
    /// the names must agree, or the counter reads as untyped.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// OpenMetrics text to Prometheus text 0.0.4: counters' `# HELP` and
/// `# TYPE` lines take the `_total` name of their samples, `# UNIT` and
/// `# EOF` lines go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_total_name_in_the_prometheus_text() {
        let metrics = Metrics::default();
        metrics.route("default/a").record(200, 0.01, 1, 2, Default::default());
        let text = metrics.encode_prometheus();
        assert!(text.contains("# HELP sluice_requests_total "), "{text}");
        assert!(text.contains("# TYPE sluice_requests_total counter"), "{text}");
        assert!(text.contains("sluice_requests_total{route=\"default/a\",status_class=\"2xx\"} 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Only what was used: no series for the other status classes.
        assert!(!text.contains("status_class=\"5xx\""), "{text}");
    }

    #[test]
    fn upstream_labels_carry_no_path() {
        assert_eq!(upstream_label("https://api.example.com:8443/v1/base"), "https://api.example.com:8443");
        assert_eq!(upstream_label("service:shop/web:80"), "service:shop/web:80");
    }
}
