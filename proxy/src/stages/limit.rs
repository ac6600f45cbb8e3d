//! Rate limits and tenant quotas: the route's limit (or the caller's
//! plan's, which replaces it for that app), then the owning tenant's
//! request quotas. A refusal is 429 with `Retry-After`; every answer of a
//! limited route carries the IETF `RateLimit-Policy` and `RateLimit`
//! headers.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, request, response};

use super::{Context, Flow};
use crate::errors::ProxyError;
use crate::exchange::Exchange;
use crate::limits::{Checked, Decision, Fleet, Limiters, QuotaRefusal, RouteLimiter, TenantQuota};

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A route's limits.
#[derive(Debug)]
pub struct Limit {
    route: Option<Arc<RouteLimiter>>,
    /// Plans of apps with approved subscriptions: (tenant, app, limiter),
    /// sorted by tenant then app.
    plans: Vec<(String, String, Arc<RouteLimiter>)>,
    tenant: Option<Arc<TenantQuota>>,
    /// The fleet-wide store: route and plan limits are kept there.
    fleet: Option<Arc<Fleet>>,
}

impl Limit {
    /// The limits of the route in `cx`, if it has any.
    pub fn new(cx: Context<'_>, limiters: &Limiters) -> Option<Limit> {
        let route = cx.route;
        let own = route.rate_limit.as_deref().map(|policy| limiters.route(&route.id, "", policy));
        let plans: Vec<(String, String, Arc<RouteLimiter>)> = route
            .access
            .apps
            .iter()
            .filter_map(|grant| {
                let policy = grant.rate_limit.as_deref()?;
                let plan = format!("{}/{}", grant.tenant, grant.app);
                Some((grant.tenant.clone(), grant.app.clone(), limiters.route(&route.id, &plan, policy)))
            })
            .collect();
        let tenant = route.tenant.as_deref().and_then(|name| {
            let policy = cx.snapshot.tenant(name)?;
            let quotas = &policy.quotas;
            (quotas.requests_per_minute.is_some() || quotas.requests_per_day.is_some())
                .then(|| limiters.tenant(name, quotas))
        });
        let fleet = cx.fleet.cloned();
        (own.is_some() || !plans.is_empty() || tenant.is_some()).then_some(Limit { route: own, plans, tenant, fleet })
    }

    pub async fn on_request(&self, ex: &mut Exchange, req: &request::Parts) -> Result<Flow, ProxyError> {
        let plan = ex.caller.as_ref().and_then(|caller| {
            self.plans
                .binary_search_by(|(t, a, _)| (t.as_str(), a.as_str()).cmp(&(&*caller.tenant, &*caller.app)))
                .ok()
                .map(|i| &self.plans[i].2)
        });
        if let Some(limiter) = plan.or(self.route.as_ref()) {
            let app = ex.caller.as_ref().map(|c| &*c.id);
            let decision = match &self.fleet {
                Some(fleet) => match limiter.check_fleet(fleet, app, &ex.client_ip, &req.headers).await {
                    Checked::Decided(decision) => decision,
                    Checked::Unavailable => return Err(ProxyError::LimitsUnavailable),
                },
                None => limiter.check(app, &ex.client_ip, &req.headers),
            };
            let (limit, window) = (limiter.gcra.limit, limiter.gcra.window);
            ex.state.rate_limit = Some((limiter.policy_header.clone(), decision));
            if let Decision::Deny { retry_after } = decision {
                return Err(ProxyError::TooManyRequests {
                    kind: "rate-limited",
                    retry_after,
                    detail: format!(
                        "this API takes {limit} requests every {window} s from you; try again in {retry_after} s"
                    ),
                });
            }
        }
        if let Some(quota) = &self.tenant {
            let checked = match &self.fleet {
                Some(fleet) => quota.check_fleet(fleet).await,
                None => quota.check().map_err(|(which, retry)| QuotaRefusal::Exceeded(which, retry)),
            };
            match checked {
                Ok(()) => {}
                Err(QuotaRefusal::Exceeded(which, retry_after)) => {
                    return Err(ProxyError::TooManyRequests {
                        kind: "quota-exceeded",
                        retry_after,
                        detail: format!("the API owner's quota of {which} is used up; try again in {retry_after} s"),
                    });
                }
                Err(QuotaRefusal::Unavailable) => return Err(ProxyError::LimitsUnavailable),
            }
        }
        Ok(Flow::Continue)
    }

    /// Adds `RateLimit-Policy: "default";q=LIMIT;w=WINDOW` and
    /// `RateLimit: "default";r=REMAINING;t=SECONDS`.
    pub fn on_response(&self, ex: &mut Exchange, res: &mut response::Parts) {
        let Some((policy, decision)) = ex.state.rate_limit.take() else { return };
        let (remaining, reset) = match decision {
            Decision::Allow { remaining, reset } => (remaining, reset),
            Decision::Deny { retry_after } => (0, retry_after),
        };
        res.headers.insert(RATELIMIT_POLICY, policy);
        // NB: written with itoa, not format!: this runs on every answer.
        let mut state = Vec::with_capacity(48);
        state.extend_from_slice(b"\"default\";r=");
        state.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
        state.extend_from_slice(b";t=");
        state.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
        if let Ok(state) = HeaderValue::from_bytes(&state) {
            res.headers.insert(RATELIMIT, state);
        }
    }
}
