//! Protocols end to end, over real sockets on 127.0.0.1: TLS with SNI and
//! ALPN (certificates made here with rcgen), HTTP/2 over TLS and in
//! cleartext, WebSocket-style upgrades, gRPC-style trailers, the header and
//! body size limits, and graceful shutdown with a request in flight.
//!
//! Every wait is bounded: a hang fails the test in seconds.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_proxy::{Gateway, Limits, ServerConfig, standalone};
use support::{Proxy, Upstream, assert_problem, raw_exchange, route};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// The most any one test may take.
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// Runs a test body with a deadline.
async fn within<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, body).await.expect("the test finished in time")
}

/// Awaits a step with a deadline, naming the step when it hangs.
async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Fails unless every object of the proxy's config compiled and every
/// certificate loaded.
fn assert_clean(proxy: &Proxy) {
    let report = proxy.gateway.report.load();
    assert!(report.load_errors.is_empty(), "load errors: {:?}", report.load_errors);
    let bad: Vec<_> = report.statuses.iter().filter(|s| s.status.has_false()).collect();
    assert!(bad.is_empty(), "objects with a False condition: {bad:#?}");
    let current = proxy.gateway.current.load();
    let compiled = current.as_ref().expect("a snapshot is installed");
    assert!(compiled.certificates.errors.is_empty(), "certificates: {:?}", compiled.certificates.errors);
}

// ---------------------------------------------------------------------------
// Clients over one connection

/// A response, read whole, trailers included.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    async fn read(response: Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let collected = step("reading the response body", body.collect()).await.expect("the response body");
        let trailers = collected.trailers().cloned();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends requests one after the other on one HTTP/1.1 connection over `io`,
/// then closes it.
async fn http1<I, B>(io: I, requests: Vec<Request<B>>) -> Vec<Reply>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) =
        step("HTTP/1.1 handshake", hyper::client::conn::http1::handshake(TokioIo::new(io))).await.expect("handshake");
    let task = tokio::spawn(conn);
    let mut replies = Vec::new();
    for request in requests {
        // NB: the connection takes the next request only once it has seen
        // the previous answer end; sending before that is refused.
        step("HTTP/1.1 ready", sender.ready()).await.expect("the connection is ready");
        let response = step("HTTP/1.1 response", sender.send_request(request)).await.expect("a response");
        replies.push(Reply::read(response).await);
    }
    drop(sender);
    let _ = step("closing the HTTP/1.1 connection", task).await;
    replies
}

/// Sends requests one after the other on one HTTP/2 connection over `io`,
/// then closes it.
async fn http2<I, B>(io: I, requests: Vec<Request<B>>) -> Vec<Reply>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) =
        step("HTTP/2 handshake", hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)))
            .await
            .expect("handshake");
    let task = tokio::spawn(conn);
    let mut replies = Vec::new();
    for request in requests {
        let response = step("HTTP/2 response", sender.send_request(request)).await.expect("a response");
        replies.push(Reply::read(response).await);
    }
    drop(sender);
    let _ = step("closing the HTTP/2 connection", task).await;
    replies
}

fn get(uri: &str, host: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).header(header::HOST, host).body(Empty::new()).expect("request")
}

/// An HTTP/2 request: the authority is in the URI, as HTTP/2 clients send it.
fn get2(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).version(Version::HTTP_2).body(Empty::new()).expect("request")
}

// ---------------------------------------------------------------------------
// TLS material and client

/// A certificate and key for one host, signed by the test CA.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A CA made for one test, and the leaves it signed.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Sluice test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        Pki { ca: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    fn leaf(&self, host: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![host.to_owned()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, host);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A client trusting this CA only, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        self.client_sni(alpn, true)
    }

    /// The same, with or without SNI (the name is still verified).
    fn client_sni(&self, alpn: &[&[u8]], sni: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA is a valid trust anchor");
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        TlsConnector::from(Arc::new(config))
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects with TLS, sending `sni` as the server name.
async fn tls_connect(addr: SocketAddr, sni: &str, connector: &TlsConnector) -> std::io::Result<TlsStream> {
    let tcp = step("TCP connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("a valid server name");
    step("TLS handshake", connector.connect(name, tcp)).await
}

fn peer_certificate(stream: &TlsStream) -> CertificateDer<'static> {
    let (_, session) = stream.get_ref();
    session.peer_certificates().and_then(|c| c.first()).expect("the server sent a certificate").clone().into_owned()
}

fn alpn(stream: &TlsStream) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret.
fn tls_secret(name: &str, leaf: &Leaf) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
        indent(&leaf.cert_pem),
        indent(&leaf.key_pem)
    )
}

/// An ApiRoute for one host, with its certificate in `secret`.
fn tls_route(name: &str, host: &str, secret: &str, upstream: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata:\n  name: {name}\nspec:\n  hosts: [\"{host}\"]\n  tls:\n    - hosts: [\"{host}\"]\n      secretName: {secret}\n  backend:\n    upstreams:\n      - url: {upstream}\n---\n"
    )
}

const ALPHA: &str = "alpha.sluice.test";
const BETA: &str = "beta.sluice.test";

/// Two hosts, two certificates, two upstreams, behind a TLS listener.
struct TlsSetup {
    pki: Pki,
    alpha: Leaf,
    beta: Leaf,
    alpha_upstream: Upstream,
    beta_upstream: Upstream,
    proxy: Proxy,
}

impl TlsSetup {
    async fn start() -> TlsSetup {
        let pki = Pki::new();
        let (alpha, beta) = (pki.leaf(ALPHA), pki.leaf(BETA));
        let alpha_upstream = Upstream::named("alpha").await;
        let beta_upstream = Upstream::named("beta").await;
        let yaml = [
            tls_secret("alpha-tls", &alpha),
            tls_secret("beta-tls", &beta),
            tls_route("alpha", ALPHA, "alpha-tls", &alpha_upstream.url()),
            tls_route("beta", BETA, "beta-tls", &beta_upstream.url()),
        ]
        .concat();
        let proxy = Proxy::start_with(&yaml, Limits::default(), true);
        assert_clean(&proxy);
        TlsSetup { pki, alpha, beta, alpha_upstream, beta_upstream, proxy }
    }

    fn https(&self) -> SocketAddr {
        self.proxy.https.expect("the proxy has a TLS listener")
    }
}

// ---------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_presents_the_certificate_of_the_sni_host_and_routes_to_its_upstream() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[b"http/1.1"]);
        for (host, leaf, expected) in [(ALPHA, &setup.alpha, "alpha"), (BETA, &setup.beta, "beta")] {
            let stream = tls_connect(setup.https(), host, &client).await.expect("the handshake succeeds");
            assert_eq!(peer_certificate(&stream), leaf.der, "the certificate presented for SNI {host}");
            let replies = http1(stream, vec![get("/hello", host)]).await;
            assert_eq!(replies[0].status, StatusCode::OK, "{host}: {}", replies[0].text());
            assert_eq!(replies[0].text(), expected);
        }
        assert_eq!((setup.alpha_upstream.hits(), setup.beta_upstream.hits()), (1, 1));
        let seen = setup.alpha_upstream.last();
        assert_eq!(seen.headers.get("x-forwarded-proto").map(HeaderValue::as_bytes), Some(&b"https"[..]));
        assert_eq!(seen.headers.get("x-forwarded-host").map(HeaderValue::as_bytes), Some(ALPHA.as_bytes()));
        assert_eq!(seen.uri, "/hello");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_matching_ignores_case() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[]);
        let stream = tls_connect(setup.https(), "BETA.Sluice.Test", &client).await.expect("the handshake succeeds");
        assert_eq!(peer_certificate(&stream), setup.beta.der);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_fails_for_a_host_without_a_certificate() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[b"h2", b"http/1.1"]);
        let outcome = tls_connect(setup.https(), "unknown.sluice.test", &client).await;
        assert!(outcome.is_err(), "a handshake for a host without a certificate must fail");
        // The listener still serves the known hosts afterwards.
        let stream = tls_connect(setup.https(), ALPHA, &client).await.expect("the handshake succeeds");
        assert_eq!(peer_certificate(&stream), setup.alpha.der);
    })
    .await;
}

/// The protocols a client offers in ALPN.
type Offer<'a> = &'a [&'a [u8]];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_negotiates_h2_when_offered_and_http11_otherwise() {
    within(async {
        let setup = TlsSetup::start().await;
        let offers: [(Offer, Option<&[u8]>); 4] = [
            (&[b"h2", b"http/1.1"], Some(&b"h2"[..])),
            (&[b"http/1.1", b"h2"], Some(&b"h2"[..])),
            (&[b"http/1.1"], Some(&b"http/1.1"[..])),
            (&[], None),
        ];
        for (offer, expected) in offers {
            let stream = tls_connect(setup.https(), ALPHA, &setup.pki.client(offer)).await.expect("handshake");
            assert_eq!(alpn(&stream).as_deref(), expected, "offered {offer:?}");
            let h2 = expected == Some(&b"h2"[..]);
            let replies = if h2 {
                http2(stream, vec![get2(&format!("https://{ALPHA}/alpn"))]).await
            } else {
                http1(stream, vec![get("/alpn", ALPHA)]).await
            };
            assert_eq!(replies[0].status, StatusCode::OK, "offered {offer:?}: {}", replies[0].text());
            assert_eq!(replies[0].text(), "alpha");
            let version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
            assert_eq!(replies[0].version, version, "offered {offer:?}");
        }
        // A client that offers only protocols the proxy does not speak is
        // refused (RFC 7301 §3.2: no_application_protocol).
        let refused = tls_connect(setup.https(), ALPHA, &setup.pki.client(&[b"spdy/3"])).await;
        assert!(refused.is_err(), "ALPN without a common protocol must fail the handshake");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_end_to_end() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[b"h2", b"http/1.1"]);
        let stream = tls_connect(setup.https(), BETA, &client).await.expect("handshake");
        assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let post = Request::post(format!("https://{BETA}/v1/orders?x=1"))
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"order\":1}")))
            .expect("request");
        let replies =
            http2(stream, vec![post.map(|b| b.boxed()), get2(&format!("https://{BETA}/second")).map(|b| b.boxed())])
                .await;
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.version, Version::HTTP_2);
            assert_eq!(reply.text(), "beta");
            assert!(reply.header("x-request-id").is_some());
        }
        let seen = setup.beta_upstream.seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].method.as_str(), seen[0].uri.as_str()), ("POST", "/v1/orders?x=1"));
        assert_eq!(seen[0].body, Bytes::from_static(b"{\"order\":1}"));
        // A URL upstream gets its own host as Host; the client's authority
        // travels in X-Forwarded-Host.
        assert_eq!(seen[0].headers.get("x-forwarded-host").map(HeaderValue::as_bytes), Some(BETA.as_bytes()));
        assert_eq!(seen[0].headers.get("x-forwarded-proto").map(HeaderValue::as_bytes), Some(&b"https"[..]));
        assert_eq!(seen[0].headers.get(header::VIA).map(HeaderValue::as_bytes), Some(&b"2 sluice"[..]));
        assert_eq!(seen[1].uri, "/second");
        assert_eq!(setup.alpha_upstream.hits(), 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// HTTP/2 cleartext

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_with_prior_knowledge() {
    within(async {
        let upstream =
            Upstream::start(|seen| Response::new(Full::new(Bytes::from(format!("echo:{}", seen.body.len()))))).await;
        let proxy = Proxy::start(&route("h2c", "/", &[&upstream.url()], ""));
        assert_clean(&proxy);
        let tcp = step("connect", TcpStream::connect(proxy.http)).await.expect("connect");
        let post = Request::post("http://h2c.example.com/upload")
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
            .expect("request");
        let get = Request::get("http://h2c.example.com/status?q=1")
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let replies = http2(tcp, vec![post, get]).await;
        assert_eq!(replies[0].status, StatusCode::OK, "{}", replies[0].text());
        assert_eq!(replies[0].version, Version::HTTP_2);
        assert_eq!(replies[0].text(), "echo:100000");
        assert_eq!(replies[1].status, StatusCode::OK);
        assert_eq!(replies[1].text(), "echo:0");
        let seen = upstream.last();
        assert_eq!(seen.uri, "/status?q=1");
        assert_eq!(seen.headers.get("x-forwarded-host").map(HeaderValue::as_bytes), Some(&b"h2c.example.com"[..]));
        assert_eq!(seen.headers.get(header::VIA).map(HeaderValue::as_bytes), Some(&b"2 sluice"[..]));
        assert_eq!(seen.headers.get("x-forwarded-proto").map(HeaderValue::as_bytes), Some(&b"http"[..]));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Upstreams with special behaviour

/// A TCP server whose connections are served by `serve`; stops on drop.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Server { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream that accepts `Upgrade: websocket` with 101 and
/// then echoes every byte it reads. It records the request headers.
async fn upgrade_echo_upstream(seen: Arc<Mutex<Vec<HeaderMap>>>) -> Server {
    Server::start(move |stream| {
        let seen = seen.clone();
        async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push(req.headers().clone());
                    let wants_websocket = req
                        .headers()
                        .get(header::UPGRADE)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    if !wants_websocket {
                        let mut response = Response::new(Empty::<Bytes>::new());
                        *response.status_mut() = StatusCode::BAD_REQUEST;
                        return Ok::<_, Infallible>(response);
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 4096];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                    let response = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::CONNECTION, "upgrade")
                        .header(header::UPGRADE, "websocket")
                        .header("sec-websocket-accept", "test-accept")
                        .body(Empty::<Bytes>::new())
                        .expect("response");
                    Ok(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
    .await
}

/// Opens a WebSocket-style upgrade through the proxy: the 101 answer, the
/// upgraded stream, and what keeps the client connection alive.
async fn open_tunnel(
    proxy: SocketAddr,
    path: &str,
) -> (
    Response<Incoming>,
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = step("connect", TcpStream::connect(proxy)).await.expect("connect");
    let (mut sender, conn) =
        step("handshake", hyper::client::conn::http1::handshake(TokioIo::new(tcp))).await.expect("handshake");
    let conn_task = tokio::spawn(conn.with_upgrades());
    let request = Request::get(path)
        .header(header::HOST, "ws.example.com")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = step("the 101", sender.send_request(request)).await.expect("a response");
    (response, sender, conn_task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    within(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = upgrade_echo_upstream(seen.clone()).await;
        let proxy = Proxy::start(&route("ws", "/ws", &[&upstream.url()], ""));
        assert_clean(&proxy);

        let (response, sender, conn_task) = open_tunnel(proxy.http, "/ws/chat").await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers().get(header::UPGRADE).map(HeaderValue::as_bytes), Some(&b"websocket"[..]));
        assert_eq!(
            response.headers().get("sec-websocket-accept").map(HeaderValue::as_bytes),
            Some(&b"test-accept"[..])
        );
        let upgraded = step("the upgrade", hyper::upgrade::on(response)).await.expect("the connection upgrades");
        let mut io = TokioIo::new(upgraded);
        for message in [&b"hello through sluice"[..], &[0u8, 1, 2, 255, 254][..], &vec![b'z'; 64 * 1024][..]] {
            step("write", io.write_all(message)).await.expect("write");
            let mut echo = vec![0u8; message.len()];
            step("read the echo", io.read_exact(&mut echo)).await.expect("read the echo");
            assert_eq!(echo, message);
        }
        step("shutdown", io.shutdown()).await.expect("close the tunnel");
        // The upstream closes its side when ours closes: the tunnel ends.
        let mut rest = Vec::new();
        let n = step("EOF through the tunnel", io.read_to_end(&mut rest)).await.expect("read to EOF");
        assert_eq!(n, 0);
        drop(sender);
        let _ = step("connection task", conn_task).await;

        let headers = seen.lock().expect("lock").clone();
        assert_eq!(headers.len(), 1);
        let got = |name: &str| headers[0].get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        assert_eq!(got("upgrade").as_deref(), Some("websocket"));
        assert_eq!(got("connection").as_deref(), Some("upgrade"));
        assert_eq!(got("sec-websocket-key").as_deref(), Some("dghlihnhbxbszsbub25jzq=="));
        assert_eq!(got("sec-websocket-version").as_deref(), Some("13"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_survive_config_reloads() {
    within(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = upgrade_echo_upstream(seen.clone()).await;
        let proxy = Proxy::start(&route("ws", "/ws", &[&upstream.url()], ""));
        let (response, sender, conn_task) = open_tunnel(proxy.http, "/ws/live").await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = step("the upgrade", hyper::upgrade::on(response)).await.expect("the connection upgrades");
        let mut io = TokioIo::new(upgraded);
        // Five config changes, including one that removes the route: the
        // open tunnel keeps echoing through every one of them.
        for generation in 0..5 {
            let yaml = if generation == 3 {
                route("other", "/other", &[&upstream.url()], "")
            } else {
                route(
                    "ws",
                    "/ws",
                    &[&upstream.url()],
                    &format!("  responseTransform: {{ setHeaders: [{{ name: x-gen, value: \"{generation}\" }}] }}\n"),
                )
            };
            step("reload", proxy.reload(&yaml)).await;
            let message = format!("message after reload {generation}");
            step("write", io.write_all(message.as_bytes())).await.expect("write");
            let mut echo = vec![0u8; message.len()];
            step("read the echo", io.read_exact(&mut echo)).await.expect("the tunnel is still open");
            assert_eq!(echo, message.as_bytes());
        }
        step("shutdown", io.shutdown()).await.expect("close the tunnel");
        drop(sender);
        let _ = step("connection task", conn_task).await;
    })
    .await;
}

/// What the gRPC upstream saw: version, headers, body.
type GrpcSeen = Arc<Mutex<Vec<(Version, HeaderMap, Bytes)>>>;

/// An HTTP/2 cleartext (prior knowledge) upstream answering like a gRPC
/// server: a length-prefixed message, then trailers `grpc-status: 0`.
async fn grpc_upstream(seen: GrpcSeen) -> Server {
    Server::start(move |stream| {
        let seen = seen.clone();
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    seen.lock().expect("lock").push((parts.version, parts.headers, body));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("grpc-message", HeaderValue::from_static("all-good"));
                    let body = Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x05hello"))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    let response = Response::builder()
                        .header(header::CONTENT_TYPE, "application/grpc")
                        .body(body)
                        .expect("response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_over_h2c() {
    within(async {
        let seen: GrpcSeen = Arc::default();
        let upstream = grpc_upstream(seen.clone()).await;
        let proxy = Proxy::start(&route("grpc", "/echo.Echo", &[&upstream.url()], ""));
        assert_clean(&proxy);
        let tcp = step("connect", TcpStream::connect(proxy.http)).await.expect("connect");
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x02hi");
        let request = Request::post("http://grpc.example.com/echo.Echo/Say")
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(message.clone()))
            .expect("request");
        let replies = http2(tcp, vec![request]).await;
        let reply = &replies[0];
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.header("content-type"), Some("application/grpc"));
        assert_eq!(reply.body, Bytes::from_static(b"\x00\x00\x00\x00\x05hello"));
        let trailers = reply.trailers.as_ref().expect("the response has trailers");
        assert_eq!(trailers.get("grpc-status").map(HeaderValue::as_bytes), Some(&b"0"[..]));
        assert_eq!(trailers.get("grpc-message").map(HeaderValue::as_bytes), Some(&b"all-good"[..]));

        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1);
        let (version, headers, body) = &seen[0];
        assert_eq!(*version, Version::HTTP_2, "gRPC goes upstream over HTTP/2");
        assert_eq!(headers.get(header::TE).map(HeaderValue::as_bytes), Some(&b"trailers"[..]));
        assert_eq!(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes), Some(&b"application/grpc"[..]));
        assert_eq!(*body, message);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_the_limit_get_431() {
    within(async {
        let upstream = Upstream::named("ok").await;
        let limits = Limits { max_header_bytes: 8 * 1024, ..Limits::default() };
        let proxy = Proxy::start_with(&route("all", "/", &[&upstream.url()], ""), limits, false);
        assert_clean(&proxy);

        let small = format!(
            "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Fill: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(4 * 1024)
        );
        let answer = raw_exchange(proxy.http, small.as_bytes()).await;
        assert_eq!(answer.status_line(), "HTTP/1.1 200 OK", "headers under the limit are served: {answer:?}");
        assert_eq!(answer.body, b"ok");

        let big = format!(
            "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Fill: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(16 * 1024)
        );
        let answer = raw_exchange(proxy.http, big.as_bytes()).await;
        assert!(answer.status_line().starts_with("HTTP/1.1 431"), "headers over the limit get 431: {answer:?}");
        assert_eq!(upstream.hits(), 1, "only the small request reached the upstream");
    })
    .await;
}

/// A body of this many KiB with no declared length (sent chunked).
struct Chunked(usize);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_gets_413_problem_json() {
    within(async {
        let upstream =
            Upstream::start(|seen| Response::new(Full::new(Bytes::from(format!("{}", seen.body.len()))))).await;
        let limits = Limits { max_body_bytes: 1024, ..Limits::default() };
        let proxy = Proxy::start_with(&route("all", "/", &[&upstream.url()], ""), limits, false);
        assert_clean(&proxy);
        let post = |size: usize| {
            Request::post("/upload")
                .header(header::HOST, "a.example.com")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .expect("request")
        };

        let tcp = step("connect", TcpStream::connect(proxy.http)).await.expect("connect");
        let replies = http1(tcp, vec![post(1024)]).await;
        assert_eq!(replies[0].status, StatusCode::OK, "a body at the limit is served: {}", replies[0].text());
        assert_eq!(replies[0].text(), "1024");

        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
                .to_vec();
        request.extend_from_slice(&[b'x'; 4096]);
        let answer = raw_exchange(proxy.http, &request).await;
        assert!(answer.status_line().starts_with("HTTP/1.1 413"), "{answer:?}");
        assert_problem(&answer, "body-too-large", 413);
        assert_eq!(upstream.hits(), 1, "the oversized body never reached the upstream");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_over_the_limit_gets_413() {
    within(async {
        let upstream =
            Upstream::start(|seen| Response::new(Full::new(Bytes::from(format!("{}", seen.body.len()))))).await;
        let limits = Limits { max_body_bytes: 4 * 1024, ..Limits::default() };
        let proxy = Proxy::start_with(&route("all", "/", &[&upstream.url()], ""), limits, false);
        assert_clean(&proxy);
        let post = |kib: usize| {
            Request::post("/upload").header(header::HOST, "a.example.com").body(Chunked(kib)).expect("request")
        };

        let tcp = step("connect", TcpStream::connect(proxy.http)).await.expect("connect");
        let replies = http1(tcp, vec![post(2)]).await;
        assert_eq!(replies[0].status, StatusCode::OK, "{}", replies[0].text());
        assert_eq!(replies[0].text(), "2048");

        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: a.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        for _ in 0..64 {
            request.extend_from_slice(b"400\r\n");
            request.extend_from_slice(&[b'x'; 1024]);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let answer = raw_exchange(proxy.http, &request).await;
        assert!(answer.status_line().starts_with("HTTP/1.1 413"), "{answer:?}");
        assert_problem(&answer, "body-too-large", 413);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown

/// An upstream that reports each request's arrival on `arrived`, then
/// answers `slow` after 500 ms (100 ms for `/warm`).
async fn slow_upstream(arrived: mpsc::UnboundedSender<()>) -> Server {
    Server::start(move |stream| {
        let arrived = arrived.clone();
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let arrived = arrived.clone();
                async move {
                    let _ = arrived.send(());
                    let delay = if req.uri().path() == "/warm" { 100 } else { 500 };
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow"))))
                }
            });
            // HTTP/1.1, or HTTP/2 with prior knowledge (gRPC from the proxy).
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

async fn arrivals(arrived: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        step("a request reaches the upstream", arrived.recv()).await.expect("the upstream is running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_then_refuses_connections() {
    within(async {
        let (tx, mut arrived) = mpsc::unbounded_channel();
        let upstream = slow_upstream(tx).await;
        let limits = Limits { shutdown_grace_ms: 10_000, ..Limits::default() };
        let mut proxy = Proxy::start_with(&route("slow", "/", &[&upstream.url()], ""), limits, false);
        assert_clean(&proxy);
        let (http, admin) = (proxy.http, proxy.admin);

        // An idle keep-alive connection must not hold shutdown up.
        let idle = step("connect", TcpStream::connect(http)).await.expect("connect");
        let (mut idle_sender, idle_conn) =
            step("handshake", hyper::client::conn::http1::handshake(TokioIo::new(idle))).await.expect("handshake");
        let idle_task = tokio::spawn(idle_conn);
        let warm =
            step("warm-up request", idle_sender.send_request(get("/warm", "a.example.com"))).await.expect("a response");
        assert_eq!(Reply::read(warm).await.status, StatusCode::OK);
        arrivals(&mut arrived, 1).await;

        let tcp = step("connect", TcpStream::connect(http)).await.expect("connect");
        let in_flight = tokio::spawn(http1(tcp, vec![get("/slow", "a.example.com")]));
        arrivals(&mut arrived, 1).await;

        let started = Instant::now();
        let shutdown = tokio::task::spawn_blocking(move || {
            proxy.shutdown();
            proxy
        });
        let replies = step("the in-flight request", in_flight).await.expect("the request task");
        assert_eq!(replies[0].status, StatusCode::OK, "{}", replies[0].text());
        assert_eq!(replies[0].text(), "slow");
        let proxy = step("shutdown", shutdown).await.expect("shutdown completes");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "shutdown waited {took:?}: longer than the in-flight request");

        // The idle connection was closed by the proxy.
        let _ = step("the idle connection closes", idle_task).await;
        drop(idle_sender);

        for addr in [http, admin] {
            let outcome = step("connect after shutdown", TcpStream::connect(addr)).await;
            let err = outcome.expect_err("no new connection after shutdown");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}: {err}");
        }
        drop(proxy);
    })
    .await;
}

/// One request on its own connection: HTTP/1.1, or gRPC-style HTTP/2
/// with prior knowledge (which the proxy sends upstream over HTTP/2).
async fn one_request(proxy: SocketAddr, path: &'static str, grpc: bool) -> Reply {
    let tcp = step("connect", TcpStream::connect(proxy)).await.expect("connect");
    let mut replies = if grpc {
        let request = Request::post(format!("http://a.example.com{path}"))
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
            .expect("request");
        http2(tcp, vec![request]).await
    } else {
        http1(tcp, vec![get(path, "a.example.com")]).await
    };
    replies.remove(0)
}

/// A proxy with many workers: warm-up requests leave upstream connections
/// opened (and driven) by some workers, then requests in flight when
/// shutdown starts must all complete. A worker may be driving an upstream
/// connection that another worker's in-flight request uses (the shared
/// client multiplexes every gRPC request on one HTTP/2 connection), so no
/// worker may stop its runtime before every worker has drained.
async fn shutdown_on_many_workers(workers: usize, warm: usize, slow: usize, grpc: bool) {
    let (tx, mut arrived) = mpsc::unbounded_channel();
    let upstream = slow_upstream(tx).await;
    let dir = support::TempDir::new();
    dir.write("routes.yaml", &route("slow", "/", &[&upstream.url()], ""));
    let gateway = Gateway::new(Limits { shutdown_grace_ms: 10_000, ..Limits::default() }, "test");
    assert!(standalone::apply(&gateway, standalone::load(&dir.0)), "the config installs");
    let config = ServerConfig {
        http: vec!["127.0.0.1:0".parse().expect("addr")],
        https: Vec::new(),
        admin: "127.0.0.1:0".parse().expect("addr"),
        workers,
        tls_default_host: None,
    };
    let running = sluice_proxy::start(gateway, &config).expect("the proxy starts");
    let http = running.http[0];
    let wave =
        |path: &'static str, n: usize| (0..n).map(|_| tokio::spawn(one_request(http, path, grpc))).collect::<Vec<_>>();

    for task in wave("/warm", warm) {
        let reply = step("warm-up", task).await.expect("the request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    arrivals(&mut arrived, warm).await;

    let in_flight = wave("/slow", slow);
    arrivals(&mut arrived, slow).await;
    let shutdown = tokio::task::spawn_blocking(move || running.shutdown());
    for task in in_flight {
        let reply = step("an in-flight request", task).await.expect("the request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "slow");
    }
    step("shutdown", shutdown).await.expect("shutdown completes");
    let refused = step("connect after shutdown", TcpStream::connect(http)).await;
    assert!(refused.is_err(), "no new connection after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_http1_requests_in_flight_on_many_workers() {
    within(shutdown_on_many_workers(8, 8, 8, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_grpc_requests_in_flight_on_many_workers() {
    // One warm-up request opens the shared HTTP/2 upstream connection on
    // one worker; one slow request most likely lands on another worker.
    within(shutdown_on_many_workers(16, 1, 1, true)).await;
}

// ---------------------------------------------------------------- slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_slow_clients_are_cut_off_after_the_header_read_timeout() {
    within(async {
        // (Idle keep-alive connections follow their own timeout, set short here.)
        let limits = Limits { header_read_timeout_ms: 300, keep_alive_timeout_ms: 300, ..Limits::default() };
        let direct = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: ok }\nspec:\n  backend: { directResponse: { status: 200, body: ok } }\n";
        let proxy = Proxy::start_with(direct, limits, false);
        let closed_within = |mut stream: TcpStream| async move {
            let started = Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        };
        // A client that connects and never sends a byte.
        let silent = TcpStream::connect(proxy.http).await.expect("connect");
        let waited = closed_within(silent).await.expect("a silent connection is closed");
        assert!(waited >= Duration::from_millis(250), "closed too early: {waited:?}");

        // A client that sends half a request head.
        let mut slow = TcpStream::connect(proxy.http).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        assert!(closed_within(slow).await.is_some(), "a half-sent head is cut off");

        // A keep-alive connection left idle after a request.
        let mut idle = TcpStream::connect(proxy.http).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        assert!(closed_within(idle).await.is_some(), "an idle keep-alive connection is closed");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Issue 13: tunnels, deadlines and TLS hardening

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_tunnel_is_closed_and_counted() {
    within(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = upgrade_echo_upstream(seen.clone()).await;
        let proxy = Proxy::start(&route("ws", "/ws", &[&upstream.url()], "  timeouts: { idle: 300ms }\n"));
        sluice_proxy::calllog::capture();
        let (response, _sender, _conn_task) = open_tunnel(proxy.http, "/ws/idle").await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("id").to_owned();
        let upgraded = step("the upgrade", hyper::upgrade::on(response)).await.expect("the connection upgrades");
        let mut io = TokioIo::new(upgraded);
        step("write", io.write_all(b"ping")).await.expect("write");
        let mut echo = [0u8; 4];
        step("read the echo", io.read_exact(&mut echo)).await.expect("echo");
        // Then silence: the proxy closes the tunnel after 300 ms.
        let mut rest = Vec::new();
        let closed_at = Instant::now();
        let _ = step("the idle tunnel closes", io.read_to_end(&mut rest)).await;
        assert!(closed_at.elapsed() < Duration::from_secs(5));
        let line = support::call_log_line_with(&["\"kind\":\"tunnel\"", &id]).await;
        let json: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(json["request_id"], id.as_str(), "{line}");
        assert_eq!(json["bytes_in"], 4, "{line}");
        assert_eq!(json["bytes_out"], 4, "{line}");
        assert_eq!(json["error"], "tunnel-idle-timeout", "{line}");
        let metrics = support::get(&proxy.admin_url("/metrics")).await.text();
        assert!(metrics.contains(r#"sluice_tunnels_total{route="default/ws"} 1"#), "{metrics}");
        assert!(
            metrics.contains(r#"sluice_tunnel_bytes_total{route="default/ws",direction="upstream"} 4"#),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_without_sni_get_the_default_host_or_nothing() {
    within(async {
        let setup = TlsSetup::start().await;
        // No SNI: refused, never some route's certificate.
        let client = setup.pki.client_sni(&[b"http/1.1"], false);
        assert!(tls_connect(setup.https(), ALPHA, &client).await.is_err(), "no certificate without SNI");

        // With --tls-default-host, that host's certificate.
        let pki = Pki::new();
        let beta = pki.leaf(BETA);
        let upstream = Upstream::named("beta").await;
        let yaml = [tls_secret("beta-tls", &beta), tls_route("beta", BETA, "beta-tls", &upstream.url())].concat();
        let dir = support::TempDir::new();
        dir.write("routes.yaml", &yaml);
        let gateway = Gateway::new(Limits::default(), "test");
        assert!(standalone::apply(&gateway, standalone::load(&dir.0)));
        let config = ServerConfig {
            http: Vec::new(),
            https: vec!["127.0.0.1:0".parse().expect("addr")],
            admin: "127.0.0.1:0".parse().expect("addr"),
            workers: 1,
            tls_default_host: Some(BETA.to_owned()),
        };
        let running = sluice_proxy::start(gateway, &config).expect("starts");
        let client = pki.client_sni(&[b"http/1.1"], false);
        let stream = tls_connect(running.https[0], BETA, &client).await.expect("the default host's certificate");
        assert_eq!(peer_certificate(&stream), beta.der);
        drop(stream);
        running.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_host_the_connection_certificate_does_not_cover_gets_421() {
    within(async {
        let setup = TlsSetup::start().await;
        for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
            let client = setup.pki.client(&[alpn]);
            let stream = tls_connect(setup.https(), ALPHA, &client).await.expect("handshake");
            let requests = vec![get(&format!("https://{ALPHA}/"), ALPHA), get(&format!("https://{BETA}/"), BETA)];
            let replies = if alpn == b"h2" {
                let requests = requests
                    .into_iter()
                    .map(|r| {
                        let (mut parts, body) = r.into_parts();
                        parts.version = Version::HTTP_2;
                        parts.headers.remove(header::HOST);
                        Request::from_parts(parts, body)
                    })
                    .collect();
                http2(stream, requests).await
            } else {
                http1(stream, requests).await
            };
            assert_eq!(replies[0].status, StatusCode::OK, "{:?}", alpn);
            assert_eq!(replies[1].status, StatusCode::MISDIRECTED_REQUEST, "{:?}: {}", alpn, replies[1].text());
        }
        assert_eq!(setup.beta_upstream.hits(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[b"http/1.1"]);
        // The first connection receives tickets (read after the handshake);
        // the second resumes.
        let stream = tls_connect(setup.https(), ALPHA, &client).await.expect("handshake");
        let replies = http1(stream, vec![get(&format!("https://{ALPHA}/"), ALPHA)]).await;
        assert_eq!(replies[0].status, StatusCode::OK);
        let stream = tls_connect(setup.https(), ALPHA, &client).await.expect("handshake");
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_means_http2_only() {
    within(async {
        let setup = TlsSetup::start().await;
        let client = setup.pki.client(&[b"h2"]);
        let mut stream = tls_connect(setup.https(), ALPHA, &client).await.expect("handshake");
        assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
        step("write", stream.write_all(b"GET / HTTP/1.1\r\nHost: alpha.sluice.test\r\n\r\n")).await.expect("write");
        let mut answer = Vec::new();
        let _ = step("read", stream.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "an HTTP/1.1 answer on an h2 connection: {answer:?}");
        // HTTP/2 frames: SETTINGS (type 4) then GOAWAY (type 7) with PROTOCOL_ERROR (1).
        let goaway = answer.windows(4).any(|w| w[3] == 7) && answer.ends_with(&[0, 0, 0, 1]);
        assert!(goaway, "a GOAWAY with PROTOCOL_ERROR: {answer:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_header_deadline() {
    within(async {
        let pki = Pki::new();
        let alpha = pki.leaf(ALPHA);
        let upstream = Upstream::named("alpha").await;
        let yaml = [tls_secret("alpha-tls", &alpha), tls_route("alpha", ALPHA, "alpha-tls", &upstream.url())].concat();
        let limits = Limits { header_read_timeout_ms: 300, keep_alive_timeout_ms: 1_500, ..Limits::default() };
        let proxy = Proxy::start_with(&yaml, limits, true);
        let https = proxy.https.expect("tls");
        let closes = |what: &'static str, mut io: Box<dyn AsyncReadWrite>| async move {
            let started = Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                match step(what, io.read(&mut buf)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        };
        // One byte, then silence.
        let mut tcp = TcpStream::connect(proxy.http).await.expect("connect");
        tcp.write_all(b"G").await.expect("write");
        closes("a byte then silence", Box::new(tcp)).await;
        // The HTTP/2 preface, then silence.
        let mut tcp = TcpStream::connect(proxy.http).await.expect("connect");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("write");
        closes("an h2c preface then silence", Box::new(tcp)).await;
        // A TLS handshake, then silence (both ALPNs).
        for offer in [&b"http/1.1"[..], &b"h2"[..]] {
            let stream = tls_connect(https, ALPHA, &pki.client(&[offer])).await.expect("handshake");
            closes("TLS then silence", Box::new(stream)).await;
        }
        // Idle between requests: closed after the keep-alive timeout, while
        // the client still holds the connection.
        let tcp = TcpStream::connect(proxy.http).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        let task = tokio::spawn(conn);
        let reply =
            Reply::read(step("a response", sender.send_request(get("/", ALPHA))).await.expect("response")).await;
        assert_eq!(reply.status, StatusCode::OK);
        // Idle for longer than the header deadline: still open (the two
        // timeouts are separate), so a second request is served.
        tokio::time::sleep(Duration::from_millis(600)).await; // the gap under test
        let reply =
            Reply::read(step("a response", sender.send_request(get("/", ALPHA))).await.expect("response")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let idle_since = Instant::now();
        let _ = step("the idle connection closes", task).await;
        assert!(idle_since.elapsed() >= Duration::from_millis(1_000), "closed by the keep-alive timeout, not before");
        drop(sender);
    })
    .await;
}

/// A stream the deadline test reads from.
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A TLS upstream answering `tls ok`, with `leaf`'s certificate; it asks
/// for a client certificate signed by `pki` when `mutual`.
async fn tls_upstream(pki: &Pki, leaf: &Leaf, mutual: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).expect("CA");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = builder.with_single_cert(vec![leaf.der.clone()], key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, task)
}

/// A Service `name` on port 443 with `appProtocol`, its endpoint at `addr`.
fn service_on(name: &str, app_protocol: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec: {{ ports: [{{ name: web, port: 443, appProtocol: \"{app_protocol}\" }}] }}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{ name: {name}-0, labels: {{ kubernetes.io/service-name: {name} }} }}\naddressType: IPv4\nports: [{{ name: web, port: {} }}]\nendpoints: [{{ addresses: [\"127.0.0.1\"] }}]\n---\n",
        addr.port()
    )
}

/// An ApiRoute on `path` to Service `service` port 443 with `tls` (YAML
/// flow mapping, or empty).
fn service_route(name: &str, path: &str, service: &str, tls: &str) -> String {
    let tls = if tls.is_empty() { String::new() } else { format!(", tls: {tls}") };
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: {name} }}\nspec:\n  matches: [{{ path: {{ type: PathPrefix, value: {path} }} }}]\n  backend: {{ services: [{{ name: {service}, port: 443{tls} }}] }}\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_backends_speak_tls_with_their_own_ca_sni_and_client_certificate() {
    within(async {
        let pki = Pki::new();
        let server = pki.leaf("web.default.svc");
        let client = pki.leaf("gateway.sluice.test");
        let (mutual, _m) = tls_upstream(&pki, &server, true).await;
        let (plain, _p) = tls_upstream(&pki, &server, false).await;
        let ca = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: web-ca }}\nstringData:\n  ca.crt: |\n{}---\n",
            indent(&pki.ca.pem())
        );
        let yaml = [
            ca,
            tls_secret("gateway-client", &client),
            service_on("web", "https", mutual),
            service_on("open", "https", plain),
            service_route(
                "mtls",
                "/mtls",
                "web",
                "{ ca: { secretName: web-ca }, clientCertificateSecret: gateway-client }",
            ),
            service_route("no-client", "/no-client", "web", "{ ca: { secretName: web-ca } }"),
            service_route("by-app-protocol", "/open", "open", ""),
            service_route("sni", "/sni", "open", "{ sni: web.default.svc, ca: { secretName: web-ca } }"),
            service_route("wrong-sni", "/wrong-sni", "open", "{ sni: other.default.svc, ca: { secretName: web-ca } }"),
        ]
        .concat();
        let proxy = Proxy::start(&yaml);
        assert_clean(&proxy);
        let answer = support::get(&proxy.url("/mtls")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "tls ok"));
        assert_eq!(support::get(&proxy.url("/no-client")).await.status, 502, "the upstream wants a client certificate");
        // appProtocol: https alone: TLS with the public web roots, which do
        // not sign the test CA's certificate.
        assert_eq!(support::get(&proxy.url("/open")).await.status, 502);
        // The name verified defaults to NAME.NAMESPACE.svc and can be set.
        let answer = support::get(&proxy.url("/sni")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "tls ok"));
        assert_eq!(support::get(&proxy.url("/wrong-sni")).await.status, 502);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_protocol_is_spoken_as_cleartext_http2() {
    within(async {
        // An upstream that speaks HTTP/2 only.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let yaml = [service_on("grpc", "kubernetes.io/h2c", addr), service_route("h2c", "/", "grpc", "")].concat();
        let proxy = Proxy::start(&yaml);
        let answer = support::get(&proxy.url("/x")).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "HTTP/2.0"));
    })
    .await;
}
