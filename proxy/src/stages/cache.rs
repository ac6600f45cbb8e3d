//! Response caching for GET and HEAD: a fresh entry answers at once
//! (`x-cache: HIT`, with `Age`); a miss goes upstream (`x-cache: MISS`) and
//! its answer is kept when HTTP says it may be (RFC 9111: a cacheable
//! status, no `no-store`, `private` or `no-cache`, no `Set-Cookie`, a `Vary`
//! within the route's vary headers) and its body fits. Concurrent misses of
//! one key wait for the first instead of all going upstream.
//!
//! The answer is kept as it stands after the stages that follow this one
//! (the response transform), so the stages before it (CORS, limits) run
//! again on every hit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header, request, response};

use super::Flow;
use crate::body::{BodyFilter, ResponseBody};
use crate::cache::{Entry, FillGuard, Lookup, ResponseCache};
use crate::errors::ProxyError;
use crate::exchange::Exchange;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How long a miss waits for another request filling the same key.
const WAIT_FOR_FILL: Duration = Duration::from_secs(10);

/// What the cache did for one request.
#[derive(Debug)]
pub enum CacheState {
    /// Answered from the cache.
    Hit,
    /// Went upstream; fills the key if the answer may be kept.
    Miss(Option<FillGuard>),
    /// Not a request the cache takes (method, `no-store`).
    Bypass,
}

/// A route's cache policy.
#[derive(Debug)]
pub struct Cache {
    route: Arc<str>,
    ttl: Duration,
    vary: Vec<HeaderName>,
    max_body: u64,
    public: bool,
    store: Arc<ResponseCache>,
}

impl Cache {
    pub fn new(route: &snapshot::Route, policy: &snapshot::CachePolicy, store: &Arc<ResponseCache>) -> Self {
        Cache {
            route: Arc::from(route.id.as_str()),
            ttl: Duration::from_millis(policy.ttl_ms),
            vary: policy.vary_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()).collect(),
            max_body: policy.max_body_bytes,
            public: policy.public,
            store: store.clone(),
        }
    }

    fn key(&self, ex: &Exchange, req: &request::Parts) -> String {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut key = format!("{}\n{}\n{target}", self.route, ex.host);
        for name in &self.vary {
            key.push('\n');
            for value in req.headers.get_all(name) {
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
                key.push(',');
            }
        }
        if !self.public {
            key.push('\n');
            match &ex.caller {
                Some(caller) => {
                    key.push_str(&caller.tenant);
                    key.push('/');
                    key.push_str(&caller.app);
                }
                None => key.push('-'),
            }
        }
        key
    }

    pub async fn on_request(&self, ex: &mut Exchange, req: &request::Parts) -> Result<Flow, ProxyError> {
        let directives = cache_control(&req.headers);
        if (req.method != Method::GET && req.method != Method::HEAD) || directives.no_store {
            ex.state.cache = Some(CacheState::Bypass);
            return Ok(Flow::Continue);
        }
        let key = self.key(ex, req);
        // NB: a client's no-cache asks for a fresh answer (which may then
        // be kept); it never reads an entry.
        let mut waited = false;
        loop {
            let lookup = if directives.no_cache { None } else { Some(self.store.lookup(&key)) };
            match lookup {
                None => {
                    ex.state.cache = Some(CacheState::Miss(None));
                    return Ok(Flow::Continue);
                }
                Some(Lookup::Hit(entry)) => {
                    ex.state.cache = Some(CacheState::Hit);
                    return Ok(Flow::Respond(Box::new(answer(&entry, req.method == Method::HEAD))));
                }
                // NB: an answer to HEAD has no body to keep; it fills
                // nothing (and lets any waiter go at once).
                Some(Lookup::Fill(_)) if req.method == Method::HEAD => {
                    ex.state.cache = Some(CacheState::Miss(None));
                    return Ok(Flow::Continue);
                }
                Some(Lookup::Fill(guard)) => {
                    ex.state.cache = Some(CacheState::Miss(Some(guard)));
                    return Ok(Flow::Continue);
                }
                Some(Lookup::Wait(notify)) if !waited => {
                    waited = true;
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // NB: the fill may have ended between the lookup and
                    // `enable`; look again before waiting.
                    if self.store.get(&key).is_none() {
                        let _ = tokio::time::timeout(WAIT_FOR_FILL, notified).await;
                    }
                }
                Some(Lookup::Wait(_)) => {
                    // Waited once already: go upstream without filling.
                    ex.state.cache = Some(CacheState::Miss(None));
                    return Ok(Flow::Continue);
                }
            }
        }
    }

    pub fn on_response(&self, ex: &Exchange, res: &mut response::Parts) {
        let value = match ex.state.cache {
            Some(CacheState::Hit) => "HIT",
            Some(CacheState::Miss(_)) => "MISS",
            Some(CacheState::Bypass) | None => "BYPASS",
        };
        res.headers.insert(X_CACHE, HeaderValue::from_static(value));
    }

    /// A filter that keeps the answer, when it may be kept.
    pub fn body_filter(&self, ex: &mut Exchange, res: &response::Parts) -> Option<Box<dyn BodyFilter>> {
        let Some(CacheState::Miss(guard)) = &mut ex.state.cache else { return None };
        let guard = guard.take()?;
        let ttl = self.cacheable(res)?;
        let length = res.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|l| l > self.max_body) {
            return None;
        }
        let mut headers = res.headers.clone();
        headers.remove(X_CACHE);
        Some(Box::new(Keep {
            guard: Some(guard),
            status: res.status,
            headers,
            ttl,
            body: BytesMut::new(),
            max: self.max_body,
            over: false,
        }))
    }

    /// How long this answer may be kept, if it may be.
    fn cacheable(&self, res: &response::Parts) -> Option<Duration> {
        // RFC 9111 §4.2.2: the statuses that are cacheable by default.
        let status = res.status.as_u16();
        if !matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501) {
            return None;
        }
        if res.headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let directives = cache_control(&res.headers);
        if directives.no_store || directives.private || directives.no_cache {
            return None;
        }
        for value in res.headers.get_all(header::VARY) {
            let Ok(value) = value.to_str() else { return None };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" || !self.vary.iter().any(|v| v.as_str().eq_ignore_ascii_case(name)) {
                    return None;
                }
            }
        }
        let ttl = match directives.s_maxage.or(directives.max_age) {
            Some(seconds) => self.ttl.min(Duration::from_secs(seconds)),
            None => self.ttl,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

/// A stored entry as an answer.
fn answer(entry: &Entry, head: bool) -> Response<ResponseBody> {
    let body = if head { Bytes::new() } else { entry.body.clone() };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(header::AGE, HeaderValue::from(entry.stored.elapsed().as_secs()));
    if head && let Ok(length) = HeaderValue::from_str(&entry.body.len().to_string()) {
        response.headers_mut().insert(header::CONTENT_LENGTH, length);
    }
    response
}

/// Keeps an answer's body as it goes out, and stores it once complete.
#[derive(Debug)]
struct Keep {
    guard: Option<FillGuard>,
    status: StatusCode,
    headers: http::HeaderMap,
    ttl: Duration,
    body: BytesMut,
    max: u64,
    over: bool,
}

impl BodyFilter for Keep {
    fn on_data(&mut self, data: Bytes) -> Bytes {
        if !self.over {
            if (self.body.len() + data.len()) as u64 > self.max {
                self.over = true;
                self.body = BytesMut::new();
            } else {
                self.body.extend_from_slice(&data);
            }
        }
        data
    }

    fn on_end(&mut self, complete: bool) {
        let Some(guard) = self.guard.take() else { return };
        if complete && !self.over {
            guard.fill(Entry {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: std::mem::take(&mut self.body).freeze(),
                stored: Instant::now(),
                ttl: self.ttl,
            });
        }
    }

    fn keeps_length(&self) -> bool {
        true
    }
}

/// The `Cache-Control` directives the cache reads.
#[derive(Debug, Default)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

fn cache_control(headers: &http::HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let (name, arg) = directive.split_once('=').map_or((directive, None), |(n, a)| (n, Some(a)));
            let seconds = || arg.and_then(|a| a.trim_matches('"').parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "max-age" => d.max_age = seconds(),
                "s-maxage" => d.s_maxage = seconds(),
                _ => {}
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
        headers.append(header::CACHE_CONTROL, HeaderValue::from_static("S-MAXAGE=\"30\""));
        let d = cache_control(&headers);
        assert_eq!((d.max_age, d.s_maxage, d.no_store, d.private), (Some(60), Some(30), false, false));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(cache_control(&headers).no_store);
    }
}
