//! The waterfall end to end: a proxy on 127.0.0.1, real upstreams, real
//! HTTP clients. One scenario per test.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

fn ok(body: &'static str) -> http::Response<Full<Bytes>> {
    http::Response::new(Full::new(Bytes::from(body)))
}

fn status(code: u16) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(format!("status {code}"))));
    *r.status_mut() = StatusCode::from_u16(code).expect("status");
    r
}

const DIRECT: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: hello }
spec:
  matches:
    - path: { type: Exact, value: /hello }
      methods: [GET]
  backend:
    directResponse:
      status: 200
      headers: [{ name: content-type, value: application/json }]
      body: '{"hello":"world"}'
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: old }
spec:
  version: v0
  matches: [{ path: { type: PathPrefix, value: /v0 } }]
  lifecycle: { state: Retired, successor: "https://api.test/v1" }
  backend: { upstreams: [{ url: "http://127.0.0.1:9" }] }
---
apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: deprecated }
spec:
  matches: [{ path: { type: PathPrefix, value: /v1 } }]
  lifecycle: { state: Deprecated, deprecatedSince: "2026-01-01T00:00:00Z", sunset: "2027-01-01T00:00:00Z" }
  backend: { directResponse: { status: 200, body: "v1" } }
"#;

#[tokio::test]
async fn direct_answers_lifecycle_and_no_route() {
    let proxy = Proxy::start(DIRECT);

    let hello = get(&proxy.url("/hello")).await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.json()["hello"], "world");
    assert_eq!(hello.header("content-type"), Some("application/json"));
    assert_eq!(hello.header("x-request-id").map(str::len), Some(32), "a request id is generated");

    // Method mismatch: no route.
    let post = send(Request::post(proxy.url("/hello")).body(Full::new(Bytes::new())).expect("req")).await;
    assert_eq!(post.status, 404);
    assert_eq!(post.header("content-type"), Some("application/problem+json"));
    assert_eq!(post.json()["type"], "https://sluice.dev/problems/no-route");
    assert_eq!(post.json()["status"], 404);

    let retired = get(&proxy.url("/v0/anything")).await;
    assert_eq!(retired.status, 410);
    assert_eq!(retired.json()["type"], "https://sluice.dev/problems/route-retired");
    assert!(retired.header("link").is_some_and(|l| l.contains("successor-version")));

    let deprecated = get(&proxy.url("/v1/x")).await;
    assert_eq!(deprecated.status, 200);
    assert_eq!(deprecated.header("deprecation"), Some("@1767225600"));
    assert_eq!(deprecated.header("sunset"), Some("Fri, 01 Jan 2027 00:00:00 GMT"));

    // A client's request id is kept.
    let mine = send(
        Request::get(proxy.url("/hello")).header("x-request-id", "abc-123").body(Full::new(Bytes::new())).expect("req"),
    )
    .await;
    assert_eq!(mine.header("x-request-id"), Some("abc-123"));
}

#[tokio::test]
async fn forwarding_headers_and_transforms() {
    let upstream = Upstream::start(|_| {
        let mut r = ok("from upstream");
        r.headers_mut().insert("server", "fake".parse().expect("hv"));
        r.headers_mut().insert("x-internal", "secret".parse().expect("hv"));
        r.headers_mut().insert("keep-alive", "timeout=5".parse().expect("hv"));
        r
    })
    .await;
    let yaml = route(
        "api",
        "/api",
        &[&format!("{}/base", upstream.url())],
        r#"  requestTransform:
    setHeaders: [{ name: x-api-version, value: "2" }]
    addHeaders: [{ name: x-added, value: "yes" }]
    removeHeaders: [x-debug]
    rewritePath: { replacePrefix: /internal }
    setQuery: [{ name: source, value: gateway }]
    removeQuery: [token]
  responseTransform:
    setHeaders: [{ name: x-served-by, value: sluice }]
    removeHeaders: [x-internal]
"#,
    );
    let proxy = Proxy::start(&yaml);
    let answer = send(
        Request::get(proxy.url("/api/users/7?token=abc&page=2"))
            .header("host", "gw.example.com:8443")
            .header("x-debug", "1")
            .header("x-forwarded-for", "203.0.113.9")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "drop me")
            .header("x-sluice-tenant", "someone-else")
            .header("X-Sluice-App", "not-me")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "from upstream");
    assert_eq!(answer.header("x-served-by"), Some("sluice"));
    assert_eq!(answer.header("x-internal"), None);
    assert_eq!(answer.header("keep-alive"), None, "hop-by-hop headers are not passed back");

    let seen = upstream.last();
    assert_eq!(seen.uri, "/base/internal/users/7?page=2&source=gateway");
    let h = |n: &str| seen.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(h("x-api-version").as_deref(), Some("2"));
    assert_eq!(h("x-added").as_deref(), Some("yes"));
    assert_eq!(h("x-debug"), None);
    assert_eq!(h("x-hop"), None, "headers named in Connection are removed");
    // Identity headers are the gateway's word only: a client's never pass.
    assert!(seen.headers.keys().all(|name| !name.as_str().starts_with("x-sluice-")), "{:?}", seen.headers);
    // The client is no trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("gw.example.com:8443"));
    assert_eq!(h("via").as_deref(), Some("1.1 sluice"));
    assert_eq!(h("x-request-id").as_deref(), answer.header("x-request-id"));
    assert_eq!(h("host"), Some(upstream.addr.to_string()), "URL upstreams get their own Host");
}

#[tokio::test]
async fn round_robin_and_weights() {
    let (a, b) = (Upstream::named("a").await, Upstream::named("b").await);
    let yaml = format!(
        r#"{}
apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: {{ name: weighted }}
spec:
  matches: [{{ path: {{ type: PathPrefix, value: /weighted }} }}]
  backend:
    upstreams:
      - {{ url: "{}", weight: 1 }}
      - {{ url: "{}", weight: 0 }}
"#,
        route("rr", "/rr", &[&a.url(), &b.url()], ""),
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&yaml);
    // Round robin over two URL groups picks groups by weight (1:1), so both serve.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *seen.entry(get(&proxy.url("/rr")).await.text()).or_insert(0) += 1;
    }
    assert!(seen.get("a").copied().unwrap_or(0) > 5 && seen.get("b").copied().unwrap_or(0) > 5, "{seen:?}");
    // Weight 0 takes nothing.
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/weighted")).await.text(), "a");
    }
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    let ups = [Upstream::named("a").await, Upstream::named("b").await, Upstream::named("c").await];
    let yaml = format!(
        "{}---\n{}",
        service("hashed", &[ups[0].addr.port(), ups[1].addr.port(), ups[2].addr.port()]),
        r#"apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: hashed }
spec:
  matches: [{ path: { type: PathPrefix, value: / } }]
  backend: { services: [{ name: hashed, port: 80 }] }
  loadBalancer: { policy: ConsistentHash, hashHeader: X-User }
"#
    );
    let proxy = Proxy::start(&yaml);
    let mut owners = std::collections::BTreeSet::new();
    for user in 0..30 {
        let ask = || {
            send(
                Request::get(proxy.url("/"))
                    .header("x-user", format!("user-{user}"))
                    .body(Full::new(Bytes::new()))
                    .expect("req"),
            )
        };
        let first = ask().await.text();
        for _ in 0..3 {
            assert_eq!(ask().await.text(), first, "user-{user} moved to another endpoint");
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "30 keys all landed on {owners:?}");
}

#[tokio::test]
async fn upstream_failures_map_to_statuses() {
    let refused = closed_port();
    let (reset, _reset_task) = resetting_upstream().await;
    let slow = Upstream::start_delayed(Duration::from_millis(800), |_| ok("late")).await;
    let failing = Upstream::start(|_| status(503)).await;
    let yaml = format!(
        "{}{}{}{}",
        route("refused", "/refused", &[&format!("http://{refused}")], ""),
        route("reset", "/reset", &[&format!("http://{reset}")], ""),
        route("slow", "/slow", &[&slow.url()], "  timeouts: { request: 200ms }\n"),
        route("failing", "/failing", &[&failing.url()], ""),
    );
    let proxy = Proxy::start(&yaml);

    let a = get(&proxy.url("/refused")).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["type"], "https://sluice.dev/problems/upstream-unreachable");

    let b = get(&proxy.url("/reset")).await;
    assert_eq!(b.status, 502, "{}", b.text());
    assert_eq!(b.json()["type"], "https://sluice.dev/problems/upstream-unreachable");

    let c = get(&proxy.url("/slow")).await;
    assert_eq!(c.status, 504, "{}", c.text());
    assert_eq!(c.json()["type"], "https://sluice.dev/problems/upstream-timeout");

    // An upstream's own 5xx is passed through when no retry applies.
    let d = get(&proxy.url("/failing")).await;
    assert_eq!(d.status, 503);
    assert_eq!(d.text(), "status 503");

    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains(r#"sluice_upstream_errors_total{route="default/refused""#), "{metrics}");
    assert!(metrics.contains(r#"error="upstream-timeout""#), "{metrics}");
}

#[tokio::test]
async fn retries_move_to_another_endpoint() {
    let good = Upstream::named("good").await;
    let bad = Upstream::start(|_| status(503)).await;
    let refused = closed_port();
    // One Service-like group with three endpoints; retries skip endpoints
    // already tried. The route's round-robin position starts at 0 and
    // moves one endpoint per try, so three requests in a row each start on
    // a different endpoint: at least one starts on each failing one.
    let yaml = format!(
        "{}---\n{}",
        service("web", &[good.addr.port(), bad.addr.port(), refused.port()]),
        r#"apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: retried }
spec:
  matches: [{ path: { type: PathPrefix, value: / } }]
  backend: { services: [{ name: web, port: 80 }] }
  retries: { attempts: 2, retryOn: [ConnectFailure, GatewayError], backoff: 1ms, budgetPercent: 100, nonIdempotent: true }
"#
    );
    let proxy = Proxy::start(&yaml);
    for i in 0..3 {
        let a = get(&proxy.url("/")).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
        assert_eq!(a.text(), "good");
    }
    assert!(bad.hits() > 0, "the failing endpoint was tried");
    // A POST with a small body is buffered, and replayed on another
    // endpoint after the first one read it and answered 503 (the route
    // allows retrying non-idempotent requests).
    let bad_before = bad.hits();
    for _ in 0..3 {
        let post = send(Request::post(proxy.url("/")).body(Full::new(Bytes::from("payload"))).expect("req")).await;
        assert_eq!(post.status, 200);
    }
    let bad_posts: Vec<_> = bad.seen.lock().expect("lock")[bad_before..].to_vec();
    assert!(!bad_posts.is_empty(), "one POST started on the failing endpoint");
    assert!(bad_posts.iter().all(|s| s.body == "payload"));
    let good_posts = good.seen.lock().expect("lock").iter().filter(|s| s.method == "POST").count();
    assert_eq!(good_posts, 3, "every POST reached the good endpoint in the end");
}

#[tokio::test]
async fn passive_health_ejects_and_brings_back() {
    let good = Upstream::named("good").await;
    let bad = Upstream::start(|_| status(500)).await;
    let yaml = format!(
        "{}---\n{}",
        service("web", &[good.addr.port(), bad.addr.port()]),
        r#"apiVersion: sluice.dev/v1alpha1
kind: ApiRoute
metadata: { name: checked }
spec:
  matches: [{ path: { type: PathPrefix, value: / } }]
  backend: { services: [{ name: web, port: 80 }] }
  passiveHealth: { consecutiveFailures: 2, baseEjection: 300ms, maxEjectionPercent: 50 }
"#
    );
    let proxy = Proxy::start(&yaml);
    // Round robin alternates until the bad endpoint fails twice in a row.
    for _ in 0..6 {
        get(&proxy.url("/")).await;
    }
    let bad_hits = bad.hits();
    assert_eq!(bad_hits, 2, "ejected after 2 consecutive failures");
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/")).await.text(), "good");
    }
    assert_eq!(bad.hits(), bad_hits, "no traffic while ejected");
    tokio::time::sleep(Duration::from_millis(350)).await; // the back-off under test
    for _ in 0..4 {
        get(&proxy.url("/")).await;
    }
    assert!(bad.hits() > bad_hits, "back in rotation after the back-off");
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let upstream = Upstream::named("data").await;
    let yaml = route(
        "cors",
        "/data",
        &[&upstream.url()],
        "  cors:\n    allowOrigins: [https://app.example.com]\n    allowHeaders: [content-type, x-api-key]\n    exposeHeaders: [x-total]\n    maxAge: 10m\n",
    );
    let proxy = Proxy::start(&yaml);
    let preflight = send(
        Request::options(proxy.url("/data"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(preflight.header("access-control-allow-headers"), Some("content-type, x-api-key"));
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert_eq!(upstream.hits(), 0, "preflights are answered by the gateway");

    let simple = send(
        Request::get(proxy.url("/data"))
            .header("origin", "https://app.example.com")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(simple.text(), "data");
    assert_eq!(simple.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(simple.header("access-control-expose-headers"), Some("x-total"));

    let other = send(
        Request::get(proxy.url("/data"))
            .header("origin", "https://evil.example")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn admin_endpoints_and_call_log() {
    let proxy = Proxy::start(DIRECT);
    sluice_proxy::calllog::capture();
    let answer = send(
        Request::get(proxy.url("/hello?api_key=sk-live-secret"))
            .header("authorization", "Bearer sk-live-secret")
            .header("x-api-key", "sk-live-secret")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    let id = answer.header("x-request-id").expect("request id").to_owned();

    assert_eq!(get(&proxy.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 200);
    let status = get(&proxy.admin_url("/status")).await.json();
    assert_eq!(status["version"], proxy.gateway.current.load().as_ref().expect("installed").snapshot.version.as_str());
    assert!(status["installedAt"].is_string());
    assert_eq!(status["statuses"].as_array().map(Vec::len), Some(3));
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains(r#"sluice_requests_total{route="default/hello",status_class="2xx"}"#), "{metrics}");
    assert!(metrics.contains("sluice_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("sluice_active_connections"), "{metrics}");

    // The call log line of that request, once a worker flushed it.
    let line = call_log_line(&id).await;
    assert!(!line.contains("sk-live-secret"), "no secret in the call log: {line}");
    let json: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    for field in
        ["time", "request_id", "route", "method", "path", "status", "duration_us", "bytes_in", "bytes_out", "snapshot"]
    {
        assert!(json.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(json["route"], "default/hello");
    assert_eq!(json["status"], 200);
    assert_eq!(json["path"], "/hello");
    assert_eq!(json["bytes_out"], 17);
}

#[tokio::test]
async fn reload_applies_changes_and_keeps_the_last_good_config() {
    let proxy = Proxy::start(DIRECT);
    assert_eq!(get(&proxy.url("/new")).await.status, 404);

    let added = format!(
        "{DIRECT}---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: new }}\nspec:\n  matches: [{{ path: {{ type: Exact, value: /new }} }}]\n  backend: {{ directResponse: {{ status: 200, body: new }} }}\n"
    );
    let started = std::time::Instant::now();
    proxy.reload(&added).await;
    assert!(started.elapsed() < Duration::from_secs(1), "applied within a second");
    assert_eq!(get(&proxy.url("/new")).await.text(), "new");

    // A file that does not parse: reported, old config keeps serving.
    proxy.dir.write("broken.yaml", "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: broken }\nspec:\n  backend: { directResponse: { status: \"many\" } }\n");
    let before = proxy.gateway.report.load().last_reload.as_ref().map(|r| r.at.clone());
    for _ in 0..100 {
        if proxy.gateway.report.load().last_reload.as_ref().map(|r| r.at.clone()) != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = get(&proxy.admin_url("/status")).await.json();
    assert_eq!(status["lastReload"]["outcome"], "rejected", "{status}");
    let problems = status["lastReload"]["problems"].to_string();
    assert!(problems.contains("broken.yaml") && problems.contains("spec.backend.directResponse.status"), "{problems}");
    assert_eq!(get(&proxy.url("/new")).await.text(), "new", "the last good config keeps serving");
    std::fs::remove_file(proxy.dir.0.join("broken.yaml")).expect("remove");

    // An object with a False condition is not installed either.
    let bad_route = format!(
        "{added}---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: bad }}\nspec:\n  matches: [{{ path: {{ type: RegularExpression, value: \"/(unclosed\" }} }}]\n  backend: {{ directResponse: {{ status: 200 }} }}\n"
    );
    proxy.reload(&bad_route).await;
    let status = get(&proxy.admin_url("/status")).await.json();
    assert_eq!(status["lastReload"]["outcome"], "rejected", "{status}");
    assert!(status["lastReload"]["problems"].to_string().contains("spec.matches[0].path.value"), "{status}");
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let upstream = Upstream::named("up").await;
    let base = route("load", "/load", &[&upstream.url()], "");
    let proxy = Proxy::start(&base);
    let url = proxy.url("/load");
    let load = tokio::spawn(async move {
        let client = client();
        let (mut ok, mut failed) = (0, Vec::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let req = Request::get(&url).body(Full::new(Bytes::new())).expect("req");
            match client.request(req).await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e.to_string()),
            }
            if ok + failed.len() >= 4000 {
                break;
            }
        }
        (ok, failed)
    });
    for i in 0..20 {
        let extra = format!("  responseTransform: {{ setHeaders: [{{ name: x-generation, value: \"{i}\" }}] }}\n");
        proxy.reload(&route("load", "/load", &[&upstream.url()], &extra)).await;
    }
    let (ok, failed) = load.await.expect("load task");
    assert!(failed.is_empty(), "{} failed requests: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok > 100, "only {ok} requests ran");
    assert_eq!(get(&proxy.url("/load")).await.header("x-generation"), Some("19"));
}

#[tokio::test]
async fn removed_routes_leave_metrics_and_streamed_bodies_are_counted() {
    let upstream = Upstream::named("stored").await;
    let two =
        format!("{}{}", route("keep", "/keep", &[&upstream.url()], ""), route("drop", "/drop", &[&upstream.url()], ""));
    let proxy = Proxy::start(&two);
    sluice_proxy::calllog::capture();
    assert_eq!(get(&proxy.url("/drop")).await.text(), "stored");

    // A chunked upload (no Content-Length) is counted as it streams.
    let chunks = chunked_body(&[b"hello ", b"streamed ", b"world"]);
    let answer = send_streaming(&proxy.url("/keep"), chunks).await;
    assert_eq!(answer, 200);
    assert_eq!(upstream.last().body, Bytes::from("hello streamed world"));
    let json: serde_json::Value = serde_json::from_str(&call_log_line("\"path\":\"/keep\"").await).expect("json");
    assert_eq!(json["bytes_in"], 20, "{json}");

    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains(r#"route="default/drop""#), "{metrics}");
    proxy.reload(&route("keep", "/keep", &[&upstream.url()], "")).await;
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(!metrics.contains(r#"route="default/drop""#), "series of a removed route remain:\n{metrics}");
    assert!(metrics.contains(r#"route="default/keep""#), "{metrics}");
}

/// A request body sent in chunks, with no Content-Length (so hyper sends
/// it chunked).
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

fn chunked_body(chunks: &[&'static [u8]]) -> Chunks {
    Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect())
}

async fn send_streaming(url: &str, body: Chunks) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(Request::post(url).body(body).expect("req")).await.expect("request");
    response.status().as_u16()
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let upstream = Upstream::named("up").await;
    let proxy = Proxy::start(&route("idle", "/", &[&upstream.url()], "  timeouts: { idle: 300ms }\n"));
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/")).await.text(), "up");
    }
    assert!(upstream.open.load(std::sync::atomic::Ordering::SeqCst) >= 1, "a pooled connection stays open");
    // Idle 300 ms, swept within about a second after that.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream.open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(std::time::Instant::now() < deadline, "idle upstream connections were not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A later request opens a fresh one and is served.
    assert_eq!(get(&proxy.url("/")).await.text(), "up");
}

/// An upstream that answers every request in HTTP/1.0, then closes.
async fn http10_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!").await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_http10_upstream_is_answered_in_the_gateways_own_version() {
    let (upstream, _task) = http10_upstream().await;
    let proxy = Proxy::start(&route("old", "/old", &[&format!("http://{upstream}")], ""));
    // Two requests on one connection: both answered HTTP/1.1, and the
    // connection stays open for the second.
    let pair =
        b"GET /old HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /old HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let raw = raw_bytes(proxy.http, pair).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(!text.contains("HTTP/1.0"), "{text}");
    assert_eq!(text.matches("old!").count(), 2, "{text}");
}
