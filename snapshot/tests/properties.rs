//! Properties of `translate` on generated inputs: it never panics, and the
//! order of the inputs never changes a byte of the result.

use proptest::prelude::*;
use serde_json::{Value, json};
use snapshot::{Inputs, translate};

const NAMESPACES: &[&str] = &["team-a", "team-b", "shared", "default"];
const HOSTS: &[&str] = &["api.a.test", "*.a.test", "x.a.test", "api.b.test", "*.test", "free.test", "BAD_host", ""];
const PATHS: &[&str] = &["/", "/v1", "/v1/", "/v1/users", "v1", "/(a|b", "/items/[0-9]+"];
const SERVICES: &[&str] = &["web", "api", "missing"];

fn pick<'a>(pool: &[&'a str], i: usize) -> &'a str {
    pool[i % pool.len()]
}

fn tenant(i: usize, ns: Vec<usize>, hosts: Vec<usize>, apps: Vec<usize>, created: Option<u32>) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Tenant",
        "metadata": { "name": format!("tenant-{i}"), "creationTimestamp": created.map(ts) },
        "spec": {
            "namespaces": ns.iter().map(|n| pick(NAMESPACES, *n)).collect::<Vec<_>>(),
            "hostnames": hosts.iter().map(|h| pick(HOSTS, *h)).collect::<Vec<_>>(),
            "apps": apps.iter().map(|a| json!({ "name": format!("app-{a}") })).collect::<Vec<_>>(),
        }
    })
}

fn ts(seconds: u32) -> String {
    format!("2026-01-01T00:{:02}:{:02}Z", (seconds / 60) % 60, seconds % 60)
}

#[derive(Debug, Clone)]
struct RouteParams {
    ns: usize,
    hosts: Vec<usize>,
    path: usize,
    path_kind: usize,
    method: Option<usize>,
    backend: usize,
    lifecycle: usize,
    auth: usize,
    required: bool,
    auto: bool,
    created: Option<u32>,
}

fn route(i: usize, p: &RouteParams) -> Value {
    let backend = match p.backend % 5 {
        0 => json!({ "services": [{ "name": pick(SERVICES, p.path), "port": 80 }] }),
        1 => json!({ "upstreams": [{ "url": "https://up.example.com/base", "weight": 3 }] }),
        2 => json!({ "directResponse": { "status": 200, "body": "ok" } }),
        3 => json!({ "ai": { "targets": [{ "provider": "openai", "model": "gpt" }] } }),
        _ => json!({ "directResponse": { "status": 200 }, "upstreams": [{ "url": "http://x" }] }),
    };
    let lifecycle = match p.lifecycle % 5 {
        0 | 1 => json!({ "state": "Published" }),
        2 => {
            json!({ "state": "Deprecated", "deprecatedSince": "2026-01-01T00:00:00Z", "sunset": "2026-12-31T00:00:00Z" })
        }
        3 => json!({ "state": "Retired" }),
        _ => json!({ "state": "Draft" }),
    };
    let methods: Vec<&str> = p.method.map(|m| ["GET", "POST", "PUT"][m % 3]).into_iter().collect();
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ApiRoute",
        "metadata": { "name": format!("route-{i}"), "namespace": pick(NAMESPACES, p.ns), "creationTimestamp": p.created.map(ts) },
        "spec": {
            "hosts": p.hosts.iter().map(|h| pick(HOSTS, *h)).collect::<Vec<_>>(),
            "matches": [{ "path": { "type": (["PathPrefix", "Exact", "RegularExpression"][p.path_kind % 3]), "value": pick(PATHS, p.path) }, "methods": methods }],
            "lifecycle": lifecycle,
            "auth": { "mode": (["None", "ApiKey", "Jwt", "ApiKeyOrJwt"][p.auth % 4]), "jwt": if p.auth % 4 == 3 { json!({ "issuer": "https://idp", "jwksUri": "https://idp/jwks" }) } else { Value::Null } },
            "subscription": { "required": p.required, "approval": if p.auto { "Auto" } else { "Manual" } },
            "backend": backend,
        }
    })
}

fn route_params() -> impl Strategy<Value = RouteParams> {
    (
        (0..4usize, prop::collection::vec(0..8usize, 0..3), 0..7usize, 0..3usize, prop::option::of(0..3usize)),
        (0..5usize, 0..5usize, 0..4usize, any::<bool>(), any::<bool>(), prop::option::of(0..5u32)),
    )
        .prop_map(|((ns, hosts, path, path_kind, method), (backend, lifecycle, auth, required, auto, created))| {
            RouteParams { ns, hosts, path, path_kind, method, backend, lifecycle, auth, required, auto, created }
        })
}

fn fixed_objects() -> Vec<Value> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        out.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": ns },
            "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
        }));
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-1", "namespace": ns, "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": [{ "addresses": ["10.0.0.1"] }, { "addresses": ["10.0.0.2"], "conditions": { "ready": false } }]
        }));
        out.push(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "AiProvider",
            "metadata": { "name": "openai", "namespace": ns },
            "spec": { "type": "openai", "credentialSecretRef": { "name": "openai" }, "models": [{ "name": "gpt-4o", "alias": "gpt" }] }
        }));
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "openai", "namespace": ns },
            "stringData": { "api-key": "sk-test" }
        }));
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "sluice.dev/api-key",
            "metadata": { "name": "key-app-0", "namespace": ns, "labels": { "sluice.dev/app": "app-0" } },
            "stringData": { "api-key": format!("key-{ns}") }
        }));
    }
    out
}

fn subscription(i: usize, ns: usize, app: usize, route: usize, state: usize) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Subscription",
        "metadata": { "name": format!("sub-{i}"), "namespace": pick(NAMESPACES, ns) },
        "spec": {
            "app": format!("app-{app}"),
            "route": { "namespace": pick(NAMESPACES, route / 7), "name": format!("route-{}", route % 7) },
            "approval": { "state": (["Pending", "Approved", "Rejected", "Revoked"][state % 4]), "decidedBy": "alice" }
        }
    })
}

fn build(objects: &[Value]) -> Inputs {
    let text = objects.iter().map(|o| serde_yaml::to_string(o).expect("yaml")).collect::<Vec<_>>().join("---\n");
    let mut inputs = Inputs::default();
    inputs.load_yaml("generated", &text).expect("generated objects parse");
    inputs
}

/// A deterministic shuffle driven by the generated seed.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = (*seed >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

fn inputs_strategy() -> impl Strategy<Value = Vec<Value>> {
    let tenants = prop::collection::vec(
        (
            prop::collection::vec(0..4usize, 0..3),
            prop::collection::vec(0..8usize, 0..3),
            prop::collection::vec(0..3usize, 0..3),
            prop::option::of(0..5u32),
        ),
        0..4,
    );
    let routes = prop::collection::vec(route_params(), 0..8);
    let subs = prop::collection::vec((0..4usize, 0..4usize, 0..28usize, 0..4usize), 0..6);
    (tenants, routes, subs).prop_map(|(tenants, routes, subs)| {
        let mut objects = fixed_objects();
        objects.extend(
            tenants.into_iter().enumerate().map(|(i, (ns, hosts, apps, created))| tenant(i, ns, hosts, apps, created)),
        );
        objects.extend(routes.iter().enumerate().map(|(i, p)| route(i, p)));
        objects.extend(subs.into_iter().enumerate().map(|(i, (ns, app, r, s))| subscription(i, ns, app, r, s)));
        objects
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn translate_is_total_and_order_independent(objects in inputs_strategy(), seed in any::<u64>()) {
        let first = translate(&build(&objects));

        let mut shuffled = build(&objects);
        let mut seed = seed;
        shuffle(&mut shuffled.tenants, &mut seed);
        shuffle(&mut shuffled.routes, &mut seed);
        shuffle(&mut shuffled.subscriptions, &mut seed);
        shuffle(&mut shuffled.providers, &mut seed);
        shuffle(&mut shuffled.services, &mut seed);
        shuffle(&mut shuffled.endpoint_slices, &mut seed);
        shuffle(&mut shuffled.secrets, &mut seed);
        let second = translate(&shuffled);

        prop_assert_eq!(
            serde_json::to_string(&first.snapshot).expect("json"),
            serde_json::to_string(&second.snapshot).expect("json")
        );
        prop_assert_eq!(&first.statuses, &second.statuses);
        prop_assert_eq!(&first.snapshot.version, &snapshot::content_version(&first.snapshot));

        // Every route object is either served or says why not.
        for status in &first.statuses {
            let served = first.snapshot.routes.iter().any(|r| r.source == status.object);
            if status.object.kind == "ApiRoute" {
                let accepted = status.condition("Accepted").map(|c| !c.is_false()).unwrap_or(false);
                let resolved = status.condition("ResolvedRefs").map(|c| !c.is_false()).unwrap_or(false);
                let openapi_only = status.condition("ResolvedRefs").is_some_and(|c| c.reason == "ConfigMapNotFound");
                prop_assert_eq!(served, accepted && (resolved || openapi_only), "{:?}", status);
            }
        }
        // No API key ever appears in the snapshot, only hashes.
        let json = serde_json::to_string(&first.snapshot).expect("json");
        for ns in NAMESPACES {
            let key = format!("key-{ns}");
            prop_assert!(!json.contains(&key));
        }
    }
}
