//! `ApiRoute`: one version of one API, from where it listens to what serves it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Conditions, Duration, HeaderValue, RateLimit, conditions_schema};

/// An API version: hosts and matches, lifecycle, catalog visibility, auth
/// and subscription policy, exactly one backend, and the traffic policies
/// (load balancing, timeouts, retries, passive health, transforms, rate
/// limit, cache, CORS, TLS).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ApiRoute",
    plural = "apiroutes",
    shortname = "ar",
    category = "sluice",
    namespaced,
    status = "ApiRouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Lifecycle","type":"string","jsonPath":".spec.lifecycle.state"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.loadBalancer.policy != 'ConsistentHash' || has(self.loadBalancer.hashHeader)").message("loadBalancer.hashHeader is required when loadBalancer.policy is ConsistentHash"))]
#[x_kube(validation = Rule::new("!has(self.tls) || self.tls.all(t, t.hosts.all(h, h in self.hosts))").message("every tls[].hosts entry must be one of spec.hosts"))]
#[x_kube(validation = Rule::new("self.auth.mode != 'Jwt' && self.auth.mode != 'ApiKeyOrJwt' || has(self.auth.jwt)").message("auth.jwt is required when auth.mode is Jwt or ApiKeyOrJwt"))]
#[x_kube(validation = Rule::new("self.lifecycle.state != 'Draft' || self.auth.mode != 'None'").message("a Draft route is callable only by its own tenant's apps, so auth.mode must not be None"))]
#[x_kube(validation = Rule::new("!self.subscription.required || self.auth.mode != 'None'").message("subscription.required needs an auth.mode other than None, to know which app is calling"))]
pub struct ApiRouteSpec {
    /// Hostnames this route answers for: exact (`api.example.com`) or a
    /// leading wildcard (`*.example.com`). Empty means every host not
    /// claimed by a tenant.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub hosts: Vec<String>,
    /// Request matches; a request matching any one of them is routed here.
    /// Empty means every path on the hosts.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub matches: Vec<RouteMatch>,
    /// The API version this route publishes (`v1`, `2024-06-01`), shown in
    /// the catalog and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version: Option<String>,
    /// Where the API is in its life.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Who sees the API in the catalog. Defaults to the tenant's default,
    /// else Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// How callers prove who they are.
    #[serde(default)]
    pub auth: Auth,
    /// Whether callers need an approved Subscription, and how one is approved.
    #[serde(default)]
    pub subscription: SubscriptionPolicy,
    /// What serves the requests: exactly one of services, upstreams, ai or
    /// directResponse.
    pub backend: Backend,
    /// How an endpoint is picked among several.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Time limits on the upstream call.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// When a failed upstream call is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Passive health: endpoints that fail in a row are taken out for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealth>,
    /// Changes made to the request before it is sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_transform: Option<RequestTransform>,
    /// Changes made to the response before it is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_transform: Option<HeaderTransform>,
    /// Request rate limit. Defaults to the tenant's default rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Response caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// Cross-origin resource sharing; preflight requests are answered by
    /// the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// TLS certificates per host: Secrets of type `kubernetes.io/tls` in
    /// the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub tls: Option<Vec<RouteTls>>,
    /// The API's OpenAPI document, for the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiSource>,
    /// Whether WebSocket upgrades (`Upgrade: websocket`) are tunnelled to
    /// the backend. Other upgrades, such as `h2c`, never are.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    #[schemars(default = "yes")]
    pub websocket: bool,
    /// Whether repeated slashes in the path are merged (`/a//b` is routed
    /// and forwarded as `/a/b`). Turn it off for a backend that gives them
    /// a meaning; the path is still routed with them merged.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    #[schemars(default = "yes")]
    pub merge_slashes: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// One way to match a request. All fields given must match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path to match; every path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP methods to match; every method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<Method>,
    /// Headers that must be present with matching values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ValueMatch>,
    /// Query parameters that must be present with matching values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<ValueMatch>,
}

/// How a path is matched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')").message("path.value must start with '/'"))]
pub struct PathMatch {
    /// Exact, PathPrefix (whole segments: `/a` matches `/a` and `/a/b`, not
    /// `/ab`) or RegularExpression (RE2 syntax, matched against the whole path).
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The path, prefix or expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// The kinds of path match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, at a segment boundary.
    #[default]
    PathPrefix,
    /// The whole path matches the regular expression.
    RegularExpression,
}

/// HTTP methods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Method {
    /// GET
    GET,
    /// HEAD
    HEAD,
    /// POST
    POST,
    /// PUT
    PUT,
    /// DELETE
    DELETE,
    /// CONNECT
    CONNECT,
    /// OPTIONS
    OPTIONS,
    /// TRACE
    TRACE,
    /// PATCH
    PATCH,
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            Method::PATCH => "PATCH",
        }
    }
}

/// A header or query parameter match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Present' || has(self.value)").message("value is required unless type is Present"))]
pub struct ValueMatch {
    /// Header or parameter name (headers are case-insensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Exact, RegularExpression or Present.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// The value or expression; not used with Present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
}

/// The kinds of value match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum ValueMatchType {
    /// The value equals.
    #[default]
    Exact,
    /// The whole value matches the regular expression.
    RegularExpression,
    /// The header or parameter is present, whatever its value.
    Present,
}

/// Where the API is in its life.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.state != 'Deprecated' || (has(self.deprecatedSince) && has(self.sunset))").message("a Deprecated route needs lifecycle.deprecatedSince and lifecycle.sunset"))]
pub struct Lifecycle {
    /// Draft (being designed: callable by the owning tenant's apps only),
    /// Published, Deprecated (served with Deprecation and Sunset headers)
    /// or Retired (answered with 410 Gone).
    #[serde(default)]
    pub state: LifecycleState,
    /// When the version was deprecated (RFC 3339), sent as the
    /// `Deprecation` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub deprecated_since: Option<String>,
    /// When the version stops answering (RFC 3339), sent as the `Sunset` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub sunset: Option<String>,
    /// A URL of the version that replaces this one, sent as a `Link` header
    /// with `rel="successor-version"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub successor: Option<String>,
}

/// The lifecycle states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum LifecycleState {
    /// Being designed.
    Draft,
    /// In service.
    #[default]
    Published,
    /// In service, going away at the sunset date.
    Deprecated,
    /// Gone: every request gets 410.
    Retired,
}

/// Who sees the API in the catalog.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum Visibility {
    /// Only the owning tenant.
    Private,
    /// Every tenant of the cluster.
    #[default]
    Tenant,
    /// Anyone, including anonymous portal visitors.
    Public,
}

/// How callers authenticate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// None, ApiKey, Jwt or ApiKeyOrJwt (either is accepted).
    #[serde(default)]
    pub mode: AuthMode,
    /// Where the API key is read from.
    #[serde(default)]
    pub api_key: ApiKeyAuth,
    /// How JWTs are verified; required for Jwt and ApiKeyOrJwt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

/// The authentication modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum AuthMode {
    /// Anonymous callers are allowed.
    #[default]
    None,
    /// An app's API key is required.
    ApiKey,
    /// A JWT bearer token is required.
    Jwt,
    /// An API key or a JWT.
    ApiKeyOrJwt,
}

/// Where an API key is read from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Header carrying the key (an `Authorization: Bearer` key is accepted too).
    #[serde(default = "default_api_key_header")]
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
    /// Query parameter carrying the key, if keys in URLs are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,
}

impl Default for ApiKeyAuth {
    fn default() -> Self {
        ApiKeyAuth { header: default_api_key_header(), query_param: None }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// How JWT bearer tokens are verified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksUri) != has(self.jwksSecretRef)").message("auth.jwt needs exactly one of jwksUri or jwksSecretRef"))]
pub struct JwtAuth {
    /// The expected `iss` claim.
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Where the signing keys are published (a JWKS document, https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub jwks_uri: Option<String>,
    /// A Secret in the route's namespace holding the JWKS document, for
    /// issuers the gateway cannot or should not reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<JwksSecretRef>,
    /// Accepted `aud` values; any audience when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,
    /// The claim naming the calling app's OAuth client (matched against
    /// the tenants' `apps[].clientIds`); `azp`, then `client_id`, when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id_claim: Option<String>,
    /// Claims copied into request headers for the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_headers: Vec<ClaimHeader>,
    /// Whether the upstream gets the token in `Authorization` too (by
    /// default it does not: it learns the caller from `x-sluice-*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_authorization: bool,
}

/// A Secret key holding a JWKS document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksSecretRef {
    /// Name of the Secret, in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_jwks_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_jwks_key() -> String {
    "jwks.json".to_owned()
}

/// A token claim copied into a request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHeader {
    /// The claim (a string or a number).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// The header it goes in (not an `x-sluice-` one).
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
}

/// Whether callers need an approved subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPolicy {
    /// When true, only apps with an approved Subscription (and the owning
    /// tenant's own apps) may call the route.
    #[serde(default)]
    pub required: bool,
    /// Manual (an approver decides) or Auto (approved on creation).
    /// Defaults to the tenant's default, else Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalMode>,
}

/// How subscriptions are approved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum ApprovalMode {
    /// An approver of the owning tenant decides.
    #[default]
    Manual,
    /// Every subscription is approved.
    Auto,
}

/// What serves the requests. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.services) ? 1 : 0) + (has(self.upstreams) ? 1 : 0) + (has(self.ai) ? 1 : 0) + (has(self.directResponse) ? 1 : 0) == 1").message("backend must set exactly one of services, upstreams, ai or directResponse"))]
pub struct Backend {
    /// Kubernetes Services in the route's namespace, traffic split by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub services: Option<Vec<ServiceBackend>>,
    /// Upstream URLs outside the cluster (`https://api.example.com/base`),
    /// traffic split by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub upstreams: Option<Vec<UrlBackend>>,
    /// AI models behind a unified OpenAI-style API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiBackend>,
    /// A fixed answer from the gateway itself: mocks during design,
    /// maintenance pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// A Kubernetes Service port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Service name, in the route's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Service port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Share of traffic relative to the other backends; 0 takes none.
    #[serde(default = "default_weight")]
    #[schemars(range(max = 1000000))]
    pub weight: u32,
    /// TLS from the gateway to the Service's endpoints. Without it, TLS is
    /// used (with these defaults) when the Service port's `appProtocol` is
    /// `https`; `kubernetes.io/h2c` makes the gateway speak cleartext HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// TLS from the gateway to a backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// The name sent in SNI and verified in the endpoints' certificate.
    /// Defaults to `NAME.NAMESPACE.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub sni: Option<String>,
    /// The CA bundle (PEM) that signs the endpoints' certificates: one key
    /// of a Secret or of a ConfigMap in the route's namespace. Defaults to
    /// the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaBundleRef>,
    /// A Secret of type `kubernetes.io/tls` in the route's namespace whose
    /// certificate the gateway presents to the endpoints (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_certificate_secret: Option<String>,
}

/// Where a CA bundle is: exactly one of `secretName` and `configMapName`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// A Secret in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// A ConfigMap in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map_name: Option<String>,
    /// The key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// An upstream reached by URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.url.startsWith('http://') || self.url.startsWith('https://')").message("upstreams[].url must start with http:// or https://"))]
pub struct UrlBackend {
    /// `http://` or `https://` URL; a path is prepended to every request path.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Share of traffic relative to the other upstreams; 0 takes none.
    #[serde(default = "default_weight")]
    #[schemars(range(max = 1000000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// AI models behind one OpenAI-style endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiBackend {
    /// Models to spread calls over, by weight.
    #[schemars(length(min = 1, max = 16))]
    pub targets: Vec<AiTarget>,
    /// Models to try in order when every target fails before its first byte.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallback: Vec<AiTarget>,
    /// A prompt template: the route becomes a task API whose JSON input is
    /// rendered into the messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptTemplate>,
}

/// One model of one AiProvider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiTarget {
    /// AiProvider name, in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    /// Model name or alias, as the AiProvider lists it.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Share of calls relative to the other targets; 0 takes none.
    #[serde(default = "default_weight")]
    #[schemars(range(max = 1000000))]
    pub weight: u32,
}

/// A prompt template with a schema for its input.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplate {
    /// System message (a template; `{{ input.field }}` inserts input fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub system: Option<String>,
    /// User message template.
    #[schemars(length(min = 1, max = 65536))]
    pub template: String,
    /// JSON Schema the request body must satisfy before it is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub input_schema: Option<serde_json::Value>,
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "JSON Schema the request body must satisfy before it is rendered.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A fixed answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// HTTP status code.
    #[serde(default = "default_status")]
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HeaderValue>,
    /// Response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
}

fn default_status() -> u16 {
    200
}

/// How an endpoint is picked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// RoundRobin, LeastRequest, ConsistentHash or Random.
    #[serde(default)]
    pub policy: LoadBalancerPolicy,
    /// Header whose value is hashed, for ConsistentHash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub hash_header: Option<String>,
}

/// The load-balancing policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum LoadBalancerPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight (of two picked at random).
    LeastRequest,
    /// A hash of a header picks the endpoint, so a key sticks to one.
    ConsistentHash,
    /// Weighted random.
    Random,
}

/// Time limits on the upstream call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time to open a connection to the upstream.
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// Time from sending the request to the end of the response headers,
    /// across retries.
    #[serde(default = "default_request_timeout")]
    pub request: Duration,
    /// Time an idle upstream connection is kept: a pooled one, or a
    /// WebSocket tunnel with no traffic either way.
    #[serde(default = "default_idle_timeout")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
            idle: default_idle_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from("5s")
}
fn default_request_timeout() -> Duration {
    Duration::from("30s")
}
fn default_idle_timeout() -> Duration {
    Duration::from("90s")
}

/// When a failed call is tried again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Attempts after the first.
    #[serde(default = "default_attempts")]
    #[schemars(range(max = 10))]
    pub attempts: u32,
    /// Conditions that allow a retry.
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = 8))]
    pub retry_on: Vec<RetryOn>,
    /// Time limit of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Base back-off between attempts (doubled each time, with jitter).
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// The retry budget: each request adds this percentage of a retry to
    /// the route's budget, which also gains 10 retries a second and holds at
    /// most 100; each retry spends one, so retries cannot snowball.
    #[serde(default = "default_budget")]
    #[schemars(range(min = 1, max = 100))]
    pub budget_percent: u32,
    /// Whether requests that are not idempotent (POST, PATCH, or any
    /// method with a body) are retried after part of them reached the
    /// upstream. By default they are retried only when nothing was sent
    /// (a connect failure).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset]
}
fn default_backoff() -> Duration {
    Duration::from("25ms")
}
fn default_budget() -> u32 {
    20
}

/// Conditions that allow a retry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum RetryOn {
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
    /// The attempt timed out (per-try timeout).
    Timeout,
    /// 502, 503 or 504 from the upstream.
    GatewayError,
    /// Any 5xx from the upstream.
    Status5xx,
    /// 429 from the upstream.
    Status429,
}

/// Passive health checking.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealth {
    /// Consecutive failures (connect errors, resets, 5xx) that eject an endpoint.
    #[serde(default = "default_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: u32,
    /// How long an endpoint stays out the first time; doubled on each
    /// ejection in a row.
    #[serde(default = "default_ejection")]
    pub base_ejection: Duration,
    /// At most this percentage of endpoints is ejected at once.
    #[serde(default = "default_max_ejection")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: u32,
}

fn default_failures() -> u32 {
    5
}
fn default_ejection() -> Duration {
    Duration::from("30s")
}
fn default_max_ejection() -> u32 {
    50
}

/// Header changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTransform {
    /// Headers set (replacing any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub set_headers: Vec<HeaderValue>,
    /// Headers added (beside any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub add_headers: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub remove_headers: Vec<String>,
}

/// Request changes: headers, path and query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestTransform {
    /// Header changes.
    #[serde(flatten)]
    pub headers: HeaderTransform,
    /// Path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_path: Option<PathRewrite>,
    /// Query parameters set (replacing any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub set_query: Vec<HeaderValue>,
    /// Query parameter names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub remove_query: Vec<String>,
}

/// A path rewrite: exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.replacePrefix) != has(self.replaceFull)").message("rewritePath must set exactly one of replacePrefix or replaceFull"))]
pub struct PathRewrite {
    /// Replaces the matched PathPrefix with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_prefix: Option<String>,
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub replace_full: Option<String>,
}

/// Response caching.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// How long a response is kept (unless its Cache-Control says less).
    pub ttl: Duration,
    /// Request headers that are part of the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub vary_headers: Vec<String>,
    /// Largest body kept, in bytes.
    #[serde(default = "default_cache_body")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: u64,
    /// The answer is the same for every caller: one entry serves them all.
    /// By default each calling app (or anonymous callers together) has
    /// its own entries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

fn default_cache_body() -> u64 {
    1 << 20
}

/// Cross-origin resource sharing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Allowed origins (`https://app.example.com`, `*`).
    #[schemars(length(min = 1, max = 64))]
    pub allow_origins: Vec<String>,
    /// Allowed methods; the route's methods when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub allow_methods: Vec<Method>,
    /// Allowed request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub expose_headers: Vec<String>,
    /// How long a preflight answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials (cookies) are allowed.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// The certificate for some of the route's hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// Hosts (of spec.hosts) the certificate serves.
    #[schemars(length(min = 1, max = 16))]
    pub hosts: Vec<String>,
    /// A Secret of type `kubernetes.io/tls` in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Where the OpenAPI document is: exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inline) != has(self.configMapRef)").message("openapi must set exactly one of inline or configMapRef"))]
pub struct OpenApiSource {
    /// The document itself (YAML or JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub inline: Option<String>,
    /// A ConfigMap key in the route's namespace holding the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// A key of a ConfigMap in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in its data.
    #[serde(default = "default_openapi_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_openapi_key() -> String {
    "openapi.yaml".to_owned()
}

/// What Sluice concluded about an ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteStatus {
    /// Accepted, ResolvedRefs and Ready.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
    /// How many apps may call the route, as last compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<u32>,
}
