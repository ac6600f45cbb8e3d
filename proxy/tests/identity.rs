//! Who is calling and whether they may: API keys, subscriptions with
//! approval, Private and Draft routes, over real sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

const CONSOLE_KEY: &str = "sk-test-payments-console-1";
const WEB_KEY: &str = "sk-test-shop-web-1";
const MOBILE_KEY: &str = "sk-test-shop-mobile-1";
const BATCH_KEY: &str = "sk-test-shop-batch-1";

fn key_secret(namespace: &str, app: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {app}-key\n  namespace: {namespace}\n  labels: {{ sluice.dev/app: {app} }}\ntype: sluice.dev/api-key\nstringData:\n  api-key: {key}\n---\n"
    )
}

fn subscription(app: &str, route: &str, state: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Subscription\nmetadata:\n  name: {app}-{route}\n  namespace: shop\nspec:\n  app: {app}\n  route: {{ namespace: payments, name: {route} }}\n  approval: {{ state: {state} }}\n---\n"
    )
}

fn api_route(name: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\n  namespace: payments\nspec:\n  hosts: [pay.test]\n  matches:\n    - path: {{ type: PathPrefix, value: {path} }}\n  auth: {{ mode: ApiKey{auth} }}\n{extra}  backend:\n    upstreams:\n      - url: {upstream}\n---\n",
        auth = if name == "open" { ", apiKey: { queryParam: key }" } else { "" },
    )
}

/// Two tenants: payments owns the routes (its app: console); shop has
/// web (approved for /charges), mobile (pending) and batch (nothing).
fn platform(upstream: &str, mobile_state: &str) -> String {
    let tenants = "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: payments }\nspec:\n  namespaces: [payments]\n  hostnames: [pay.test]\n  apps: [{ name: console }]\n---\napiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: shop }\nspec:\n  namespaces: [shop]\n  apps: [{ name: web }, { name: mobile }, { name: batch }]\n---\n";
    [
        tenants.to_owned(),
        api_route("charges", "/charges", upstream, "  subscription: { required: true, approval: Manual }\n"),
        api_route("ledger", "/ledger", upstream, "  visibility: Private\n"),
        api_route("preview", "/preview", upstream, "  lifecycle: { state: Draft }\n"),
        api_route("open", "/open", upstream, ""),
        key_secret("payments", "console", CONSOLE_KEY),
        key_secret("shop", "web", WEB_KEY),
        key_secret("shop", "mobile", MOBILE_KEY),
        key_secret("shop", "batch", BATCH_KEY),
        subscription("web", "charges", "Approved"),
        subscription("mobile", "charges", mobile_state),
    ]
    .concat()
}

async fn call(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(proxy.url(path)).header("host", "pay.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::new())).expect("request")).await
}

async fn start() -> (Proxy, Upstream) {
    let upstream = Upstream::named("served").await;
    let proxy = Proxy::start(&platform(&upstream.url(), "Pending"));
    let status = get(&proxy.admin_url("/status")).await.json();
    let bad: Vec<&serde_json::Value> = status["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter(|s| s["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["status"] == "False")))
        .collect();
    assert!(bad.is_empty(), "every object is accepted: {bad:?}");
    (proxy, upstream)
}

#[tokio::test]
async fn api_keys_say_who_calls_and_never_reach_the_upstream() {
    let (proxy, upstream) = start().await;
    sluice_proxy::calllog::capture();

    // No key, an unknown key, a key presented wrongly or twice: 401.
    let none = call(&proxy, "/charges", &[]).await;
    assert_eq!((none.status.as_u16(), problem_type(&none).as_str()), (401, "missing-credentials"));
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"sluice\""));
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("x-api-key", "sk-nobody")], "invalid-api-key"),
        (&[("authorization", "Bearer sk-nobody")], "invalid-api-key"),
        (&[("authorization", "Basic d2ViOmtleQ==")], "invalid-authorization"),
        (&[("authorization", "Bearer a b")], "invalid-authorization"),
        (&[("x-api-key", WEB_KEY), ("authorization", &format!("Bearer {WEB_KEY}"))], "ambiguous-credentials"),
    ];
    for (headers, kind) in cases {
        let answer = call(&proxy, "/charges", headers).await;
        assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (401, kind), "{headers:?}");
        assert!(answer.header("x-request-id").is_some());
    }
    let in_query = call(&proxy, &format!("/charges?api_key={WEB_KEY}"), &[]).await;
    assert_eq!((in_query.status.as_u16(), problem_type(&in_query).as_str()), (401, "api-key-in-query"));
    assert_eq!(upstream.hits(), 0, "nothing unauthenticated reached the upstream");

    // A known key, in the header or as a bearer token: the upstream learns
    // the caller from the gateway, and never sees the key.
    for headers in [[("x-api-key", WEB_KEY)], [("authorization", &format!("Bearer {WEB_KEY}") as &str)]] {
        let answer = call(&proxy, "/charges/1", &headers).await;
        assert_eq!(answer.status, 200, "{headers:?}: {}", answer.text());
        let seen = upstream.last();
        let h = |n: &str| seen.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(h("x-sluice-tenant").as_deref(), Some("shop"));
        assert_eq!(h("x-sluice-app").as_deref(), Some("web"));
        assert_eq!(h("x-sluice-auth").as_deref(), Some("api-key"));
        assert_eq!((h("x-api-key"), h("authorization")), (None, None));
    }
    // A key in the query, where the route allows it: taken out of the URL.
    let answer = call(&proxy, &format!("/open/x?page=2&key={WEB_KEY}"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.last().uri, "/open/x?page=2");

    // The call log has the caller (tenant, app, how, which key by digest
    // prefix, which subscription), never a key.
    let line = call_log_line_with(&["\"path\":\"/open/x\""]).await;
    for field in ["\"app\":\"web\"", "\"caller_tenant\":\"shop\"", "\"auth\":\"api-key\"", "\"credential\":\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let line = call_log_line_with(&["\"path\":\"/charges/1\"", "\"status\":200"]).await;
    assert!(line.contains("\"subscription\":\"shop/web-charges\""), "{line}");
    let refused = call_log_line_with(&["\"error\":\"ambiguous-credentials\""]).await;
    assert!(!refused.contains("\"caller_tenant\""), "{refused}");
    // Metrics: requests by caller, refusals by problem type.
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    for series in [
        r#"sluice_caller_requests_total{route="payments/charges",tenant="shop",app="web",status_class="2xx"} 2"#,
        r#"sluice_auth_refused_total{route="payments/charges",reason="missing-credentials"} 1"#,
        r#"sluice_auth_refused_total{route="payments/charges",reason="invalid-api-key"} 2"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    promtool_check(&metrics);
    let captured = String::from_utf8_lossy(&sluice_proxy::calllog::capture()).into_owned();
    for key in [WEB_KEY, CONSOLE_KEY, "sk-nobody"] {
        assert!(!captured.contains(key), "a key in the call log: {captured}");
    }
}

#[tokio::test]
async fn subscriptions_private_and_draft_routes_decide_who_may_call() {
    let (proxy, upstream) = start().await;
    let key = |k: &'static str| [("x-api-key", k)];
    // (path, key, status, problem type)
    let table: [(&str, &str, u16, &str); 11] = [
        ("/charges", WEB_KEY, 200, ""),
        ("/charges", CONSOLE_KEY, 200, ""), // the owner's own app
        ("/charges", MOBILE_KEY, 403, "subscription-pending"),
        ("/charges", BATCH_KEY, 403, "subscription-required"),
        ("/ledger", CONSOLE_KEY, 200, ""),
        ("/ledger", WEB_KEY, 403, "forbidden"), // Private: another tenant
        ("/preview", CONSOLE_KEY, 200, ""),
        ("/preview", WEB_KEY, 403, "forbidden"), // Draft: another tenant
        ("/preview", BATCH_KEY, 403, "forbidden"),
        ("/open", BATCH_KEY, 200, ""), // no subscription needed
        ("/open", MOBILE_KEY, 200, ""),
    ];
    for (path, k, status, kind) in table {
        let hits = upstream.hits();
        let answer = call(&proxy, path, &key(k)).await;
        assert_eq!(answer.status.as_u16(), status, "{path} with {k}: {}", answer.text());
        if status == 200 {
            assert_eq!(upstream.hits(), hits + 1);
        } else {
            assert_eq!(problem_type(&answer), kind, "{path} with {k}");
            assert_eq!(upstream.hits(), hits, "{path} with {k} reached the upstream");
        }
    }

    // The subscription lifecycle, by editing the folder: Pending ->
    // Approved -> Revoked.
    proxy.reload(&platform(&upstream.url(), "Approved")).await;
    assert_eq!(call(&proxy, "/charges", &key(MOBILE_KEY)).await.status, 200);
    proxy.reload(&platform(&upstream.url(), "Revoked")).await;
    let revoked = call(&proxy, "/charges", &key(MOBILE_KEY)).await;
    assert_eq!((revoked.status.as_u16(), problem_type(&revoked).as_str()), (403, "subscription-required"));

    // A route that goes (with its subscriptions) takes its caller series
    // with it.
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains(r#"sluice_caller_requests_total{route="payments/charges""#), "{metrics}");
    let without_charges: String = platform(&upstream.url(), "Pending")
        .split("---\n")
        .filter(|doc| !doc.contains("charges"))
        .collect::<Vec<_>>()
        .join("---\n");
    proxy.reload(&without_charges).await;
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(!metrics.contains(r#"route="payments/charges""#), "{metrics}");
}

/// Tenant isolation over every combination of caller tenant, route
/// visibility, lifecycle, subscription policy and the caller's
/// subscription state: no identity of another tenant reaches a Private or
/// Draft route, and a required subscription must be approved.
#[tokio::test]
async fn every_combination_of_caller_route_and_subscription_is_decided_right() {
    let upstream = Upstream::named("served").await;
    let tenants = "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: payments }\nspec:\n  namespaces: [payments]\n  hostnames: [pay.test]\n  apps: [{ name: console }]\n---\napiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: shop }\nspec:\n  namespaces: [shop]\n  apps: [{ name: web }]\n---\n";
    let mut yaml =
        [tenants.to_owned(), key_secret("payments", "console", CONSOLE_KEY), key_secret("shop", "web", WEB_KEY)]
            .concat();
    let mut cases = Vec::new();
    for visibility in ["Private", "Tenant", "Public"] {
        for lifecycle in ["Draft", "Published"] {
            for required in [true, false] {
                for state in ["None", "Pending", "Approved", "Rejected", "Revoked"] {
                    let name = format!("{}-{}-{}-{}", visibility, lifecycle, required, state).to_ascii_lowercase();
                    yaml.push_str(&format!(
                        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: {name}, namespace: payments }}\nspec:\n  hosts: [pay.test]\n  matches: [{{ path: {{ type: Exact, value: /{name} }} }}]\n  visibility: {visibility}\n  lifecycle: {{ state: {lifecycle} }}\n  auth: {{ mode: ApiKey }}\n  subscription: {{ required: {required}, approval: Manual }}\n  backend: {{ upstreams: [{{ url: {} }}] }}\n---\n",
                        upstream.url()
                    ));
                    if state != "None" {
                        yaml.push_str(&format!(
                            "apiVersion: sluice.dev/v1alpha1\nkind: Subscription\nmetadata: {{ name: web-{name}, namespace: shop }}\nspec:\n  app: web\n  route: {{ namespace: payments, name: {name} }}\n  approval: {{ state: {state} }}\n---\n"
                        ));
                    }
                    cases.push((name, visibility, lifecycle, required, state));
                }
            }
        }
    }
    let proxy = Proxy::start(&yaml);
    let mut checked = 0;
    for (name, visibility, lifecycle, required, state) in cases {
        let path = format!("/{name}");
        // The owning tenant's own app: always.
        let own = call(&proxy, &path, &[("x-api-key", CONSOLE_KEY)]).await;
        assert_eq!(own.status, 200, "{name} for the owner: {}", own.text());
        // Another tenant's app.
        let expected: (u16, &str) = if visibility == "Private" || lifecycle == "Draft" {
            (403, "forbidden")
        } else if !required || state == "Approved" {
            (200, "")
        } else if state == "Pending" {
            (403, "subscription-pending")
        } else {
            (403, "subscription-required")
        };
        let hits = upstream.hits();
        let other = call(&proxy, &path, &[("x-api-key", WEB_KEY)]).await;
        let kind = if other.status == 200 { String::new() } else { problem_type(&other) };
        assert_eq!((other.status.as_u16(), kind.as_str()), expected, "{name} for another tenant's app");
        assert_eq!(upstream.hits(), hits + usize::from(expected.0 == 200), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 60);
}
