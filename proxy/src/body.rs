//! Body types without boxing: what the proxy sends upstream and what it
//! answers with.

use std::pin::Pin;
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
    /// The client's body, streamed once, with the size limit.
    Stream(Limited<Incoming>),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Upstream(b) => b.size_hint(),
        }
    }
}
