//! Subscriptions: which apps may call which routes.

use std::collections::{BTreeMap, BTreeSet};

use crds::{ApprovalMode, ApprovalState, LifecycleState, Visibility};

use super::Output;
use super::index::{Index, names};
use super::tenants::{Tenancy, check_rate_limit};
use crate::model::{AppGrant, AppRef, Route};
use crate::status::{ObjectRef, Rejection, reason};

/// Fills every route's access list: the owner's own apps, then apps with an
/// approved subscription (by a decision, or by the route's Auto policy).
pub fn translate(index: &Index<'_>, tenancy: &Tenancy, routes: &mut [Route], out: &mut Output) {
    let known: BTreeSet<String> = index
        .routes
        .iter()
        .map(|r| {
            let (ns, name) = names(&r.metadata);
            format!("{ns}/{name}")
        })
        .collect();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, route) in routes.iter_mut().enumerate() {
        if route.source.kind == "ApiRoute" {
            by_id.insert(route.id.clone(), i);
        }
        if let Some(tenant) =
            route.tenant.as_deref().and_then(|t| tenancy.owner(&route.source.namespace).filter(|o| o.name == t))
        {
            route.access.apps = tenant
                .apps
                .iter()
                .map(|app| AppGrant {
                    tenant: tenant.name.clone(),
                    app: app.name.clone(),
                    subscription: None,
                    plan: None,
                    rate_limit: None,
                })
                .collect();
        }
    }

    for sub in &index.subscriptions {
        let (namespace, name) = names(&sub.metadata);
        let object = ObjectRef::new("Subscription", namespace, name);
        let generation = sub.metadata.generation;
        let spec = &sub.spec;
        let Some(tenant) = tenancy.owner(namespace) else {
            out.reject(
                &object,
                generation,
                Rejection::invalid(
                    reason::NO_TENANT,
                    format!("Namespace {namespace} belongs to no tenant, so spec.app {:?} names no app.", spec.app),
                ),
            );
            continue;
        };
        if !tenant.has_app(&spec.app) {
            out.reject(
                &object,
                generation,
                Rejection::invalid(
                    reason::UNKNOWN_APP,
                    format!("spec.app {:?} is not an app of tenant {}.", spec.app, tenant.name),
                ),
            );
            continue;
        }
        if let Some(limit) = spec.plan.as_ref().and_then(|p| p.rate_limit.as_ref())
            && let Err(rejection) = check_rate_limit(limit, "spec.plan.rateLimit")
        {
            out.reject(&object, generation, rejection);
            continue;
        }
        let route_ns = spec.route.namespace.as_deref().unwrap_or(namespace);
        let route_id = format!("{route_ns}/{}", spec.route.name);
        let Some(&i) = by_id.get(&route_id) else {
            let (why, what) = if known.contains(&route_id) {
                (reason::ROUTE_NOT_ACCEPTED, "was not accepted (see its status)")
            } else {
                (reason::ROUTE_NOT_FOUND, "does not exist")
            };
            out.reject(
                &object,
                generation,
                Rejection::unresolved(why, format!("spec.route: ApiRoute {route_id} {what}.")),
            );
            continue;
        };
        let route = &mut routes[i];
        let phase = match spec.approval.state {
            state @ (ApprovalState::Rejected | ApprovalState::Revoked) => state,
            _ if route.access.approval == ApprovalMode::Auto => ApprovalState::Approved,
            state => state,
        };
        out.status_mut(&object, generation).phase = Some(phase);
        if route.lifecycle == LifecycleState::Draft && route.tenant.as_deref() != Some(tenant.name.as_str()) {
            out.reject(
                &object,
                generation,
                Rejection::unresolved(
                    reason::ROUTE_NOT_PUBLISHED,
                    format!(
                        "spec.route: ApiRoute {route_id} is a Draft, callable only by its own tenant's apps until it is Published."
                    ),
                ),
            );
            continue;
        }
        // NB: no identity of another tenant ever reaches a Private route,
        // whatever an approver said.
        if route.visibility == Visibility::Private && route.tenant.as_deref() != Some(tenant.name.as_str()) {
            out.reject(
                &object,
                generation,
                Rejection::unresolved(
                    reason::ROUTE_PRIVATE,
                    format!("spec.route: ApiRoute {route_id} is Private, callable only by its own tenant's apps."),
                ),
            );
            continue;
        }
        let granted = route.access.apps.iter().any(|g| g.tenant == tenant.name && g.app == spec.app);
        if phase == ApprovalState::Pending && !granted {
            route.access.pending.push(AppRef { tenant: tenant.name.clone(), app: spec.app.clone() });
        }
        if phase == ApprovalState::Approved && !granted {
            route.access.apps.push(AppGrant {
                tenant: tenant.name.clone(),
                app: spec.app.clone(),
                subscription: Some(object.key()),
                plan: spec.plan.as_ref().map(|p| p.name.clone()),
                rate_limit: spec.plan.as_ref().and_then(|p| p.rate_limit.clone()).map(Box::new),
            });
        }
        out.accept(&object, generation);
    }

    for route in routes.iter_mut() {
        route.access.apps.sort_by(|a, b| (&a.tenant, &a.app).cmp(&(&b.tenant, &b.app)));
        // An app approved by one subscription is not also pending by another.
        let access = &mut route.access;
        access.pending.sort();
        access.pending.dedup();
        let apps = &access.apps;
        access.pending.retain(|p| !apps.iter().any(|g| g.tenant == p.tenant && g.app == p.app));
    }
}
