//! WebSocket tunnels: after a `101 Switching Protocols`, bytes are copied
//! both ways until either side closes or nothing moves for the route's idle
//! timeout. A tunnel is counted when it closes: one call log line (kind
//! `tunnel`, the upgrade's request id, bytes each way, duration, and
//! `tunnel-idle-timeout` when the timeout closed it) and the route's
//! tunnel metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::calllog::{self, CallLine};
use crate::metrics::TunnelMetrics;
use crate::upstream::now_ms;

/// What is known of a tunnel before it opens.
#[derive(Debug)]
pub struct Tunnel {
    /// The upgrade request's id.
    pub request_id: String,
    /// The route.
    pub route: Arc<str>,
    /// The upstream group.
    pub upstream: Option<Arc<str>>,
    /// The request path.
    pub path: String,
    /// The host.
    pub host: String,
    /// The snapshot version.
    pub snapshot: Arc<str>,
    /// Closed after this long with no byte either way.
    pub idle: Duration,
}

/// Copies `from` into `to` until `from` ends, counting bytes and noting
/// the time of the last one.
async fn pump<R, W>(mut from: R, mut to: W, count: &AtomicU64, last: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(now_ms(), Ordering::Relaxed);
    }
}

/// Runs a tunnel between the client and the upstream once both upgrades
/// complete, then records it.
pub async fn run(
    tunnel: Tunnel,
    metrics: TunnelMetrics,
    client: hyper::upgrade::OnUpgrade,
    upstream: Option<hyper::upgrade::OnUpgrade>,
) {
    let Some(upstream) = upstream else { return };
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
    let started = Instant::now();
    let (up, down, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(now_ms()));
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let copy = async {
        let _ = tokio::join!(
            pump(client_read, upstream_write, &up, &last),
            pump(upstream_read, client_write, &down, &last)
        );
    };
    let idle = async {
        loop {
            let quiet = Duration::from_millis(now_ms().saturating_sub(last.load(Ordering::Relaxed)));
            if quiet >= tunnel.idle {
                return;
            }
            tokio::time::sleep(tunnel.idle - quiet).await;
        }
    };
    let timed_out = tokio::select! {
        _ = copy => false,
        _ = idle => true,
    };
    let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    let elapsed = started.elapsed();
    metrics.record(&tunnel.route, up, down, elapsed.as_secs_f64());
    calllog::write(&CallLine {
        kind: Some("tunnel"),
        time: std::time::SystemTime::now() - elapsed,
        request_id: &tunnel.request_id,
        route: Some(&tunnel.route),
        tenant: None,
        app: None,
        caller_tenant: None,
        auth: None,
        credential: None,
        subscription: None,
        client_ip: "",
        user_agent: None,
        method: "GET",
        host: &tunnel.host,
        path: &tunnel.path,
        status: 101,
        upstream: tunnel.upstream.as_deref(),
        endpoint: None,
        upstream_us: None,
        duration_us: elapsed.as_micros() as u64,
        bytes_in: up,
        bytes_out: down,
        error: timed_out.then_some("tunnel-idle-timeout"),
        detail: None,
        snapshot: &tunnel.snapshot,
    });
}
