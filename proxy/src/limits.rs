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

/// Apps with a budget per route before whole, unused ones are dropped.
const MAX_APPS: usize = 10_000;

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
    pub interval: u64,
    /// How far ahead of now the theoretical arrival time may run.
    pub capacity: u64,
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

/// One key's budget: the local GCRA state, and cells taken from the
/// fleet's budget in Redis that this proxy has not spent yet.
#[derive(Debug, Default)]
pub struct Budget {
    tat: AtomicU64,
    reserved: AtomicU64,
    reserved_until_ms: AtomicU64,
}

impl Budget {
    /// Spends one reserved cell, if one is left and fresh.
    fn spend_reserved(&self, now_ms: u64) -> Option<u64> {
        if now_ms > self.reserved_until_ms.load(Ordering::Acquire) {
            return None;
        }
        let mut left = self.reserved.load(Ordering::Acquire);
        while left > 0 {
            match self.reserved.compare_exchange_weak(left, left - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(left - 1),
                Err(current) => left = current,
            }
        }
        None
    }
}

/// What a fleet-wide check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Allowed or refused.
    Decided(Decision),
    /// Redis could not be asked and the policy is to fail closed.
    Unavailable,
}

/// One rate limit of a route (or of an app's plan on a route), with its
/// budgets.
#[derive(Debug)]
pub struct RouteLimiter {
    /// `route|plan`: this limit's name in Redis.
    name: String,
    policy: RateLimit,
    /// The GCRA parameters.
    pub gcra: Gcra,
    /// The header whose value keys the budget, for `key: Header`.
    header: Option<http::HeaderName>,
    /// The one budget of `key: Route`.
    whole: Arc<Budget>,
    /// Budgets by key, for client IP and header keys: bounded, idle ones
    /// evicted, as requests choose these keys.
    keyed: moka::sync::Cache<String, Arc<Budget>>,
    /// Budgets by app (`tenant/app`), for `key: App`. Apps come from config
    /// (and anonymous callers share `-`), so a plain map behind a
    /// read-mostly lock holds them: a fast hash and no clone of the key,
    /// where the bounded cache cost several times more a request.
    apps: std::sync::RwLock<rustc_hash::FxHashMap<Arc<str>, Arc<Budget>>>,
    /// `RateLimit-Policy` for this limit: `"default";q=LIMIT;w=WINDOW`.
    pub policy_header: http::HeaderValue,
}

impl RouteLimiter {
    fn new(name: String, policy: &RateLimit) -> RouteLimiter {
        let gcra = Gcra::new(policy);
        RouteLimiter {
            name,
            policy: policy.clone(),
            gcra,
            header: policy.header.as_deref().and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            whole: Arc::default(),
            keyed: moka::sync::Cache::builder().max_capacity(MAX_KEYS).time_to_idle(gcra.memory()).build(),
            apps: std::sync::RwLock::default(),
            policy_header: http::HeaderValue::from_str(&format!("\"default\";q={};w={}", gcra.limit, gcra.window))
                .unwrap_or(http::HeaderValue::from_static("\"default\"")),
        }
    }

    /// The budget key of a request (`None`: the route's one budget).
    fn key<'a>(
        &self,
        app: Option<&'a str>,
        client_ip: &'a http::HeaderValue,
        headers: &'a http::HeaderMap,
    ) -> Option<std::borrow::Cow<'a, str>> {
        let key: &[u8] = match self.policy.key {
            RateLimitKey::Route => return None,
            // NB: anonymous callers share one budget.
            RateLimitKey::App => app.map_or(&b"-"[..], str::as_bytes),
            RateLimitKey::ClientIp => client_ip.as_bytes(),
            RateLimitKey::Header => {
                let value = self.header.as_ref().and_then(|h| headers.get(h)).map_or(&b""[..], |v| v.as_bytes());
                &value[..value.len().min(256)]
            }
        };
        Some(String::from_utf8_lossy(key))
    }

    fn budget(&self, key: Option<&str>) -> Arc<Budget> {
        match key {
            None => self.whole.clone(),
            // NB: looked up by reference; a key is copied only when first seen.
            Some(app) if self.policy.key == RateLimitKey::App => self.app_budget(app),
            Some(key) => self.keyed.get_with_by_ref(key, Arc::default),
        }
    }

    fn app_budget(&self, app: &str) -> Arc<Budget> {
        use std::sync::PoisonError;
        if let Some(budget) = self.apps.read().unwrap_or_else(PoisonError::into_inner).get(app) {
            return budget.clone();
        }
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        if apps.len() >= MAX_APPS {
            // Apps removed from config leave budgets behind; the ones whole
            // again (and unused) go.
            let now = clock();
            apps.retain(|_, b| Arc::strong_count(b) > 1 || b.tat.load(Ordering::Acquire) > now);
        }
        apps.entry(Arc::from(app)).or_default().clone()
    }

    /// Checks one request against this proxy's own budget. `app` is the
    /// caller (`tenant/app`), if known.
    pub fn check(&self, app: Option<&str>, client_ip: &http::HeaderValue, headers: &http::HeaderMap) -> Decision {
        let key = self.key(app, client_ip, headers);
        self.gcra.check(&self.budget(key.as_deref()).tat, clock())
    }

    /// Checks one request against the fleet's budget in Redis: a cell
    /// reserved earlier when there is one (no round trip), else a few cells
    /// taken at once. When Redis cannot be asked, this proxy's own budget
    /// decides (fail open) or nobody passes (fail closed).
    pub async fn check_fleet(
        &self,
        fleet: &Fleet,
        app: Option<&str>,
        client_ip: &http::HeaderValue,
        headers: &http::HeaderMap,
    ) -> Checked {
        let key = self.key(app, client_ip, headers);
        let budget = self.budget(key.as_deref());
        let now_ms = crate::upstream::now_ms();
        if let Some(remaining) = budget.spend_reserved(now_ms) {
            return Checked::Decided(Decision::Allow { remaining, reset: self.gcra.window });
        }
        // NB: a twentieth of the limit at a time (1 to 50 cells), so the
        // fleet's total stays within a few percent of the limit.
        let batch = (self.gcra.limit / 20).clamp(1, 50);
        let redis_key = format!("sluice:rl:{}:{}", self.name, key.as_deref().unwrap_or(""));
        match fleet.take(&redis_key, &self.gcra, batch).await {
            Some((0, retry_us)) => {
                Checked::Decided(Decision::Deny { retry_after: retry_us.div_ceil(1_000_000).max(1) })
            }
            Some((got, remaining)) => {
                budget.reserved.store(got - 1, Ordering::Release);
                // Reserved cells are spent within a second or not at all.
                budget.reserved_until_ms.store(now_ms + 1_000, Ordering::Release);
                Checked::Decided(Decision::Allow { remaining: remaining + got - 1, reset: self.gcra.window })
            }
            None if fleet.fail_open => Checked::Decided(self.gcra.check(&budget.tat, clock())),
            None => Checked::Unavailable,
        }
    }
}

/// Limits shared by every proxy: budgets in Redis, changed by Lua scripts
/// (atomic, one round trip), behind a timeout and a circuit breaker so a
/// slow or dead Redis costs a request at most the timeout, and nothing
/// while the breaker is open.
#[derive(Debug)]
pub struct Fleet {
    url: String,
    client: redis::Client,
    script: redis::Script,
    counter: redis::Script,
    timeout: Duration,
    /// What happens when Redis cannot be asked: this proxy's own budget
    /// decides (true), or every limited request gets 503 (false).
    pub fail_open: bool,
    open_until_ms: AtomicU64,
    failures: std::sync::atomic::AtomicU32,
}

/// Takes up to ARGV[3] cells from a GCRA budget (times in µs, Redis's
/// clock): returns {cells taken, cells left} or {0, µs until one fits}.
const GCRA_TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + capacity - tat) / interval)
if room < 1 then
  return {0, tat + interval - capacity - now}
end
local got = math.min(want, room)
local new = tat + got * interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {got, math.floor((now + capacity - new) / interval)}
";

/// Takes up to ARGV[2] requests from a counter capped at ARGV[1] (expiring
/// ARGV[3] s after its first use): returns how many it took.
const COUNT_TAKE: &str = r"
local limit = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local got = math.min(want, limit - used)
if got <= 0 then return 0 end
local n = redis.call('INCRBY', KEYS[1], got)
if n == got then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return got
";

thread_local! {
    /// This worker's connection (made on its own runtime), by Redis URL.
    static CONNECTION: std::cell::RefCell<Option<(String, redis::aio::MultiplexedConnection)>> =
        const { std::cell::RefCell::new(None) };
}

impl Fleet {
    /// A fleet store at `url` (`redis://host:port`); nothing is connected
    /// until the first request needs it.
    pub fn new(url: &str, timeout: Duration, fail_open: bool) -> Result<Fleet, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url {url}: {e}"))?;
        Ok(Fleet {
            url: url.to_owned(),
            client,
            script: redis::Script::new(GCRA_TAKE),
            counter: redis::Script::new(COUNT_TAKE),
            timeout,
            fail_open,
            open_until_ms: AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Runs the take script; `None` when Redis cannot be asked in time (or
    /// the breaker is open).
    async fn take(&self, key: &str, gcra: &Gcra, want: u64) -> Option<(u64, u64)> {
        let interval = (gcra.interval / 1_000).max(1);
        let capacity = gcra.capacity / 1_000;
        let mut invocation = self.script.key(key);
        invocation.arg(interval).arg(capacity).arg(want);
        self.run(invocation).await
    }

    /// Runs the counter script: how many of `want` requests it took.
    async fn count_take(&self, key: &str, limit: u64, want: u64, ttl: u64) -> Option<u64> {
        let mut invocation = self.counter.key(key);
        invocation.arg(limit).arg(want).arg(ttl);
        self.run(invocation).await
    }

    /// One script call, within the timeout, behind the breaker.
    async fn run<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Option<T> {
        let now_ms = crate::upstream::now_ms();
        if now_ms < self.open_until_ms.load(Ordering::Acquire) {
            return None;
        }
        let call = async {
            let mut connection = self.connection().await?;
            invocation.invoke_async::<T>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => {
                self.failures.store(0, Ordering::Release);
                Some(reply)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", self.timeout.as_millis()),
                };
                CONNECTION.with(|slot| slot.borrow_mut().take());
                if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= 3 {
                    self.failures.store(0, Ordering::Release);
                    self.open_until_ms.store(now_ms + 2_000, Ordering::Release);
                    crate::say!(
                        "Redis {}: {why}; limits are {} for 2 s",
                        self.url,
                        if self.fail_open { "this proxy's own" } else { "closed (503)" }
                    );
                }
                None
            }
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let held = CONNECTION.with(|slot| {
            slot.borrow().as_ref().filter(|(url, _)| *url == self.url).map(|(_, connection)| connection.clone())
        });
        if let Some(connection) = held {
            return Ok(connection);
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        CONNECTION.with(|slot| *slot.borrow_mut() = Some((self.url.clone(), connection.clone())));
        Ok(connection)
    }
}

/// A tenant's request quotas over all its routes: per minute (GCRA, no
/// burst) and per UTC day.
#[derive(Debug)]
pub struct TenantQuota {
    /// The tenant: its quotas' name in Redis.
    name: String,
    quotas: crds::Quotas,
    per_minute: Option<(Gcra, Budget)>,
    /// (day number, requests that day) on this proxy alone.
    per_day: Mutex<(u64, u64)>,
    /// (day number, requests of the fleet's day budget taken, not spent).
    day_reserved: Mutex<(u64, u64)>,
}

/// Why a tenant quota refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// A quota is used up: which, and seconds until it has room.
    Exceeded(&'static str, u64),
    /// Redis could not be asked and the policy is to fail closed.
    Unavailable,
}

fn day_now() -> (u64, u64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    (secs / 86_400, 86_400 - secs % 86_400)
}

impl TenantQuota {
    fn new(name: &str, quotas: &crds::Quotas) -> TenantQuota {
        let per_minute = quotas.requests_per_minute.map(|requests| {
            let policy = RateLimit {
                requests,
                period: crds::RatePeriod::Minute,
                burst: None,
                key: RateLimitKey::Route,
                header: None,
            };
            (Gcra::new(&policy), Budget::default())
        });
        TenantQuota {
            name: name.to_owned(),
            quotas: quotas.clone(),
            per_minute,
            per_day: Mutex::new((0, 0)),
            day_reserved: Mutex::new((0, 0)),
        }
    }

    /// Checks one request against this proxy's own counts; a refusal names
    /// which quota.
    pub fn check(&self) -> Result<(), (&'static str, u64)> {
        if let Some((gcra, budget)) = &self.per_minute
            && let Decision::Deny { retry_after } = gcra.check(&budget.tat, clock())
        {
            return Err(("requests per minute", retry_after));
        }
        self.check_day_locally()
    }

    fn check_day_locally(&self) -> Result<(), (&'static str, u64)> {
        if let Some(limit) = self.quotas.requests_per_day {
            let (today, to_midnight) = day_now();
            let mut day = self.per_day.lock().unwrap_or_else(PoisonError::into_inner);
            if day.0 != today {
                *day = (today, 0);
            }
            if day.1 >= limit {
                return Err(("requests per day", to_midnight));
            }
            day.1 += 1;
        }
        Ok(())
    }

    /// Checks one request against the fleet's counts in Redis, a few
    /// requests' worth taken at a time (see [`RouteLimiter::check_fleet`]).
    pub async fn check_fleet(&self, fleet: &Fleet) -> Result<(), QuotaRefusal> {
        let fallback = |local: Result<(), (&'static str, u64)>| match fleet.fail_open {
            true => local.map_err(|(which, retry)| QuotaRefusal::Exceeded(which, retry)),
            false => Err(QuotaRefusal::Unavailable),
        };
        if let Some((gcra, budget)) = &self.per_minute
            && budget.spend_reserved(crate::upstream::now_ms()).is_none()
        {
            let batch = (gcra.limit / 20).clamp(1, 50);
            match fleet.take(&format!("sluice:q:{}:m", self.name), gcra, batch).await {
                Some((0, retry_us)) => {
                    return Err(QuotaRefusal::Exceeded("requests per minute", retry_us.div_ceil(1_000_000).max(1)));
                }
                Some((got, _)) => {
                    budget.reserved.store(got - 1, Ordering::Release);
                    budget.reserved_until_ms.store(crate::upstream::now_ms() + 1_000, Ordering::Release);
                }
                None => {
                    if let Decision::Deny { retry_after } = gcra.check(&budget.tat, clock()) {
                        return fallback(Err(("requests per minute", retry_after)));
                    }
                    fallback(Ok(()))?;
                }
            }
        }
        let Some(limit) = self.quotas.requests_per_day else { return Ok(()) };
        let (today, to_midnight) = day_now();
        {
            let mut reserved = self.day_reserved.lock().unwrap_or_else(PoisonError::into_inner);
            if reserved.0 == today && reserved.1 > 0 {
                reserved.1 -= 1;
                return Ok(());
            }
        }
        let batch = (limit / 20).clamp(1, 50);
        match fleet.count_take(&format!("sluice:q:{}:d:{today}", self.name), limit, batch, to_midnight + 60).await {
            Some(0) => Err(QuotaRefusal::Exceeded("requests per day", to_midnight)),
            Some(got) => {
                *self.day_reserved.lock().unwrap_or_else(PoisonError::into_inner) = (today, got - 1);
                Ok(())
            }
            None => fallback(self.check_day_locally()),
        }
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
        let name = format!("{route}|{plan}");
        let slot = routes
            .entry((route.to_owned(), plan.to_owned()))
            .or_insert_with(|| Arc::new(RouteLimiter::new(name.clone(), policy)));
        if slot.policy != *policy {
            *slot = Arc::new(RouteLimiter::new(name, policy));
        }
        slot.clone()
    }

    /// A tenant's quotas, kept while they are unchanged.
    pub fn tenant(&self, tenant: &str, quotas: &crds::Quotas) -> Arc<TenantQuota> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = tenants.entry(tenant.to_owned()).or_insert_with(|| Arc::new(TenantQuota::new(tenant, quotas)));
        if slot.quotas != *quotas {
            *slot = Arc::new(TenantQuota::new(tenant, quotas));
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
