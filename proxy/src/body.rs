//! Body types without boxing: what the proxy sends upstream and what it
//! answers with.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// A buffered body (small enough to replay on a retry).
    Full(Full<Bytes>),
    /// The client's body, streamed once, with the size limit; the counter
    /// adds up the bytes sent (for the call log and metrics).
    Stream(Limited<Incoming>, Arc<AtomicU64>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            RequestBody::Stream(b, sent) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_end_stream(),
            RequestBody::Stream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => b.size_hint(),
            RequestBody::Stream(b, _) => b.size_hint(),
        }
    }
}

/// Whether an error (or any of its causes) is the body size limit.
pub fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Made by the gateway.
    Full(Full<Bytes>),
    /// Streamed from the upstream.
    Upstream(Incoming),
    /// Streamed from a pooled upstream connection, which goes back to the
    /// pool when the body has ended.
    Pooled(Incoming, Option<crate::pool::Checkin>),
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body that ended without being polled to the end (HEAD, 204,
        // 304, or an empty body) still frees its connection.
        if let ResponseBody::Pooled(body, checkin) = self
            && body.is_end_stream()
            && let Some(checkin) = checkin.take()
        {
            checkin.put();
        }
    }
}

impl ResponseBody {
    /// A gateway-made body.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Full::new(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Pooled(b, checkin) => {
                let polled = Pin::new(&mut *b).poll_frame(cx).map_err(Into::into);
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Upstream(b) | ResponseBody::Pooled(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Upstream(b) | ResponseBody::Pooled(b, _) => b.size_hint(),
        }
    }
}
