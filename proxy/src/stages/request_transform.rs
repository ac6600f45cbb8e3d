//! Request changes before the upstream call: headers, path, query.

use http::{HeaderName, HeaderValue, Uri, request};
use snapshot::PathRewrite;

use super::{Flow, headers};
use crate::errors::ProxyError;
use crate::exchange::Exchange;

/// Sets, adds and removes request headers; rewrites the path; sets and
/// removes query parameters.
#[derive(Debug)]
pub struct RequestTransform {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    rewrite: Option<PathRewrite>,
    set_query: Vec<(String, String)>,
    remove_query: Vec<String>,
}

impl RequestTransform {
    pub fn new(t: &snapshot::RequestTransform) -> Self {
        RequestTransform {
            set: headers::parse(&t.headers.set_headers),
            add: headers::parse(&t.headers.add_headers),
            remove: headers::names(&t.headers.remove_headers),
            rewrite: t.rewrite_path.clone(),
            set_query: t.set_query.iter().map(|q| (q.name.clone(), q.value.clone())).collect(),
            remove_query: t.remove_query.clone(),
        }
    }

    fn new_path(&self, ex: &Exchange, path: &str) -> Option<String> {
        match self.rewrite.as_ref()? {
            PathRewrite::ReplaceFull(full) => Some(full.clone()),
            PathRewrite::ReplacePrefix(prefix) => {
                let rest = &path[ex.prefix_len.unwrap_or(0).min(path.len())..];
                // Gateway API semantics: `/api` -> `/internal`, `/api/` ->
                // `/internal/`, `/api/x` -> `/internal/x`.
                let mut out = prefix.trim_end_matches('/').to_owned();
                if !rest.is_empty() && !rest.starts_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                Some(out)
            }
        }
    }

    fn new_query(&self, query: Option<&str>) -> Option<String> {
        if self.set_query.is_empty() && self.remove_query.is_empty() {
            return query.map(str::to_owned);
        }
        let mut pairs: Vec<(String, String)> = crate::router::query_pairs(query)
            .filter(|(k, _)| !self.remove_query.iter().any(|r| r == k) && !self.set_query.iter().any(|(s, _)| s == k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        pairs.extend(self.set_query.iter().map(|(k, v)| (encode(k), encode(v))));
        if pairs.is_empty() {
            return None;
        }
        Some(pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))
    }
}

/// Percent-encodes what may not stand in a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@!$'()*,;".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RequestTransform {
    pub fn on_request(&self, ex: &mut Exchange, req: &mut request::Parts) -> Result<Flow, ProxyError> {
        headers::apply(&mut req.headers, &self.set, &self.add, &self.remove);
        let path = req.uri.path();
        let new_path = self.new_path(ex, path);
        let new_query = self.new_query(req.uri.query());
        if new_path.is_some() || new_query.as_deref() != req.uri.query() {
            let path = new_path.unwrap_or_else(|| path.to_owned());
            let path_and_query = match new_query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri.clone().into_parts();
            match path_and_query.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => {
                    return Err(ProxyError::BadRequest("the rewritten path is not a valid URI path".into()));
                }
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                req.uri = uri;
            }
        }
        Ok(Flow::Continue)
    }
}
