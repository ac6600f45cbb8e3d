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
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::pipeline::{self, Connection};
use crate::state::Gateway;
use crate::{admin, calllog, tls};

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

/// Binds a listening socket with `SO_REUSEPORT`, so every worker can bind
/// the same address.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One socket per worker for each address; port 0 is resolved once.
fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> std::io::Result<(Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>)> {
    let mut bound = Vec::new();
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let first = bind(*addr).map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let actual = first.local_addr()?;
        bound.push(actual);
        per_worker[0].push(first);
        for listeners in per_worker.iter_mut().skip(1) {
            listeners.push(bind(actual)?);
        }
    }
    Ok((bound, per_worker))
}

/// Starts the workers and the admin listener.
pub fn start(gateway: Arc<Gateway>, config: &ServerConfig) -> std::io::Result<Running> {
    let workers = config.workers.max(1);
    let (http, mut http_sockets) = bind_all(&config.http, workers)?;
    let (https, mut https_sockets) = bind_all(&config.https, workers)?;
    let admin_socket = bind(config.admin)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.admin)))?;
    let admin_addr = admin_socket.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let tls_config = (!https.is_empty()).then(|| tls::server_config(gateway.clone()));
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
        let draining = draining.clone();
        let thread = std::thread::Builder::new().name(format!("sluice-worker-{worker}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sluice-proxy: worker {worker} cannot start a runtime: {e}");
                    draining.send_modify(|n| *n = n.saturating_sub(1));
                    return;
                }
            };
            let grace = Duration::from_millis(gateway.limits.shutdown_grace_ms);
            runtime.block_on(async move {
                worker_loop(gateway, plain, secure, tls_config, shutdown_rx).await;
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
            Err(e) => eprintln!("sluice-proxy: the admin listener cannot start a runtime: {e}"),
        }
    })?);
    Ok(Running { http, https, admin: admin_addr, shutdown, threads })
}

async fn worker_loop(
    gateway: Arc<Gateway>,
    plain: Vec<std::net::TcpListener>,
    secure: Vec<std::net::TcpListener>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Accept loops hold the Arc; each connection holds only a Watcher, so
    // once the loops end the Arc is unique again and can be shut down.
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = tokio::task::JoinSet::new();
    for listener in plain {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tasks.spawn(accept_loop(gateway.clone(), l, None, graceful.clone(), shutdown.clone()));
            }
            Err(e) => eprintln!("sluice-proxy: cannot use listener: {e}"),
        }
    }
    if let Some(config) = tls_config {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        for listener in secure {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    tasks.spawn(accept_loop(
                        gateway.clone(),
                        l,
                        Some(acceptor.clone()),
                        graceful.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => eprintln!("sluice-proxy: cannot use listener: {e}"),
            }
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
    // Stop accepting: the accept loops end on the same signal.
    while tasks.join_next().await.is_some() {}
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        eprintln!("sluice-proxy: connections still referenced at shutdown; closing them");
        calllog::flush();
        return;
    };
    let grace = Duration::from_millis(gateway.limits.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        tokio::select! {
            _ = graceful.shutdown() => {},
            _ = async { loop { tokio::time::sleep(Duration::from_millis(100)).await; calllog::flush(); } } => {},
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("sluice-proxy: grace period over with requests still in flight; closing them");
    }
    calllog::flush();
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    graceful: Arc<GracefulShutdown>,
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
                eprintln!("sluice-proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let graceful = graceful.watcher();
        match &tls {
            None => {
                // NB: hyper's version sniffing waits for the first byte with
                // no timer of its own, so a connection that never sends is
                // closed here after the header-read timeout.
                let timeout = Duration::from_millis(gateway.limits.header_read_timeout_ms);
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if let Ok(Ok(n)) = tokio::time::timeout(timeout, stream.peek(&mut first)).await
                        && n > 0
                    {
                        serve(gateway, stream, client, false, graceful);
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = Duration::from_millis(gateway.limits.header_read_timeout_ms);
                tokio::spawn(async move {
                    if let Ok(Ok(tls_stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        serve_tls(gateway, tls_stream, client, graceful);
                    }
                });
            }
        }
    }
}

fn builder(gateway: &Gateway) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(gateway.limits.max_header_bytes.max(8192))
        .header_read_timeout(Duration::from_millis(gateway.limits.header_read_timeout_ms))
        .writev(false);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(gateway.limits.max_header_bytes as u32);
    builder
}

fn serve(gateway: Arc<Gateway>, stream: TcpStream, client: SocketAddr, tls: bool, graceful: Watcher) {
    serve_io(gateway, TokioIo::new(stream), client, tls, graceful);
}

fn serve_tls(
    gateway: Arc<Gateway>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    client: SocketAddr,
    graceful: Watcher,
) {
    serve_io(gateway, TokioIo::new(stream), client, true, graceful);
}

fn serve_io<I>(gateway: Arc<Gateway>, io: TokioIo<I>, client: SocketAddr, tls: bool, graceful: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn_info = Connection::new(client, tls);
    let service_gateway = gateway.clone();
    let service = service_fn(move |req| {
        let gateway = service_gateway.clone();
        let conn_info = conn_info.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&gateway, conn_info, req).await) }
    });
    let builder = builder(&gateway);
    let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
    let connection = graceful.watch(connection);
    gateway.metrics.active_connections.inc();
    tokio::spawn(async move {
        let _ = connection.await;
        gateway.metrics.active_connections.dec();
    });
}
