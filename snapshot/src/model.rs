//! The `Snapshot`: everything a proxy needs to serve, as plain values.
//!
//! A snapshot is immutable once built. Proxies compare snapshots with `==`,
//! swap them atomically and never mutate them. Its `version` is a hash of
//! the rest of its content, so the same inputs always give the same
//! version on every replica.

use std::fmt;

use crds::{
    AiModel, ApprovalMode, ApprovalState, AuthMode, Cors, HeaderTransform, HeaderValue, JwtAuth, LifecycleState,
    LoadBalancerPolicy, Method, PathMatchType, ProviderType, Quotas, RateLimit, RetryOn, ValueMatchType, Visibility,
};
use serde::{Deserialize, Serialize};

use crate::status::ObjectRef;

/// One immutable, versioned configuration of the whole gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Hex SHA-256 prefix of the serialized content (without this field).
    pub version: String,
    /// Every servable route, sorted by id. The proxy builds its router from
    /// these; order of precedence is the proxy's (most specific match wins).
    pub routes: Vec<Route>,
    /// Hostname patterns claimed by tenants. A route without hosts (a
    /// catch-all outside any tenant) never answers for these.
    pub reserved_hosts: Vec<ReservedHost>,
    /// TLS certificates, chosen by SNI.
    pub certificates: Vec<Certificate>,
    /// Tenants, their apps and quotas.
    pub tenants: Vec<TenantPolicy>,
    /// SHA-256 hashes of every valid API key and the app each belongs to,
    /// sorted by hash.
    pub api_keys: Vec<ApiKey>,
    /// AI providers, by `namespace/name`.
    pub providers: Vec<Provider>,
}

impl Snapshot {
    /// The route with this id.
    pub fn route(&self, id: &str) -> Option<&Route> {
        self.routes.binary_search_by(|r| r.id.as_str().cmp(id)).ok().map(|i| &self.routes[i])
    }

    /// The provider with this `namespace/name` id.
    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.binary_search_by(|p| p.id.as_str().cmp(id)).ok().map(|i| &self.providers[i])
    }

    /// The app an API key hash belongs to.
    pub fn api_key(&self, sha256_hex: &str) -> Option<&ApiKey> {
        self.api_keys.binary_search_by(|k| k.sha256.as_str().cmp(sha256_hex)).ok().map(|i| &self.api_keys[i])
    }
}

/// A string that must reach the proxy (a provider API key, a TLS private
/// key) but must never be printed: its `Debug` output is redacted.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// One compiled route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Unique id: `namespace/name` for ApiRoutes, `ingress:namespace/name#N`
    /// for Ingress paths.
    pub id: String,
    /// The object the route came from.
    pub source: ObjectRef,
    /// The owning tenant, if the namespace has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The published API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Lifecycle state (Retired routes already answer 410 via `backend`).
    pub lifecycle: LifecycleState,
    /// Catalog visibility.
    pub visibility: Visibility,
    /// Lower-case hostnames or `*.suffix` wildcards; empty = any host.
    pub hosts: Vec<String>,
    /// Request matches (any one); never empty (defaults to prefix `/`).
    pub matches: Vec<Match>,
    /// How callers authenticate.
    pub auth: AuthPolicy,
    /// Which apps may call.
    pub access: Access,
    /// What serves the route.
    pub backend: Backend,
    /// Load balancing, timeouts, retries, passive health.
    pub traffic: TrafficPolicy,
    /// Request changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_transform: Option<Box<RequestTransform>>,
    /// Response changes (includes lifecycle headers such as Deprecation
    /// and Sunset under `setHeaders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_transform: Option<Box<HeaderTransform>>,
    /// Request rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
    /// Response cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Box<CachePolicy>>,
    /// CORS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<Cors>>,
    /// Whether WebSocket upgrades are tunnelled.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub websocket: bool,
    /// Whether repeated slashes are merged in the forwarded path.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub merge_slashes: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// A compiled request match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Path match kind.
    pub path_type: PathMatchType,
    /// Path, prefix (without trailing `/` except for `/` itself) or
    /// regular expression (anchored by the proxy).
    pub path: String,
    /// Methods; any method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    /// Header matches; names are lower-case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameter matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

/// A compiled header or query match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// Name (lower-case for headers).
    pub name: String,
    /// Exact, RegularExpression or Present.
    #[serde(rename = "type")]
    pub kind: ValueMatchType,
    /// Value or expression (empty for Present).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// How callers authenticate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicy {
    /// None, ApiKey, Jwt or ApiKeyOrJwt.
    pub mode: AuthMode,
    /// Header carrying API keys (lower-case).
    pub api_key_header: String,
    /// Query parameter carrying API keys, if allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_query: Option<String>,
    /// JWT verification settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<JwtAuth>>,
    /// The issuer's JWKS document, when it comes from a Secret (public
    /// keys only: nothing secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

/// Which apps may call a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// When true, only the apps below may call.
    pub subscription_required: bool,
    /// How subscriptions to the route are approved.
    pub approval: ApprovalMode,
    /// Apps with access (approved subscriptions and the owner's own apps),
    /// sorted by tenant then app.
    pub apps: Vec<AppGrant>,
    /// Apps whose subscription waits for an approver, sorted by tenant then
    /// app (so a caller is told to wait rather than to subscribe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<AppRef>,
}

/// An app of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct AppRef {
    /// The app's tenant.
    pub tenant: String,
    /// The app.
    pub app: String,
}

impl Access {
    /// The grant of one app, if it has one.
    pub fn grant(&self, tenant: &str, app: &str) -> Option<&AppGrant> {
        self.apps
            .binary_search_by(|g| (g.tenant.as_str(), g.app.as_str()).cmp(&(tenant, app)))
            .ok()
            .map(|i| &self.apps[i])
    }

    /// Whether one app's subscription waits for an approver.
    pub fn is_pending(&self, tenant: &str, app: &str) -> bool {
        self.pending.binary_search_by(|p| (p.tenant.as_str(), p.app.as_str()).cmp(&(tenant, app))).is_ok()
    }
}

/// One app's access to a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppGrant {
    /// The app's tenant.
    pub tenant: String,
    /// The app.
    pub app: String,
    /// The approved Subscription (`namespace/name`) that gives access;
    /// none for the route's own tenant's apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// A plan's name, if the subscription has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The plan's rate limit, replacing the route's for this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
}

/// What serves a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Backend {
    /// HTTP upstreams (Services or URLs), split by weight.
    Upstreams {
        /// The groups, in spec order.
        groups: Vec<UpstreamGroup>,
    },
    /// AI models.
    Ai(Box<AiRoute>),
    /// A fixed answer from the gateway.
    Direct(DirectResponse),
}

/// A set of equivalent endpoints: one Service port or one URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamGroup {
    /// `service:NAMESPACE/NAME:PORT` or the URL; for logs and metrics.
    pub name: String,
    /// Share of traffic relative to the other groups.
    pub weight: u32,
    /// Whether the upstream speaks TLS.
    pub tls: bool,
    /// Host header and SNI to send, when it is not the endpoint's address
    /// (URLs and ExternalName Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A path prepended to every request path (from the URL), without a
    /// trailing `/`; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// `address:port` of every ready endpoint, sorted; a hostname for URLs
    /// and ExternalName Services (resolved by the proxy). May be empty:
    /// the proxy then answers 503.
    pub endpoints: Vec<String>,
    /// How to verify and present TLS to endpoints addressed by IP (Service
    /// backends); URLs use their host name and the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<UpstreamTls>,
    /// Cleartext HTTP/2 (`appProtocol: kubernetes.io/h2c`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
}

/// TLS settings for a Service backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Sent in SNI and verified in the certificate.
    pub server_name: String,
    /// PEM CA bundle; the public web roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// PEM client certificate chain, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// PEM client key, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<SecretString>,
}

/// An AI route: targets by weight, then fallbacks in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AiRoute {
    /// Weighted targets.
    pub targets: Vec<AiTarget>,
    /// Targets tried in order when the chosen one fails before its first byte.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<AiTarget>,
    /// The prompt template, if the route is a task API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crds::PromptTemplate>,
}

/// One resolved model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AiTarget {
    /// Provider id, `namespace/name`.
    pub provider: String,
    /// The provider's model name (aliases resolved).
    pub model: String,
    /// Share of calls.
    pub weight: u32,
}

/// A fixed answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValue>,
    /// Body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Load balancing, timeouts, retries and passive health of a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// How an endpoint is picked.
    pub load_balancer: LoadBalancerPolicy,
    /// Header hashed by ConsistentHash (lower-case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Request timeout (to response headers, across retries), ms.
    pub request_timeout_ms: u64,
    /// Idle pooled connection timeout, ms.
    pub idle_timeout_ms: u64,
    /// Retries, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Box<RetryPolicy>>,
    /// Passive health, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealthPolicy>,
}

/// Compiled retries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub attempts: u32,
    /// Retry conditions, sorted.
    pub retry_on: Vec<RetryOn>,
    /// Per-attempt timeout, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Base back-off, ms.
    pub backoff_ms: u64,
    /// Retry budget, percent of requests.
    pub budget_percent: u32,
    /// Whether non-idempotent requests are retried after they were sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

/// Compiled passive health.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealthPolicy {
    /// Consecutive failures that eject.
    pub consecutive_failures: u32,
    /// First ejection time, ms.
    pub base_ejection_ms: u64,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
}

/// Compiled request transform.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestTransform {
    /// Header changes.
    #[serde(flatten)]
    pub headers: HeaderTransform,
    /// Path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_path: Option<PathRewrite>,
    /// Query parameters set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_query: Vec<HeaderValue>,
    /// Query parameters removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_query: Vec<String>,
}

/// A compiled path rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum PathRewrite {
    /// Replace the matched prefix.
    ReplacePrefix(String),
    /// Replace the whole path.
    ReplaceFull(String),
}

/// Compiled cache policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    /// Time to live, ms.
    pub ttl_ms: u64,
    /// Request headers in the key (lower-case, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_headers: Vec<String>,
    /// Largest body kept.
    pub max_body_bytes: u64,
    /// One entry for every caller (else one per calling app).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// A hostname pattern reserved by a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ReservedHost {
    /// The pattern.
    pub pattern: String,
    /// The tenant.
    pub tenant: String,
}

/// A certificate and key for some hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The Secret it came from.
    pub secret: ObjectRef,
    /// Hosts it serves (lower-case, sorted).
    pub hosts: Vec<String>,
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: SecretString,
}

/// A tenant as the proxy needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicy {
    /// Tenant name.
    pub name: String,
    /// Namespaces it owns (sorted).
    pub namespaces: Vec<String>,
    /// Its apps (sorted by name).
    pub apps: Vec<App>,
    /// Its quotas.
    pub quotas: Quotas,
}

/// An app as the proxy needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// App name.
    pub name: String,
    /// OAuth client ids that identify it in JWTs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ids: Vec<String>,
}

/// An API key, by hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// The app's tenant.
    pub tenant: String,
    /// The app.
    pub app: String,
}

/// An AI provider as the proxy needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// `namespace/name`.
    pub id: String,
    /// The owning tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// API dialect.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Base URL (the spec's or the type's default), without a trailing `/`.
    pub base_url: String,
    /// Azure `api-version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The API key, if the provider needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretString>,
    /// Models, sorted by name.
    pub models: Vec<AiModel>,
    /// Call timeout, ms.
    pub timeout_ms: u64,
    /// Gateway-wide rate limit on calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
}

/// The effective state of a subscription; re-exported for status writers.
pub type SubscriptionPhase = ApprovalState;

/// A policy a proxy must enforce to serve a route. A proxy serves a route
/// only if it enforces every feature the route needs; any other route is
/// answered 503 and reported, never served with the policy ignored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Feature {
    /// `spec.auth.mode: ApiKey`: API keys.
    ApiKeys,
    /// `spec.auth.mode: Jwt` or `ApiKeyOrJwt`: JSON Web Tokens.
    Jwt,
    /// `spec.subscription.required`: only subscribed apps may call.
    Subscriptions,
    /// `spec.lifecycle.state: Draft`: only the owning tenant's apps may call.
    DraftAccess,
    /// `spec.rateLimit`.
    RateLimit,
    /// `spec.cache`.
    Cache,
    /// `spec.backend.ai`: served by the AI gateway.
    AiBackend,
    /// The owning Tenant's request quotas (`spec.quotas.requestsPerMinute`
    /// or `requestsPerDay`).
    TenantQuotas,
}

impl Feature {
    /// The field that asks for the feature, for messages.
    pub fn field(self) -> &'static str {
        match self {
            Feature::ApiKeys => "spec.auth.mode: ApiKey",
            Feature::Jwt => "spec.auth.mode: Jwt",
            Feature::Subscriptions => "spec.subscription.required",
            Feature::DraftAccess => "spec.lifecycle.state: Draft",
            Feature::RateLimit => "spec.rateLimit",
            Feature::Cache => "spec.cache",
            Feature::AiBackend => "spec.backend.ai",
            Feature::TenantQuotas => "the Tenant's spec.quotas (requests)",
        }
    }
}

impl Snapshot {
    /// The tenant with this name.
    pub fn tenant(&self, name: &str) -> Option<&TenantPolicy> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Every feature a proxy must enforce to serve `route`, sorted.
    pub fn features(&self, route: &Route) -> Vec<Feature> {
        let mut out = Vec::new();
        if route.lifecycle == LifecycleState::Retired {
            // Answered 410 for everyone: there is nothing to protect.
            return out;
        }
        match route.auth.mode {
            AuthMode::None => {}
            AuthMode::ApiKey => out.push(Feature::ApiKeys),
            AuthMode::Jwt | AuthMode::ApiKeyOrJwt => out.push(Feature::Jwt),
        }
        if route.access.subscription_required {
            out.push(Feature::Subscriptions);
        }
        if route.lifecycle == LifecycleState::Draft {
            out.push(Feature::DraftAccess);
        }
        if route.rate_limit.is_some() {
            out.push(Feature::RateLimit);
        }
        if route.cache.is_some() {
            out.push(Feature::Cache);
        }
        if matches!(route.backend, Backend::Ai(_)) {
            out.push(Feature::AiBackend);
        }
        let quotas = route.tenant.as_deref().and_then(|t| self.tenant(t)).map(|t| &t.quotas);
        if quotas.is_some_and(|q| q.requests_per_minute.is_some() || q.requests_per_day.is_some()) {
            out.push(Feature::TenantQuotas);
        }
        out
    }
}
