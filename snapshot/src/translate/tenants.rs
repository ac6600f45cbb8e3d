//! Tenants: namespace ownership, hostname claims, apps, and app API keys.

use std::collections::{BTreeMap, BTreeSet};

use crds::{RateLimit, Tenant, TenantDefaults};
use sha2::{Digest, Sha256};

use super::index::{Index, names, secret_value};
use super::{Output, hosts};
use crate::model::{ApiKey, App, ReservedHost, TenantPolicy};
use crate::status::{ObjectRef, Rejection, StatusCondition, condition, reason};

/// The Secret type of app API keys.
pub const API_KEY_SECRET_TYPE: &str = "sluice.dev/api-key";
/// The label naming an API key Secret's app.
pub const APP_LABEL: &str = "sluice.dev/app";
/// The Secret key holding the API key.
pub const API_KEY_FIELD: &str = "api-key";

/// An accepted tenant.
pub struct TenantEntry {
    pub name: String,
    pub namespaces: Vec<String>,
    pub patterns: Vec<String>,
    pub apps: Vec<App>,
    pub defaults: TenantDefaults,
    pub quotas: crds::Quotas,
}

impl TenantEntry {
    pub fn has_app(&self, app: &str) -> bool {
        self.apps.binary_search_by(|a| a.name.as_str().cmp(app)).is_ok()
    }
}

/// Who owns what.
#[derive(Default)]
pub struct Tenancy {
    tenants: BTreeMap<String, TenantEntry>,
    namespace_owner: BTreeMap<String, String>,
}

impl Tenancy {
    /// The tenant owning a namespace.
    pub fn owner(&self, namespace: &str) -> Option<&TenantEntry> {
        self.namespace_owner.get(namespace).and_then(|t| self.tenants.get(t))
    }

    /// Checks that a route in `namespace` may serve `hosts` (already
    /// normalised), naming `field` in the message.
    pub fn check_hosts(&self, namespace: &str, hosts: &[String], field: &str) -> Result<(), Rejection> {
        match self.owner(namespace) {
            Some(tenant) => {
                if hosts.is_empty() {
                    return Err(Rejection::invalid(
                        reason::NOT_ALLOWED_HOST,
                        format!(
                            "{field} is empty, but routes of tenant {} must name hosts matching its hostnames ({}).",
                            tenant.name,
                            tenant.patterns.join(", ")
                        ),
                    ));
                }
                for host in hosts {
                    if !tenant.patterns.iter().any(|p| hosts::covers(p, host)) {
                        return Err(Rejection::invalid(
                            reason::NOT_ALLOWED_HOST,
                            format!(
                                "{field} has {host}, which is not among the hostnames of tenant {} ({}).",
                                tenant.name,
                                if tenant.patterns.is_empty() { "none".to_owned() } else { tenant.patterns.join(", ") }
                            ),
                        ));
                    }
                }
                Ok(())
            }
            None => {
                for host in hosts {
                    for tenant in self.tenants.values() {
                        if let Some(p) = tenant.patterns.iter().find(|p| hosts::overlap(p, host)) {
                            return Err(Rejection::invalid(
                                reason::NOT_ALLOWED_HOST,
                                format!(
                                    "{field} has {host}, which tenant {} claims ({p}); namespace {namespace} belongs to no tenant.",
                                    tenant.name
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    pub fn reserved_hosts(&self) -> Vec<ReservedHost> {
        let mut out: Vec<ReservedHost> = self
            .tenants
            .values()
            .flat_map(|t| t.patterns.iter().map(|p| ReservedHost { pattern: p.clone(), tenant: t.name.clone() }))
            .collect();
        out.sort();
        out
    }

    pub fn policies(&self) -> Vec<TenantPolicy> {
        self.tenants
            .values()
            .map(|t| TenantPolicy {
                name: t.name.clone(),
                namespaces: t.namespaces.clone(),
                apps: t.apps.clone(),
                quotas: t.quotas.clone(),
            })
            .collect()
    }
}

/// Validates every tenant and settles namespace and hostname claims.
pub fn translate(index: &Index<'_>, out: &mut Output) -> Tenancy {
    let older = out.older;
    let mut tenancy = Tenancy::default();
    // (pattern, tenant) in claim order.
    let mut claimed_patterns: Vec<(String, String)> = Vec::new();
    // Conflict notes per tenant, in order.
    let mut notes: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();

    // Index sorts tenants oldest first, so the first claim wins.
    for tenant in &index.tenants {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Tenant", "", &name);
        let generation = tenant.metadata.generation;
        let entry = match validate(tenant) {
            Ok(entry) => entry,
            Err(rejection) => {
                out.reject(&object, generation, rejection);
                continue;
            }
        };
        let mut namespaces = Vec::new();
        for ns in &entry.namespaces {
            match tenancy.namespace_owner.get(ns) {
                Some(owner) => {
                    let winner = format!(
                        "Namespace {ns} is also claimed by tenant {name}; tenant {owner} keeps it because it {older}."
                    );
                    let loser = format!(
                        "Namespace {ns} is also claimed by tenant {owner}, which {older} and keeps it; this tenant does not own it."
                    );
                    notes.entry(owner.clone()).or_default().push((reason::NAMESPACE_CONFLICT.to_owned(), winner));
                    notes.entry(name.clone()).or_default().push((reason::NAMESPACE_CONFLICT.to_owned(), loser));
                }
                None => {
                    tenancy.namespace_owner.insert(ns.clone(), name.clone());
                    namespaces.push(ns.clone());
                }
            }
        }
        let mut patterns = Vec::new();
        for pattern in &entry.patterns {
            match claimed_patterns.iter().find(|(p, owner)| *owner != name && hosts::overlap(p, pattern)) {
                Some((theirs, owner)) => {
                    let winner = format!(
                        "Hostname {theirs} overlaps {pattern} of tenant {name}; tenant {owner} keeps it because it {older}."
                    );
                    let loser = format!(
                        "Hostname {pattern} overlaps {theirs} of tenant {owner}, which {older} and keeps it; this tenant may not use it."
                    );
                    notes.entry(owner.clone()).or_default().push((reason::HOSTNAME_CONFLICT.to_owned(), winner));
                    notes.entry(name.clone()).or_default().push((reason::HOSTNAME_CONFLICT.to_owned(), loser));
                }
                None => {
                    claimed_patterns.push((pattern.clone(), name.clone()));
                    patterns.push(pattern.clone());
                }
            }
        }
        out.accept(&object, generation);
        tenancy.tenants.insert(name.clone(), TenantEntry { namespaces, patterns, ..entry });
    }

    for (name, notes) in notes {
        let object = ObjectRef::new("Tenant", "", &name);
        let reason = if notes.iter().all(|(r, _)| r == reason::HOSTNAME_CONFLICT) {
            reason::HOSTNAME_CONFLICT
        } else {
            reason::NAMESPACE_CONFLICT
        };
        let message = notes.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join(" ");
        out.status_mut(&object, None).set(StatusCondition::ok(condition::CONFLICTED, reason, message));
    }
    for tenant in tenancy.tenants.values_mut() {
        tenant.namespaces.sort();
        tenant.patterns.sort();
    }
    tenancy
}

fn validate(tenant: &Tenant) -> Result<TenantEntry, Rejection> {
    let spec = &tenant.spec;
    let mut namespaces = BTreeSet::new();
    for (i, ns) in spec.namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.namespaces[{i}] {ns:?} is not a namespace name (a DNS label)."),
            ));
        }
        namespaces.insert(ns.clone());
    }
    let mut patterns = BTreeSet::new();
    for (i, host) in spec.hostnames.iter().enumerate() {
        let host = hosts::normalize(host)
            .map_err(|e| Rejection::invalid(reason::INVALID, format!("spec.hostnames[{i}]: {e}.")))?;
        patterns.insert(host);
    }
    let mut apps: Vec<App> = Vec::new();
    for (i, app) in spec.apps.iter().enumerate() {
        if !is_dns_label(&app.name) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.apps[{i}].name {:?} is not a DNS label.", app.name),
            ));
        }
        if apps.iter().any(|a| a.name == app.name) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.apps[{i}].name {:?} is used by another app too; app names must be unique.", app.name),
            ));
        }
        let mut client_ids = app.client_ids.clone();
        client_ids.sort();
        client_ids.dedup();
        apps.push(App { name: app.name.clone(), client_ids });
    }
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(budget) = spec.quotas.monthly_ai_budget_usd
        && !(budget.is_finite() && budget >= 0.0)
    {
        return Err(Rejection::invalid(
            reason::INVALID,
            "spec.quotas.monthlyAiBudgetUsd must be a non-negative number.",
        ));
    }
    if let Some(limit) = &spec.defaults.rate_limit {
        check_rate_limit(limit, "spec.defaults.rateLimit")?;
    }
    Ok(TenantEntry {
        name: tenant.metadata.name.clone().unwrap_or_default(),
        namespaces: namespaces.into_iter().collect(),
        patterns: patterns.into_iter().collect(),
        apps,
        defaults: spec.defaults.clone(),
        quotas: spec.quotas.clone(),
    })
}

/// Validates a rate limit, naming `field`.
pub fn check_rate_limit(limit: &RateLimit, field: &str) -> Result<(), Rejection> {
    if limit.requests == 0 {
        return Err(Rejection::invalid(reason::INVALID, format!("{field}.requests must be at least 1.")));
    }
    if limit.key == crds::RateLimitKey::Header && limit.header.as_deref().is_none_or(str::is_empty) {
        return Err(Rejection::invalid(
            reason::INVALID,
            format!("{field}.header is required when {field}.key is Header."),
        ));
    }
    Ok(())
}

/// Whether `s` is a DNS label (namespace and app names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Hashes every app API key. A key Secret must live in a namespace of the
/// app's tenant; anything else is reported on the Secret.
pub fn api_keys(index: &Index<'_>, tenancy: &Tenancy, out: &mut Output) -> Vec<ApiKey> {
    let mut keys: BTreeMap<String, (ApiKey, ObjectRef)> = BTreeMap::new();
    for secret in &index.secrets {
        if secret.type_.as_deref() != Some(API_KEY_SECRET_TYPE) {
            continue;
        }
        let (namespace, name) = names(&secret.metadata);
        let object = ObjectRef::new("Secret", namespace, name);
        let generation = secret.metadata.generation;
        let app = secret.metadata.labels.as_ref().and_then(|l| l.get(APP_LABEL)).cloned();
        let Some(tenant) = tenancy.owner(namespace) else {
            out.reject(
                &object,
                generation,
                Rejection::invalid(
                    reason::NO_TENANT,
                    format!("Namespace {namespace} belongs to no tenant, so this API key belongs to no app."),
                ),
            );
            continue;
        };
        let Some(app) = app else {
            out.reject(
                &object,
                generation,
                Rejection::invalid(reason::UNKNOWN_APP, format!("metadata.labels[{APP_LABEL}] is missing.")),
            );
            continue;
        };
        if !tenant.has_app(&app) {
            out.reject(
                &object,
                generation,
                Rejection::invalid(
                    reason::UNKNOWN_APP,
                    format!("metadata.labels[{APP_LABEL}] {app:?} is not an app of tenant {}.", tenant.name),
                ),
            );
            continue;
        }
        let Some(key) = secret_value(secret, API_KEY_FIELD).map(|k| k.trim().to_owned()).filter(|k| !k.is_empty())
        else {
            out.reject(
                &object,
                generation,
                Rejection::invalid(reason::INVALID, format!("data[{API_KEY_FIELD}] is missing or empty.")),
            );
            continue;
        };
        let sha256 = hash_api_key(&key);
        if let Some((_, first)) = keys.get(&sha256) {
            out.reject(
                &object,
                generation,
                Rejection::invalid(
                    reason::DUPLICATE_API_KEY,
                    format!("data[{API_KEY_FIELD}] is the same key as {first}; each key must be unique."),
                ),
            );
            continue;
        }
        keys.insert(sha256.clone(), (ApiKey { sha256, tenant: tenant.name.clone(), app }, object.clone()));
        out.accept(&object, generation);
    }
    keys.into_values().map(|(key, _)| key).collect()
}

/// The lower-case hex SHA-256 of an API key, as the snapshot stores it.
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
