//! Listeners and workers. Each worker is a thread with its own
//! single-threaded runtime and its own `SO_REUSEPORT` socket per listener,
//! so workers share nothing on the hot path but the snapshot pointer.
//! Connections are served by hyper (HTTP/1.1 and HTTP/2, with upgrades);
//! shutdown stops accepting, then lets in-flight requests finish within the
//! grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::pipeline::{self, Connection};
use crate::state::Gateway;
use crate::{admin, calllog, conn, tls};

/// Where to listen.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plain HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners.
    pub https: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Worker threads.
    pub workers: usize,
    /// The host whose certificate answers TLS clients without SNI; without
    /// it, such handshakes are refused.
    pub tls_default_host: Option<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Bound HTTP addresses (ports resolved).
    pub http: Vec<SocketAddr>,
    /// Bound TLS addresses.
    pub https: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, waits for in-flight requests (up to the grace
    /// period) and for every worker to exit.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Binds a listening socket. NB: without `SO_REUSEPORT`, so a second
/// process on the same port gets "address in use" instead of half the
/// connections; the workers share the one socket (each accepts from a
/// duplicate of it).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One socket per address, duplicated for each worker; port 0 is resolved
/// by the bind.
fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> std::io::Result<(Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>)> {
    let mut bound = Vec::new();
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let listener =
            bind(*addr).map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        bound.push(listener.local_addr()?);
        for listeners in per_worker.iter_mut().skip(1) {
            listeners.push(listener.try_clone()?);
        }
        per_worker[0].push(listener);
    }
    Ok((bound, per_worker))
}

/// Starts the workers and the admin listener.
pub fn start(gateway: Arc<Gateway>, config: &ServerConfig) -> std::io::Result<Running> {
    let workers = config.workers.max(1);
    let (http, mut http_sockets) = bind_all(&config.http, workers)?;
    let (https, mut https_sockets) = bind_all(&config.https, workers)?;
    if config.http.iter().chain(&config.https).any(|a| *a == config.admin && a.port() != 0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the admin listener {} is also a traffic listener", config.admin),
        ));
    }
    let admin_socket = bind(config.admin)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.admin)))?;
    let admin_addr = admin_socket.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let tls_config = match https.is_empty() {
        true => None,
        false => Some(tls::server_config(gateway.clone(), config.tls_default_host.clone())?),
    };
    // Workers still draining. Upstream connections are pooled for all
    // workers, and each is driven by the runtime of the worker that opened
    // it, so a worker keeps its runtime running until every worker has
    // drained: otherwise another worker's in-flight request would lose its
    // upstream connection ("dispatch task is gone").
    let draining = Arc::new(watch::Sender::new(workers));

    let mut threads = Vec::new();
    for worker in 0..workers {
        let gateway = gateway.clone();
        let plain = std::mem::take(&mut http_sockets[worker]);
        let secure = std::mem::take(&mut https_sockets[worker]);
        let shutdown_rx = shutdown_rx.clone();
        let tls_config = tls_config.clone();
        let default_host: Option<Arc<str>> =
            config.tls_default_host.as_deref().map(|h| Arc::from(h.to_ascii_lowercase()));
        let draining = draining.clone();
        let thread = std::thread::Builder::new().name(format!("sluice-worker-{worker}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    crate::say!("worker {worker} cannot start a runtime: {e}");
                    draining.send_modify(|n| *n = n.saturating_sub(1));
                    return;
                }
            };
            let grace = Duration::from_millis(gateway.limits.shutdown_grace_ms);
            runtime.block_on(async move {
                worker_loop(gateway, plain, secure, tls_config, default_host, shutdown_rx).await;
                draining.send_modify(|n| *n = n.saturating_sub(1));
                let mut all = draining.subscribe();
                let _ = tokio::time::timeout(grace, all.wait_for(|n| *n == 0)).await;
            });
        })?;
        threads.push(thread);
    }
    let admin_gateway = gateway.clone();
    let admin_rx = shutdown_rx.clone();
    threads.push(std::thread::Builder::new().name("sluice-admin".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(admin::serve(admin_gateway, admin_socket, admin_rx)),
            Err(e) => crate::say!("the admin listener cannot start a runtime: {e}"),
        }
    })?);
    Ok(Running { http, https, admin: admin_addr, shutdown, threads })
}

async fn worker_loop(
    gateway: Arc<Gateway>,
    plain: Vec<std::net::TcpListener>,
    secure: Vec<std::net::TcpListener>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    default_host: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Connections this worker serves: for the cap, and to wait for them
    // at shutdown.
    let open = Arc::new(watch::Sender::new(0usize));
    let acceptor = tls_config.map(|config| TlsListener {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        default_host: default_host.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let listeners = plain.into_iter().map(|l| (l, None)).chain(secure.into_iter().map(|l| (l, acceptor.clone())));
    for (listener, tls) in listeners {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tasks.spawn(accept_loop(gateway.clone(), l, tls, open.clone(), shutdown.clone()));
            }
            Err(e) => crate::say!("cannot use listener: {e}"),
        }
    }
    // The call log of this worker is flushed every 100 ms; its idle
    // upstream connections are swept every second.
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = flush.tick() => {
                calllog::flush();
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(10) {
                    crate::pool::sweep();
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Stop accepting: the accept loops end on the same signal, and every
    // connection starts closing gracefully.
    while tasks.join_next().await.is_some() {}
    let grace = Duration::from_millis(gateway.limits.shutdown_grace_ms);
    let mut remaining = open.subscribe();
    let drained = tokio::time::timeout(grace, async {
        tokio::select! {
            _ = remaining.wait_for(|n| *n == 0) => {},
            _ = async { loop { tokio::time::sleep(Duration::from_millis(100)).await; calllog::flush(); } } => {},
        }
    })
    .await;
    if drained.is_err() {
        crate::say!("grace period over with requests still in flight; closing them");
    }
    calllog::flush();
}

/// A TLS listener's handshake settings.
#[derive(Clone)]
struct TlsListener {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The name whose certificate clients without SNI get.
    default_host: Option<Arc<str>>,
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<watch::Sender<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsListener>,
    open: Arc<watch::Sender<usize>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                crate::say!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if *open.borrow() >= gateway.limits.max_connections {
            gateway.metrics.refused_connections.inc();
            if tls.is_none() {
                tokio::spawn(refuse(stream));
            }
            continue;
        }
        open.send_modify(|n| *n += 1);
        let guard = OpenGuard(open.clone());
        let (gateway, tls, shutdown) = (gateway.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _guard = guard;
            gateway.metrics.active_connections.inc();
            serve(&gateway, stream, client, tls, shutdown).await;
            gateway.metrics.active_connections.dec();
        });
    }
}

/// Tells a client over the connection cap why it is turned away.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"type":"https://sluice.dev/problems/too-many-connections","title":"Too many connections","status":503,"detail":"this gateway worker is at its connection limit; try again"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Serves one connection: TLS (if any), the protocol (ALPN, else the
/// first bytes), then HTTP until a deadline, the client or shutdown ends it.
async fn serve(
    gateway: &Arc<Gateway>,
    mut stream: TcpStream,
    client: SocketAddr,
    tls: Option<TlsListener>,
    shutdown: watch::Receiver<bool>,
) {
    let first_request = tokio::time::Instant::now() + Duration::from_millis(gateway.limits.header_read_timeout_ms);
    let client = match gateway.limits.proxy_protocol {
        false => client,
        true => match tokio::time::timeout_at(first_request, conn::read_proxy_header(&mut stream)).await {
            Ok(Ok(Some(original))) => original,
            Ok(Ok(None)) => client,
            _ => return,
        },
    };
    let Some(TlsListener { acceptor, default_host }) = tls else {
        let Ok(Ok(Some((protocol, prefix)))) = tokio::time::timeout_at(first_request, conn::sniff(&mut stream)).await
        else {
            return;
        };
        let conn_info = Connection::plain(client);
        let io = prefixed(gateway, prefix, stream, protocol, &conn_info);
        return serve_http(gateway, io, conn_info, protocol, first_request, shutdown).await;
    };
    let Ok(Ok(mut stream)) = tokio::time::timeout_at(first_request, acceptor.accept(stream)).await else { return };
    let (_, session) = stream.get_ref();
    let sni: Option<Arc<str>> = session.server_name().map(|s| Arc::from(s.to_ascii_lowercase())).or(default_host);
    // NB: ALPN decides; a client that negotiated h2 gets HTTP/2 only (an
    // invalid preface is a connection error, never an HTTP/1.1 400).
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let (protocol, prefix) = match alpn.as_deref() {
        Some(b"http/1.1") => (conn::Protocol::Http1, Vec::new()),
        _ => match tokio::time::timeout_at(first_request, conn::sniff(&mut stream)).await {
            Ok(Ok(Some((conn::Protocol::Http1, _)))) if alpn.is_some() => {
                // h2 was negotiated: anything but the preface is a
                // connection error (RFC 9113 §3.4), never an HTTP/1.1 400.
                conn::refuse_h2(&mut stream).await;
                return;
            }
            Ok(Ok(Some(sniffed))) => sniffed,
            _ => return,
        },
    };
    let conn_info = Connection::tls(client, sni);
    let io = prefixed(gateway, prefix, stream, protocol, &conn_info);
    serve_http(gateway, io, conn_info, protocol, first_request, shutdown).await;
}

/// A connection's IO, with its write-stall timeout, and on HTTP/1.1 with
/// problem answers to heads the parser refuses.
fn prefixed<I>(
    gateway: &Gateway,
    prefix: Vec<u8>,
    stream: I,
    protocol: conn::Protocol,
    conn_info: &Connection,
) -> conn::Prefixed<I> {
    let io = conn::Prefixed::new(prefix, stream, Duration::from_millis(gateway.limits.body_idle_timeout_ms));
    match protocol {
        conn::Protocol::Http1 => io.answer_refusals(conn_info.activity.clone()),
        conn::Protocol::Http2 => io,
    }
}

async fn serve_http<I>(
    gateway: &Arc<Gateway>,
    io: I,
    conn_info: Connection,
    protocol: conn::Protocol,
    first_request: tokio::time::Instant,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &gateway.limits;
    let activity = conn_info.activity.clone();
    let client_ip = conn_info.client_ip.clone();
    let service_gateway = gateway.clone();
    let service = service_fn(move |req| {
        let gateway = service_gateway.clone();
        let conn_info = conn_info.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&gateway, conn_info, req).await) }
    });
    let deadlines =
        conn::Deadlines { first_request, keep_alive_idle: Duration::from_millis(limits.keep_alive_timeout_ms) };
    match protocol {
        conn::Protocol::Http1 => {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // NB: max_header_size is the exact head limit; the read
                // buffer cannot be smaller than hyper's 8 KiB minimum.
                .max_buf_size(limits.max_header_bytes.max(8192))
                .max_header_size(limits.max_header_bytes)
                .max_headers(limits.max_headers)
                // NB: no hyper header_read_timeout: it also runs while a
                // keep-alive connection waits for its next request, which
                // would close idle connections at the header deadline. The
                // first head's deadline and the idle timeout are `drive`'s.
                .header_read_timeout(None)
                .writev(false)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            if let Some(error) = conn::drive(connection, activity.clone(), deadlines, shutdown).await {
                record_refused_head(gateway, &error, &activity, &client_ip);
            }
        }
        conn::Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .keep_alive_interval(Some(H2_PING_INTERVAL))
                .keep_alive_timeout(H2_PING_INTERVAL);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            conn::drive(connection, activity, deadlines, shutdown).await;
        }
    }
}

/// Records a request head that hyper's parser refused (answered with a
/// problem document in place of hyper's bare answer, see
/// [`conn::Prefixed`]): the unrouted series and a call log line with the
/// request id the client got.
fn record_refused_head(
    gateway: &Gateway,
    error: &hyper::Error,
    activity: &conn::Activity,
    client_ip: &http::HeaderValue,
) {
    let status = match activity.refused() {
        Some((status, _)) => *status,
        None if error.is_parse_too_large() => 431,
        None if error.is_parse() => 400,
        None => return,
    };
    let kind = match status {
        431 => "header-too-large",
        414 => "uri-too-long",
        _ => "bad-request",
    };
    let detail = crate::upstream::error_chain(error);
    let request_id = activity.refused().map(|(_, id)| id.as_str());
    pipeline::record_unanswered(gateway, status, kind, &detail, request_id, client_ip);
}

/// How often an HTTP/2 connection is pinged, and how long an answer may
/// take before the connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
