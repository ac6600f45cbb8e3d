//! The waterfall's stages: a closed set of small types behind the
//! [`Stage`] enum (dispatched by `match`, no box or virtual call), compiled
//! per route so a route pays only for the stages it has, and ordered here,
//! in [`compile`], and nowhere else.
//!
//! ```text
//!   route ─> cors ─> api_key_auth | jwt_auth ─> access ─> limit ─> cache ─> request_transform
//!             │   on_request (async, fallible), in order:                      │
//!             │   Continue | Respond(answer, any body) | Err(ProxyError)       v
//!             │          │                 │                      backend: direct answer,
//!             │          │ early answer    │ error -> problem     balance + upstream call
//!             │          v                 v                      (retries, health), or AI
//!             │        answer            answer                               │
//!             v                                                                v
//!   record <─ cors <─ response_transform <──────── on_response, in reverse ────┘
//!     │         (only the stages whose on_request ran)
//!     └─ on_finish(outcome), in order, once the answer is sent or the client gone
//! ```
//!
//! Every stage is compiled with a [`Context`]: its route and the whole
//! snapshot (keys, tenants and providers are snapshot-wide). Per-request
//! state lives in typed fields of [`crate::exchange::StageState`]; the
//! caller's identity in [`crate::exchange::Caller`], never in a header a
//! client could send (ingress strips `x-sluice-*`).
//!
//! `record` is not a stage in the list: it wraps the response body and runs
//! for every request, answered early or not, when the body ends; it calls
//! [`Stage::on_finish`] of routes that have a stage wanting the outcome.
//!
//! A stage may also put the response body through a filter
//! ([`Stage::body_filter`]): the cache keeps a copy of what it stores.
//! Lifecycle is
//! compiled by `translate`: a Retired route's backend is a 410 direct
//! answer, and a Deprecated route's Deprecation/Sunset/Link headers are part
//! of its response transform.

mod auth;
mod cache;
mod cors;
mod jwt;
mod limit;
mod request_transform;
mod response_transform;

use http::{Response, request, response};
use snapshot::{Route, Snapshot};

use crate::body::ResponseBody;
use crate::errors::ProxyError;
use crate::exchange::Exchange;

pub use auth::KeyIndex;
pub use cache::CacheState;
pub use jwt::ClientIndex;

/// What a request hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next stage.
    Continue,
    /// Answer now, with any body (a fixed one or a stream); later request
    /// hooks and the backend are skipped, the response hooks of the stages
    /// that already ran still run. (Boxed: a response is large and most
    /// requests continue.)
    Respond(Box<Response<ResponseBody>>),
}

/// What every stage is compiled with: the route, and the snapshot it
/// belongs to (for snapshot-wide lookups: tenants, keys, providers).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The snapshot being compiled.
    pub snapshot: &'a Snapshot,
    /// The route whose stages these are.
    pub route: &'a Route,
    /// The snapshot's API keys, by digest (shared by every route).
    pub keys: &'a std::sync::Arc<KeyIndex>,
    /// Rate-limit and quota state, kept across snapshots.
    pub limiters: &'a crate::limits::Limiters,
    /// The response cache.
    pub cache: &'a std::sync::Arc<crate::cache::ResponseCache>,
    /// Apps by OAuth client id (shared by every route).
    pub clients: &'a std::sync::Arc<ClientIndex>,
    /// Token issuers' keys, kept across snapshots.
    pub jwks: &'a crate::jwks::JwksCache,
    /// The fleet-wide limits store, if any.
    pub fleet: Option<&'a std::sync::Arc<crate::limits::Fleet>>,
}

/// How a request ended, for [`Stage::on_finish`].
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The status sent (499 when the client went away first).
    pub status: u16,
    /// The error type, if the request ended in one.
    pub error: Option<&'static str>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From arrival to the end of the response.
    pub duration: std::time::Duration,
    /// Who called, when a stage found out.
    pub caller: Option<&'a crate::exchange::Caller>,
}

/// One step of the waterfall. A closed set dispatched by `match`: no
/// virtual call and no box per stage, and a route pays only for the stages
/// it has.
#[derive(Debug)]
pub enum Stage {
    /// CORS: preflights answered, headers on allowed origins' answers.
    Cors(cors::Cors),
    /// Who is calling, by API key.
    ApiKeyAuth(auth::ApiKeyAuth),
    /// Who is calling, by JWT (or API key, on `ApiKeyOrJwt` routes).
    Jwt(jwt::JwtAuth),
    /// Whether that caller may call the route.
    Access(auth::AccessCheck),
    /// Rate limits and the owning tenant's quotas.
    Limit(limit::Limit),
    /// Answers from the response cache, and keeps answers in it.
    Cache(cache::Cache),
    /// Request headers, path and query.
    RequestTransform(request_transform::RequestTransform),
    /// Response headers (and a Deprecated route's lifecycle headers).
    ResponseTransform(response_transform::ResponseTransform),
}

impl Stage {
    /// The stage's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Cors(_) => "cors",
            Stage::ApiKeyAuth(_) => "api_key_auth",
            Stage::Jwt(_) => "jwt_auth",
            Stage::Access(_) => "access",
            Stage::Limit(_) => "limit",
            Stage::Cache(_) => "cache",
            Stage::RequestTransform(_) => "request_transform",
            Stage::ResponseTransform(_) => "response_transform",
        }
    }

    /// Runs on the request, in stage order, before the backend. An error
    /// becomes the answer (a problem document), as an early answer does.
    pub async fn on_request(&self, ex: &mut Exchange, req: &mut request::Parts) -> Result<Flow, ProxyError> {
        match self {
            Stage::Cors(stage) => Ok(stage.on_request(ex, req)),
            Stage::ApiKeyAuth(stage) => stage.on_request(ex, req),
            Stage::Jwt(stage) => stage.on_request(ex, req).await,
            Stage::Access(stage) => stage.on_request(ex),
            Stage::Limit(stage) => stage.on_request(ex, req).await,
            Stage::Cache(stage) => stage.on_request(ex, req).await,
            Stage::RequestTransform(stage) => stage.on_request(ex, req),
            Stage::ResponseTransform(_) => Ok(Flow::Continue),
        }
    }

    /// Runs on the response, in reverse stage order, whoever produced it
    /// (the backend, an early answer, or an error).
    pub fn on_response(&self, ex: &mut Exchange, res: &mut response::Parts) {
        match self {
            Stage::Cors(stage) => stage.on_response(ex, res),
            Stage::Limit(stage) => stage.on_response(ex, res),
            Stage::Cache(stage) => stage.on_response(ex, res),
            Stage::ApiKeyAuth(_) | Stage::Jwt(_) | Stage::Access(_) | Stage::RequestTransform(_) => {}
            Stage::ResponseTransform(stage) => stage.on_response(res),
        }
    }

    /// Runs once the request is over, whatever happened (the answer sent
    /// in full, an error, or the client gone), in stage order.
    pub fn on_finish(&self, _outcome: &Outcome<'_>) {
        match self {
            Stage::Cors(_)
            | Stage::ApiKeyAuth(_)
            | Stage::Jwt(_)
            | Stage::Access(_)
            | Stage::Limit(_)
            | Stage::Cache(_)
            | Stage::RequestTransform(_)
            | Stage::ResponseTransform(_) => {}
        }
    }

    /// Whether [`Stage::on_finish`] does anything, so the record stage
    /// keeps the route's stages only when one needs the outcome.
    pub fn wants_finish(&self) -> bool {
        match self {
            Stage::Cors(_)
            | Stage::ApiKeyAuth(_)
            | Stage::Jwt(_)
            | Stage::Access(_)
            | Stage::Limit(_)
            | Stage::Cache(_)
            | Stage::RequestTransform(_)
            | Stage::ResponseTransform(_) => false,
        }
    }

    /// A filter for the response body on its way out, right after this
    /// stage's response hook (the cache keeps a copy; the AI gateway
    /// translates and counts streams).
    pub fn body_filter(&self, ex: &mut Exchange, res: &response::Parts) -> Option<Box<dyn crate::body::BodyFilter>> {
        match self {
            Stage::Cache(stage) => stage.body_filter(ex, res),
            _ => None,
        }
    }
}

/// The stages one route needs, in waterfall order.
pub fn compile(cx: Context<'_>) -> Vec<Stage> {
    let route = cx.route;
    let mut stages = Vec::new();
    // CORS first: a preflight is answered before authentication, since
    // browsers send it without credentials.
    if let Some(cors) = &route.cors {
        stages.push(Stage::Cors(cors::Cors::new(cors, &route.matches)));
    }
    match (route.auth.mode, route.auth.jwt.as_deref()) {
        (crds::AuthMode::ApiKey, _) => stages.push(Stage::ApiKeyAuth(auth::ApiKeyAuth::new(route, cx.keys))),
        (mode @ (crds::AuthMode::Jwt | crds::AuthMode::ApiKeyOrJwt), Some(jwt)) => {
            let source = match (&route.auth.jwks, &jwt.jwks_uri) {
                (Some(document), _) => crate::jwks::JwksCache::fixed(document),
                (None, Some(uri)) => cx.jwks.source(uri),
                // NB: translate requires one of them; with neither, no key
                // verifies anything.
                (None, None) => crate::jwks::JwksCache::fixed(""),
            };
            let keys = (mode == crds::AuthMode::ApiKeyOrJwt).then(|| auth::ApiKeyAuth::new(route, cx.keys));
            stages.push(Stage::Jwt(jwt::JwtAuth::new(jwt, source, cx.clients, keys)));
        }
        // NB: translate refuses a JWT mode without its settings; the
        // access stage then finds no caller and lets nobody in.
        _ => {}
    }
    if auth::AccessCheck::needed(route) {
        stages.push(Stage::Access(auth::AccessCheck::new(route)));
    }
    if let Some(limit) = limit::Limit::new(cx, cx.limiters) {
        stages.push(Stage::Limit(limit));
    }
    if let Some(policy) = &route.cache {
        stages.push(Stage::Cache(cache::Cache::new(route, policy, cx.cache)));
    }
    if let Some(t) = &route.request_transform {
        stages.push(Stage::RequestTransform(request_transform::RequestTransform::new(t)));
    }
    // Last in the list, so its response hook runs first: the route's own
    // header changes apply to the upstream's answer before CORS adds its own.
    if let Some(t) = &route.response_transform {
        stages.push(Stage::ResponseTransform(response_transform::ResponseTransform::new(t)));
    }
    stages.shrink_to_fit();
    stages
}

/// Header helpers shared by the transform stages.
pub(crate) mod headers {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// Parsed `(name, value)` pairs; invalid ones (translate rejects them)
    /// are dropped.
    pub fn parse(pairs: &[crds::HeaderValue]) -> Vec<(HeaderName, HeaderValue)> {
        pairs
            .iter()
            .filter_map(|h| {
                Some((HeaderName::from_bytes(h.name.as_bytes()).ok()?, HeaderValue::from_str(&h.value).ok()?))
            })
            .collect()
    }

    /// Parsed header names.
    pub fn names(names: &[String]) -> Vec<HeaderName> {
        names.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect()
    }

    /// Applies set, add and remove, in that order.
    pub fn apply(
        map: &mut HeaderMap,
        set: &[(HeaderName, HeaderValue)],
        add: &[(HeaderName, HeaderValue)],
        remove: &[HeaderName],
    ) {
        for (name, value) in set {
            map.insert(name.clone(), value.clone());
        }
        for (name, value) in add {
            map.append(name.clone(), value.clone());
        }
        for name in remove {
            map.remove(name);
        }
    }
}
