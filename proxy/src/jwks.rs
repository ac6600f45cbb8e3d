//! Signing keys of token issuers: JWKS documents fetched from their URLs,
//! kept across snapshot swaps, refreshed in the background, fetched again
//! when a token names a key id not in the set (at most once per
//! [`MIN_REFETCH`]), and kept as they were when the issuer cannot be
//! reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;

use crate::upstream::HttpClient;

/// A set older than this is fetched again in the background.
const REFRESH: Duration = Duration::from_secs(300);
/// An unknown key id makes the set be fetched again at most this often.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// The longest a request waits for a fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_DOCUMENT: usize = 256 * 1024;

/// Every issuer's keys, by JWKS URL.
#[derive(Debug, Default)]
pub struct JwksCache {
    sources: Mutex<HashMap<String, Arc<JwksSource>>>,
}

impl JwksCache {
    /// The source for a URL, the one already known if any.
    pub fn source(&self, uri: &str) -> Arc<JwksSource> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources
            .entry(uri.to_owned())
            .or_insert_with(|| {
                Arc::new(JwksSource {
                    uri: uri.to_owned(),
                    keys: RwLock::new(None),
                    fetched_ms: std::sync::atomic::AtomicU64::new(0),
                    tried_ms: std::sync::atomic::AtomicU64::new(0),
                    fetching: tokio::sync::Mutex::new(()),
                    client: std::sync::OnceLock::new(),
                })
            })
            .clone()
    }

    /// A source whose keys are given (a JWKS document from a Secret):
    /// never fetched. A document that does not parse holds no keys, so
    /// its tokens are refused.
    pub fn fixed(document: &str) -> Arc<JwksSource> {
        let keys = serde_json::from_str::<JwkSet>(document).ok().map(Arc::new);
        if keys.is_none() {
            crate::say!("a JWKS document from a Secret does not parse: tokens of its route are refused");
        }
        Arc::new(JwksSource {
            uri: String::new(),
            keys: RwLock::new(keys),
            fetched_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            tried_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            fetching: tokio::sync::Mutex::new(()),
            client: std::sync::OnceLock::new(),
        })
    }

    /// Forgets sources no route uses any more.
    pub fn retain(&self, used: &[&str]) {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).retain(|uri, _| used.contains(&uri.as_str()));
    }
}

/// One issuer's keys.
#[derive(Debug)]
pub struct JwksSource {
    uri: String,
    keys: RwLock<Option<Arc<JwkSet>>>,
    /// When the set was last fetched, ms on the proxy clock (0: never).
    fetched_ms: std::sync::atomic::AtomicU64,
    /// When a fetch was last tried.
    tried_ms: std::sync::atomic::AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    client: std::sync::OnceLock<HttpClient>,
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The issuer's keys have never been fetched.
    #[error("the signing keys at {0} could not be fetched: {1}")]
    Unavailable(String, String),
}

impl JwksSource {
    /// The key set, fetching it first when there is none yet, or when it
    /// lacks `kid` and was not fetched in the last [`MIN_REFETCH`].
    pub async fn keys(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<JwkSet>, JwksError> {
        let current = self.current();
        if self.uri.is_empty() {
            // Given, not fetched.
            return current.ok_or_else(|| JwksError::Unavailable("a Secret".into(), "not a JWKS document".into()));
        }
        let now = crate::upstream::now_ms();
        let missing = |set: &JwkSet| kid.is_some_and(|kid| set.find(kid).is_none());
        match &current {
            Some(set) if !missing(set) => {
                let age = now.saturating_sub(self.fetched_ms.load(std::sync::atomic::Ordering::Relaxed));
                if age > REFRESH.as_millis() as u64 {
                    self.refresh_in_background();
                }
                return Ok(set.clone());
            }
            Some(set) => {
                let tried = self.tried_ms.load(std::sync::atomic::Ordering::Relaxed);
                if now.saturating_sub(tried) < MIN_REFETCH.as_millis() as u64 {
                    return Ok(set.clone());
                }
            }
            None => {}
        }
        self.fetch().await?;
        self.current().ok_or_else(|| JwksError::Unavailable(self.uri.clone(), "no key set".into()))
    }

    fn current(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let source = self.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let _ = source.fetch().await;
            });
        }
    }

    /// Fetches the set once (concurrent callers wait for the same fetch).
    /// On failure the set already held stays.
    async fn fetch(&self) -> Result<(), JwksError> {
        let started = crate::upstream::now_ms();
        let _one = self.fetching.lock().await;
        // Someone else fetched while this one waited.
        if self.tried_ms.load(std::sync::atomic::Ordering::Relaxed) >= started && self.current().is_some() {
            return Ok(());
        }
        self.tried_ms.store(crate::upstream::now_ms(), std::sync::atomic::Ordering::Relaxed);
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.download()).await;
        let error = match fetched {
            Ok(Ok(set)) => {
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
                self.fetched_ms.store(crate::upstream::now_ms(), std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", FETCH_TIMEOUT.as_secs()),
        };
        crate::say!(
            "JWKS {}: {error}; {}",
            self.uri,
            if self.current().is_some() { "keeping the keys held" } else { "no keys yet" }
        );
        if self.current().is_some() { Ok(()) } else { Err(JwksError::Unavailable(self.uri.clone(), error)) }
    }

    async fn download(&self) -> Result<JwkSet, String> {
        let client = self.client.get_or_init(|| crate::upstream::build_client(2_000, 30_000, false));
        let request = http::Request::get(self.uri.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(crate::body::RequestBody::Empty)
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| crate::upstream::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))
    }
}
