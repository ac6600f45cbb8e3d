//! CORS: answers preflight requests itself and adds the
//! `Access-Control-*` headers to answers for allowed origins.

use http::{HeaderValue, Method, Response, StatusCode, header, request, response};

use super::Flow;
use crate::body::ResponseBody;
use crate::exchange::Exchange;

/// A route's CORS policy.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

fn join(items: impl Iterator<Item = String>) -> Option<HeaderValue> {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() { None } else { HeaderValue::from_str(&joined).ok() }
}

impl Cors {
    pub fn new(cors: &crds::Cors, matches: &[snapshot::Match]) -> Self {
        let mut methods: Vec<String> = cors.allow_methods.iter().map(|m| m.as_str().to_owned()).collect();
        if methods.is_empty() {
            // The route's own methods, or the simple ones.
            let mut route_methods: Vec<String> =
                matches.iter().flat_map(|m| m.methods.iter().map(|x| x.as_str().to_owned())).collect();
            route_methods.sort();
            route_methods.dedup();
            methods = if route_methods.is_empty() {
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(str::to_owned).to_vec()
            } else {
                route_methods
            };
        }
        Cors {
            any_origin: cors.allow_origins.iter().any(|o| o == "*"),
            origins: cors.allow_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
            allow_methods: join(methods.into_iter()).unwrap_or(HeaderValue::from_static("GET")),
            allow_headers: join(cors.allow_headers.iter().cloned()),
            expose_headers: join(cors.expose_headers.iter().cloned()),
            max_age: cors.max_age.as_ref().and_then(|d| d.millis()).map(|ms| HeaderValue::from(ms / 1000)),
            credentials: cors.allow_credentials,
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || origin.to_str().is_ok_and(|o| {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                self.origins.contains(&o)
            })
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials { HeaderValue::from_static("*") } else { origin.clone() }
    }
}

impl Cors {
    pub fn on_request(&self, ex: &mut Exchange, req: &mut request::Parts) -> Flow {
        let Some(origin) = req.headers.get(header::ORIGIN).cloned() else { return Flow::Continue };
        if !self.allows(&origin) {
            return Flow::Continue;
        }
        let preflight =
            req.method == Method::OPTIONS && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::NO_CONTENT;
            let h = res.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(&origin));
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            match &self.allow_headers {
                Some(v) => {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
                None => {
                    if let Some(asked) = req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
                    }
                }
            }
            if let Some(v) = &self.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            if self.credentials {
                h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            h.append(header::VARY, HeaderValue::from_static("Origin"));
            return Flow::Respond(Box::new(res));
        }
        ex.state.cors_origin = Some(origin);
        Flow::Continue
    }

    pub fn on_response(&self, ex: &Exchange, res: &mut response::Parts) {
        let Some(origin) = &ex.state.cors_origin else { return };
        let h = &mut res.headers;
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}
