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

async fn connect(
    address: &str,
    connect_timeout: Duration,
    upgrades: bool,
) -> Result<SendRequest<RequestBody>, SendError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
        Err(_) => {
            return Err(SendError::Connect(format!("tcp connect timed out after {} ms", connect_timeout.as_millis())));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await.map_err(SendError::Http)?;
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

/// Sends a request to `address` over a pooled connection.
pub async fn send(
    address: &Arc<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    request: Request<RequestBody>,
) -> Result<(Response<Incoming>, Checkin), SendError> {
    // Upgrades (WebSocket) take the connection over: never pooled.
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let mut request = request;
    loop {
        let (mut sender, reused) = match (!upgrade).then(|| checkout(address, idle_timeout)).flatten() {
            Some(sender) => (sender, true),
            // NB: boxed: opening a connection is the rare path, and its
            // state would otherwise be carried (and copied) by every request.
            None => (Box::pin(connect(address, connect_timeout, upgrade)).await?, false),
        };
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Err(SendError::Connect("the new connection closed before the request".into()));
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, Checkin { sender, address: address.clone(), idle_timeout })),
            Err(mut err) => match err.take_message() {
                // Never written: safe to send again, on a fresh connection.
                Some(unsent) if reused => request = unsent,
                _ => return Err(SendError::Http(err.into_error())),
            },
        }
    }
}
