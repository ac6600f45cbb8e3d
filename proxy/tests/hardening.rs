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
    let yaml = [
        route("secure", "/secure", &[&secure.url()], "  auth: { mode: ApiKey }\n"),
        route("limited", "/limited", &[&secure.url()], "  rateLimit: { requests: 10, period: Minute }\n"),
        route("cached", "/cached", &[&secure.url()], "  cache: { ttl: 30s }\n"),
        route("fallback", "/", &[&fallback.url()], ""),
    ]
    .concat();
    let proxy = Proxy::start(&yaml);
    for (path, field) in [("/secure/x", "spec.auth.mode"), ("/limited", "spec.rateLimit"), ("/cached/y", "spec.cache")]
    {
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
    assert!(programmed["message"].as_str().is_some_and(|m| m.contains("spec.auth.mode")), "{programmed}");
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
