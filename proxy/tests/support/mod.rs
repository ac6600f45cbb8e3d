//! Test support: a proxy started in-process on 127.0.0.1 with OS-chosen
//! ports and a temporary config folder, fake upstreams built on hyper, and
//! a small client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_proxy::{Gateway, Limits, Running, ServerConfig, standalone};
use tokio::net::TcpListener;

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, so the watcher never reads half a file.
        let path = self.0.join(name);
        let file_name = path.file_name().expect("a file name").to_string_lossy().into_owned();
        let tmp = path.with_file_name(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A proxy running in this process.
pub struct Proxy {
    pub dir: TempDir,
    pub gateway: Arc<Gateway>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    running: Option<Running>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy serving `yaml` (one file, `routes.yaml`).
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, Limits::default(), false)
    }

    pub fn start_with(yaml: &str, limits: Limits, tls: bool) -> Proxy {
        let dir = TempDir::new();
        dir.write("routes.yaml", yaml);
        let gateway = Gateway::new(limits, "test");
        let stop = Arc::new(AtomicBool::new(false));
        let (watcher, _) = standalone::watch(gateway.clone(), dir.0.clone(), stop.clone()).expect("config thread");
        let config = ServerConfig {
            http: vec!["127.0.0.1:0".parse().expect("addr")],
            https: if tls { vec!["127.0.0.1:0".parse().expect("addr")] } else { Vec::new() },
            admin: "127.0.0.1:0".parse().expect("addr"),
            workers: 2,
            tls_default_host: None,
        };
        let running = sluice_proxy::start(gateway.clone(), &config).expect("proxy starts");
        Proxy {
            http: running.http[0],
            https: running.https.first().copied(),
            admin: running.admin,
            dir,
            gateway,
            running: Some(running),
            stop,
            watcher: Some(watcher),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the config and waits until the new snapshot (or a
    /// rejection) is reported.
    pub async fn reload(&self, yaml: &str) {
        let before = self.gateway.report.load().last_reload.as_ref().map(|r| r.at.clone());
        self.dir.write("routes.yaml", yaml);
        for _ in 0..100 {
            let now = self.gateway.report.load().last_reload.as_ref().map(|r| r.at.clone());
            if now != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the proxy did not notice the config change within 2 s");
    }

    /// Stops the proxy (what SIGTERM does).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(running) = self.running.take() {
            running.shutdown();
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a fake upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// An upstream started by the test.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Answers every request with `handler`.
    pub async fn start(handler: impl Fn(Seen) -> Response<Full<Bytes>> + Send + Sync + 'static) -> Upstream {
        Upstream::start_delayed(Duration::ZERO, handler).await
    }

    /// Answers `200 name` to everything.
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| Response::new(Full::new(Bytes::from(name)))).await
    }

    /// Waits `delay` before answering.
    pub async fn start_delayed(
        delay: Duration,
        handler: impl Fn(Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (h, s, o) = (hits.clone(), seen.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (handler, hits, seen, open) = (handler.clone(), h.clone(), s.clone(), o.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, hits, seen) = (handler.clone(), hits.clone(), seen.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let record = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().expect("lock").push(record.clone());
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(handler(record))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream { addr, hits, open, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().expect("lock").last().cloned().expect("the upstream saw a request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on which nothing listens (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// An upstream that accepts connections and closes them at once (a reset
/// before any response).
pub async fn resetting_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            // NB: a zero linger sends RST on close and does not block.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    (addr, task)
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let response = client().request(req).await.expect("request reaches the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

/// GET a URL.
pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::new(Bytes::new())).expect("request")).await
}

/// GET a URL with a Host header.
pub async fn get_host(url: &str, host: &str) -> Answer {
    send(Request::get(url).header("host", host).body(Full::new(Bytes::new())).expect("request")).await
}

/// An `ApiRoute` YAML document proxying `path` (prefix) to `upstreams`,
/// with `extra` spec lines (indented two spaces under spec).
pub fn route(name: &str, path: &str, upstreams: &[&str], extra: &str) -> String {
    let ups: String = upstreams.iter().map(|u| format!("      - url: {u}\n")).collect();
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\nspec:\n  matches:\n    - path: {{ type: PathPrefix, value: {path} }}\n  backend:\n    upstreams:\n{ups}{extra}---\n"
    )
}

/// A Service `name` (port 80, named http) with one EndpointSlice per
/// upstream port, all on 127.0.0.1.
pub fn service(name: &str, ports: &[u16]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec: {{ ports: [{{ name: http, port: 80 }}] }}\n"
    );
    for (i, port) in ports.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{ name: {name}-{i}, labels: {{ kubernetes.io/service-name: {name} }} }}\naddressType: IPv4\nports: [{{ name: http, port: {port} }}]\nendpoints: [{{ addresses: [\"127.0.0.1\"] }}]\n"
        ));
    }
    yaml
}

/// The captured call log line containing `needle`, once a worker has
/// flushed it (workers flush every 100 ms).
pub async fn call_log_line(needle: &str) -> String {
    call_log_line_with(&[needle]).await
}

/// The captured call log line containing every one of `needles`.
pub async fn call_log_line_with(needles: &[&str]) -> String {
    for _ in 0..100 {
        let captured = String::from_utf8(sluice_proxy::calllog::capture()).expect("utf-8");
        if let Some(line) = captured.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no call log line contains all of {needles:?}");
}

/// A response read off the wire by [`raw_exchange`].
#[derive(Debug)]
pub struct RawAnswer {
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    pub fn status(&self) -> u16 {
        self.status_line().split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes a whole request at once on a new connection (the server may
/// answer before reading all of it, as it should for a request over a
/// limit) and reads until the server closes or resets the connection.
/// The request should say `Connection: close`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let answer = raw_bytes(addr, request).await;
    // No answer at all (the connection was closed) reads as status 0.
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawAnswer { head: String::from_utf8_lossy(&answer).into_owned(), body: Vec::new() };
    };
    RawAnswer { head: String::from_utf8_lossy(&answer[..split]).into_owned(), body: answer[split + 4..].to_vec() }
}

/// Sends raw bytes and reads everything until the server closes.
pub async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_secs(10);
    let mut tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    // The write may fail once the server has answered and closed.
    let _ = tokio::time::timeout(limit, tcp.write_all(request)).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await.expect("the answer in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Checks an RFC 9457 problem document.
pub fn assert_problem(answer: &RawAnswer, kind: &str, status: u16) {
    assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{answer:?}");
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).expect("a JSON problem document");
    assert_eq!(problem["type"], format!("https://sluice.dev/problems/{kind}"), "{answer:?}");
    assert_eq!(problem["status"], status, "{answer:?}");
    assert!(problem["requestId"].is_string(), "{answer:?}");
}

/// Runs `promtool check metrics` on a scrape; it must say nothing.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (scripts/test fetches it)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// The problem type of an answer, without the `https://sluice.dev/problems/` prefix.
pub fn problem_type(answer: &Answer) -> String {
    answer.json()["type"].as_str().unwrap_or_default().trim_start_matches("https://sluice.dev/problems/").to_owned()
}
