//! The record stage: runs for every request, answered early or not. It
//! wraps the response body, counts the bytes sent, and when the body ends
//! (or the client goes away) writes the call log line and the metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ResponseBody};
use crate::calllog::{self, CallLine};
use crate::metrics::RouteMetrics;

/// What the record stage writes when the response ends.
#[derive(Debug)]
pub struct Record {
    pub request_id: String,
    pub route: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub app: Option<Arc<str>>,
    pub client_ip: http::HeaderValue,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub user_agent: Option<http::HeaderValue>,
    pub upstream_latency: Option<Duration>,
    pub started: Instant,
    pub bytes_in: u64,
    pub bytes_in_streamed: Option<Arc<crate::body::BodyProgress>>,
    pub error: Option<&'static str>,
    pub detail: Option<String>,
    pub snapshot: Arc<str>,
    pub metrics: Arc<RouteMetrics>,
    /// Ends the request's activity on its connection when dropped.
    pub activity: Option<crate::conn::ActivityGuard>,
    /// The caller, when a stage authenticated one.
    pub caller: Option<Arc<crate::exchange::Caller>>,
    /// The Subscription that let the caller in.
    pub subscription: Option<Arc<str>>,
    /// The route whose stages want the outcome ([`crate::stages::Stage::on_finish`]),
    /// kept only when one does.
    pub finish_hooks: Option<(Arc<crate::state::Compiled>, usize)>,
}

impl Record {
    fn finish(&self, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        // A streamed body (chunked, or too large to buffer) is counted as it
        // is sent; Content-Length is the figure otherwise.
        let bytes_in = match &self.bytes_in_streamed {
            Some(progress) => progress.read.load(std::sync::atomic::Ordering::Relaxed),
            None => self.bytes_in,
        };
        let who = crate::metrics::CallerOutcome { caller: self.caller.as_deref(), error: self.error };
        self.metrics.record(self.status, elapsed.as_secs_f64(), bytes_in, bytes_out, who);
        if let Some((compiled, route)) = &self.finish_hooks {
            let outcome = crate::stages::Outcome {
                status: self.status,
                error: self.error,
                bytes_in,
                bytes_out,
                duration: elapsed,
                caller: self.caller.as_deref(),
            };
            for stage in &compiled.routes[*route].stages {
                stage.on_finish(&outcome);
            }
        }
        if !calllog::enabled() {
            return;
        }
        // When the request arrived: now, less how long it took.
        let time = std::time::SystemTime::now() - elapsed;
        calllog::write(&CallLine {
            kind: None,
            time,
            request_id: &self.request_id,
            route: self.route.as_deref(),
            tenant: self.tenant.as_deref(),
            app: self.app.as_deref(),
            caller_tenant: self.caller.as_ref().map(|c| &*c.tenant),
            auth: self.caller.as_ref().map(|c| c.method.as_str()),
            credential: self.caller.as_ref().and_then(|c| c.credential.as_deref()),
            subscription: self.subscription.as_deref(),
            client_ip: self.client_ip.to_str().unwrap_or_default(),
            user_agent: calllog::user_agent(self.user_agent.as_ref()),
            method: self.method.as_str(),
            host: &self.host,
            path: &self.path,
            status: self.status,
            upstream: self.upstream.as_deref(),
            endpoint: self.endpoint.as_deref(),
            upstream_us: self.upstream_latency.map(|d| d.as_micros() as u64),
            duration_us: elapsed.as_micros() as u64,
            bytes_in,
            bytes_out,
            error: self.error,
            detail: self.detail.as_deref(),
            snapshot: &self.snapshot,
        });
    }
}

/// A response body that records the request when it ends.
#[derive(Debug)]
pub struct RecordBody {
    inner: ResponseBody,
    bytes_out: u64,
    record: Option<Box<Record>>,
}

impl RecordBody {
    /// Wraps a body.
    pub fn new(inner: ResponseBody, record: Record) -> Self {
        RecordBody { inner, bytes_out: 0, record: Some(Box::new(record)) }
    }

    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(self.bytes_out);
        }
    }
}

impl Body for RecordBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = this.record.as_mut() {
                    record.error.get_or_insert("upstream-reset");
                }
                this.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordBody {
    fn drop(&mut self) {
        // NB: hyper drops bodies without polling them for HEAD requests,
        // 204/304 answers and clients that go away: record those too.
        self.finish();
    }
}
