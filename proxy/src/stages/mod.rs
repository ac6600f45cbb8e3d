//! The waterfall's stages: each a small type behind [`Stage`], compiled per
//! route so a route pays only for the stages it uses, and ordered here, in
//! [`compile`], and nowhere else.
//!
//! ```text
//!   accept ─> route ─> cors ─> [authenticate] ─> [authorize] ─> [limit] ─> [cache]
//!                       │                                                     │
//!                       │   on_request, in order; any stage may answer early  v
//!                       │                                            request_transform
//!                       │                                                     │
//!                       │                              backend: direct answer, or
//!                       │                              balance + upstream call (retries,
//!                       │                              passive health), or AI
//!                       v                                                     │
//!   record <─ cors <─ response_transform <─────── on_response, in reverse ────┘
//! ```
//!
//! `record` is not a stage in the list: it wraps the response body and runs
//! for every request, answered early or not, when the body ends.
//!
//! The bracketed stages arrive with the identity and limits work; they slot
//! into [`compile`] between `cors` and `request_transform`. Lifecycle is
//! compiled by `translate`: a Retired route's backend is a 410 direct
//! answer, and a Deprecated route's Deprecation/Sunset/Link headers are part
//! of its response transform.

mod cors;
mod request_transform;
mod response_transform;

use bytes::Bytes;
use http::{Response, request, response};
use snapshot::Route;

use crate::exchange::Exchange;

/// What a request hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next stage.
    Continue,
    /// Answer now; later request hooks and the backend are skipped, the
    /// response hooks of the stages that already ran still run.
    Respond(Response<Bytes>),
}

/// One step of the waterfall.
pub trait Stage: Send + Sync + std::fmt::Debug {
    /// The stage's name, for logs.
    fn name(&self) -> &'static str;

    /// Runs on the request, in stage order, before the backend. The default
    /// does nothing and continues.
    fn on_request(&self, _ex: &mut Exchange, _req: &mut request::Parts) -> Flow {
        Flow::Continue
    }

    /// Runs on the response, in reverse stage order, whoever produced it
    /// (the backend, an early answer, or an error). The default does nothing.
    fn on_response(&self, _ex: &Exchange, _res: &mut response::Parts) {}
}

/// The stages one route needs, in waterfall order.
pub fn compile(route: &Route) -> Vec<Box<dyn Stage>> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    // CORS first: a preflight is answered before authentication, since
    // browsers send it without credentials.
    if let Some(cors) = &route.cors {
        stages.push(Box::new(cors::Cors::new(cors, &route.matches)));
    }
    if let Some(t) = &route.request_transform {
        stages.push(Box::new(request_transform::RequestTransform::new(t)));
    }
    // Last in the list, so its response hook runs first: the route's own
    // header changes apply to the upstream's answer before CORS adds its own.
    if let Some(t) = &route.response_transform {
        stages.push(Box::new(response_transform::ResponseTransform::new(t)));
    }
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
