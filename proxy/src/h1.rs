//! A lean HTTP/1.1 client for the usual upstream request: plain TCP, a
//! body that is empty or already buffered, no upgrade and no `Expect`.
//!
//! hyper's client runs each connection as its own task and hands requests,
//! responses and body frames over through channels; for a small proxied GET
//! that machinery cost more CPU than everything the gateway itself does. Here
//! the request's own task writes the head (and body) in one write, reads
//! and parses the response head with httparse (as strictly as hyper), and
//! the response body reads the connection directly as the client's side
//! polls it. The connection goes back to this thread's pool once the body
//! has ended. Every other request (streamed bodies, upgrades, TLS, HTTP/2)
//! still goes through hyper ([`crate::pool`]).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304;
//! chunked when `Transfer-Encoding` ends in it (and then no
//! `Content-Length` may come with it); else `Content-Length` (all values
//! equal); else the body runs to the end of the connection, which is then
//! never reused. Anything else is an error, never a guess.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{BoxError, RequestBody};

/// The largest response head read (hyper's default buffer limit).
const MAX_HEAD: usize = 400 * 1024;
/// The most header fields a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) or trailer line.
const MAX_LINE: usize = 4096;
/// At most this many idle connections per upstream address and thread.
const MAX_IDLE: usize = 512;
/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;

/// An open connection and what was read from it but not used yet.
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// Idle connections of one address: the connection, idle since, idle timeout.
type Idle = Vec<(Conn, Instant, Duration)>;

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Idle, crate::balance::Fnv>> = RefCell::new(HashMap::default());
}

/// Why a lean request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection could not be opened.
    #[error("{0}")]
    Connect(String),
    /// The connection broke, or the upstream's answer is not HTTP/1.1 we
    /// accept.
    #[error("{0}")]
    Protocol(String),
}

/// Whether a request can take the lean path.
pub fn suits(method: &Method, headers: &HeaderMap) -> bool {
    !headers.contains_key(header::EXPECT)
        && !headers.contains_key(header::UPGRADE)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && *method != Method::CONNECT
}

/// One request for [`send`].
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The pool key.
    pub key: &'a Arc<str>,
    /// `host:port` to connect to.
    pub address: &'a str,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long a connection may sit idle in the pool.
    pub idle_timeout: Duration,
    /// The request, without the forwarding fields.
    pub request: &'a Request<RequestBody>,
    /// Its body (`None`: nothing).
    pub body: Option<&'a Bytes>,
    /// The client's exchange and HTTP version, for the forwarding fields
    /// ([`crate::upstream::forwarding_lines`]) written with the head.
    pub forwarding: (&'a crate::exchange::Exchange, Version),
}

/// Sends a request over a pooled connection, and reads the response head.
pub async fn send(exchange: Exchange<'_>) -> Result<Response<LeanBody>, Error> {
    let Exchange { key, address, connect_timeout, idle_timeout, request, body, forwarding } = exchange;
    let mut head = Vec::with_capacity(512);
    encode(request, body, forwarding, &mut head);
    let head_only = request.method() == Method::HEAD;
    let may_resend = is_idempotent(request.method());
    loop {
        let (mut conn, reused) = match checkout(key, idle_timeout) {
            Some(conn) => (conn, true),
            // NB: boxed: opening a connection is the rare path.
            None => (Box::pin(connect(address, connect_timeout)).await?, false),
        };
        let written = write_request(&mut conn.io, &head, body).await;
        let read = match written {
            Ok(()) => read_head(&mut conn, head_only).await,
            Err(e) => Err(Failed { sent_nothing: true, error: Error::Protocol(format!("write error: {e}")) }),
        };
        match read {
            Ok((parts, framing)) => {
                let body = LeanBody::new(conn, framing, key.clone(), idle_timeout);
                return Ok(Response::from_parts(parts, body));
            }
            // A kept-alive connection the upstream closed meanwhile: the
            // request goes again on a fresh one, if sending it twice is safe.
            Err(Failed { sent_nothing: true, .. }) if reused && may_resend => {}
            Err(failed) => return Err(failed.error),
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

async fn connect(address: &str, connect_timeout: Duration) -> Result<Conn, Error> {
    let io = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(Error::Connect(format!("tcp connect error: {e}"))),
        Err(_) => {
            return Err(Error::Connect(format!("tcp connect timed out after {} ms", connect_timeout.as_millis())));
        }
    };
    let _ = io.set_nodelay(true);
    Ok(Conn { io, buf: BytesMut::with_capacity(READ_SIZE) })
}

/// The request head: request line, the headers as they are but framing,
/// and `Content-Length` when there is a body (or the method expects one).
fn encode(
    request: &Request<RequestBody>,
    body: Option<&Bytes>,
    (ex, version): (&crate::exchange::Exchange, Version),
    out: &mut Vec<u8>,
) {
    use crate::upstream::{forwarding_lines, forwarding_replaces};
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == header::CONTENT_LENGTH || forwarding_replaces(ex, name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    forwarding_lines(ex, version, request.headers(), out);
    let length = body.map_or(0, Bytes::len);
    if length > 0 || matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_request(io: &mut TcpStream, head: &[u8], body: Option<&Bytes>) -> std::io::Result<()> {
    match body {
        // NB: a small body goes in the head's write.
        Some(body) if !body.is_empty() && body.len() <= 16 * 1024 => {
            let mut all = Vec::with_capacity(head.len() + body.len());
            all.extend_from_slice(head);
            all.extend_from_slice(body);
            io.write_all(&all).await
        }
        Some(body) if !body.is_empty() => {
            io.write_all(head).await?;
            io.write_all(body).await
        }
        _ => io.write_all(head).await,
    }
}

/// A failed exchange, and whether the upstream can have seen nothing of
/// it answered (so resending is only a question of idempotence).
struct Failed {
    sent_nothing: bool,
    error: Error,
}

/// Reads one byte-chunk into the buffer; 0 at the end of the connection.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < READ_SIZE / 4 {
        conn.buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

/// Reads and parses the response head (skipping 1xx informational ones).
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<(http::response::Parts, Framing), Failed> {
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_only) {
                Ok(Some(Parsed::Informational)) => continue,
                Ok(Some(Parsed::Final(parts, framing))) => return Ok((parts, framing)),
                Ok(None) => {}
                Err(error) => return Err(Failed { sent_nothing: false, error }),
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(Failed {
                    sent_nothing: false,
                    error: Error::Protocol(format!("the response head is over {MAX_HEAD} bytes")),
                });
            }
        }
        match std::future::poll_fn(|cx| poll_fill(conn, cx)).await {
            Ok(0) => {
                return Err(Failed {
                    sent_nothing: !received,
                    error: Error::Protocol(if received {
                        "the connection closed in the middle of the response head".into()
                    } else {
                        "the connection closed before a response".into()
                    }),
                });
            }
            Ok(_) => received = true,
            Err(e) => {
                return Err(Failed { sent_nothing: !received, error: Error::Protocol(format!("read error: {e}")) });
            }
        }
    }
}

#[allow(clippy::large_enum_variant)] // NB: returned once per response head, never kept.
enum Parsed {
    Informational,
    Final(http::response::Parts, Framing),
}

/// Parses a complete head at the start of `buf` and takes it out; `None`
/// while it is incomplete.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, Error> {
    // NB: uninitialised slots: nothing to clear for each response.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut fields) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Protocol(format!("the response has more than {MAX_HEADERS} header fields")));
            }
            Err(e) => return Err(Error::Protocol(format!("invalid response head: {e}"))),
        };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Protocol(format!("invalid status {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Protocol("101 Switching Protocols to a request that asked for no upgrade".into()));
    }
    if status.is_informational() {
        let _ = buf.split_to(length);
        return Ok(Some(Parsed::Informational));
    }
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where each field's name and value sit in the head, to share the
    // value's bytes below.
    let base = buf.as_ptr() as usize;
    let count = response.headers.len();
    let mut spans = Vec::with_capacity(count);
    for field in response.headers.iter() {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        spans.push((name, name + field.name.len(), value, value + field.value.len()));
    }
    let head = buf.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(count + 4);
    let mut seen = Seen::default();
    for &(name_start, name_end, start, end) in &spans {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| Error::Protocol("invalid header name in the response".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Error::Protocol(format!("invalid value of header {name}")))?;
        if name == header::CONNECTION {
            let mut usual = true;
            for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    seen.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    seen.keep_alive = true;
                } else {
                    usual = false;
                }
            }
            // NB: hop-by-hop, and removed before the answer goes on; kept
            // only when it names other fields for that removal to find.
            if usual {
                continue;
            }
        }
        seen.transfer_encoding |= name == header::TRANSFER_ENCODING;
        seen.content_length |= name == header::CONTENT_LENGTH;
        headers.append(name, value);
    }
    let framing = framing(status, version, &headers, seen, head_only)?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing)))
}

/// What the framing depends on in a head: the `Connection` tokens, and
/// which framing fields are there (so absent ones are not looked up).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    close: bool,
    keep_alive: bool,
    transfer_encoding: bool,
    content_length: bool,
}

/// How the response body is delimited, and whether the connection can
/// carry another request after it (RFC 9112 §6.3, §9.3).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    seen: Seen,
    head_only: bool,
) -> Result<Framing, Error> {
    let keep_alive = !seen.close && (seen.keep_alive || version != Version::HTTP_10);
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing { kind: Kind::Done, keep_alive });
    }
    if seen.transfer_encoding {
        if seen.content_length {
            return Err(Error::Protocol("the response has both Transfer-Encoding and Content-Length".into()));
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") && version == Version::HTTP_11 => {
                Framing { kind: Kind::Chunked(Chunk::Size), keep_alive }
            }
            // Not chunked last: the body runs to the end of the connection.
            _ => Framing { kind: Kind::Close, keep_alive: false },
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH).iter().filter(|_| seen.content_length) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            let parsed = (!item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit))
                .then(|| item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
                .ok_or_else(|| Error::Protocol("invalid Content-Length in the response".into()))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Error::Protocol("the response has differing Content-Length values".into()));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => Framing { kind: Kind::Done, keep_alive },
        Some(n) => Framing { kind: Kind::Length(n), keep_alive },
        None => Framing { kind: Kind::Close, keep_alive: false },
    })
}

/// A response body's delimiting and what becomes of its connection.
#[derive(Debug)]
struct Framing {
    kind: Kind,
    keep_alive: bool,
}

#[derive(Debug)]
enum Kind {
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the connection ends.
    Close,
    /// All of it read.
    Done,
}

#[derive(Debug)]
enum Chunk {
    /// Next: a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Next: the CRLF after chunk data.
    DataEnd,
    /// Next: trailer fields, then an empty line.
    Trailers(HeaderMap),
}

/// A response body read straight from its connection, which goes back to
/// the pool when the body has ended (and is closed when it is dropped
/// before that).
#[derive(Debug)]
pub struct LeanBody {
    conn: Option<Conn>,
    framing: Framing,
    key: Arc<str>,
    idle_timeout: Duration,
}

impl LeanBody {
    fn new(conn: Conn, framing: Framing, key: Arc<str>, idle_timeout: Duration) -> LeanBody {
        let mut body = LeanBody { conn: Some(conn), framing, key, idle_timeout };
        body.ended();
        body
    }

    /// Once the body is whole, its connection goes back to the pool.
    fn ended(&mut self) {
        if matches!(self.framing.kind, Kind::Done)
            && let Some(conn) = self.conn.take()
            && self.framing.keep_alive
            && conn.buf.is_empty()
        {
            checkin(self.key.clone(), conn, self.idle_timeout);
        }
    }

    /// The next frame, from what was read (`None`: more must be read).
    fn next(&mut self) -> Result<Option<Frame<Bytes>>, Error> {
        let Some(conn) = self.conn.as_mut() else { return Ok(None) };
        let buf = &mut conn.buf;
        loop {
            match &mut self.framing.kind {
                Kind::Done => return Ok(None),
                Kind::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing.kind = Kind::Done;
                    }
                    return Ok(Some(Frame::data(buf.split_to(take).freeze())));
                }
                Kind::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Frame::data(buf.split().freeze())));
                }
                Kind::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else { return Ok(None) };
                    let size = chunk_size(&line)?;
                    self.framing.kind =
                        Kind::Chunked(if size == 0 { Chunk::Trailers(HeaderMap::new()) } else { Chunk::Data(size) });
                }
                Kind::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        self.framing.kind = Kind::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Some(Frame::data(buf.split_to(take).freeze())));
                }
                Kind::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Protocol("chunk data is not followed by CRLF".into()));
                    }
                    let _ = buf.split_to(2);
                    self.framing.kind = Kind::Chunked(Chunk::Size);
                }
                Kind::Chunked(Chunk::Trailers(trailers)) => {
                    let Some(line) = take_line(buf)? else { return Ok(None) };
                    if line.is_empty() {
                        let trailers = std::mem::take(trailers);
                        self.framing.kind = Kind::Done;
                        if !trailers.is_empty() {
                            return Ok(Some(Frame::trailers(trailers)));
                        }
                        continue;
                    }
                    let (name, value) = trailer(&line)?;
                    if trailers.len() >= MAX_HEADERS {
                        return Err(Error::Protocol("too many trailer fields".into()));
                    }
                    trailers.append(name, value);
                }
            }
        }
    }
}

/// One CRLF-terminated line, taken out of `buf` (without its CRLF).
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && buf[end - 1] == b'\r' && end <= MAX_LINE => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(Error::Protocol("a chunk line does not end in CRLF (or is too long)".into())),
        None if buf.len() > MAX_LINE => Err(Error::Protocol("a chunk line is too long".into())),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (hex digits, then optional extensions).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || matches!(rest.first(), Some(b';' | b' ' | b'\t'));
    if digits == 0 || digits > 15 || !rest_ok {
        return Err(Error::Protocol("invalid chunk size".into()));
    }
    Ok(line[..digits].iter().fold(0u64, |n, d| n * 16 + u64::from(char::from(*d).to_digit(16).unwrap_or(0))))
}

fn trailer(line: &[u8]) -> Result<(HeaderName, HeaderValue), Error> {
    let bad = || Error::Protocol("invalid trailer field".into());
    let colon = line.iter().position(|b| *b == b':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| bad())?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| bad())?;
    Ok((name, value))
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.next() {
                Ok(Some(frame)) => {
                    this.ended();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if matches!(this.framing.kind, Kind::Done) => {
                    this.ended();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    // A broken body: the connection is not reused.
                    this.conn = None;
                    this.framing.kind = Kind::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match ready!(poll_fill(conn, cx)) {
                Ok(0) if matches!(this.framing.kind, Kind::Close) => {
                    this.framing = Framing { kind: Kind::Done, keep_alive: false };
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    this.framing.kind = Kind::Done;
                    return Poll::Ready(Some(Err(Error::Protocol(
                        "the upstream closed the connection in the middle of the body".into(),
                    )
                    .into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    this.framing.kind = Kind::Done;
                    return Poll::Ready(Some(Err(Error::Protocol(format!("read error in the body: {e}")).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing.kind, Kind::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.kind {
            Kind::Done => SizeHint::with_exact(0),
            Kind::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

fn checkin(key: Arc<str>, conn: Conn, idle_timeout: Duration) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push((conn, Instant::now(), idle_timeout));
        }
    });
}

/// Takes the most recently used idle connection that is still open.
fn checkout(key: &Arc<str>, idle_timeout: Duration) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((conn, since, _)) = list.pop() {
            if since.elapsed() < idle_timeout && still_open(&conn) {
                return Some(conn);
            }
        }
        None
    })
}

/// Whether an idle connection is still open: one the upstream closed (or
/// wrote to, out of turn) has become readable. NB: no system call unless
/// the runtime saw it readable.
fn still_open(conn: &Conn) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match conn.io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(conn.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Closes this thread's idle connections past their idle timeout (or
/// closed by the upstream).
pub fn sweep() {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|(conn, since, timeout)| since.elapsed() < *timeout && still_open(conn));
        }
        idle.retain(|_, list| !list.is_empty());
    });
}

/// How many idle lean connections this thread holds (for tests).
pub fn idle_connections() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(Vec::len).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<Option<Parsed>, Error> {
        parse_head(&mut BytesMut::from(head), false)
    }

    fn framing_of(head: &str) -> Result<Framing, Error> {
        match parse(head)? {
            Some(Parsed::Final(_, framing)) => Ok(framing),
            _ => panic!("not a final head: {head:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = framing_of("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Length(12)) && f.keep_alive);
        let f = framing_of("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Length(3)));
        assert!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n").is_err());
        assert!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n").is_err());
        assert!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n").is_err());
        let f = framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Chunked(Chunk::Size)) && f.keep_alive);
        assert!(framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n").is_err());
        let f = framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Close) && !f.keep_alive);
        let f = framing_of("HTTP/1.1 200 OK\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Close) && !f.keep_alive);
        let f = framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").expect("ok");
        assert!(matches!(f.kind, Kind::Done) && f.keep_alive);
        let f = framing_of("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").expect("ok");
        assert!(!f.keep_alive);
        let f = framing_of("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").expect("ok");
        assert!(f.keep_alive);
        let f = framing_of("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").expect("ok");
        assert!(!f.keep_alive);
        assert!(matches!(parse("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"), Ok(Some(Parsed::Informational))));
        assert!(parse("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
        assert!(parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n").is_err());
    }

    #[test]
    fn chunk_lines_are_strict() {
        assert_eq!(chunk_size(b"1a").expect("hex"), 26);
        assert_eq!(chunk_size(b"0;ext=1").expect("extension"), 0);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"+1").is_err());
        assert!(chunk_size(b"0x1").is_err());
        assert!(chunk_size(b"1234567890abcdef0").is_err());
        let mut buf = BytesMut::from("5\r\nhello");
        assert_eq!(&take_line(&mut buf).expect("line").expect("whole")[..], b"5");
        assert!(take_line(&mut BytesMut::from("5\nx")).is_err());
        assert!(take_line(&mut BytesMut::from("5")).expect("partial").is_none());
    }
}
