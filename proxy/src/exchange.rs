//! `Exchange`: what the waterfall knows about one request while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

/// Per-request state shared by the stages.
#[derive(Debug)]
pub struct Exchange {
    /// `x-request-id`: the client's, or one made here.
    pub request_id: String,
    /// `x-request-id` as a header value (made once, sent up and back).
    pub request_id_value: HeaderValue,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP as a header value: the peer's, or the first
    /// untrusted hop when the peer is a trusted proxy.
    pub client_ip: HeaderValue,
    /// Whether the peer is a trusted proxy (its forwarding headers are
    /// kept and extended rather than replaced).
    pub peer_trusted: bool,
    /// `http` or `https`, as the client connected.
    pub scheme: &'static str,
    /// Host the request was for: lower-case, without port.
    pub host: String,
    /// The `Host` (or `:authority`) the client sent, for `X-Forwarded-Host`.
    pub authority: Option<HeaderValue>,
    /// Request method.
    pub method: http::Method,
    /// Request path (before any rewrite), for logs.
    pub path: String,
    /// When the request arrived.
    pub started: Instant,
    /// The matched route's id, once routed.
    pub route_id: Option<Arc<str>>,
    /// The tenant that owns the matched route (not the caller's: see
    /// [`Exchange::caller`]).
    pub tenant: Option<Arc<str>>,
    /// Who is calling, once a stage has authenticated them.
    pub caller: Option<Arc<Caller>>,
    /// What the stages keep about this request between their hooks.
    pub state: StageState,
    /// Length of the matched PathPrefix, for prefix rewrites.
    pub prefix_len: Option<usize>,
    /// The upstream group that answered (or failed).
    pub upstream: Option<Arc<str>>,
    /// The endpoint that answered (or failed) last.
    pub endpoint: Option<Arc<str>>,
    /// The client's `User-Agent`, kept only when the call log is on.
    pub user_agent: Option<HeaderValue>,
    /// Time from sending upstream to the response headers.
    pub upstream_latency: Option<Duration>,
    /// The error type the request ended in, if any.
    pub error: Option<&'static str>,
    /// What went wrong, in full (upstream addresses, error chains): for the
    /// call log, never for the client.
    pub detail: Option<String>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Bytes of a streamed request body, counted as they are sent.
    pub bytes_in_streamed: Option<Arc<crate::body::BodyProgress>>,
    /// The snapshot version that served the request.
    pub snapshot_version: Arc<str>,
    /// Marks the request in flight on its connection until the response
    /// ends (moved into the record).
    pub activity: Option<crate::conn::ActivityGuard>,
}

/// Request headers that carry the caller's identity to the upstream all
/// start with this; a client's own are removed at ingress.
pub const IDENTITY_PREFIX: &str = "x-sluice-";

/// The fields that tell the upstream who is calling: tenant, app, and
/// how they authenticated.
pub const IDENTITY_FIELDS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-sluice-tenant"),
    http::HeaderName::from_static("x-sluice-app"),
    http::HeaderName::from_static("x-sluice-auth"),
];

/// An authenticated caller: an app of a tenant. Set by the identity stages
/// only (never from a request header: ingress strips the `x-sluice-`
/// headers a client sends), and told to the upstream in those headers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's tenant (may differ from the route's).
    pub tenant: Arc<str>,
    /// The caller's app.
    pub app: Arc<str>,
    /// `tenant/app`, made once (a rate-limit key, a log field).
    pub id: Arc<str>,
    /// Which credential: an API key's id, or a token's subject.
    pub credential: Option<Arc<str>>,
    /// How the caller proved who they are.
    pub method: AuthMethod,
    /// `tenant` and `app` as header values, made once (none when a name
    /// is not a valid value, which CRD validation rules out).
    values: Option<(HeaderValue, HeaderValue)>,
}

/// How a caller was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API key.
    ApiKey,
    /// A JSON Web Token.
    Jwt,
}

impl Caller {
    /// A caller, with its header values made once.
    pub fn new(
        tenant: Arc<str>,
        app: Arc<str>,
        id: Arc<str>,
        credential: Option<Arc<str>>,
        method: AuthMethod,
    ) -> Caller {
        let values = HeaderValue::from_str(&tenant).ok().zip(HeaderValue::from_str(&app).ok());
        Caller { tenant, app, id, credential, method, values }
    }

    /// Tells the upstream who is calling: `x-sluice-tenant`,
    /// `x-sluice-app` and `x-sluice-auth` (`api-key` or `jwt`).
    pub fn to_headers(&self, headers: &mut http::HeaderMap) {
        self.identity_fields(|name, value| {
            headers.insert(name, value);
        });
    }

    /// The identity fields, one by one.
    pub fn identity_fields(&self, mut field: impl FnMut(http::HeaderName, HeaderValue)) {
        let [tenant_field, app_field, auth_field] = IDENTITY_FIELDS;
        // NB: tenant and app names are DNS labels (CRD validation), so
        // always valid header values.
        if let Some((tenant, app)) = &self.values {
            field(tenant_field, tenant.clone());
            field(app_field, app.clone());
        }
        field(auth_field, HeaderValue::from_static(self.method.as_str()));
    }
}

impl AuthMethod {
    /// The name logged and sent upstream.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api-key",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// Per-request state of the stages, one typed field per need (no map, no
/// allocation for a stage that keeps nothing).
#[derive(Debug, Default)]
pub struct StageState {
    /// The request's `Origin`, when the route's CORS policy allows it.
    pub cors_origin: Option<HeaderValue>,
    /// The approved Subscription (`namespace/name`) that let the caller
    /// in, when one did.
    pub subscription: Option<Arc<str>>,
    /// The rate limit applied: its `RateLimit-Policy` value and the
    /// decision, for the `RateLimit` headers.
    pub rate_limit: Option<(HeaderValue, crate::limits::Decision)>,
    /// What the cache did.
    pub cache: Option<crate::stages::CacheState>,
}
