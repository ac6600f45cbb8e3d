//! The response cache over real sockets: hits and misses, what HTTP says
//! may be kept, keys per app, and one upstream request for concurrent
//! misses.

mod support;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::*;

async fn call(proxy: &Proxy, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder().method(method).uri(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::new())).expect("request")).await
}

/// An upstream answering `n:PATH` (n counts its requests) with the
/// headers the path asks for.
async fn counting_upstream(delay: Duration) -> Upstream {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Upstream::start_delayed(delay, move |seen| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let path = seen.uri.split('?').next().unwrap_or("").to_owned();
        let body = if path.ends_with("/big") { "x".repeat(4096) } else { format!("{n}:{path}") };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let h = response.headers_mut();
        match path.rsplit('/').next().unwrap_or("") {
            "no-store" => drop(h.insert("cache-control", "no-store".parse().expect("hv"))),
            "private" => drop(h.insert("cache-control", "private, max-age=60".parse().expect("hv"))),
            "cookie" => drop(h.insert("set-cookie", "a=b".parse().expect("hv"))),
            "vary-other" => drop(h.insert("vary", "x-other".parse().expect("hv"))),
            "vary-lang" => drop(h.insert("vary", "Accept-Language".parse().expect("hv"))),
            "zero" => drop(h.insert("cache-control", "max-age=0".parse().expect("hv"))),
            _ => {}
        }
        response
    })
    .await
}

fn cached_route(upstream: &Upstream, extra: &str) -> String {
    route(
        "api",
        "/",
        &[&upstream.url()],
        &format!("  cache: {{ ttl: 60s, maxBodyBytes: 1024, varyHeaders: [accept-language]{extra} }}\n"),
    )
}

#[tokio::test]
async fn a_miss_is_kept_and_answers_the_next_request() {
    let upstream = counting_upstream(Duration::ZERO).await;
    let proxy = Proxy::start(&cached_route(&upstream, ""));
    let first = call(&proxy, Method::GET, "/items?page=1", &[]).await;
    assert_eq!((first.status.as_u16(), first.header("x-cache")), (200, Some("MISS")));
    let second = call(&proxy, Method::GET, "/items?page=1", &[]).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.text(), first.text());
    assert!(second.header("age").is_some());
    // HEAD is answered from the GET entry: its length, no body.
    let head = call(&proxy, Method::HEAD, "/items?page=1", &[]).await;
    assert_eq!((head.header("x-cache"), head.body.len()), (Some("HIT"), 0));
    assert_eq!(head.header("content-length").map(str::to_owned), Some(first.text().len().to_string()));
    // Another query is another entry; POST is never cached.
    assert_eq!(call(&proxy, Method::GET, "/items?page=2", &[]).await.header("x-cache"), Some("MISS"));
    for _ in 0..2 {
        assert_eq!(call(&proxy, Method::POST, "/items?page=1", &[]).await.header("x-cache"), Some("BYPASS"));
    }
    // A client's no-cache gets a fresh answer.
    let fresh = call(&proxy, Method::GET, "/items?page=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(upstream.hits(), 5, "miss, page 2, two POSTs, no-cache");
    // A HEAD miss keeps nothing (it has no body): the GET after it is a
    // miss that gets the whole body, then a hit with it.
    assert_eq!(call(&proxy, Method::HEAD, "/headfirst", &[]).await.header("x-cache"), Some("MISS"));
    let get = call(&proxy, Method::GET, "/headfirst", &[]).await;
    assert_eq!((get.header("x-cache"), get.text().as_str()), (Some("MISS"), "7:/headfirst"));
    let hit = call(&proxy, Method::GET, "/headfirst", &[]).await;
    assert_eq!((hit.header("x-cache"), hit.text().as_str()), (Some("HIT"), "7:/headfirst"));
}

#[tokio::test]
async fn what_http_says_may_not_be_kept_is_not() {
    let upstream = counting_upstream(Duration::ZERO).await;
    let proxy = Proxy::start(&cached_route(&upstream, ""));
    for path in ["/no-store", "/private", "/cookie", "/vary-other", "/zero", "/big"] {
        for _ in 0..2 {
            let answer = call(&proxy, Method::GET, path, &[]).await;
            assert_eq!((answer.status.as_u16(), answer.header("x-cache")), (200, Some("MISS")), "{path}");
        }
    }
    assert_eq!(upstream.hits(), 12);
    // A Vary the route keys on: one entry per language.
    for lang in ["en", "fr", "en", "fr"] {
        call(&proxy, Method::GET, "/vary-lang", &[("accept-language", lang)]).await;
    }
    assert_eq!(upstream.hits(), 14, "two languages, two entries");
}

#[tokio::test]
async fn concurrent_misses_of_one_key_go_upstream_once() {
    let upstream = counting_upstream(Duration::from_millis(300)).await;
    let proxy = Proxy::start(&cached_route(&upstream, ""));
    let answers =
        futures_join_all((0..8).map(|_| async { call(&proxy, Method::GET, "/slow", &[]).await }).collect()).await;
    assert_eq!(upstream.hits(), 1, "one request filled the key for all");
    for answer in &answers {
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "1:/slow"));
    }
}

/// Runs futures concurrently on this task.
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, future) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => done[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    set.extend(done.into_iter().flatten());
    set
}

const TENANTS: &str = "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: { name: shop }\nspec:\n  namespaces: [shop]\n  hostnames: [shop.test]\n  apps: [{ name: web }, { name: mobile }]\n---\napiVersion: v1\nkind: Secret\nmetadata: { name: web-key, namespace: shop, labels: { sluice.dev/app: web } }\ntype: sluice.dev/api-key\nstringData: { api-key: sk-web }\n---\napiVersion: v1\nkind: Secret\nmetadata: { name: mobile-key, namespace: shop, labels: { sluice.dev/app: mobile } }\ntype: sluice.dev/api-key\nstringData: { api-key: sk-mobile }\n---\n";

fn keyed(upstream: &Upstream, public: bool) -> String {
    format!(
        "{TENANTS}apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: catalog, namespace: shop }}\nspec:\n  hosts: [shop.test]\n  auth: {{ mode: ApiKey }}\n  cache: {{ ttl: 60s, public: {public} }}\n  backend: {{ upstreams: [{{ url: {} }}] }}\n",
        upstream.url()
    )
}

#[tokio::test]
async fn answers_are_kept_per_app_unless_the_route_says_they_are_public() {
    let upstream = counting_upstream(Duration::ZERO).await;
    let proxy = Proxy::start(&keyed(&upstream, false));
    let as_app = |key: &'static str| [("host", "shop.test"), ("x-api-key", key)];
    assert_eq!(call(&proxy, Method::GET, "/c", &as_app("sk-web")).await.header("x-cache"), Some("MISS"));
    assert_eq!(call(&proxy, Method::GET, "/c", &as_app("sk-mobile")).await.header("x-cache"), Some("MISS"));
    assert_eq!(call(&proxy, Method::GET, "/c", &as_app("sk-web")).await.header("x-cache"), Some("HIT"));
    // Authentication still runs on a hit: no key, no answer.
    assert_eq!(call(&proxy, Method::GET, "/c", &[("host", "shop.test")]).await.status, 401);
    assert_eq!(upstream.hits(), 2);
    proxy.reload(&keyed(&upstream, true)).await;
    assert_eq!(call(&proxy, Method::GET, "/p", &as_app("sk-web")).await.header("x-cache"), Some("MISS"));
    assert_eq!(call(&proxy, Method::GET, "/p", &as_app("sk-mobile")).await.header("x-cache"), Some("HIT"));
    assert_eq!(upstream.hits(), 3);
}
