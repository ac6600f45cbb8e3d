//! The response cache: entries by key (route, host, target, the route's
//! vary headers, and the calling app unless the route says its answers
//! are public), bounded in bytes, each kept for its own time to live; and
//! the single flight that sends concurrent misses of one key upstream once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// Bytes of responses kept at most, unless `--cache-max-bytes` says.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// Status.
    pub status: StatusCode,
    /// Headers, as the upstream sent them (after the route's response
    /// transform).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it was stored.
    pub stored: Instant,
    /// How long it is fresh.
    pub ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The gateway's response cache.
#[derive(Debug)]
pub struct ResponseCache {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    /// Keys being filled now, and how their waiters are woken.
    filling: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache::new(MAX_BYTES)
    }
}

impl ResponseCache {
    /// A cache keeping at most `max_bytes` of answers (bodies, headers and
    /// keys); the least used go first.
    pub fn new(max_bytes: u64) -> Self {
        ResponseCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, entry: &Arc<Entry>| {
                    let headers: usize = entry.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
                    u32::try_from(key.len() + headers + entry.body.len() + 128).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build(),
            filling: Mutex::new(HashMap::new()),
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh entry.
    Hit(Arc<Entry>),
    /// None: this request fills the key (the guard lets waiters go when
    /// dropped).
    Fill(FillGuard),
    /// None, and another request is filling the key: wait on this, then
    /// look again.
    Wait(Arc<tokio::sync::Notify>),
}

impl ResponseCache {
    /// Looks a key up.
    pub fn lookup(self: &Arc<Self>, key: &str) -> Lookup {
        if let Some(entry) = self.entries.get(key) {
            return Lookup::Hit(entry);
        }
        let mut filling = self.filling.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = filling.get(key) {
            return Lookup::Wait(notify.clone());
        }
        filling.insert(key.to_owned(), Arc::new(tokio::sync::Notify::new()));
        Lookup::Fill(FillGuard { cache: self.clone(), key: key.to_owned(), filled: false })
    }

    /// A fresh entry, if any (no filling).
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    fn finish(&self, key: &str, entry: Option<Entry>) {
        if let Some(entry) = entry {
            self.entries.insert(key.to_owned(), Arc::new(entry));
        }
        let notify = self.filling.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Entries kept now (for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

/// The right to fill one key; dropped unfilled, it lets the waiters go to
/// the upstream themselves.
#[derive(Debug)]
pub struct FillGuard {
    cache: Arc<ResponseCache>,
    key: String,
    filled: bool,
}

impl FillGuard {
    /// Stores the entry and wakes the waiters.
    pub fn fill(mut self, entry: Entry) {
        self.filled = true;
        self.cache.finish(&self.key, Some(entry));
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.filled {
            self.cache.finish(&self.key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_no_more_than_its_bytes() {
        let cache = Arc::new(ResponseCache::new(20_000));
        for i in 0..100 {
            let Lookup::Fill(guard) = cache.lookup(&format!("key-{i}")) else { panic!("a fill") };
            guard.fill(Entry {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from(vec![b'x'; 1000]),
                stored: Instant::now(),
                ttl: Duration::from_secs(60),
            });
        }
        let kept = cache.entry_count();
        assert!((1..=20).contains(&kept), "{kept} entries of about 1.1 KB in 20 KB");
        // A key being filled makes the next lookup wait; a dropped fill
        // lets it go.
        let Lookup::Fill(guard) = cache.lookup("new") else { panic!("a fill") };
        assert!(matches!(cache.lookup("new"), Lookup::Wait(_)));
        drop(guard);
        assert!(matches!(cache.lookup("new"), Lookup::Fill(_)));
    }
}
