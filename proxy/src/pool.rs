//! A per-thread pool of HTTP/1.1 upstream connections (plain TCP).
//!
//! Each worker thread keeps its own idle connections, so checkout and
//! checkin touch no lock and no other thread. A connection goes back to
//! the pool when its response body has ended; one whose body was cut short
//! is dropped. A request whose pooled connection turns out to be dead
//! before the request was written is sent again on a fresh connection.
//! TLS and HTTP/2 upstreams use the shared hyper-util client instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// At most this many idle connections per upstream address and thread.
const MAX_IDLE: usize = 512;

/// Idle connections of one address: sender, idle since, idle timeout.
type Idle = Vec<(SendRequest<RequestBody>, Instant, Duration)>;

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Idle, crate::balance::Fnv>> = RefCell::new(HashMap::default());
}

/// Why a pooled send failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection could not be opened (refused, unreachable, timeout).
    Connect(String),
    /// The connection failed after it was opened.
    Http(hyper::Error),
}

/// Returns a connection to this thread's pool when its response ends.
#[derive(Debug)]
pub struct Checkin {
    sender: SendRequest<RequestBody>,
    address: Arc<str>,
    idle_timeout: Duration,
}

impl Checkin {
    /// Puts the connection back, unless it is closed.
    pub fn put(self) {
        if self.sender.is_closed() {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.address).or_default();
            if list.len() < MAX_IDLE {
                list.push((self.sender, Instant::now(), self.idle_timeout));
            }
        });
    }
}

/// Takes the most recently used live connection, dropping stale ones.
fn checkout(address: &Arc<str>, idle_timeout: Duration) -> Option<SendRequest<RequestBody>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(address)?;
        while let Some((sender, since, _)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < idle_timeout {
                return Some(sender);
            }
        }
        None
    })
}

/// Closes this thread's connections that have been idle longer than their
/// route's idle timeout (or that the upstream closed). Each worker calls it
/// about once a second, so idle connections do not linger when traffic stops.
pub fn sweep() {
    crate::h1::sweep();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|(sender, since, timeout)| !sender.is_closed() && since.elapsed() < *timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    });
}

/// How many idle connections this thread holds (for tests and metrics).
pub fn idle_connections() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(Vec::len).sum())
}

/// TLS to an upstream addressed by IP (a Service endpoint): the client
/// config (CA, client certificate) and the name to send and verify.
#[derive(Clone)]
pub struct TlsTarget {
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
    /// The server name.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Where one pooled connection goes: the pool key (the address, plus the
/// TLS identity for TLS targets, so connections made with one client
/// certificate or CA are never reused for another), the address, and TLS.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pool key.
    pub key: Arc<str>,
    /// `host:port` to connect to.
    pub address: Arc<str>,
    /// TLS, if the upstream speaks it.
    pub tls: Option<TlsTarget>,
}

async fn connect(
    target: &Target,
    connect_timeout: Duration,
    upgrades: bool,
) -> Result<SendRequest<RequestBody>, SendError> {
    let address = &*target.address;
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
        Err(_) => {
            return Err(SendError::Connect(format!("tcp connect timed out after {} ms", connect_timeout.as_millis())));
        }
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &target.tls else { return handshake(stream, upgrades).await };
    let tls_stream =
        match tokio::time::timeout(connect_timeout, tls.connector.connect(tls.server_name.clone(), stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(format!("TLS handshake with {address} failed: {e}"))),
            Err(_) => return Err(SendError::Connect(format!("TLS handshake with {address} timed out"))),
        };
    handshake(tls_stream, upgrades).await
}

/// Starts HTTP/1.1 on a connected stream; its connection task runs on this
/// worker's runtime.
async fn handshake<I>(io: I, upgrades: bool) -> Result<SendRequest<RequestBody>, SendError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        http1::Builder::new().writev(false).handshake(TokioIo::new(io)).await.map_err(SendError::Http)?;
    if upgrades {
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
    } else {
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    Ok(sender)
}

/// Sends a request to `target` over a pooled connection.
pub async fn send(
    target: &Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    request: Request<RequestBody>,
) -> Result<(Response<Incoming>, Checkin), SendError> {
    // Upgrades (WebSocket) take the connection over: never pooled.
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let mut request = request;
    loop {
        let (mut sender, reused) = match (!upgrade).then(|| checkout(&target.key, idle_timeout)).flatten() {
            Some(sender) => (sender, true),
            // NB: boxed: opening a connection is the rare path, and its
            // state would otherwise be carried (and copied) by every request.
            None => (Box::pin(connect(target, connect_timeout, upgrade)).await?, false),
        };
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Err(SendError::Connect("the new connection closed before the request".into()));
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                return Ok((response, Checkin { sender, address: target.key.clone(), idle_timeout }));
            }
            Err(mut err) => match err.take_message() {
                // Never written: safe to send again, on a fresh connection.
                Some(unsent) if reused => request = unsent,
                _ => return Err(SendError::Http(err.into_error())),
            },
        }
    }
}
