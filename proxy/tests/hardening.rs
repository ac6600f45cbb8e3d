//! The data plane's hardening, over real sockets on 127.0.0.1: what a
//! request *is* when it arrives (host, path, upgrade, hop-by-hop headers,
//! framing), routes the proxy cannot enforce, what clients are told, and
//! what a misbehaving client can do to other clients and to backends.
//!
//! Requests that an HTTP client library would refuse to send are written
//! by hand on a raw socket.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

fn ok(body: &'static str) -> http::Response<Full<Bytes>> {
    http::Response::new(Full::new(Bytes::from(body)))
}

/// An upstream answering `status` with `body` to everything.
async fn failing(status: u16, body: &'static str) -> Upstream {
    Upstream::start(move |_| {
        let mut response = ok(body);
        *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
        response
    })
    .await
}

/// A raw HTTP/1.1 request on a fresh connection, closed after the answer.
async fn raw(proxy: &Proxy, head: &str) -> RawAnswer {
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    raw_exchange(proxy.http, request.as_bytes()).await
}

// ---------------------------------------------------------------------------
// 0. Fail closed

#[tokio::test]
async fn routes_with_policies_this_proxy_cannot_enforce_answer_503_and_say_why() {
    let secure = Upstream::named("secure").await;
    let fallback = Upstream::named("fallback").await;
    // An AI backend: served by the AI gateway, which is not built yet.
    let ai = "apiVersion: sluice.dev/v1alpha1\nkind: AiProvider\nmetadata: { name: local }\nspec:\n  type: ollama\n  baseUrl: http://127.0.0.1:9\n  models: [{ name: llama3 }]\n---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: secure }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /secure } }]\n  backend: { ai: { targets: [{ provider: local, model: llama3 }] } }\n---\n";
    let yaml = [ai.to_owned(), route("fallback", "/", &[&fallback.url()], "")].concat();
    let proxy = Proxy::start(&yaml);
    for (path, field) in [("/secure/x", "spec.backend.ai")] {
        let answer = get(&proxy.url(path)).await;
        assert_eq!(answer.status, 503, "{path}: {}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/problem+json"));
        let problem = answer.json();
        assert_eq!(problem["type"], "https://sluice.dev/problems/route-unsupported");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(field)), "{problem}");
    }
    // Neither the route's backend nor a less specific route served them.
    assert_eq!(secure.hits(), 0);
    assert_eq!(fallback.hits(), 0);
    assert_eq!(get(&proxy.url("/other")).await.text(), "fallback");

    // The route's status says which field is not supported.
    let status = get(&proxy.admin_url("/status")).await.json();
    let secure_status = status["statuses"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["object"]["name"] == "secure"))
        .cloned()
        .expect("the route's status");
    let programmed = secure_status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
        .cloned()
        .expect("a Programmed condition");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "UnsupportedByProxy");
    assert!(programmed["message"].as_str().is_some_and(|m| m.contains("spec.backend.ai")), "{programmed}");
}

// ---------------------------------------------------------------------------
// 1. Host and authority

#[tokio::test]
async fn requests_without_one_valid_host_get_400_and_reach_no_upstream() {
    let upstream = Upstream::named("up").await;
    let proxy = Proxy::start(&route("any", "/", &[&upstream.url()], ""));
    for head in [
        "GET /x HTTP/1.1",
        "GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test",
        "GET /x HTTP/1.1\r\nHost: a b",
        "GET /x HTTP/1.1\r\nHost: user:pw@a.test",
        "GET http://user@a.test/x HTTP/1.1\r\nHost: a.test",
    ] {
        let answer = raw(&proxy, head).await;
        assert_eq!(answer.status(), 400, "{head:?}: {answer:?}");
        assert_problem(&answer, "bad-request", 400);
        assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_and_forwarded_by_its_own_authority() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let yaml =
        [route("a", "/", &[&a.url()], "  hosts: [a.test]\n"), route("b", "/", &[&b.url()], "  hosts: [b.test]\n")]
            .concat();
    let proxy = Proxy::start(&yaml);
    let answer = raw(&proxy, "GET http://b.test/x HTTP/1.1\r\nHost: a.test").await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.text(), "b");
    assert_eq!(a.hits(), 0);
    // NB: a URL upstream gets its own host in Host; the authority the
    // client addressed travels in X-Forwarded-Host.
    let seen = b.last();
    assert_eq!(seen.headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()), Some("b.test"));
    assert_eq!(seen.uri, "/x");
}

// NB: two threads, so the client connection can close while the proxy
// shuts down at the end (shutdown blocks the thread it runs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_and_host_that_disagree_get_400() {
    let upstream = Upstream::named("up").await;
    let proxy = Proxy::start(&route("any", "/", &[&upstream.url()], ""));
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    let request = |host: &str| {
        Request::get("http://a.test/x")
            .version(Version::HTTP_2)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let answer = sender.send_request(request("b.test")).await.expect("answer");
    assert_eq!(answer.status(), 400);
    assert_eq!(upstream.hits(), 0);
    let answer = sender.send_request(request("a.test")).await.expect("answer");
    assert_eq!(answer.status(), 200);
}

// ---------------------------------------------------------------------------
// 2. Paths

#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarded_normalised() {
    let public = Upstream::start(|_| ok("public")).await;
    let keep = Upstream::start(|_| ok("keep")).await;
    let api = Upstream::start(|_| ok("api")).await;
    let yaml = [
        route("public", "/public", &[&public.url()], ""),
        route("keep", "/keep", &[&keep.url()], "  mergeSlashes: false\n"),
        route("api", "/api", &[&api.url()], "  requestTransform:\n    rewritePath: { replacePrefix: /internal }\n"),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    let host = "\r\nHost: gw.test";

    // Climbing out of /public is never served by /public.
    for path in ["/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "/public/./../admin"] {
        let answer = raw(&proxy, &format!("GET {path} HTTP/1.1{host}")).await;
        assert_eq!(answer.status(), 404, "{path}: {answer:?}");
    }
    assert_eq!(public.hits(), 0);
    // Above the root, or a broken escape: 400.
    for path in ["/../public", "/public/../../x", "/public/%zz"] {
        let answer = raw(&proxy, &format!("GET {path} HTTP/1.1{host}")).await;
        assert_eq!(answer.status(), 400, "{path}: {answer:?}");
    }
    // The upstream receives the normalised path.
    for (path, forwarded) in [
        ("/public/a/./b/../c", "/public/a/c"),
        ("//public///a", "/public/a"),
        ("/public/%7Euser?q=%2e%2e", "/public/~user?q=%2e%2e"),
        ("/public/a%2fb", "/public/a%2Fb"),
        ("/public/a%5cb/..", "/public/"),
    ] {
        let answer = raw(&proxy, &format!("GET {path} HTTP/1.1{host}")).await;
        assert_eq!(answer.status(), 200, "{path}: {answer:?}");
        assert_eq!(public.last().uri, forwarded, "{path}");
    }
    // A route that keeps repeated slashes gets them.
    let answer = raw(&proxy, &format!("GET /keep//a///b HTTP/1.1{host}")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(keep.last().uri, "/keep//a///b");
    // ReplacePrefix of /api by /internal: Gateway API semantics.
    for (path, forwarded) in [("/api", "/internal"), ("/api/", "/internal/"), ("/api/users", "/internal/users")] {
        let answer = raw(&proxy, &format!("GET {path} HTTP/1.1{host}")).await;
        assert_eq!(answer.status(), 200, "{path}: {answer:?}");
        assert_eq!(api.last().uri, forwarded, "{path}");
    }
}

// ---------------------------------------------------------------------------
// 3 and 4. Upgrades and hop-by-hop headers

#[tokio::test]
async fn only_websocket_upgrades_pass_and_hop_by_hop_headers_are_stripped_on_arrival() {
    let upstream = Upstream::named("up").await;
    let closed = Upstream::named("closed").await;
    let yaml = [
        route(
            "versioned",
            "/",
            &[&upstream.url()],
            "  requestTransform:\n    setHeaders: [{ name: x-api-version, value: \"2\" }]\n",
        ),
        route("no-ws", "/no-ws", &[&closed.url()], "  websocket: false\n"),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    // h2c: a raw HTTP/2 tunnel past every stage, if it were forwarded.
    let answer = raw(
        &proxy,
        "GET /x HTTP/1.1\r\nHost: gw.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
    )
    .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let seen = upstream.last();
    for name in ["upgrade", "http2-settings"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the upstream: {:?}", seen.headers);
    }
    // A Connection-named header can no longer delete what a stage sets, and
    // credentials meant for this proxy never travel on.
    let answer = raw(
        &proxy,
        "GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: x-api-version\r\nx-api-version: 1\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive",
    )
    .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let seen = upstream.last();
    assert_eq!(seen.headers.get("x-api-version").and_then(|v| v.to_str().ok()), Some("2"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert!(!seen.headers.contains_key("proxy-connection"));
    // A route that does not allow WebSocket gets a plain request.
    let answer = raw(
        &proxy,
        "GET /no-ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
    )
    .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(!closed.last().headers.contains_key("upgrade"));
}

// ---------------------------------------------------------------------------
// 9. What clients are told

#[tokio::test]
async fn problems_never_show_upstream_addresses_and_ids_are_random() {
    let dead = closed_port();
    let proxy = Proxy::start(&route("dead", "/", &[&format!("http://{dead}")], ""));
    sluice_proxy::calllog::capture();
    let answer = get(&proxy.url("/x")).await;
    assert_eq!(answer.status, 502);
    let text = answer.text();
    assert!(!text.contains("127.0.0.1") && !text.contains(&dead.port().to_string()), "{text}");
    assert!(!text.contains("error"), "no error chain for the client: {text}");
    // The call log keeps the whole story.
    let id = answer.header("x-request-id").expect("request id").to_owned();
    let line = call_log_line(&id).await;
    assert!(line.contains(&dead.to_string()), "{line}");

    // Request ids: 128 bits as 32 hex digits, never a sequence.
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            let answer = get(&proxy.url("/x")).await;
            ids.push(answer.header("x-request-id").expect("id").to_owned());
        }
        ids
    };
    for id in &ids {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_answer_is_recorded_as_499() {
    let upstream = Upstream::start_delayed(Duration::from_secs(3), |_| ok("late")).await;
    let proxy = Proxy::start(&route("slow", "/", &[&upstream.url()], ""));
    sluice_proxy::calllog::capture();
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET /gone HTTP/1.1\r\nHost: gw.test\r\nx-request-id: gone-client-499\r\n\r\n")
        .await
        .expect("write");
    // Wait until the upstream has the request, then leave.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while upstream.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(tcp);
    let line = call_log_line("gone-client-499").await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(json["status"], 499, "{line}");
    assert_eq!(json["error"], "client-closed", "{line}");
}

// ---------------------------------------------------------------------------
// 12 and 13. Framing and smaller findings

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501() {
    let upstream = Upstream::named("up").await;
    let proxy = Proxy::start(&route("any", "/", &[&upstream.url()], ""));
    let request = b"POST /x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = raw_exchange(proxy.http, request).await;
    assert_eq!(answer.status(), 501, "{answer:?}");
    assert_problem(&answer, "not-implemented", 501);
    assert_eq!(upstream.hits(), 0);
}

// NB: two threads, so the client connection can close while the proxy
// shuts down at the end (shutdown blocks the thread it runs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_are_joined_for_http11_upstreams() {
    let upstream = Upstream::named("up").await;
    let proxy = Proxy::start(&route("any", "/", &[&upstream.url()], ""));
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    let request = Request::get(format!("http://{}/x", proxy.http))
        .version(Version::HTTP_2)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = sender.send_request(request).await.expect("answer");
    assert_eq!(answer.status(), 200);
    let _ = answer.into_body().collect().await;
    let seen = upstream.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

// ---------------------------------------------------------------------------
// 5. Client body errors are the client's fault

const CHECKED: &str = "  passiveHealth: { consecutiveFailures: 3, baseEjection: 30s, maxEjectionPercent: 100 }\n";

#[tokio::test]
async fn malformed_client_bodies_never_eject_a_healthy_upstream() {
    let upstream = Upstream::named("up").await;
    let yaml =
        [route("checked", "/checked", &[&upstream.url()], CHECKED), route("plain", "/plain", &[&upstream.url()], "")]
            .concat();
    let proxy = Proxy::start(&yaml);
    sluice_proxy::calllog::capture();
    // Three POSTs whose chunked body breaks after the first chunk: once
    // these ejected the endpoint, and every later request got 503.
    for i in 0..3 {
        let request = format!(
            "POST /checked HTTP/1.1\r\nHost: gw.test\r\nx-request-id: bad-chunk-{i}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz-not-a-size\r\n\r\n"
        );
        let answer = raw_exchange(proxy.http, request.as_bytes()).await;
        // Answered 400, or the connection closed: never a 5xx.
        assert!(matches!(answer.status(), 0 | 400), "{answer:?}");
        let line = call_log_line(&format!("bad-chunk-{i}")).await;
        let json: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(json["status"], 400, "{line}");
        assert_eq!(json["error"], "bad-request", "{line}");
    }
    for path in ["/checked", "/plain"] {
        let answer = get(&proxy.url(path)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(!metrics.contains("sluice_upstream_errors_total{"), "no upstream error was counted: {metrics}");
}

#[tokio::test]
async fn a_client_too_slow_with_its_body_gets_408_and_ejects_nothing() {
    let upstream = Upstream::named("up").await;
    let yaml = [
        route("checked", "/checked", &[&upstream.url()], CHECKED),
        route("short", "/short", &[&upstream.url()], &format!("  timeouts: {{ request: 300ms }}\n{CHECKED}")),
    ]
    .concat();
    let limits = sluice_proxy::Limits { body_idle_timeout_ms: 300, ..sluice_proxy::Limits::default() };
    let proxy = Proxy::start_with(&yaml, limits, false);
    for path in ["/checked", "/short"] {
        for _ in 0..3 {
            let request =
                format!("POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc");
            let answer = raw_exchange(proxy.http, request.as_bytes()).await;
            assert_eq!(answer.status(), 408, "{path}: {answer:?}");
            assert_problem(&answer, "request-timeout", 408);
        }
        let answer = get(&proxy.url(path)).await;
        assert_eq!(answer.status, 200, "{path} still served: {}", answer.text());
    }
}

// ---------------------------------------------------------------------------
// 6. Retries are safe

const GATEWAY_RETRY: &str =
    "  retries: { attempts: 2, retryOn: [ConnectFailure, GatewayError], backoff: 1ms, budgetPercent: 100 }\n";

#[tokio::test]
async fn a_post_that_reached_the_upstream_is_not_retried_unless_the_route_says_so() {
    let good = Upstream::named("good").await;
    let bad = failing(503, "bad").await;
    let refused = closed_port();
    let yaml = [
        service("web", &[good.addr.port(), bad.addr.port()]),
        "---\n".into(),
        service("refusing", &[refused.port(), good.addr.port()]),
        "---\n".into(),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: once }}\nspec:\n  matches: [{{ path: {{ type: PathPrefix, value: /once }} }}]\n  backend: {{ services: [{{ name: web, port: 80 }}] }}\n{GATEWAY_RETRY}---\n"
        ),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: refusing }}\nspec:\n  matches: [{{ path: {{ type: PathPrefix, value: /refusing }} }}]\n  backend: {{ services: [{{ name: refusing, port: 80 }}] }}\n{GATEWAY_RETRY}---\n"
        ),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    // Round robin alternates over two endpoints: one POST starts on each.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let post = send(Request::post(proxy.url("/once")).body(Full::new(Bytes::from("order"))).expect("req")).await;
        statuses.push(post.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503], "the POST the bad endpoint answered was not sent again");
    assert_eq!(bad.hits(), 1);
    // A GET is idempotent: retried after the 503.
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/once")).await.status, 200);
    }
    // Nothing was written to a refused connection: a POST is retried then.
    for _ in 0..2 {
        let post =
            send(Request::post(proxy.url("/refusing")).body(Full::new(Bytes::from("order"))).expect("req")).await;
        assert_eq!(post.status, 200, "{}", post.text());
    }
}

#[tokio::test]
async fn a_back_off_past_the_deadline_ends_with_the_last_real_answer() {
    let bad = failing(503, "the upstream's own 503").await;
    let refused = closed_port();
    let retry = "  timeouts: { request: 1s }\n  retries: { attempts: 3, retryOn: [ConnectFailure, GatewayError], backoff: 10s }\n";
    let yaml = [
        route("bad", "/bad", &[&bad.url()], retry),
        route("refused", "/refused", &[&format!("http://{refused}")], retry),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    let answer = get(&proxy.url("/bad")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.text(), "the upstream's own 503");
    let answer = get(&proxy.url("/refused")).await;
    assert_eq!(answer.status, 502, "the connect failure, not a made-up 504: {}", answer.text());
}

// ---------------------------------------------------------------------------
// 7. State that outlives a snapshot swap

#[tokio::test]
async fn retry_budgets_and_round_robin_positions_survive_reloads() {
    let bad = failing(502, "bad").await;
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let budget = "  retries: { attempts: 1, retryOn: [GatewayError], backoff: 1ms, budgetPercent: 1 }\n";
    let base = [
        route("budget", "/budget", &[&bad.url()], budget),
        service("pair", &[a.addr.port(), b.addr.port()]),
        "---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: pair }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /pair } }]\n  backend: { services: [{ name: pair, port: 80 }] }\n---\n".into(),
    ]
    .concat();
    let proxy = Proxy::start(&base);
    // Exhaust the retry budget: ten retries to start with.
    for _ in 0..15 {
        get(&proxy.url("/budget")).await;
    }
    let state = proxy.gateway.upstreams.route("default/budget");
    assert!(state.budget.balance() < 2.0, "drained: {}", state.budget.balance());
    let first = get(&proxy.url("/pair")).await.text();

    // A reload that changes another route.
    let other = route("other", "/other", &[&a.url()], "");
    proxy.reload(&format!("{base}{other}")).await;
    assert!(proxy.gateway.report.load().last_reload.as_ref().is_some_and(|r| r.outcome == "installed"));

    let after = proxy.gateway.upstreams.route("default/budget");
    assert!(std::sync::Arc::ptr_eq(&state, &after), "the same budget after the swap");
    assert!(after.budget.balance() < 9.0, "not refilled by the reload: {}", after.budget.balance());
    let second = get(&proxy.url("/pair")).await.text();
    assert_ne!(first, second, "round robin went on where it was");
}

#[tokio::test]
async fn a_cancelled_request_gives_back_its_in_flight_count() {
    let slow = Upstream::start_delayed(Duration::from_secs(5), |_| ok("late")).await;
    let yaml = route("slow", "/", &[&slow.url()], "  loadBalancer: { policy: LeastRequest }\n");
    let proxy = Proxy::start(&yaml);
    let endpoint = proxy.gateway.upstreams.endpoint("default/slow", &slow.addr.to_string());
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").await.expect("write");
    let in_flight = || endpoint.in_flight.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while in_flight() == 0 {
        assert!(std::time::Instant::now() < deadline, "the request never went upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tcp);
    while in_flight() != 0 {
        assert!(std::time::Instant::now() < deadline, "the cancelled request kept its in-flight count");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// 8. Connection cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_worker_cap_are_refused_with_a_503() {
    let upstream = Upstream::named("up").await;
    // Two workers with one connection each: the third open connection at
    // the latest is turned away.
    let limits = sluice_proxy::Limits { max_connections: 1, ..sluice_proxy::Limits::default() };
    let proxy = Proxy::start_with(&route("any", "/", &[&upstream.url()], ""), limits, false);
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("an answer").unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            refused = Some(text);
            break;
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        held.push(tcp);
    }
    let refused = refused.expect("a connection over the cap was refused");
    assert!(refused.contains("too-many-connections"), "{refused}");
    let metrics = get(&proxy.admin_url("/metrics")).await.text();
    assert!(metrics.contains("sluice_refused_connections_total 1"), "{metrics}");
    drop(held);
}

// ---------------------------------------------------------------------------
// 10. Client addresses

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_replaced() {
    let upstream = Upstream::named("up").await;
    let limits =
        sluice_proxy::Limits { trusted_proxies: vec!["10.0.0.0/8".parse().expect("cidr")], ..Default::default() };
    let proxy = Proxy::start_with(&route("any", "/", &[&upstream.url()], ""), limits, false);
    sluice_proxy::calllog::capture();
    let answer = raw(
        &proxy,
        "GET /x HTTP/1.1\r\nHost: gw.test\r\nx-request-id: untrusted-xff\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4",
    )
    .await;
    assert_eq!(answer.status(), 200);
    let seen = upstream.last();
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(header("x-real-ip"), None);
    assert_eq!(header("forwarded"), None);
    let line = call_log_line("untrusted-xff").await;
    assert!(line.contains(r#""client_ip":"127.0.0.1""#), "{line}");
}

#[tokio::test]
async fn a_trusted_proxy_chain_names_the_first_untrusted_hop() {
    let upstream = Upstream::named("up").await;
    let limits = sluice_proxy::Limits {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr"), "10.0.0.0/8".parse().expect("cidr")],
        ..Default::default()
    };
    let proxy = Proxy::start_with(&route("any", "/", &[&upstream.url()], ""), limits, false);
    sluice_proxy::calllog::capture();
    let answer = raw(
        &proxy,
        "GET /x HTTP/1.1\r\nHost: gw.test\r\nx-request-id: trusted-xff\r\nX-Forwarded-For: 198.51.100.7, 203.0.113.9, 10.1.2.3",
    )
    .await;
    assert_eq!(answer.status(), 200);
    let seen = upstream.last();
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-forwarded-for").as_deref(), Some("198.51.100.7, 203.0.113.9, 10.1.2.3, 127.0.0.1"));
    assert_eq!(header("x-real-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(header("forwarded").as_deref(), Some("for=127.0.0.1"));
    let line = call_log_line("trusted-xff").await;
    assert!(line.contains(r#""client_ip":"203.0.113.9""#), "{line}");
}

// ---------------------------------------------------------------------------
// 12. Listeners and CORS

#[tokio::test]
async fn a_second_listener_on_the_same_port_is_refused() {
    let proxy = Proxy::start(&route("any", "/", &["http://127.0.0.1:9"], ""));
    let config = sluice_proxy::ServerConfig {
        http: vec![proxy.http],
        https: Vec::new(),
        admin: "127.0.0.1:0".parse().expect("addr"),
        workers: 1,
        tls_default_host: None,
    };
    let error = sluice_proxy::start(proxy.gateway.clone(), &config).expect_err("the port is taken");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
}

#[test]
fn the_admin_address_cannot_be_a_traffic_listener() {
    let dir = TempDir::new();
    dir.write("routes.yaml", &route("any", "/", &["http://127.0.0.1:9"], ""));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-dir", &dir.0.display().to_string(), "--listen", "127.0.0.1:18599", "--admin=127.0.0.1:18599"])
        .output()
        .expect("run sluice-proxy");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin 127.0.0.1:18599 is also a traffic listener"), "{stderr}");
}

#[tokio::test]
async fn cors_preflight_reaches_a_route_restricted_to_other_methods() {
    let upstream = Upstream::named("data").await;
    let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: users }\nspec:\n  matches: [{ path: { type: PathPrefix, value: /users }, methods: [GET] }]\n  cors: { allowOrigins: [\"http://localhost:3000\"] }\n  backend: { directResponse: { status: 200, body: \"[]\" } }\n---\n";
    let proxy = Proxy::start(yaml);
    let answer = raw(
        &proxy,
        "OPTIONS /users HTTP/1.1\r\nHost: gw.test\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: GET",
    )
    .await;
    assert_eq!(answer.status(), 204, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some("http://localhost:3000"));
    // A preflight for a method the route does not serve is not routed there.
    let answer = raw(
        &proxy,
        "OPTIONS /users HTTP/1.1\r\nHost: gw.test\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: DELETE",
    )
    .await;
    assert_eq!(answer.status(), 404, "{answer:?}");
    drop(upstream);
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_from_the_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::named("up").await;
    let limits = sluice_proxy::Limits { proxy_protocol: true, ..Default::default() };
    let proxy = Proxy::start_with(&route("any", "/", &[&upstream.url()], ""), limits, false);
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    let mut request = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    request.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
    request.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    tcp.write_all(&request).await.expect("write");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(upstream.last().headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()), Some("203.0.113.7"));
    // Without the header, the connection is closed unanswered.
    let answer = raw(&proxy, "GET /x HTTP/1.1\r\nHost: gw.test").await;
    assert_eq!(answer.status(), 0, "{answer:?}");
}

#[tokio::test]
async fn a_half_sent_second_request_head_does_not_hold_a_connection_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::named("up").await;
    let limits = sluice_proxy::Limits { keep_alive_timeout_ms: 300, ..Default::default() };
    let proxy = Proxy::start_with(&route("any", "/", &[&upstream.url()], ""), limits, false);
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Then half of a second head, and silence: the connection is closed
    // by the keep-alive timeout (and its grace second), never held open.
    tcp.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was held open");
}

/// An upstream that answers with a `Content-Length` of 1 MiB, sends
/// `sent` bytes of it, and then stalls (holding the connection open).
async fn stalling_upstream(sent: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; sent]).await;
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_body_idle_timeout() {
    let (stalled, _task) = stalling_upstream(1000).await;
    let limits = sluice_proxy::Limits { body_idle_timeout_ms: 300, ..Default::default() };
    let proxy = Proxy::start_with(&route("stall", "/", &[&format!("http://{stalled}")], ""), limits, false);
    sluice_proxy::calllog::capture();
    let response = client()
        .request(
            Request::get(proxy.url("/x"))
                .header("x-request-id", "stalled-body")
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("the head arrives");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the body is cut off, not left hanging");
    let line = call_log_line("stalled-body").await;
    assert!(line.contains(r#""error":"upstream-reset""#), "{line}");
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let big = Upstream::start(|_| http::Response::new(Full::new(Bytes::from(vec![b'y'; 32 * 1024 * 1024])))).await;
    let limits = sluice_proxy::Limits { body_idle_timeout_ms: 300, ..Default::default() };
    let proxy = Proxy::start_with(&route("big", "/", &[&big.url()], ""), limits, false);
    let mut tcp = tokio::net::TcpStream::connect(proxy.http).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n").await.expect("write");
    // Read nothing for a while: the proxy's writes stall on a full socket.
    let mut first = [0u8; 1];
    tcp.read_exact(&mut first).await.expect("the answer starts");
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the stall under test
    let mut received = 1usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ends");
    assert!(received < 32 * 1024 * 1024, "cut off before the end: {received} bytes");
}
