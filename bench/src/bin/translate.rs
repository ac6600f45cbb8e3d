//! Times `snapshot::translate` at scale: N routes across 100 tenants, each
//! route backed by its own Service with 5 ready endpoints (10,000 routes ->
//! 50,000 endpoints), plus API keys and subscriptions.
//!
//! Run: `cargo run --release -p bench --bin translate`
//! Target (issue 2): under 200 ms for 10,000 routes, linear from 1,000.

use std::time::{Duration, Instant};

// The operator and proxy binaries use mimalloc; measure what they run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::{Value, json};
use snapshot::{Inputs, translate};

const TENANTS: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 5;

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(v) => v,
        Err(err) => panic!("bench fixture does not fit its type: {err}"),
    }
}

fn inputs(routes: usize) -> Inputs {
    let mut inputs = Inputs::default();
    for t in 0..TENANTS {
        inputs.tenants.push(typed(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Tenant",
            "metadata": { "name": format!("tenant-{t}") },
            "spec": {
                "namespaces": [format!("ns-{t}")],
                "hostnames": [format!("*.t{t}.example.com")],
                "apps": (0..5).map(|a| json!({ "name": format!("app-{a}") })).collect::<Vec<_>>(),
            }
        })));
        for a in 0..5 {
            inputs.secrets.push(typed(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "sluice.dev/api-key",
                "metadata": { "name": format!("key-{a}"), "namespace": format!("ns-{t}"), "labels": { "sluice.dev/app": format!("app-{a}") } },
                "stringData": { "api-key": format!("sk-{t}-{a}") }
            })));
        }
    }
    for r in 0..routes {
        let t = r % TENANTS;
        let ns = format!("ns-{t}");
        let svc = format!("svc-{r}");
        inputs.services.push(typed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": svc, "namespace": ns },
            "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
        })));
        inputs.endpoint_slices.push(typed(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("{svc}-1"), "namespace": ns, "labels": { "kubernetes.io/service-name": svc } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": (0..ENDPOINTS_PER_SERVICE).map(|e| json!({ "addresses": [format!("10.{}.{}.{}", t, (r / 250) % 250, e + 1)] })).collect::<Vec<_>>(),
        })));
        inputs.routes.push(typed(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": { "name": format!("route-{r}"), "namespace": ns },
            "spec": {
                "hosts": [format!("api.t{t}.example.com")],
                "matches": [{ "path": { "type": "PathPrefix", "value": format!("/r{r}") }, "methods": ["GET", "POST"] }],
                "auth": { "mode": "ApiKey" },
                "subscription": { "required": true },
                "backend": { "services": [{ "name": svc, "port": 80 }] },
                "retries": { "attempts": 2 },
                "rateLimit": { "requests": 100 },
            }
        })));
        if r % 5 == 0 {
            let other = (t + 1) % TENANTS;
            inputs.subscriptions.push(typed(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Subscription",
                "metadata": { "name": format!("sub-{r}"), "namespace": format!("ns-{other}") },
                "spec": { "app": "app-0", "route": { "namespace": ns, "name": format!("route-{r}") },
                          "approval": { "state": "Approved", "decidedBy": "bench" } }
            })));
        }
    }
    inputs
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    println!("{:>8} {:>10} {:>10} {:>12} {:>12}", "routes", "endpoints", "median ms", "µs / route", "snapshot MB");
    let mut per_route = Vec::new();
    for routes in [1_000, 2_500, 5_000, 10_000] {
        let inputs = inputs(routes);
        let mut samples = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let start = Instant::now();
            let translation = translate(&inputs);
            samples.push(start.elapsed());
            last = Some(translation);
        }
        let Some(translation) = last else { unreachable!("five runs happened") };
        let served = translation.snapshot.routes.len();
        assert_eq!(served, routes, "every generated route must compile; problems: {:?}", translation.problems().next());
        let endpoints: usize = translation
            .snapshot
            .routes
            .iter()
            .map(|r| match &r.backend {
                snapshot::Backend::Upstreams { groups } => groups.iter().map(|g| g.endpoints.len()).sum(),
                _ => 0,
            })
            .sum();
        let size = serde_json::to_vec(&translation.snapshot).map(|v| v.len()).unwrap_or(0);
        let t = median(samples);
        let us = t.as_secs_f64() * 1e6 / routes as f64;
        per_route.push(us);
        println!("{routes:>8} {endpoints:>10} {:>10.1} {us:>12.2} {:>12.1}", t.as_secs_f64() * 1e3, size as f64 / 1e6);
    }
    let inputs = inputs(10_000);
    let translation = translate(&inputs);
    let start = Instant::now();
    let version = snapshot::content_version(&translation.snapshot);
    println!(
        "of which hashing the 10,000-route snapshot (version {version}): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let growth = per_route[per_route.len() - 1] / per_route[0];
    println!("per-route cost at 10,000 vs 1,000 routes: {growth:.2}x (1.00x = perfectly linear)");
}
