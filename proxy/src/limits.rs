//! Rate limits and request quotas, local to this proxy: GCRA (the generic
//! cell rate algorithm) per key for `requests` per `period` with a burst,
//! and a per-UTC-day counter for daily quotas.
//!
//! State lives in [`Limiters`], outside the snapshot, keyed by route (and
//! policy) or tenant, so a reload keeps every budget where it was; a route
//! or tenant that goes takes its state with it. Per-key state (one budget
//! per app, client IP or header value) is a bounded cache whose idle
//! entries are evicted once they would be full again anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crds::{RateLimit, RateLimitKey};

/// Per-key budgets kept at most, per limiter; beyond, the least used go.
const MAX_KEYS: u64 = 100_000;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on: this many more requests fit now, and the budget is whole
    /// again in `reset` seconds.
    Allow {
        /// Requests left in the budget.
        remaining: u64,
        /// Seconds until the budget is whole again.
        reset: u64,
    },
    /// Refused: try again in `retry_after` seconds.
    Deny {
        /// Seconds until one more request fits.
        retry_after: u64,
    },
}

/// GCRA for `limit` requests per `period`, `burst` more at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run.
    capacity: u64,
    /// Requests per period (for the headers).
    pub limit: u64,
    /// The period, seconds (for the headers).
    pub window: u64,
}

impl Gcra {
    /// A limiter for a policy.
    pub fn new(policy: &RateLimit) -> Gcra {
        let window = policy.period.seconds().max(1);
        let limit = policy.requests.max(1);
        let interval = (window * 1_000_000_000 / limit).max(1);
        let cells = limit.saturating_add(policy.burst.unwrap_or(0));
        Gcra { interval, capacity: interval.saturating_mul(cells), limit, window }
    }

    /// One request at `now` (nanoseconds on [`clock`]) against the
    /// theoretical arrival time in `tat`.
    pub fn check(&self, tat: &AtomicU64, now: u64) -> Decision {
        let mut old = tat.load(Ordering::Acquire);
        loop {
            let new = old.max(now) + self.interval;
            if new > now + self.capacity {
                let retry = new - self.capacity - now;
                return Decision::Deny { retry_after: retry.div_ceil(1_000_000_000).max(1) };
            }
            match tat.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let remaining = (now + self.capacity - new) / self.interval;
                    let reset = (new - now).div_ceil(1_000_000_000);
                    return Decision::Allow { remaining, reset };
                }
                Err(current) => old = current,
            }
        }
    }

    /// How long a key's state matters after its last request: by then its
    /// budget is whole again.
    fn memory(&self) -> Duration {
        Duration::from_nanos(self.capacity)
    }
}

/// Nanoseconds since the process started (monotonic).
pub fn clock() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One rate limit of a route (or of an app's plan on a route), with its
/// budgets.
#[derive(Debug)]
pub struct RouteLimiter {
    policy: RateLimit,
    /// The GCRA parameters.
    pub gcra: Gcra,
    /// The header whose value keys the budget, for `key: Header`.
    header: Option<http::HeaderName>,
    /// The one budget of `key: Route`.
    whole: AtomicU64,
    /// Budgets by key, for the other keys.
    keyed: moka::sync::Cache<String, Arc<AtomicU64>>,
    /// `RateLimit-Policy` for this limit: `"default";q=LIMIT;w=WINDOW`.
    pub policy_header: http::HeaderValue,
}

impl RouteLimiter {
    fn new(policy: &RateLimit) -> RouteLimiter {
        let gcra = Gcra::new(policy);
        RouteLimiter {
            policy: policy.clone(),
            gcra,
            header: policy.header.as_deref().and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            whole: AtomicU64::new(0),
            keyed: moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_idle(gcra.memory()).build(),
            policy_header: http::HeaderValue::from_str(&format!("\"default\";q={};w={}", gcra.limit, gcra.window))
                .unwrap_or(http::HeaderValue::from_static("\"default\"")),
        }
    }

    /// Checks one request. `app` is the caller (`tenant/app`), if known.
    pub fn check(&self, app: Option<&str>, client_ip: &http::HeaderValue, headers: &http::HeaderMap) -> Decision {
        let now = clock();
        let key: &[u8] = match self.policy.key {
            RateLimitKey::Route => return self.gcra.check(&self.whole, now),
            // NB: anonymous callers share one budget.
            RateLimitKey::App => app.map_or(&b"-"[..], str::as_bytes),
            RateLimitKey::ClientIp => client_ip.as_bytes(),
            RateLimitKey::Header => {
                let value = self.header.as_ref().and_then(|h| headers.get(h)).map_or(&b""[..], |v| v.as_bytes());
                &value[..value.len().min(256)]
            }
        };
        // NB: looked up by reference; a key is copied only when first seen.
        let key = String::from_utf8_lossy(key);
        let tat = self.keyed.get_with_by_ref(&*key, || Arc::new(AtomicU64::new(0)));
        self.gcra.check(&tat, now)
    }
}

/// A tenant's request quotas over all its routes: per minute (GCRA, no
/// burst) and per UTC day.
#[derive(Debug)]
pub struct TenantQuota {
    quotas: crds::Quotas,
    per_minute: Option<(Gcra, AtomicU64)>,
    /// (day number, requests that day).
    per_day: Mutex<(u64, u64)>,
}

impl TenantQuota {
    fn new(quotas: &crds::Quotas) -> TenantQuota {
        let per_minute = quotas.requests_per_minute.map(|requests| {
            let policy = RateLimit {
                requests,
                period: crds::RatePeriod::Minute,
                burst: None,
                key: RateLimitKey::Route,
                header: None,
            };
            (Gcra::new(&policy), AtomicU64::new(0))
        });
        TenantQuota { quotas: quotas.clone(), per_minute, per_day: Mutex::new((0, 0)) }
    }

    /// Checks one request; a refusal names which quota.
    pub fn check(&self) -> Result<(), (&'static str, u64)> {
        if let Some((gcra, tat)) = &self.per_minute
            && let Decision::Deny { retry_after } = gcra.check(tat, clock())
        {
            return Err(("requests per minute", retry_after));
        }
        if let Some(limit) = self.quotas.requests_per_day {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let today = secs / 86_400;
            let mut day = self.per_day.lock().unwrap_or_else(PoisonError::into_inner);
            if day.0 != today {
                *day = (today, 0);
            }
            if day.1 >= limit {
                return Err(("requests per day", 86_400 - secs % 86_400));
            }
            day.1 += 1;
        }
        Ok(())
    }
}

/// Limit state that outlives snapshots.
#[derive(Debug, Default)]
pub struct Limiters {
    /// By (route id, tenant/app of a plan or "" for the route's own).
    routes: Mutex<HashMap<(String, String), Arc<RouteLimiter>>>,
    tenants: Mutex<HashMap<String, Arc<TenantQuota>>>,
}

impl Limiters {
    /// The limiter of a route (`plan` empty) or of one app's plan on it:
    /// the one already running when the policy is unchanged.
    pub fn route(&self, route: &str, plan: &str, policy: &RateLimit) -> Arc<RouteLimiter> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let slot =
            routes.entry((route.to_owned(), plan.to_owned())).or_insert_with(|| Arc::new(RouteLimiter::new(policy)));
        if slot.policy != *policy {
            *slot = Arc::new(RouteLimiter::new(policy));
        }
        slot.clone()
    }

    /// A tenant's quotas, kept while they are unchanged.
    pub fn tenant(&self, tenant: &str, quotas: &crds::Quotas) -> Arc<TenantQuota> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = tenants.entry(tenant.to_owned()).or_insert_with(|| Arc::new(TenantQuota::new(quotas)));
        if slot.quotas != *quotas {
            *slot = Arc::new(TenantQuota::new(quotas));
        }
        slot.clone()
    }

    /// Forgets the state of routes, plans and tenants the snapshot no
    /// longer has.
    pub fn retain(&self, snapshot: &snapshot::Snapshot) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.retain(|(route, plan), _| {
            snapshot.route(route).is_some_and(|r| match plan.split_once('/') {
                None => r.rate_limit.is_some(),
                Some((tenant, app)) => r.access.grant(tenant, app).is_some_and(|g| g.rate_limit.is_some()),
            })
        });
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.retain(|tenant, _| snapshot.tenant(tenant).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(requests: u64, period: crds::RatePeriod, burst: Option<u64>) -> RateLimit {
        RateLimit { requests, period, burst, key: RateLimitKey::Route, header: None }
    }

    #[test]
    fn gcra_allows_the_limit_then_one_per_interval() {
        let gcra = Gcra::new(&policy(10, crds::RatePeriod::Second, None));
        let tat = AtomicU64::new(0);
        let t0 = 5_000_000_000;
        for i in 0..10 {
            assert_eq!(gcra.check(&tat, t0), Decision::Allow { remaining: 9 - i, reset: 1 }, "request {i}");
        }
        assert_eq!(gcra.check(&tat, t0), Decision::Deny { retry_after: 1 });
        // One interval (100 ms) later, one more fits.
        assert!(matches!(gcra.check(&tat, t0 + 100_000_000), Decision::Allow { remaining: 0, .. }));
        assert!(matches!(gcra.check(&tat, t0 + 100_000_000), Decision::Deny { .. }));
        // A burst adds room on top of the rate.
        let bursty = Gcra::new(&policy(1, crds::RatePeriod::Minute, Some(2)));
        let tat = AtomicU64::new(0);
        for _ in 0..3 {
            assert!(matches!(bursty.check(&tat, t0), Decision::Allow { .. }));
        }
        assert_eq!(bursty.check(&tat, t0), Decision::Deny { retry_after: 60 });
    }
}
