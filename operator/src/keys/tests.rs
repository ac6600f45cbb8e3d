use std::sync::Arc;

use crds::Subscription;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::{Action, plan};

fn subscription(namespace: &str, name: &str, app: &str) -> Arc<Subscription> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": crds::API_VERSION, "kind": "Subscription",
            "metadata": { "name": name, "namespace": namespace, "uid": format!("uid-{name}") },
            "spec": { "app": app, "route": { "namespace": "shop", "name": "orders" } }
        }))
        .expect("subscription"),
    )
}

fn key(namespace: &str, name: &str, app: &str, managed: bool, owners: &[&str]) -> Arc<Secret> {
    let mut labels = json!({ "sluice.dev/app": app });
    if managed {
        labels["app.kubernetes.io/managed-by"] = json!("sluice-operator");
    }
    let owners: Vec<_> = owners
        .iter()
        .map(|o| {
            json!({ "apiVersion": crds::API_VERSION, "kind": "Subscription", "name": o, "uid": format!("uid-{o}"),
                         "controller": false, "blockOwnerDeletion": false })
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "sluice.dev/api-key",
            "metadata": { "name": name, "namespace": namespace, "labels": labels, "ownerReferences": owners },
            "data": { "api-key": "c2stdGVzdA==" }
        }))
        .expect("secret"),
    )
}

#[test]
fn an_approved_app_without_a_key_gets_one_owned_by_its_subscriptions() {
    let subs = [subscription("partner", "web-orders", "web"), subscription("partner", "web-users", "web")];
    let (actions, serving) = plan(&subs, |_| true, &[]);
    let [Action::Issue { namespace, app, owners }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!((namespace.as_str(), app.as_str()), ("partner", "web"));
    let names: Vec<&str> = owners.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["web-orders", "web-users"], "one key per app, owned by each approved subscription");
    assert!(serving.is_empty(), "no key serves yet");
}

#[test]
fn a_users_own_key_is_used_and_an_issued_one_is_kept_in_step() {
    let subs = [subscription("partner", "web-orders", "web")];
    let (actions, serving) = plan(&subs, |_| true, &[key("partner", "web-key", "web", false, &[])]);
    assert!(actions.is_empty(), "the user's key serves: {actions:?}");
    assert_eq!(serving.get(&("partner".into(), "web".into())).map(String::as_str), Some("web-key"));
    // An issued key whose owners are right: nothing to do.
    let issued = key("partner", "sluice-key-web", "web", true, &["web-orders"]);
    let (actions, _) = plan(&subs, |_| true, std::slice::from_ref(&issued));
    assert!(actions.is_empty(), "{actions:?}");
    // A second subscription approved: the owners follow.
    let more = [subscription("partner", "web-orders", "web"), subscription("partner", "web-users", "web")];
    let (actions, _) = plan(&more, |_| true, &[issued]);
    assert!(matches!(actions.as_slice(), [Action::Own { owners, .. }] if owners.len() == 2), "{actions:?}");
}

#[test]
fn a_key_with_no_approved_subscription_left_is_withdrawn_but_never_a_users() {
    let subs = [subscription("partner", "web-orders", "web")];
    let issued = key("partner", "sluice-key-web", "web", true, &["web-orders"]);
    let users = key("partner", "web-key", "web", false, &[]);
    let (actions, serving) = plan(&subs, |_| false, &[issued, users]);
    assert_eq!(actions, [Action::Withdraw { namespace: "partner".into(), name: "sluice-key-web".into() }]);
    assert!(serving.is_empty());
}

#[test]
fn keys_are_256_random_bits() {
    let (a, b) = (super::new_key().expect("key"), super::new_key().expect("key"));
    assert_ne!(a, b);
    assert!(a.starts_with("sk-") && a.len() == 3 + 43, "{a}");
}
