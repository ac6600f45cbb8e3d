//! Rate limits and tenant quotas, local to one proxy, over real sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn call(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::new())).expect("request")).await
}

#[tokio::test]
async fn a_route_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let upstream = Upstream::named("ok").await;
    let yaml =
        route("limited", "/limited", &[&upstream.url()], "  rateLimit: { requests: 3, period: Minute, key: Route }\n");
    let proxy = Proxy::start(&yaml);
    for remaining in [2, 1, 0] {
        let answer = call(&proxy, "/limited", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("ratelimit-policy"), Some("\"default\";q=3;w=60"));
        let state = answer.header("ratelimit").expect("a RateLimit header");
        assert!(state.starts_with(&format!("\"default\";r={remaining};t=")), "{state}");
    }
    let refused = call(&proxy, "/limited", &[]).await;
    assert_eq!((refused.status.as_u16(), problem_type(&refused).as_str()), (429, "rate-limited"));
    let retry: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!((1..=20).contains(&retry), "one request every 20 s: {retry}");
    assert!(refused.header("ratelimit").is_some_and(|v| v.starts_with("\"default\";r=0;")));
    assert_eq!(upstream.hits(), 3, "the refused request never reached the upstream");

    // The budget is the proxy's, not the snapshot's: a reload keeps it.
    proxy.reload(&format!("{yaml}{}", route("other", "/other", &[&upstream.url()], ""))).await;
    assert_eq!(call(&proxy, "/limited", &[]).await.status, 429);
    // A changed policy starts afresh.
    proxy.reload(&yaml.replace("requests: 3", "requests: 4")).await;
    assert_eq!(call(&proxy, "/limited", &[]).await.status, 200);
}

#[tokio::test]
async fn budgets_are_kept_per_client_address_or_header_value() {
    let upstream = Upstream::named("ok").await;
    let yaml = [
        route("by-ip", "/by-ip", &[&upstream.url()], "  rateLimit: { requests: 1, period: Hour, key: ClientIp }\n"),
        route(
            "by-user",
            "/by-user",
            &[&upstream.url()],
            "  rateLimit: { requests: 1, period: Hour, key: Header, header: x-user }\n",
        ),
    ]
    .concat();
    let limits =
        sluice_proxy::Limits { trusted_proxies: vec!["127.0.0.1/32".parse().expect("cidr")], ..Default::default() };
    let proxy = Proxy::start_with(&yaml, limits, false);
    for client in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(call(&proxy, "/by-ip", &[("x-forwarded-for", client)]).await.status, 200, "{client}");
        assert_eq!(call(&proxy, "/by-ip", &[("x-forwarded-for", client)]).await.status, 429, "{client}");
    }
    for user in ["ada", "grace"] {
        assert_eq!(call(&proxy, "/by-user", &[("x-user", user)]).await.status, 200, "{user}");
        assert_eq!(call(&proxy, "/by-user", &[("x-user", user)]).await.status, 429, "{user}");
    }
}

const TENANTS: &str = "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: payments }\nspec:\n  namespaces: [payments]\n  hostnames: [pay.test]\n  apps: [{ name: console }]\n  quotas: { requestsPerMinute: QUOTA }\n---\napiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: shop }\nspec:\n  namespaces: [shop]\n  apps: [{ name: web }]\n---\napiVersion: v1\nkind: Secret\nmetadata: { name: console-key, namespace: payments, labels: { sluice.dev/app: console } }\ntype: sluice.dev/api-key\nstringData: { api-key: sk-console }\n---\napiVersion: v1\nkind: Secret\nmetadata: { name: web-key, namespace: shop, labels: { sluice.dev/app: web } }\ntype: sluice.dev/api-key\nstringData: { api-key: sk-web }\n---\n";

fn keyed_route(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: {name}, namespace: payments }}\nspec:\n  hosts: [pay.test]\n  matches: [{{ path: {{ type: PathPrefix, value: /{name} }} }}]\n  auth: {{ mode: ApiKey }}\n{extra}  backend: {{ upstreams: [{{ url: {upstream} }}] }}\n---\n"
    )
}

#[tokio::test]
async fn a_plan_replaces_the_route_limit_for_its_app_and_tenant_quotas_span_routes() {
    let upstream = Upstream::named("ok").await;
    let plan = "apiVersion: sluice.dev/v1alpha1\nkind: Subscription\nmetadata: { name: web-charges, namespace: shop }\nspec:\n  app: web\n  route: { namespace: payments, name: charges }\n  plan: { name: gold, rateLimit: { requests: 3, period: Hour } }\n  approval: { state: Approved }\n---\n";
    let yaml = [
        TENANTS.replace("QUOTA", "100"),
        keyed_route("charges", &upstream.url(), "  rateLimit: { requests: 1, period: Hour }\n"),
        plan.to_owned(),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    let as_app = |key: &'static str| [("host", "pay.test"), ("x-api-key", key)];
    // The owner's console: the route's 1 an hour.
    assert_eq!(call(&proxy, "/charges", &as_app("sk-console")).await.status, 200);
    assert_eq!(call(&proxy, "/charges", &as_app("sk-console")).await.status, 429);
    // The web app's gold plan: 3 an hour, its own budget.
    for _ in 0..3 {
        let answer = call(&proxy, "/charges", &as_app("sk-web")).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("ratelimit-policy"), Some("\"default\";q=3;w=3600"));
    }
    assert_eq!(call(&proxy, "/charges", &as_app("sk-web")).await.status, 429);

    // The tenant's quota counts every route of the tenant together.
    let yaml = [
        TENANTS.replace("QUOTA", "3"),
        keyed_route("alpha", &upstream.url(), ""),
        keyed_route("beta", &upstream.url(), ""),
    ]
    .concat();
    proxy.reload(&yaml).await;
    for path in ["/alpha", "/beta", "/alpha"] {
        assert_eq!(call(&proxy, path, &as_app("sk-console")).await.status, 200, "{path}");
    }
    let over = call(&proxy, "/beta", &as_app("sk-console")).await;
    assert_eq!((over.status.as_u16(), problem_type(&over).as_str()), (429, "quota-exceeded"));
    assert!(over.header("retry-after").is_some());
}
