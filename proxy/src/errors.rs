//! Every error the waterfall can end in, and the one place where an error
//! becomes an HTTP answer: an RFC 9457 `application/problem+json` document
//! with a stable `type` per error.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Where an error came from (as pingora tags them): the client, the
/// upstream, or the gateway itself. Used as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Downstream,
    /// The upstream failed.
    Upstream,
    /// The gateway could not do its job.
    Internal,
}

/// A request that ended in an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the host, path, method, headers and query.
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Host the request was for.
        host: String,
        /// Request path.
        path: String,
    },
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Every upstream endpoint is ejected, or there are none.
    #[error("no healthy endpoint for {upstream}")]
    NoHealthyEndpoint {
        /// The upstream group.
        upstream: String,
    },
    /// Connecting to the upstream failed, or it reset the connection.
    #[error("upstream {upstream} unreachable: {detail}")]
    UpstreamUnreachable {
        /// The upstream group.
        upstream: String,
        /// What failed.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream {upstream} did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// The upstream group.
        upstream: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// No snapshot is installed yet.
    #[error("the gateway has no configuration yet")]
    NotReady,
    /// The route needs a policy this proxy cannot enforce: it is not
    /// served rather than served without the policy.
    #[error("route {route} needs {fields}, which this proxy cannot enforce yet; it is not served")]
    RouteUnsupported {
        /// The route.
        route: String,
        /// The fields, comma-separated.
        fields: String,
    },
    /// The request target is longer than the limit.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request uses a protocol feature the gateway does not implement.
    #[error("{0}")]
    NotImplemented(String),
    /// The client sent its body too slowly.
    #[error("the request body did not arrive within {timeout_ms} ms of the last data")]
    RequestTimeout {
        /// The body idle timeout.
        timeout_ms: u64,
    },
    /// The client went away before the answer was sent (recorded as 499,
    /// as nginx does; nobody receives it).
    #[error("the client closed the connection before the answer")]
    ClientClosed,
    /// The connection's certificate does not cover the requested host.
    #[error("the certificate of this connection does not cover {host}")]
    Misdirected {
        /// The requested host.
        host: String,
    },
    /// The caller did not prove who they are: no credential, an unknown
    /// one, or one presented wrongly. Answered 401 with
    /// `WWW-Authenticate`.
    #[error("{detail}")]
    Unauthorized {
        /// The problem type (`missing-credentials`, `invalid-api-key`...).
        kind: &'static str,
        /// What the caller is told.
        detail: String,
    },
    /// The route's token issuer could not be reached and no keys of it
    /// are held: tokens cannot be checked, so nobody is let in.
    #[error("{detail}")]
    IdentityUnavailable {
        /// What failed (for the log).
        detail: String,
    },
    /// The fleet-wide limits store could not be asked and the policy is to
    /// fail closed.
    #[error("the fleet-wide rate-limit store cannot be reached")]
    LimitsUnavailable,
    /// A rate limit or quota is used up. Answered 429 with `Retry-After`.
    #[error("{detail}")]
    TooManyRequests {
        /// The problem type (`rate-limited`, `quota-exceeded`).
        kind: &'static str,
        /// Seconds until a request may fit.
        retry_after: u64,
        /// What the caller is told.
        detail: String,
    },
    /// The caller is known but may not call this route.
    #[error("{detail}")]
    Forbidden {
        /// The problem type (`subscription-required`,
        /// `subscription-pending`, `forbidden`).
        kind: &'static str,
        /// What the caller is told.
        detail: String,
    },
}

impl ProxyError {
    /// The stable `type` suffix (`https://sluice.dev/problems/<kind>`), also
    /// the `error` field of the call log and a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
            ProxyError::NoHealthyEndpoint { .. } => "no-healthy-endpoint",
            ProxyError::UpstreamUnreachable { .. } => "upstream-unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream-timeout",
            ProxyError::NotReady => "not-ready",
            ProxyError::RouteUnsupported { .. } => "route-unsupported",
            ProxyError::NotImplemented(_) => "not-implemented",
            ProxyError::UriTooLong { .. } => "uri-too-long",
            ProxyError::RequestTimeout { .. } => "request-timeout",
            ProxyError::ClientClosed => "client-closed",
            ProxyError::Misdirected { .. } => "misdirected-request",
            ProxyError::IdentityUnavailable { .. } => "identity-provider-unavailable",
            ProxyError::LimitsUnavailable => "limits-unavailable",
            ProxyError::Unauthorized { kind, .. }
            | ProxyError::Forbidden { kind, .. }
            | ProxyError::TooManyRequests { kind, .. } => kind,
        }
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoHealthyEndpoint { .. } | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::RouteUnsupported { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // NB: 499 is nginx's "client closed request"; it is recorded,
            // never sent.
            ProxyError::ClientClosed => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::IdentityUnavailable { .. } | ProxyError::LimitsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Where the error came from.
    pub fn source_side(&self) -> ErrorSource {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::NotImplemented(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::RequestTimeout { .. }
            | ProxyError::ClientClosed
            | ProxyError::Misdirected { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::TooManyRequests { .. } => ErrorSource::Downstream,
            ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. } => ErrorSource::Upstream,
            ProxyError::NotReady
            | ProxyError::RouteUnsupported { .. }
            | ProxyError::IdentityUnavailable { .. }
            | ProxyError::LimitsUnavailable => ErrorSource::Internal,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "No route",
            ProxyError::BadRequest(_) => "Bad request",
            ProxyError::BodyTooLarge { .. } => "Request body too large",
            ProxyError::NoHealthyEndpoint { .. } => "No healthy upstream endpoint",
            ProxyError::UpstreamUnreachable { .. } => "Upstream unreachable",
            ProxyError::UpstreamTimeout { .. } => "Upstream timeout",
            ProxyError::NotReady => "Not ready",
            ProxyError::RouteUnsupported { .. } => "Route not served by this proxy",
            ProxyError::NotImplemented(_) => "Not implemented",
            ProxyError::UriTooLong { .. } => "URI too long",
            ProxyError::RequestTimeout { .. } => "Request timeout",
            ProxyError::ClientClosed => "Client closed request",
            ProxyError::Misdirected { .. } => "Misdirected request",
            ProxyError::Unauthorized { .. } => "Unauthorized",
            ProxyError::Forbidden { kind: "subscription-pending", .. } => "Subscription pending",
            ProxyError::Forbidden { kind: "subscription-required", .. } => "Subscription required",
            ProxyError::Forbidden { .. } => "Forbidden",
            ProxyError::IdentityUnavailable { .. } => "Identity provider unavailable",
            ProxyError::LimitsUnavailable => "Rate limits unavailable",
            ProxyError::TooManyRequests { kind: "quota-exceeded", .. } => "Quota exceeded",
            ProxyError::TooManyRequests { .. } => "Too many requests",
        }
    }

    /// What the client is told: never an upstream's address or an internal
    /// error chain (those are in the `Display` text, for logs).
    pub fn public_detail(&self) -> String {
        match self {
            ProxyError::NoHealthyEndpoint { .. } => "no upstream endpoint of this route is available".into(),
            ProxyError::UpstreamUnreachable { .. } => {
                "the upstream could not be reached or failed before answering".into()
            }
            ProxyError::UpstreamTimeout { timeout_ms, .. } => {
                format!("the upstream did not answer within {timeout_ms} ms")
            }
            ProxyError::IdentityUnavailable { .. } => {
                "the keys that verify this API's tokens cannot be had right now; try again later".into()
            }
            ProxyError::LimitsUnavailable => {
                "this API's rate limits cannot be checked right now, so it takes no requests; try again later".into()
            }
            ProxyError::RouteUnsupported { fields, .. } => {
                format!("this route needs {fields}, which this proxy cannot enforce yet, so it is not served")
            }
            other => other.to_string(),
        }
    }

    /// The problem document answering this error.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let mut response = problem(self.status(), self.kind(), self.title(), &self.public_detail(), request_id);
        if let ProxyError::TooManyRequests { retry_after, .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let ProxyError::Unauthorized { .. } = self {
            // NB: an API key may come as a bearer token too (RFC 6750).
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sluice\""));
        }
        response
    }
}

/// Builds an `application/problem+json` answer.
pub fn problem(status: StatusCode, kind: &str, title: &str, detail: &str, request_id: &str) -> Response<Bytes> {
    let body = serde_json::json!({
        "type": format!("https://sluice.dev/problems/{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "requestId": request_id,
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_error_kind_is_a_known_metric_label() {
        let upstream = [
            ProxyError::NoHealthyEndpoint { upstream: String::new() },
            ProxyError::UpstreamUnreachable { upstream: String::new(), detail: String::new() },
            ProxyError::UpstreamTimeout { upstream: String::new(), timeout_ms: 0 },
        ];
        for error in &upstream {
            assert_eq!(error.source_side(), ErrorSource::Upstream);
            assert!(crate::metrics::UPSTREAM_ERRORS.contains(&error.kind()), "{}", error.kind());
        }
    }
}
