//! Body types without boxing: what the proxy sends upstream and what it
//! answers with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::errors::ProxyError;

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// A buffered body (small enough to replay on a retry).
    Full(Full<Bytes>),
    /// The client's body, streamed once.
    Stream(ClientBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_end_stream(),
            RequestBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => b.size_hint(),
            RequestBody::Stream(b) => b.size_hint(),
        }
    }
}

/// How reading a client's body went, shared between the body (polled by
/// whoever sends it, usually an upstream connection task) and the request
/// (read when the upstream call ends), so that a client's fault is never
/// taken for an upstream's.
#[derive(Debug)]
pub struct BodyProgress {
    /// Bytes read from the client so far.
    pub read: AtomicU64,
    state: AtomicU8,
    /// Whether the last poll is waiting for the client to send more.
    waiting: AtomicBool,
    limit: u64,
    idle: Duration,
}

/// How a client body ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Still being read.
    Reading,
    /// Read to its end.
    Done,
    /// The client sent a malformed body or went away mid-body.
    Broken,
    /// Larger than the limit.
    TooLarge,
    /// The client sent nothing for the body idle timeout.
    Idle,
}

impl BodyProgress {
    fn set(&self, state: BodyState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// How the body ended, if it did.
    pub fn state(&self) -> BodyState {
        match self.state.load(Ordering::Relaxed) {
            1 => BodyState::Done,
            2 => BodyState::Broken,
            3 => BodyState::TooLarge,
            4 => BodyState::Idle,
            _ => BodyState::Reading,
        }
    }

    /// Whether the proxy is waiting on the client for more of the body.
    pub fn waiting_on_client(&self) -> bool {
        self.state() == BodyState::Reading && self.waiting.load(Ordering::Relaxed)
    }

    /// The client's fault, if reading its body failed: a send that failed
    /// because of it is never an upstream failure.
    pub fn client_error(&self) -> Option<ProxyError> {
        match self.state() {
            BodyState::Reading | BodyState::Done => None,
            BodyState::Broken => {
                Some(ProxyError::BadRequest("the request body was malformed or ended before its end".into()))
            }
            BodyState::TooLarge => Some(ProxyError::BodyTooLarge { limit: self.limit }),
            BodyState::Idle => Some(ProxyError::RequestTimeout { timeout_ms: self.idle.as_millis() as u64 }),
        }
    }
}

/// Why a client body was cut off by the proxy.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// Nothing arrived for the body idle timeout.
    #[error("the request body stalled for {0} ms")]
    Idle(u64),
}

/// A deadline that runs only while something waits: armed when a poll
/// returns `Pending`, pushed back by every bit of progress. Nothing is
/// allocated until the first wait.
#[derive(Debug)]
pub struct IdleTimer {
    after: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    /// A timer that expires after `after` without progress.
    pub fn new(after: Duration) -> Self {
        IdleTimer { after, timer: None }
    }

    /// Called when a poll is pending: whether the wait has now lasted too
    /// long (else the waker is registered for when it will have).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        timer.as_mut().poll(cx).is_ready()
    }

    /// Called on progress: the wait starts again.
    pub fn progress(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(tokio::time::Instant::now() + self.after);
        }
    }

    /// The timeout, in ms.
    pub fn millis(&self) -> u64 {
        self.after.as_millis() as u64
    }
}

/// A client's request body: at most `limit` bytes, with an idle timeout
/// between frames, reporting how it went in a shared [`BodyProgress`].
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    limit: u64,
    idle: IdleTimer,
    progress: Arc<BodyProgress>,
}

impl ClientBody {
    /// Wraps a client's body.
    pub fn new(inner: Incoming, limit: u64, idle: Duration) -> Self {
        let progress = Arc::new(BodyProgress {
            read: AtomicU64::new(0),
            state: AtomicU8::new(BodyState::Reading as u8),
            waiting: AtomicBool::new(false),
            limit,
            idle,
        });
        ClientBody { inner, limit, idle: IdleTimer::new(idle), progress }
    }

    /// The shared progress report.
    pub fn progress(&self) -> Arc<BodyProgress> {
        self.progress.clone()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let progress = &this.progress;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                progress.waiting.store(true, Ordering::Relaxed);
                if this.idle.expired(cx) {
                    progress.set(BodyState::Idle);
                    return Poll::Ready(Some(Err(BodyError::Idle(this.idle.millis()).into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                progress.waiting.store(false, Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    let read = progress.read.fetch_add(len, Ordering::Relaxed) + len;
                    if read > this.limit {
                        progress.set(BodyState::TooLarge);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit).into())));
                    }
                }
                this.idle.progress();
                if this.inner.is_end_stream() {
                    progress.set(BodyState::Done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                progress.set(BodyState::Broken);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                progress.waiting.store(false, Ordering::Relaxed);
                progress.set(BodyState::Done);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream's response body, from hyper's client or the lean one.
#[derive(Debug)]
pub enum UpstreamBody {
    /// From hyper's client.
    Hyper(Incoming),
    /// From [`crate::h1`].
    Lean(crate::h1::LeanBody),
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Made by the gateway.
    Full(Full<Bytes>),
    /// Streamed from the upstream, cut off when it stalls.
    Upstream(Incoming, IdleTimer),
    /// Streamed from a pooled upstream connection, which goes back to the
    /// pool when the body has ended.
    Pooled(Incoming, IdleTimer, Option<crate::pool::Checkin>),
    /// Read by the lean client straight from its pooled connection.
    Lean(crate::h1::LeanBody, IdleTimer),
    /// Another body seen (and perhaps changed) by a stage's filter on its
    /// way out.
    Filtered(Box<Filtered>),
}

/// Sees a response body's data as it goes to the client, and may change it.
pub trait BodyFilter: Send + Sync + std::fmt::Debug {
    /// One frame of data; returns what goes on.
    fn on_data(&mut self, data: Bytes) -> Bytes;
    /// The body ended: `complete` when all of it went out, false when it
    /// broke or the client went away first. Called once.
    fn on_end(&mut self, complete: bool);
    /// Whether the data goes on unchanged (so its length is known).
    fn keeps_length(&self) -> bool {
        false
    }
}

/// A body and the filter it goes through.
#[derive(Debug)]
pub struct Filtered {
    inner: ResponseBody,
    filter: Box<dyn BodyFilter>,
    ended: bool,
}

impl Filtered {
    fn end(&mut self, complete: bool) {
        if !self.ended {
            self.ended = true;
            self.filter.on_end(complete);
        }
    }
}

impl Drop for Filtered {
    fn drop(&mut self) {
        // NB: a body dropped before its end (a client gone, HEAD, 204) is
        // an incomplete one, unless it had nothing more to send.
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that ended without being polled to the end (HEAD, 204,
        // 304, or an empty body) still frees its connection.
        if let ResponseBody::Pooled(body, _, checkin) = self
            && body.is_end_stream()
            && let Some(checkin) = checkin.take()
        {
            checkin.put();
        }
    }
}

impl ResponseBody {
    /// No body.
    pub fn empty() -> Self {
        ResponseBody::full(Bytes::new())
    }

    /// A gateway-made body.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Full::new(bytes))
    }

    /// This body, through `filter`.
    pub fn filtered(self, filter: Box<dyn BodyFilter>) -> Self {
        ResponseBody::Filtered(Box::new(Filtered { inner: self, filter, ended: false }))
    }
}

/// An upstream that stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of its response body for {0} ms")]
pub struct UpstreamStalled(pub u64);

fn poll_upstream<B>(
    body: &mut B,
    idle: &mut IdleTimer,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match Pin::new(body).poll_frame(cx) {
        Poll::Pending if idle.expired(cx) => Poll::Ready(Some(Err(UpstreamStalled(idle.millis()).into()))),
        Poll::Pending => Poll::Pending,
        Poll::Ready(frame) => {
            idle.progress();
            Poll::Ready(frame.map(|f| f.map_err(Into::into)))
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ResponseBody::Upstream(b, idle) => poll_upstream(b, idle, cx),
            ResponseBody::Lean(b, idle) => poll_upstream(b, idle, cx),
            ResponseBody::Pooled(b, idle, checkin) => {
                let polled = poll_upstream(b, idle, cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => b.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        // A broken body: the connection is not reused.
                        checkin.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if ended && let Some(checkin) = checkin.take() {
                    checkin.put();
                }
                polled
            }
            ResponseBody::Filtered(f) => {
                let polled = Pin::new(&mut f.inner).poll_frame(cx);
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        let frame = frame.map_data(|data| f.filter.on_data(data));
                        if f.inner.is_end_stream() {
                            f.end(true);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(None) => {
                        f.end(true);
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        f.end(false);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Upstream(b, _) | ResponseBody::Pooled(b, _, _) => b.is_end_stream(),
            ResponseBody::Lean(b, _) => b.is_end_stream(),
            ResponseBody::Filtered(f) => f.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Upstream(b, _) | ResponseBody::Pooled(b, _, _) => b.size_hint(),
            ResponseBody::Lean(b, _) => b.size_hint(),
            ResponseBody::Filtered(f) if f.filter.keeps_length() => f.inner.size_hint(),
            // NB: a filter may change the length.
            ResponseBody::Filtered(f) => {
                let mut hint = SizeHint::new();
                if f.inner.is_end_stream() {
                    hint.set_exact(0);
                }
                hint
            }
        }
    }
}
