//! Standalone mode as a new user meets it: config loading, status,
//! readiness and the process itself, over real sockets and files.

mod support;

use support::*;

const USERS: &str = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: users }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /users } }]\n  backend: { directResponse: { status: 200, body: users } }\n";

#[tokio::test]
async fn a_misspelt_field_is_an_error_not_a_catch_all() {
    let proxy = Proxy::start(USERS);
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    assert_eq!(get(&proxy.url("/admin")).await.status, 404);
    proxy.reload(&USERS.replace("matches", "matchs")).await;
    let report = proxy.gateway.report.load();
    let reload = report.last_reload.as_ref().expect("a reload");
    assert_eq!(reload.outcome, "rejected");
    assert!(
        reload.problems.iter().any(|p| p.contains("routes.yaml: document 1: spec.matchs: unknown field")),
        "{:?}",
        reload.problems
    );
    // The last good config serves: /admin is still not routed.
    assert_eq!(get(&proxy.url("/users")).await.status, 200);
    assert_eq!(get(&proxy.url("/admin")).await.status, 404);
}
