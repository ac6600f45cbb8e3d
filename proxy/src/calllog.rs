//! The call log: one JSON line per request on stdout. Lines are gathered in
//! a per-thread buffer; each worker hands its buffer over every 100 ms (or
//! at 32 KiB, and at shutdown) to a writer thread through a bounded queue,
//! so a slow or blocked stdout never blocks a worker: when the queue is
//! full the batch is dropped and counted
//! (`sluice_call_log_dropped_lines_total`). Never a secret: no header
//! values are logged but a bounded `User-Agent`.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Where batches go instead of stdout, when set (tests read the lines).
static CAPTURE: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();

/// Sends every later batch to memory instead of stdout; returns what was
/// captured so far. For tests.
pub fn capture() -> Vec<u8> {
    CAPTURE.get_or_init(|| std::sync::Mutex::new(Vec::new())).lock().map(|b| b.clone()).unwrap_or_default()
}

/// Turns the call log on or off (for benchmarks against servers with
/// their access logs off).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether lines are written.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

thread_local! {
    static BUFFER: RefCell<Pending> = RefCell::new(Pending { bytes: Vec::with_capacity(64 * 1024), lines: 0 });
}

const FLUSH_AT: usize = 32 * 1024;

/// One request, as logged.
#[derive(Serialize, Debug)]
pub struct CallLine<'a> {
    /// `tunnel` for a WebSocket tunnel that closed; absent for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// Route id, or null when nothing matched.
    pub route: Option<&'a str>,
    /// Tenant owning the route.
    pub tenant: Option<&'a str>,
    /// Calling app, once identity is known.
    pub app: Option<&'a str>,
    /// The client's address (the first untrusted hop when the peer is a
    /// trusted proxy).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub client_ip: &'a str,
    /// The client's `User-Agent`, at most 256 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Host the request was for.
    pub host: &'a str,
    /// Path (never the query: it may carry keys).
    pub path: &'a str,
    /// Status sent.
    pub status: u16,
    /// Upstream group, if one was called.
    pub upstream: Option<&'a str>,
    /// The endpoint (`address:port`) that answered (or failed) last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    /// Time from sending upstream to the response head, microseconds.
    pub upstream_us: Option<u64>,
    /// Time from the request's arrival to the end of the response,
    /// microseconds.
    pub duration_us: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Error type, if the request ended in one.
    pub error: Option<&'a str>,
    /// What went wrong, in full, for upstream and internal errors (never
    /// sent to the client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    /// Snapshot version that served it.
    pub snapshot: &'a str,
}

/// A `User-Agent` as logged: at most 256 bytes, cut at a character
/// boundary; `None` when absent or not text.
pub fn user_agent(value: Option<&http::HeaderValue>) -> Option<&str> {
    const MAX: usize = 256;
    let text = value?.to_str().ok()?;
    if text.len() <= MAX {
        return Some(text);
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(&text[..end])
}

/// This thread's lines not yet handed to the writer.
struct Pending {
    bytes: Vec<u8>,
    /// How many lines `bytes` holds (counted when written, so a dropped
    /// batch is counted without scanning it).
    lines: u64,
}

/// Appends a line to this thread's buffer, writing the buffer out when it
/// is large.
pub fn write(line: &CallLine<'_>) {
    if !enabled() {
        return;
    }
    BUFFER.with(|b| {
        let mut buffer = b.borrow_mut();
        if serde_json::to_writer(&mut buffer.bytes, line).is_ok() {
            buffer.bytes.push(b'\n');
            buffer.lines += 1;
        }
        if buffer.bytes.len() >= FLUSH_AT {
            drain(&mut buffer);
        }
    });
}

/// Writes this thread's buffered lines.
pub fn flush() {
    BUFFER.with(|b| drain(&mut b.borrow_mut()));
}

/// Batches waiting for the writer thread, at most.
const QUEUE: usize = 16;

enum Batch {
    Lines(Vec<u8>),
    /// Everything sent before has been written: acknowledge.
    Sync(std::sync::mpsc::Sender<()>),
}

/// The writer thread's queue, started on first use.
fn writer() -> Option<&'static std::sync::mpsc::SyncSender<Batch>> {
    static WRITER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Batch>>> = std::sync::OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(QUEUE);
            let spawned = std::thread::Builder::new().name("sluice-call-log".into()).spawn(move || {
                while let Ok(batch) = rx.recv() {
                    match batch {
                        Batch::Lines(lines) => {
                            let mut out = std::io::stdout().lock();
                            // A closed stdout must not take the proxy down.
                            let _ = out.write_all(&lines);
                            let _ = out.flush();
                        }
                        Batch::Sync(ack) => {
                            let _ = ack.send(());
                        }
                    }
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> &'static prometheus_client::metrics::counter::Counter {
    static DROPPED: std::sync::OnceLock<prometheus_client::metrics::counter::Counter> = std::sync::OnceLock::new();
    DROPPED.get_or_init(Default::default)
}

fn drain(buffer: &mut Pending) {
    if buffer.bytes.is_empty() {
        return;
    }
    let count = std::mem::take(&mut buffer.lines);
    if let Some(capture) = CAPTURE.get() {
        if let Ok(mut captured) = capture.lock() {
            captured.extend_from_slice(&buffer.bytes);
        }
        buffer.bytes.clear();
        return;
    }
    let lines = std::mem::replace(&mut buffer.bytes, Vec::with_capacity(FLUSH_AT + FLUSH_AT / 2));
    match writer() {
        Some(writer) => {
            if writer.try_send(Batch::Lines(lines)).is_err() {
                dropped().inc_by(count);
            }
        }
        None => {
            dropped().inc_by(count);
        }
    }
}

/// Waits (up to two seconds) until every batch handed over so far is
/// written: at shutdown, after the workers' last flush.
pub fn finish() {
    let Some(writer) = writer() else { return };
    let (ack, done) = std::sync::mpsc::channel();
    if writer.send(Batch::Sync(ack)).is_ok() {
        let _ = done.recv_timeout(std::time::Duration::from_secs(2));
    }
}
