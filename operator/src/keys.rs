//! API keys the operator issues: once a Subscription is approved (by an
//! approver, or by the route's Auto policy), its app gets a key Secret in
//! the subscription's namespace, unless it has one already (a key Secret a
//! user made for the app is theirs, and used as it is).
//!
//! An issued key is 256 random bits (`sk-` and 43 base64url characters),
//! in a Secret of type `sluice.dev/api-key` labelled with the app and
//! `app.kubernetes.io/managed-by: sluice-operator`, owned by every approved
//! Subscription of the app in that namespace (so the cluster's garbage
//! collector removes it with the last of them even while the operator is
//! down). When no approved Subscription of the app is left (revoked,
//! rejected, deleted), the operator deletes it; deleting it by hand
//! rotates the key (a new one is issued on the next pass). The key's hash
//! reaches the snapshot like any key Secret's: the compiler reads it back
//! through the watch.
//!
//! [`plan`] is pure; [`apply`] carries a plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crds::Subscription;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use snapshot::api_keys::{API_KEY_FIELD, API_KEY_SECRET_TYPE, APP_LABEL};

/// The label that marks a Secret the operator issued.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice-operator");

/// One change to the cluster's key Secrets.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Issue a key for `app` in `namespace`, owned by these subscriptions.
    Issue { namespace: String, app: String, owners: Vec<OwnerReference> },
    /// Set the owners of an issued key (the app's approved subscriptions changed).
    Own { namespace: String, name: String, owners: Vec<OwnerReference> },
    /// Delete an issued key: its app has no approved subscription left.
    Withdraw { namespace: String, name: String },
}

/// The name of the key Secret issued for `app`.
pub fn secret_name(app: &str) -> String {
    format!("sluice-key-{app}")
}

fn managed(secret: &Secret) -> bool {
    secret.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1)
}

fn app_of(secret: &Secret) -> Option<&str> {
    secret.metadata.labels.as_ref()?.get(APP_LABEL).map(String::as_str)
}

/// What to do, given every Subscription, which of them are approved (the
/// compiler's verdict), and the key Secrets there are. Also returns, for
/// each approved subscription's `(namespace, app)`, the key Secret that
/// serves it (for its status), once there is one.
pub fn plan(
    subscriptions: &[Arc<Subscription>],
    approved: impl Fn(&Subscription) -> bool,
    secrets: &[Arc<Secret>],
) -> (Vec<Action>, BTreeMap<(String, String), String>) {
    // (namespace, app) -> owners: the approved subscriptions.
    let mut wanted: BTreeMap<(String, String), Vec<OwnerReference>> = BTreeMap::new();
    for subscription in subscriptions.iter().filter(|s| approved(s)) {
        let (Some(namespace), Some(name), Some(uid)) =
            (&subscription.metadata.namespace, &subscription.metadata.name, &subscription.metadata.uid)
        else {
            continue;
        };
        wanted.entry((namespace.clone(), subscription.spec.app.clone())).or_default().push(OwnerReference {
            api_version: crds::API_VERSION.into(),
            kind: "Subscription".into(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        });
    }
    for owners in wanted.values_mut() {
        owners.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let keys = secrets.iter().filter(|s| s.type_.as_deref() == Some(API_KEY_SECRET_TYPE));
    let mut actions = Vec::new();
    let mut serving = BTreeMap::new();
    let mut have: BTreeSet<(String, String)> = BTreeSet::new();
    for secret in keys {
        let (Some(namespace), Some(name), Some(app)) =
            (&secret.metadata.namespace, &secret.metadata.name, app_of(secret))
        else {
            continue;
        };
        let key = (namespace.clone(), app.to_owned());
        match (managed(secret), wanted.get(&key)) {
            (false, Some(_)) => {
                // The user's own key for the app: it serves; nothing to issue.
                serving.entry(key.clone()).or_insert_with(|| name.clone());
                have.insert(key);
            }
            (false, None) => {}
            (true, Some(owners)) => {
                serving.insert(key.clone(), name.clone());
                have.insert(key);
                if secret.metadata.owner_references.as_deref().unwrap_or_default() != owners.as_slice() {
                    actions.push(Action::Own {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        owners: owners.clone(),
                    });
                }
            }
            (true, None) => actions.push(Action::Withdraw { namespace: namespace.clone(), name: name.clone() }),
        }
    }
    for ((namespace, app), owners) in wanted {
        if !have.contains(&(namespace.clone(), app.clone())) {
            actions.push(Action::Issue { namespace, app, owners });
        }
    }
    (actions, serving)
}

/// A new key: `sk-` and 256 random bits from the OS, base64url.
fn new_key() -> Result<String, ring::error::Unspecified> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(format!("sk-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Carries out a plan, counting in `metrics`; failures are logged and
/// retried on the next pass.
pub async fn apply(client: &kube::Client, actions: &[Action], metrics: &crate::admin::Metrics) {
    use std::sync::atomic::Ordering::Relaxed;
    for action in actions {
        let result = match action {
            Action::Issue { namespace, app, owners } => issue(client, namespace, app, owners).await,
            Action::Own { namespace, name, owners } => {
                let patch = serde_json::json!({ "metadata": { "ownerReferences": owners } });
                Api::<Secret>::namespaced(client.clone(), namespace)
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Action::Withdraw { namespace, name } => Api::<Secret>::namespaced(client.clone(), namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(drop)
                .or_else(|e| match e {
                    kube::Error::Api(status) if status.code == 404 => Ok(()),
                    other => Err(other.to_string()),
                }),
        };
        match result {
            Ok(()) => match action {
                Action::Issue { namespace, app, .. } => {
                    metrics.keys_issued.fetch_add(1, Relaxed);
                    crate::say!("issued an API key for app {namespace}/{app}");
                }
                Action::Withdraw { namespace, name } => {
                    metrics.keys_withdrawn.fetch_add(1, Relaxed);
                    crate::say!("withdrew API key Secret {namespace}/{name}: no approved subscription left");
                }
                Action::Own { .. } => {}
            },
            Err(error) => {
                metrics.key_errors.fetch_add(1, Relaxed);
                crate::say!("API keys: {action:?}: {error} (retrying on the next pass)");
            }
        }
    }
}

async fn issue(client: &kube::Client, namespace: &str, app: &str, owners: &[OwnerReference]) -> Result<(), String> {
    let key = new_key().map_err(|_| "the OS random generator failed".to_owned())?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(app)),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [(APP_LABEL.to_owned(), app.to_owned()), (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into(),
            ),
            owner_references: Some(owners.to_vec()),
            ..ObjectMeta::default()
        },
        type_: Some(API_KEY_SECRET_TYPE.to_owned()),
        data: Some([(API_KEY_FIELD.to_owned(), ByteString(key.into_bytes()))].into()),
        ..Secret::default()
    };
    match Api::<Secret>::namespaced(client.clone(), namespace).create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // NB: never overwritten: a Secret of that name that is not a key
        // Sluice issued is someone else's.
        Err(kube::Error::Api(status)) if status.code == 409 => Err(format!(
            "Secret {namespace}/{} exists and is not a key the operator issued; rename it or label it {APP_LABEL}",
            secret_name(app)
        )),
        Err(other) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
