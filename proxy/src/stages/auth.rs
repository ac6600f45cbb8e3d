//! Who is calling: API keys, and whether that caller may call the route
//! (its tenant, the route's visibility and lifecycle, an approved
//! subscription).
//!
//! A key comes as `Authorization: Bearer KEY`, in the route's header
//! (`x-api-key` unless it names another) or, where the route allows it, in
//! a query parameter; exactly one of them. The proxy holds only SHA-256
//! digests of keys (the snapshot never carries a key) and compares digests
//! in constant time. The credential is removed before the request goes on:
//! the upstream sees `x-sluice-tenant`, `x-sluice-app` and
//! `x-sluice-auth` instead.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, header, request};
use snapshot::{ApiKey, Route};

use super::Flow;
use crate::errors::ProxyError;
use crate::exchange::{AuthMethod, Caller, Exchange};

/// Every API key of the snapshot, by digest.
#[derive(Debug, Default)]
pub struct KeyIndex {
    /// Entries by the first eight bytes of their digest (several keys may
    /// share them; the whole digest is compared).
    by_prefix: HashMap<u64, Vec<KeyEntry>, std::hash::BuildHasherDefault<DigestHasher>>,
}

/// Hashes a digest prefix as itself: SHA-256 output is already uniform,
/// and SipHash over it cost more than the rest of the lookup. (The map is
/// built from config; a presented key can only probe it.)
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Debug)]
struct KeyEntry {
    digest: [u8; 32],
    caller: Arc<Caller>,
}

impl KeyIndex {
    /// Indexes the snapshot's keys; a digest that is not 64 hex digits
    /// (translate never makes one) is left out.
    pub fn new(keys: &[ApiKey]) -> KeyIndex {
        let mut by_prefix: HashMap<u64, Vec<KeyEntry>, _> = HashMap::default();
        // One shared copy of each tenant and app name.
        type Names = (Arc<str>, Arc<str>);
        let mut names: HashMap<(&str, &str), Names> = HashMap::new();
        for key in keys {
            let Some(digest) = from_hex(&key.sha256) else { continue };
            let (tenant, app) = names
                .entry((key.tenant.as_str(), key.app.as_str()))
                .or_insert_with(|| (Arc::from(key.tenant.as_str()), Arc::from(key.app.as_str())))
                .clone();
            // NB: the id logged for a key is the start of its digest, which
            // says which key was used without saying what it is.
            let credential = Some(Arc::from(&key.sha256[..12]));
            let id = Arc::from(format!("{tenant}/{app}"));
            let caller = Arc::new(Caller::new(tenant, app, id, credential, AuthMethod::ApiKey));
            by_prefix.entry(prefix(&digest)).or_default().push(KeyEntry { digest, caller });
        }
        KeyIndex { by_prefix }
    }

    /// The caller a key belongs to.
    #[cfg(test)]
    fn find(&self, key: &[u8]) -> Option<&Arc<Caller>> {
        self.find_digest(&sha256(key))
    }

    /// The caller whose key has this digest.
    fn find_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Caller>> {
        let entries = self.by_prefix.get(&prefix(digest))?;
        entries.iter().find(|e| constant_time_eq(&e.digest, digest)).map(|e| &e.caller)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(out)
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Equality that takes as long whatever the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Query parameters that look like a key, refused on routes that do not
/// allow keys in URLs (a key in a URL ends up in logs and histories).
const KEY_LIKE_PARAMS: [&str; 4] = ["api_key", "apikey", "api-key", "key"];

/// Authenticates API keys.
#[derive(Debug)]
pub struct ApiKeyAuth {
    header: HeaderName,
    query: Option<String>,
    keys: Arc<KeyIndex>,
}

impl ApiKeyAuth {
    pub fn new(route: &Route, keys: &Arc<KeyIndex>) -> Self {
        ApiKeyAuth {
            header: HeaderName::from_bytes(route.auth.api_key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-api-key")),
            query: route.auth.api_key_query.clone(),
            keys: keys.clone(),
        }
    }

    pub fn on_request(&self, ex: &mut Exchange, req: &mut request::Parts) -> Result<Flow, ProxyError> {
        let unauthorized = |kind: &'static str, detail: &str| ProxyError::Unauthorized { kind, detail: detail.into() };
        // NB: only the first key is hashed, with no copy; a second one
        // makes the request ambiguous anyway.
        let mut presented = Presented::default();
        // NB: each credential header is taken out with one lookup (an
        // entry), not looked at and removed after: the credential stops
        // here either way, as a refused request goes nowhere.
        if let header::Entry::Occupied(entry) = req.headers.entry(header::AUTHORIZATION) {
            for value in entry.remove_entry_mult().1 {
                match bearer(value.as_bytes()) {
                    Some(token) => presented.add(token),
                    None => {
                        return Err(unauthorized(
                            "invalid-authorization",
                            "the Authorization header is not \"Bearer\" followed by a key",
                        ));
                    }
                }
            }
        }
        if let header::Entry::Occupied(entry) = req.headers.entry(&self.header) {
            for value in entry.remove_entry_mult().1 {
                presented.add(value.as_bytes());
            }
        }
        let query = req.uri.query();
        let mut in_query = false;
        for (name, value) in crate::router::query_pairs(query) {
            match &self.query {
                Some(allowed) if name == allowed => {
                    presented.add(value.as_bytes());
                    in_query = true;
                }
                None if KEY_LIKE_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k)) => {
                    return Err(unauthorized(
                        "api-key-in-query",
                        "this API does not take keys in the URL; send it in a header",
                    ));
                }
                _ => {}
            }
        }
        let digest = match (presented.count, presented.digest) {
            (0, _) => {
                return Err(unauthorized(
                    "missing-credentials",
                    &format!(
                        "this API needs an API key: send \"Authorization: Bearer KEY\" or \"{}: KEY\"",
                        self.header
                    ),
                ));
            }
            (1, Some(digest)) => digest,
            (1, None) => return Err(unauthorized("invalid-api-key", "the API key is empty")),
            _ => return Err(unauthorized("ambiguous-credentials", "send one API key, not several")),
        };
        let Some(caller) = self.keys.find_digest(&digest) else {
            return Err(unauthorized("invalid-api-key", "the API key is not known (or no longer valid)"));
        };
        ex.caller = Some(caller.clone());
        if in_query && let Some(name) = &self.query {
            remove_query_param(req, name);
        }
        Ok(Flow::Continue)
    }
}

/// The keys a request presents: how many, and the digest of the first
/// (none when it is empty).
#[derive(Default)]
struct Presented {
    count: usize,
    digest: Option<[u8; 32]>,
}

impl Presented {
    fn add(&mut self, key: &[u8]) {
        self.count += 1;
        if self.count == 1 && !key.is_empty() {
            self.digest = Some(sha256(key));
        }
    }
}

/// The token of `Bearer TOKEN` (the scheme in any case).
pub(crate) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

fn remove_query_param(req: &mut request::Parts, name: &str) {
    let kept: Vec<&str> = req
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path = req.uri.path();
    let target = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = req.uri.clone().into_parts();
    if let Ok(pq) = target.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            req.uri = uri;
        }
    }
}

/// Whether the caller may call the route: its tenant (Private and Draft
/// routes take their own tenant's apps only) and, where the route requires
/// one, an approved subscription.
#[derive(Debug)]
pub struct AccessCheck {
    tenant: Option<Arc<str>>,
    private: bool,
    draft: bool,
    access: snapshot::Access,
    /// The subscription of each grant of `access.apps`, shared.
    subscriptions: Vec<Option<Arc<str>>>,
}

impl AccessCheck {
    pub fn new(route: &Route) -> Self {
        AccessCheck {
            tenant: route.tenant.as_deref().map(Arc::from),
            private: route.visibility == crds::Visibility::Private,
            draft: route.lifecycle == crds::LifecycleState::Draft,
            access: route.access.clone(),
            subscriptions: route.access.apps.iter().map(|g| g.subscription.as_deref().map(Arc::from)).collect(),
        }
    }

    /// Whether a route needs this check.
    pub fn needed(route: &Route) -> bool {
        route.auth.mode != crds::AuthMode::None
            || route.access.subscription_required
            || route.lifecycle == crds::LifecycleState::Draft
    }

    pub fn on_request(&self, ex: &mut Exchange) -> Result<Flow, ProxyError> {
        let forbidden = |kind: &'static str, detail: &str| ProxyError::Forbidden { kind, detail: detail.into() };
        let Some(caller) = &ex.caller else {
            return Err(ProxyError::Unauthorized {
                kind: "missing-credentials",
                detail: "this API only takes callers it knows: send an API key".into(),
            });
        };
        let own = self.tenant.as_deref() == Some(&*caller.tenant);
        if self.private && !own {
            return Err(forbidden("forbidden", "this API is private to its tenant"));
        }
        if self.draft && !own {
            return Err(forbidden("forbidden", "this API is a draft, callable only by its own tenant's apps"));
        }
        let grant = self
            .access
            .apps
            .binary_search_by(|g| (g.tenant.as_str(), g.app.as_str()).cmp(&(&*caller.tenant, &*caller.app)))
            .ok();
        if let Some(i) = grant {
            ex.state.subscription = self.subscriptions[i].clone();
        }
        if self.access.subscription_required && grant.is_none() {
            if self.access.is_pending(&caller.tenant, &caller.app) {
                return Err(forbidden(
                    "subscription-pending",
                    "your app's subscription to this API waits for an approver",
                ));
            }
            return Err(forbidden(
                "subscription-required",
                "your app has no approved subscription to this API: ask for one with a Subscription",
            ));
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_digests() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        let hex = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"; // sha256("foo")
        let index = KeyIndex::new(&[ApiKey { sha256: hex.into(), tenant: "t".into(), app: "a".into() }]);
        assert_eq!(index.find(b"foo").map(|c| &*c.app), Some("a"));
        assert!(index.find(b"fo").is_none());
        assert!(from_hex("zz").is_none());
    }
}
