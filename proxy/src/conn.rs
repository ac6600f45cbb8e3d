//! One client connection from accept to close, with a deadline at every
//! point a client could stall it:
//!
//! ```text
//!  accept ──(TLS handshake)──> protocol: ALPN h2 -> HTTP/2 only,
//!     │                        ALPN http/1.1 -> HTTP/1.1 only,
//!     │                        none -> sniff the first bytes (h2c preface?)
//!     │
//!     ├─ until the first request starts: the header-read timeout
//!     │  (a byte then silence, a silent TLS client, an idle h2c preface)
//!     │  -> closed without an answer
//!     ├─ between requests: the keep-alive idle timeout (75 s, as nginx)
//!     │  -> graceful close (HTTP/1.1: close; HTTP/2: GOAWAY)
//!     ├─ HTTP/2: keep-alive pings; a peer that stops answering is closed
//!     └─ shutdown: graceful close, then the worker's grace period
//! ```
//!
//! A request is "in flight" from the moment its head is parsed until its
//! response body ends ([`Activity`]); idle time is counted only between.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::IdleTimer;
use crate::upstream::now_ms;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicU32,
    started: AtomicU64,
    last_ms: AtomicU64,
    /// The status and request id of the answer that replaced hyper's own
    /// to a request head its parser refused (see [`Prefixed`]).
    refused: OnceLock<(u16, String)>,
}

impl Activity {
    /// Marks a request as started; the guard ends it when dropped (at the
    /// end of its response body).
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }

    /// The status and request id sent for a request head the parser
    /// refused, once sent.
    pub fn refused(&self) -> Option<&(u16, String)> {
        self.refused.get()
    }
}

/// One request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2 (over TLS by ALPN, or cleartext with prior knowledge).
    Http2,
}

/// Reads the first bytes of a connection without ALPN and decides its
/// protocol: the HTTP/2 preface, or anything else (HTTP/1.1). Returns the
/// bytes read, to be replayed; `None` when the peer closed first.
pub async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<(Protocol, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    while buf.len() < H2_PREFACE.len() {
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - buf.len();
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((Protocol::Http1, buf)));
        }
    }
    Ok(Some((Protocol::Http2, buf)))
}

/// The PROXY protocol v2 signature.
const PROXY_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol v2 header (as load balancers such as AWS NLB or
/// HAProxy send before the client's bytes) and returns the client address
/// it carries; `None` for a `LOCAL` header (health checks) or an address
/// family other than TCP over IPv4 or IPv6. Anything else is an error: a
/// listener that expects the header never guesses.
pub async fn read_proxy_header<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<std::net::SocketAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("PROXY protocol: {what}"));
    let mut head = [0u8; 16];
    io.read_exact(&mut head).await?;
    if &head[..12] != PROXY_V2 {
        return Err(bad("no v2 signature"));
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(bad("not version 2 PROXY or LOCAL"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut rest = vec![0u8; len];
    io.read_exact(&mut rest).await?;
    if command == 0 {
        return Ok(None);
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(&rest[8..10]))))
        }
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port(&rest[32..34]))))
        }
        0x11 | 0x21 => Err(bad("address block too short")),
        _ => Ok(None),
    }
}

/// Ends an HTTP/2 connection whose preface was wrong: an empty SETTINGS
/// frame, then GOAWAY with PROTOCOL_ERROR (RFC 9113 §3.4, §6.8).
pub async fn refuse_h2<I: AsyncWrite + Unpin>(io: &mut I) {
    use tokio::io::AsyncWriteExt;
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let _ = io.write_all(&SETTINGS).await;
    let _ = io.write_all(&GOAWAY).await;
    let _ = io.shutdown().await;
}

/// A client connection's IO: first replays bytes already read (by
/// [`sniff`]), and fails a write that has waited on the client longer than
/// the idle timeout (a client that stopped reading its answer).
///
/// On HTTP/1.1 it also puts a problem answer in place of hyper's own to a
/// request head its parser refuses ([`Prefixed::answer_refusals`]): hyper
/// writes a bare `400`, `414` or `431` (no body, no request id) and shuts
/// the connection down, with no hook to answer otherwise. A write ending in
/// such a head is held back (every answer of the pipeline carries
/// `x-request-id`, so none has that shape); a shutdown next replaces it,
/// anything else sends it as it was.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Vec<u8>,
    offset: usize,
    inner: I,
    write_stall: IdleTimer,
    refusals: Option<Arc<Activity>>,
    held: Option<Held>,
}

/// Bytes hyper counts as written that are not sent yet.
#[derive(Debug)]
struct Held {
    status: u16,
    bytes: Vec<u8>,
    sent: usize,
    replaced: bool,
}

impl<I> Prefixed<I> {
    /// Replays `prefix`, then reads from `inner`; writes fail after
    /// `write_idle` without progress.
    pub fn new(prefix: Vec<u8>, inner: I, write_idle: Duration) -> Self {
        Prefixed { prefix, offset: 0, inner, write_stall: IdleTimer::new(write_idle), refusals: None, held: None }
    }

    /// Answers request heads hyper's HTTP/1.1 parser refuses with a problem
    /// document and a request id, kept in `activity` for the record.
    pub fn answer_refusals(mut self, activity: Arc<Activity>) -> Self {
        self.refusals = Some(activity);
        self
    }

    fn stalled<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending if self.write_stall.expired(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading the answer",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.write_stall.progress();
                ready
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Prefixed<I> {
    /// Sends the held bytes (hyper's head, or its replacement) and flushes.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(held) = &mut self.held {
            if held.sent == held.bytes.len() {
                let polled = Pin::new(&mut self.inner).poll_flush(cx);
                std::task::ready!(self.stalled(cx, polled))?;
                self.held = None;
                break;
            }
            let polled = Pin::new(&mut self.inner).poll_write(cx, &held.bytes[held.sent..]);
            let n = std::task::ready!(self.stalled(cx, polled))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if let Some(held) = &mut self.held {
                held.sent += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where `buf` ends in a head of hyper's own answer to a request head its
/// parser refused (`HTTP/1.1 400 Bad Request`, `content-length: 0`, `date`
/// and perhaps `connection: close`, nothing else), and its status.
fn bare_refusal(buf: &[u8]) -> Option<(usize, u16)> {
    // NB: hyper's head is under 100 bytes; only the end of a write is read.
    const TAIL: usize = 160;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail_start = buf.len().saturating_sub(TAIL);
    let tail = &buf[tail_start..];
    let start = tail.windows(7).rposition(|w| w == b"HTTP/1.")?;
    let head = &tail[start..tail.len() - 4];
    let mut lines = head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status_line = lines.next()?;
    if status_line.len() < 12 || !matches!(status_line[7], b'0' | b'1') || status_line[8] != b' ' {
        return None;
    }
    let status = std::str::from_utf8(&status_line[9..12]).ok()?.parse::<u16>().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let mut length = false;
    for line in lines {
        if line.eq_ignore_ascii_case(b"content-length: 0") {
            length = true;
        } else if line.eq_ignore_ascii_case(b"connection: close") {
            continue;
        } else if !line.get(..6).is_some_and(|name| name.eq_ignore_ascii_case(b"date: ")) {
            return None;
        }
    }
    length.then_some((tail_start + start, status))
}

/// The answer sent in place of hyper's bare one, with a new request id.
fn refusal_answer(status: u16, request_id: &str) -> Vec<u8> {
    let (kind, title, detail) = match status {
        431 => (
            "header-too-large",
            "Request header fields too large",
            "the request head has more bytes or more fields than this gateway accepts",
        ),
        414 => ("uri-too-long", "URI too long", "the request target is longer than this gateway accepts"),
        _ => ("bad-request", "Bad request", "the request head is not valid HTTP/1.1"),
    };
    let code = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    let problem = crate::errors::problem(code, kind, title, detail, request_id);
    let body = problem.body();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n",
        code.as_u16(),
        code.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.held.as_ref().is_some_and(|held| !held.replaced) {
            // hyper reads on: the held head was a real answer after all.
            std::task::ready!(this.poll_send_held(cx))?;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_some() {
            std::task::ready!(this.poll_send_held(cx))?;
        }
        let mut buf = buf;
        if this.refusals.is_some()
            && let Some((start, status)) = bare_refusal(buf)
        {
            if start == 0 {
                this.held = Some(Held { status, bytes: buf.to_vec(), sent: 0, replaced: false });
                return Poll::Ready(Ok(buf.len()));
            }
            buf = &buf[..start];
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stalled(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // NB: held bytes stay held: hyper flushes before it shuts down.
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.stalled(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let (Some(held), Some(activity)) = (&mut this.held, &this.refusals)
            && !held.replaced
        {
            let (request_id, _) = crate::pipeline::new_request_id();
            held.bytes = refusal_answer(held.status, &request_id);
            held.sent = 0;
            held.replaced = true;
            let _ = activity.refused.set((held.status, request_id));
        }
        std::task::ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.refusals.is_some() {
            // NB: one buffer at a time, so every write is checked.
            let buf = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &**buf);
            return self.poll_write(cx, buf);
        }
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stalled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.refusals.is_none() && self.inner.is_write_vectored()
    }
}

/// A hyper server connection that can be asked to finish gracefully.
pub trait Graceful: Future<Output = Result<(), hyper::Error>> {
    /// Stops taking new requests; ends once those in flight are answered.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept until the first request has started.
    pub first_request: Instant,
    /// Longest time without a request in flight, after the first.
    pub keep_alive_idle: Duration,
}

/// Drives a connection to its end, closing it at its deadlines and
/// gracefully at shutdown. Returns the error the connection ended with, if
/// any (a request head hyper's parser refused, for the record).
pub async fn drive<C: Graceful>(
    conn: C,
    activity: Arc<Activity>,
    deadlines: Deadlines,
    mut shutdown: watch::Receiver<bool>,
) -> Option<hyper::Error> {
    let mut conn = std::pin::pin!(conn);
    // NB: the earlier of the two deadlines, so a keep-alive timeout shorter
    // than the header deadline still applies after a quick first request.
    let mut deadline = deadlines.first_request.min(Instant::now() + deadlines.keep_alive_idle);
    let mut closing = *shutdown.borrow();
    // Set once the idle timeout asked the connection to close: a
    // connection still open a second later (a half-sent head keeps an
    // HTTP/1.1 connection reading) is dropped if nothing is in flight.
    let mut idle_closing = false;
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            // NB: in order, the connection first: no random start to draw
            // on every wake-up of a busy connection.
            biased;
            ended = conn.as_mut() => return ended.err(),
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep_until(deadline), if !closing || idle_closing => {
                if activity.started.load(Ordering::Relaxed) == 0 {
                    if Instant::now() < deadlines.first_request {
                        deadline = deadlines.first_request;
                        continue;
                    }
                    // No request head in time: close without an answer.
                    return None;
                }
                if activity.active.load(Ordering::Relaxed) > 0 {
                    deadline = Instant::now() + deadlines.keep_alive_idle;
                    continue;
                }
                if idle_closing {
                    return None;
                }
                let idle_ms = now_ms().saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                let idle = Duration::from_millis(idle_ms);
                if idle >= deadlines.keep_alive_idle {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    idle_closing = true;
                    deadline = Instant::now() + Duration::from_secs(1);
                } else {
                    deadline = Instant::now() + (deadlines.keep_alive_idle - idle);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_protocol_v2_headers_give_the_client_address() {
        let mut header = PROXY_V2.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xb3, 0, 80]);
        header.extend_from_slice(b"GET /");
        let mut io = &header[..];
        let client = read_proxy_header(&mut io).await.expect("a valid header");
        assert_eq!(client, Some("203.0.113.7:5555".parse().expect("addr")));
        assert_eq!(io, b"GET /");
        // LOCAL: no address.
        let mut local = PROXY_V2.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read_proxy_header(&mut &local[..]).await.expect("valid"), None);
        // No signature: an error, never a guess.
        assert!(read_proxy_header(&mut &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]).await.is_err());
    }

    #[test]
    fn only_hypers_bare_refusals_are_taken_for_one() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 17:13:13 GMT\r\n\r\n";
        assert_eq!(bare_refusal(bare), Some((0, 431)));
        // At the end of a write that also ends an earlier answer.
        let mut both = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: a\r\n\r\nok".to_vec();
        both.extend_from_slice(bare);
        assert_eq!(bare_refusal(&both), Some((both.len() - bare.len(), 431)));
        // The pipeline's answers carry a request id; other statuses pass.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: a\r\n\r\n";
        assert_eq!(bare_refusal(ours), None);
        let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_refusal(not_found), None);
        assert_eq!(bare_refusal(b"HTTP/1.1 400 Bad Request\r\ndate: x\r\n\r\n"), None, "no length");
        assert_eq!(bare_refusal(b"body"), None);
        let answer = refusal_answer(431, "abc");
        let text = String::from_utf8(answer).expect("text");
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
        assert!(text.contains("x-request-id: abc\r\n") && text.contains("\"requestId\":\"abc\""), "{text}");
    }

    #[tokio::test]
    async fn sniffing_tells_h2_from_http1_and_replays_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n").await.expect("write");
        let (protocol, bytes) = sniff(&mut server).await.expect("read").expect("bytes");
        assert_eq!(protocol, Protocol::Http1);
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&bytes), "{bytes:?}");
        let mut replayed = Prefixed::new(bytes, server, Duration::from_secs(1));
        let mut first = [0u8; 16];
        replayed.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"GET / HTTP/1.1\r\n");

        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, H2_PREFACE).await.expect("write");
        let (protocol, bytes) = sniff(&mut server).await.expect("read").expect("bytes");
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(bytes.len(), 24);

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(sniff(&mut server).await.expect("read").is_none());
    }
}
