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
    /// The matched route's tenant.
    pub tenant: Option<Arc<str>>,
    /// The calling app, once authenticated (identity stages set it).
    pub app: Option<Arc<str>>,
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
    /// The request's `Origin`, when CORS applies.
    pub cors_origin: Option<HeaderValue>,
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
