//! Route matching as a pure function: `Router::new(&routes)` once per
//! snapshot, then `router.find(&request)` per request. No I/O, no locks.
//!
//! Precedence, most specific first:
//! 1. host: an exact host, then the longest wildcard suffix, then routes
//!    without hosts (never for a hostname a tenant reserved);
//! 2. path: an Exact match, then the longest PathPrefix, then regular
//!    expressions in snapshot order;
//! 3. among equals: a match that names methods, then more header matches,
//!    then more query matches, then snapshot order.
//!
//! A request that matches nothing in the most specific host falls through to
//! the less specific ones.

use std::collections::HashMap;

use crate::balance::Fnv;

use crds::{Method, PathMatchType, ValueMatchType};
use http::HeaderMap;
use regex::Regex;
use snapshot::{Match, ReservedHost, Route};

/// The parts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host, lower-case, without port.
    pub host: &'a str,
    /// Path, without query.
    pub path: &'a str,
    /// Method.
    pub method: &'a http::Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
}

/// What matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Index of the route in the snapshot's `routes`.
    pub route: usize,
    /// Length of the matched PathPrefix (for prefix rewrites), if the match
    /// was a prefix.
    pub prefix_len: Option<usize>,
}

#[derive(Debug)]
enum ValueTest {
    Exact(String),
    Regex(Regex),
    Present,
}

#[derive(Debug)]
struct ValueRule {
    name: String,
    test: ValueTest,
}

impl ValueRule {
    fn compile(m: &snapshot::ValueMatch) -> Option<Self> {
        let test = match m.kind {
            ValueMatchType::Exact => ValueTest::Exact(m.value.clone()),
            ValueMatchType::Present => ValueTest::Present,
            ValueMatchType::RegularExpression => ValueTest::Regex(anchored(&m.value)?),
        };
        Some(ValueRule { name: m.name.clone(), test })
    }

    fn accepts(&self, value: &str) -> bool {
        match &self.test {
            ValueTest::Exact(v) => v == value,
            ValueTest::Regex(r) => r.is_match(value),
            ValueTest::Present => true,
        }
    }
}

#[derive(Debug)]
struct Entry {
    route: usize,
    /// Bit per method; 0 = any method.
    methods: u16,
    headers: Vec<ValueRule>,
    query: Vec<ValueRule>,
}

impl Entry {
    fn rank(&self) -> (bool, usize, usize, usize) {
        (self.methods == 0, usize::MAX - self.headers.len(), usize::MAX - self.query.len(), self.route)
    }

    fn accepts(&self, req: &RequestView<'_>) -> bool {
        if self.methods != 0 && self.methods & method_bit(req.method) == 0 {
            return false;
        }
        for rule in &self.headers {
            let mut values = req.headers.get_all(rule.name.as_str()).iter();
            if !values.any(|v| v.to_str().is_ok_and(|v| rule.accepts(v))) {
                return false;
            }
        }
        for rule in &self.query {
            if !query_pairs(req.query).any(|(k, v)| k == rule.name && rule.accepts(v)) {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Vec<Entry>, Fnv>,
    prefix: HashMap<String, Vec<Entry>, Fnv>,
    /// Distinct expressions in snapshot order, each with its entries.
    regex: Vec<(Regex, Vec<Entry>)>,
}

impl Table {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.regex.is_empty()
    }

    fn sort(&mut self) {
        for entries in self.exact.values_mut().chain(self.prefix.values_mut()) {
            entries.sort_by_key(Entry::rank);
        }
        for (_, entries) in &mut self.regex {
            entries.sort_by_key(Entry::rank);
        }
    }

    fn find(&self, req: &RequestView<'_>) -> Option<Found> {
        let path = req.path;
        if let Some(entries) = self.exact.get(path)
            && let Some(e) = entries.iter().find(|e| e.accepts(req))
        {
            return Some(Found { route: e.route, prefix_len: None });
        }
        if !self.prefix.is_empty() {
            // Try the path and each of its segment boundaries, longest first:
            // "/v1/users/7" -> "/v1/users/7", "/v1/users", "/v1", "/".
            let mut candidate = path;
            loop {
                let key = if candidate.is_empty() { "/" } else { candidate };
                if let Some(entries) = self.prefix.get(key)
                    && let Some(e) = entries.iter().find(|e| e.accepts(req))
                {
                    let len = if key == "/" { 0 } else { key.len() };
                    return Some(Found { route: e.route, prefix_len: Some(len) });
                }
                if candidate.is_empty() {
                    break;
                }
                candidate = match candidate.rfind('/') {
                    Some(i) => &candidate[..i],
                    None => "",
                };
            }
        }
        self.regex
            .iter()
            .filter(|(r, _)| r.is_match(path))
            .find_map(|(_, entries)| entries.iter().find(|e| e.accepts(req)))
            .map(|e| Found { route: e.route, prefix_len: None })
    }
}

/// The compiled routing table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<String, Table, Fnv>,
    /// `".suffix"` -> table. NB: looked up by the host's own suffixes, label
    /// by label from the longest, so the cost is the same with one or
    /// 10,000 wildcard hosts.
    wildcard_hosts: HashMap<String, Table, Fnv>,
    any_host: Table,
    reserved: Vec<String>,
}

impl Router {
    /// Builds the table. Matches that cannot compile (translate already
    /// rejects them) are skipped.
    pub fn new(routes: &[Route], reserved: &[ReservedHost]) -> Router {
        let mut router = Router { reserved: reserved.iter().map(|r| r.pattern.clone()).collect(), ..Router::default() };
        for (index, route) in routes.iter().enumerate() {
            for m in &route.matches {
                if route.hosts.is_empty() {
                    add(&mut router.any_host, index, m);
                }
                for host in &route.hosts {
                    let table = match host.strip_prefix('*') {
                        Some(suffix) => router.wildcard_hosts.entry(suffix.to_owned()).or_default(),
                        None => router.exact_hosts.entry(host.clone()).or_default(),
                    };
                    add(table, index, m);
                }
            }
        }
        router.any_host.sort();
        router.exact_hosts.values_mut().for_each(Table::sort);
        router.wildcard_hosts.values_mut().for_each(Table::sort);
        router
    }

    /// The route serving a request, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Found> {
        if let Some(found) = self.exact_hosts.get(req.host).and_then(|t| t.find(req)) {
            return Some(found);
        }
        if !self.wildcard_hosts.is_empty() {
            // ".b.example.com", then ".example.com", then ".com": the
            // longest wildcard first; a wildcard needs a label before it.
            let host = req.host;
            for (i, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
                if let Some(found) = self.wildcard_hosts.get(&host[i..]).and_then(|t| t.find(req)) {
                    return Some(found);
                }
            }
        }
        if self.any_host.is_empty() || self.is_reserved(req.host) {
            return None;
        }
        self.any_host.find(req)
    }

    fn is_reserved(&self, host: &str) -> bool {
        self.reserved.iter().any(|p| snapshot::host_covers(p, host))
    }
}

fn add(table: &mut Table, route: usize, m: &Match) {
    let Some(headers) = m.headers.iter().map(ValueRule::compile).collect::<Option<Vec<_>>>() else { return };
    let Some(query) = m.query_params.iter().map(ValueRule::compile).collect::<Option<Vec<_>>>() else { return };
    let entry = Entry { route, methods: m.methods.iter().fold(0, |bits, m| bits | method_bit_of(*m)), headers, query };
    // NB: most paths have one entry; a default vector would grow to four.
    let one = || Vec::with_capacity(1);
    match m.path_type {
        PathMatchType::Exact => table.exact.entry(m.path.clone()).or_insert_with(one).push(entry),
        PathMatchType::PathPrefix => table.prefix.entry(m.path.clone()).or_insert_with(one).push(entry),
        PathMatchType::RegularExpression => {
            let anchored_text = format!("^(?:{})$", m.path);
            match table.regex.iter_mut().find(|(r, _)| r.as_str() == anchored_text) {
                Some((_, entries)) => entries.push(entry),
                None => {
                    if let Some(regex) = anchored(&m.path) {
                        table.regex.push((regex, vec![entry]));
                    }
                }
            }
        }
    }
}

fn anchored(expression: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{expression})$")).ok()
}

fn method_bit_of(m: Method) -> u16 {
    1 << (m as u16)
}

fn method_bit(m: &http::Method) -> u16 {
    let known = match *m {
        http::Method::GET => Method::GET,
        http::Method::HEAD => Method::HEAD,
        http::Method::POST => Method::POST,
        http::Method::PUT => Method::PUT,
        http::Method::DELETE => Method::DELETE,
        http::Method::CONNECT => Method::CONNECT,
        http::Method::OPTIONS => Method::OPTIONS,
        http::Method::TRACE => Method::TRACE,
        http::Method::PATCH => Method::PATCH,
        _ => return 0,
    };
    method_bit_of(known)
}

/// `key=value` pairs of a raw query string (values not percent-decoded).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| match pair.split_once('=') {
        Some((k, v)) => (k, v),
        None => (pair, ""),
    })
}

#[cfg(test)]
mod tests;
