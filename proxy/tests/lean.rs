//! The lean HTTP/1.1 upstream client (`sluice_proxy::h1`), through real
//! sockets: a scripted upstream answers each request head with the next
//! canned response, byte for byte, and records what it was sent.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{Proxy, client, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One canned answer: its bytes, and whether the upstream closes the
/// connection after writing them.
struct Canned(&'static str, bool);

/// An upstream that answers from a script.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Vec<Canned>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (h, a) = (heads.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (heads, script) = (h.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request head (and its body, by Content-Length).
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.trim().parse::<usize>().expect("length"));
                        while buf.len() < end + length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + length);
                        heads.lock().expect("lock").push(head);
                        let Some(Canned(answer, close)) = script.lock().expect("lock").pop_front() else { return };
                        if stream.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, heads, accepts, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn head(&self, i: usize) -> String {
        self.heads.lock().expect("lock")[i].clone()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// Sends requests over one client connection (so they reach one worker,
/// and its pool), reading each answer whole.
struct OneClient(hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>);

impl OneClient {
    async fn send(&self, request: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
        let response = self.0.request(request).await.expect("the proxy answers");
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.expect("body").to_bytes())
    }

    async fn get(&self, url: &str) -> (http::response::Parts, Bytes) {
        self.send(Request::get(url).body(Full::new(Bytes::new())).expect("request")).await
    }
}

fn lines(head: &str, prefix: &str) -> Vec<String> {
    head.lines().filter(|l| l.to_ascii_lowercase().starts_with(prefix)).map(str::to_owned).collect()
}

#[tokio::test]
async fn kept_alive_connections_are_reused_and_forwarding_fields_written_once() {
    let upstream = Scripted::start(vec![
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello", false),
        Canned("HTTP/1.1 201 Created\r\ncontent-length: 5\r\nx-up: 1\r\n\r\nagain", false),
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    ])
    .await;
    let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
    let c = OneClient(client());
    let request = Request::get(proxy.url("/a?x=1"))
        .header("x-forwarded-proto", "gopher")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-real-ip", "10.9.9.9")
        .header("forwarded", "for=10.9.9.9")
        .header("via", "1.0 other")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (parts, body) = c.send(request).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"hello"[..]));
    // The hop-by-hop Connection field stays behind.
    assert!(parts.headers.get("connection").is_none_or(|v| v != "keep-alive"), "{parts:?}");
    assert!(parts.headers.contains_key("x-request-id"));
    let (parts, body) = c.get(&proxy.url("/b")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (201, &b"again"[..]));
    assert_eq!(parts.headers.get("x-up").expect("upstream field"), "1");
    // HEAD: a Content-Length and no body; the connection is still good.
    let (parts, body) = c.send(Request::head(proxy.url("/c")).body(Full::new(Bytes::new())).expect("head")).await;
    assert_eq!((parts.status.as_u16(), body.len()), (200, 0));
    assert_eq!(upstream.accepts(), 1, "one upstream connection carried all three");

    let head = upstream.head(0);
    assert!(head.starts_with("GET /a?x=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(lines(&head, "x-forwarded-proto:"), ["x-forwarded-proto: http"], "{head}");
    // An untrusted peer's own forwarding claims are replaced or dropped.
    assert_eq!(lines(&head, "x-forwarded-for:"), ["x-forwarded-for: 127.0.0.1"], "{head}");
    assert!(lines(&head, "x-real-ip:").is_empty() && lines(&head, "forwarded:").is_empty(), "{head}");
    assert_eq!(lines(&head, "via:"), ["via: 1.0 other", "via: 1.1 sluice"], "{head}");
    assert_eq!(lines(&head, "x-request-id:").len(), 1, "{head}");
    assert_eq!(lines(&head, "x-kept:"), ["x-kept: yes"], "{head}");
    assert_eq!(lines(&head, "host:").len(), 1, "{head}");
    assert!(lines(&head, "content-length:").is_empty(), "a GET without a body says no length: {head}");
    assert!(upstream.head(2).starts_with("HEAD /c HTTP/1.1\r\n"));
}

#[tokio::test]
async fn chunked_and_close_delimited_bodies_arrive_whole() {
    let upstream = Scripted::start(vec![
        Canned(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        ),
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext", false),
        Canned("HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh", false),
    ])
    .await;
    let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
    let c = OneClient(client());
    assert_eq!(&c.get(&proxy.url("/1")).await.1[..], b"hello world");
    assert_eq!(&c.get(&proxy.url("/2")).await.1[..], b"next");
    assert_eq!(upstream.accepts(), 1, "a chunked body ends cleanly and leaves its connection reusable");
    assert_eq!(&c.get(&proxy.url("/3")).await.1[..], b"until the end");
    assert_eq!(&c.get(&proxy.url("/4")).await.1[..], b"fresh");
    assert_eq!(upstream.accepts(), 2, "a body read to the close is never followed on its connection");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_not_reported() {
    // The upstream answers, then closes a connection it said nothing about.
    let upstream = Scripted::start(vec![
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none", true),
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo", true),
    ])
    .await;
    let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
    let c = OneClient(client());
    assert_eq!(&c.get(&proxy.url("/1")).await.1[..], b"one");
    let (parts, body) = c.get(&proxy.url("/2")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"two"[..]));
    assert_eq!(upstream.accepts(), 2);
}

#[tokio::test]
async fn informational_answers_are_skipped_and_bodies_are_framed() {
    let upstream = Scripted::start(vec![
        Canned(
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        Canned("HTTP/1.1 204 No Content\r\n\r\n", false),
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npost", false),
    ])
    .await;
    let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
    let c = OneClient(client());
    let (parts, body) = c.get(&proxy.url("/hints")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
    let (parts, body) = c.get(&proxy.url("/none")).await;
    assert_eq!((parts.status.as_u16(), body.len()), (204, 0));
    // A POST without a body says so with a zero length.
    let (parts, body) = c.send(Request::post(proxy.url("/p")).body(Full::new(Bytes::new())).expect("post")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"post"[..]));
    assert_eq!(lines(&upstream.head(2), "content-length:"), ["content-length: 0"]);
    assert_eq!(upstream.accepts(), 1);
}

#[tokio::test]
async fn ambiguous_framing_is_a_502_never_a_guess() {
    for answer in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\nhello",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        "nonsense\r\n\r\n",
    ] {
        let upstream = Scripted::start(vec![Canned(answer, true)]).await;
        let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
        let (parts, body) = OneClient(client()).get(&proxy.url("/")).await;
        assert_eq!(parts.status.as_u16(), 502, "{answer:?}");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("a problem document");
        assert_eq!(problem["type"], "https://sluice.dev/problems/upstream-unreachable", "{answer:?}");
        assert!(!problem.to_string().contains("127.0.0.1"), "no internal address reaches the client: {problem}");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_short_answer() {
    let upstream = Scripted::start(vec![
        Canned("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", true),
        Canned("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel", true),
    ])
    .await;
    let proxy = Proxy::start(&route("lean", "/", &[&upstream.url()], ""));
    for path in ["/length", "/chunked"] {
        // The break reaches the client as a broken answer: either before
        // the head went out (the proxy buffers it with the first data) or
        // in the body; never as a complete, shorter one.
        let sent =
            client().request(Request::get(proxy.url(path)).body(Full::new(Bytes::new())).expect("request")).await;
        if let Ok(response) = sent {
            assert!(response.into_body().collect().await.is_err(), "{path}: the client sees the body break");
        }
    }
    let line = support::call_log_line(&format!("\"path\":\"{}\"", "/chunked")).await;
    assert!(line.contains("\"error\":\"upstream-reset\""), "the call log says the body broke: {line}");
}
