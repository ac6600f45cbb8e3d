//! Status written back to the objects: what translate concluded, as
//! Kubernetes conditions, through server-side apply with one field manager.
//!
//! [`desired`] is pure: from translate's [`ObjectStatus`], the object's
//! current status and the clock, the status the object should have. A
//! condition keeps its `lastTransitionTime` while its status stays the
//! same, so an unchanged verdict gives an equal status, and [`write_all`]
//! sends nothing for it: a status is written once, not on every compile.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::object::HasStatus;
use serde_json::{Value, json};
use snapshot::status::{ConditionStatus, ObjectStatus, reason};
use snapshot::{Translation, status::ObjectRef};

use crate::watch::Stores;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// The one field manager the operator writes with.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// A hint added to "not found" messages: the operator reads only some
/// Secrets and ConfigMaps.
const VISIBILITY_HINT: &str = " (the operator reads only Secrets of type sluice.dev/api-key labelled sluice.dev/app, \
Secrets of type kubernetes.io/tls, and Secrets and ConfigMaps labelled sluice.dev/config)";

/// What the object's status should be, or `None` when it already is.
/// `current` is the object's status as read (its conditions and fields).
pub fn desired(
    verdict: &ObjectStatus,
    generation: Option<i64>,
    current: &Value,
    extra: Option<(&str, Value)>,
    now: jiff::Timestamp,
) -> Option<Value> {
    let existing: Vec<Condition> = serde_json::from_value(current["conditions"].clone()).unwrap_or_default();
    let conditions: Vec<Condition> = verdict
        .conditions
        .iter()
        .map(|c| {
            let status = match c.status {
                ConditionStatus::True => "True",
                ConditionStatus::False => "False",
            };
            let mut message = c.message.clone();
            if matches!(c.reason.as_str(), reason::SECRET_NOT_FOUND | reason::CONFIG_MAP_NOT_FOUND) {
                message.push_str(VISIBILITY_HINT);
            }
            let before = existing.iter().find(|e| e.type_ == c.kind);
            let since = match before {
                Some(before) if before.status == status => before.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: c.kind.clone(),
                status: status.to_owned(),
                reason: c.reason.clone(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect();
    let mut status = json!({ "conditions": conditions });
    match verdict.object.kind.as_str() {
        "Subscription" => status["phase"] = json!(verdict.phase),
        "AiProvider" => status["baseUrl"] = json!(verdict.base_url),
        "ApiRoute" => status["apps"] = json!(verdict.apps),
        _ => {}
    }
    if let Some((field, value)) = extra {
        status[field] = value;
    }
    if let Value::Object(fields) = &mut status {
        fields.retain(|_, v| !v.is_null());
    }
    (!same(&status, current)).then_some(status)
}

/// The status fields besides `conditions` the operator writes.
const OWNED: [&str; 4] = ["phase", "baseUrl", "apps", "keySecretName"];

/// Whether `current` already says what `desired` says (fields the operator
/// does not own are ignored).
fn same(desired: &Value, current: &Value) -> bool {
    let Value::Object(fields) = desired else { return false };
    fields.iter().all(|(key, value)| current.get(key) == Some(value))
        && OWNED.iter().all(|k| fields.contains_key(*k) || current.get(*k).is_none())
}

/// Writes every status that differs from what the objects hold. Returns how
/// many were written; failures are logged and retried on the next pass.
/// `keys` names, by `(namespace, app)`, the key Secret serving approved
/// subscriptions (see [`crate::keys::plan`]).
pub async fn write_all(
    client: &kube::Client,
    stores: &Stores,
    translation: &Translation,
    keys: &std::collections::BTreeMap<(String, String), String>,
    metrics: &crate::admin::Metrics,
    events: &Recorder,
) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let now = jiff::Timestamp::now();
    let mut written = 0;
    for verdict in &translation.statuses {
        let ObjectRef { kind, namespace, name } = &verdict.object;
        let mut extra = None;
        let (resource, (generation, uid, current)) = match kind.as_str() {
            "ApiRoute" => (ApiResource::erase::<crds::ApiRoute>(&()), current(stores.route(namespace, name))),
            "Tenant" => (ApiResource::erase::<crds::Tenant>(&()), current(stores.tenant(name))),
            "Subscription" => {
                let subscription = stores.subscription(namespace, name);
                if verdict.phase == Some(crds::ApprovalState::Approved)
                    && let Some(sub) = &subscription
                {
                    let secret = keys.get(&(namespace.clone(), sub.spec.app.clone()));
                    extra = secret.map(|s| ("keySecretName", json!(s)));
                }
                (ApiResource::erase::<crds::Subscription>(&()), current(subscription))
            }
            "AiProvider" => (ApiResource::erase::<crds::AiProvider>(&()), current(stores.provider(namespace, name))),
            // Secrets, Services and Ingresses have no status of Sluice's.
            _ => continue,
        };
        let Some(current) = current else { continue };
        let Some(status) = desired(verdict, generation, &current, extra, now) else { continue };
        let turned_false = turned_false(verdict, &current);
        match patch(client, &resource, &verdict.object, status).await {
            Ok(()) => {
                written += 1;
                metrics.status_writes.fetch_add(1, Relaxed);
                for condition in turned_false {
                    warn(events, verdict, uid.clone(), condition).await;
                }
            }
            Err(error) => {
                metrics.status_write_errors.fetch_add(1, Relaxed);
                crate::say!("status of {}: {error} (retrying on the next pass)", verdict.object);
            }
        }
    }
    written
}

/// The generation, uid and status of a cached object (`None`: not in the
/// cache, so not ours to write yet). NB: only the status is serialized, not
/// the whole object: this runs for every object on every pass.
fn current<K>(object: Option<Arc<K>>) -> (Option<i64>, Option<String>, Option<Value>)
where
    K: kube::Resource + HasStatus,
    K::Status: serde::Serialize,
{
    match object {
        Some(object) => {
            let status = object.status().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(json!({}));
            (object.meta().generation, object.meta().uid.clone(), Some(status))
        }
        None => (None, None, None),
    }
}

/// The verdict's False conditions that were not False before: each is a
/// Warning event on the object (`kubectl describe` shows them).
pub fn turned_false<'a>(verdict: &'a ObjectStatus, current: &Value) -> Vec<&'a snapshot::status::StatusCondition> {
    let before: Vec<Condition> = serde_json::from_value(current["conditions"].clone()).unwrap_or_default();
    verdict
        .conditions
        .iter()
        .filter(|c| c.is_false())
        .filter(|c| !before.iter().any(|b| b.type_ == c.kind && b.status == "False" && b.reason == c.reason))
        .collect()
}

/// Publishes a Warning event; a failure is logged (events are best effort).
async fn warn(
    events: &Recorder,
    verdict: &ObjectStatus,
    uid: Option<String>,
    condition: &snapshot::status::StatusCondition,
) {
    let object = &verdict.object;
    let reference = ObjectReference {
        api_version: Some(crds::API_VERSION.to_owned()),
        kind: Some(object.kind.clone()),
        name: Some(object.name.clone()),
        namespace: (!object.namespace.is_empty()).then(|| object.namespace.clone()),
        uid,
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: condition.reason.clone(),
        note: Some(condition.message.chars().take(1000).collect()),
        action: "Compile".to_owned(),
        secondary: None,
    };
    if let Err(error) = events.publish(&event, &reference).await {
        crate::say!("event on {object}: {error}");
    }
}

async fn patch(
    client: &kube::Client,
    resource: &ApiResource,
    object: &ObjectRef,
    status: Value,
) -> Result<(), kube::Error> {
    let body = json!({ "apiVersion": crds::API_VERSION, "kind": object.kind, "status": status });
    let api: Api<DynamicObject> = match object.namespace.as_str() {
        "" => Api::all_with(client.clone(), resource),
        namespace => Api::namespaced_with(client.clone(), namespace, resource),
    };
    api.patch_status(&object.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
