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

/// One request, as logged: one JSON object, fields in this order. `None`
/// is `null`, except for the fields said to be left out.
#[derive(Debug)]
pub struct CallLine<'a> {
    /// `tunnel` for a WebSocket tunnel that closed; left out for requests.
    pub kind: Option<&'a str>,
    /// When the request arrived (RFC 3339, UTC, microseconds).
    pub time: std::time::SystemTime,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// Route id, or null when nothing matched.
    pub route: Option<&'a str>,
    /// Tenant owning the route.
    pub tenant: Option<&'a str>,
    /// Calling app, once identity is known.
    pub app: Option<&'a str>,
    /// The calling app's tenant; left out for anonymous calls.
    pub caller_tenant: Option<&'a str>,
    /// How the caller authenticated (`api-key`, `jwt`); left out for
    /// anonymous calls (a refused one has its problem type in `error`).
    pub auth: Option<&'a str>,
    /// Which credential: an API key's digest prefix, never the key; left
    /// out for anonymous calls.
    pub credential: Option<&'a str>,
    /// The Subscription that let the caller in; left out when none did.
    pub subscription: Option<&'a str>,
    /// The client's address (the first untrusted hop when the peer is a
    /// trusted proxy); left out when empty.
    pub client_ip: &'a str,
    /// The client's `User-Agent`, at most 256 bytes; left out when absent.
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
    /// The endpoint (`address:port`) that answered (or failed) last; left
    /// out when none was called.
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
    /// sent to the client); left out when there is none.
    pub detail: Option<&'a str>,
    /// Snapshot version that served it.
    pub snapshot: &'a str,
}

impl CallLine<'_> {
    /// Appends the line as one JSON object (no newline).
    ///
    /// NB: written by hand, not through serde: the line is written on the
    /// worker for every request, and serde_json's formatter and a
    /// formatted timestamp cost several microseconds a line.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.reserve(320 + self.path.len() + self.user_agent.map_or(0, str::len));
        out.push(b'{');
        if let Some(kind) = self.kind {
            out.extend_from_slice(b"\"kind\":");
            write_str(out, kind);
            out.push(b',');
        }
        out.extend_from_slice(b"\"time\":\"");
        write_time(out, self.time);
        out.extend_from_slice(b"\",\"request_id\":");
        write_str(out, self.request_id);
        out.extend_from_slice(b",\"route\":");
        write_opt(out, self.route);
        out.extend_from_slice(b",\"tenant\":");
        write_opt(out, self.tenant);
        out.extend_from_slice(b",\"app\":");
        write_opt(out, self.app);
        for (key, value) in [
            (&b",\"caller_tenant\":"[..], self.caller_tenant),
            (b",\"auth\":", self.auth),
            (b",\"credential\":", self.credential),
            (b",\"subscription\":", self.subscription),
        ] {
            if let Some(value) = value {
                out.extend_from_slice(key);
                write_str(out, value);
            }
        }
        if !self.client_ip.is_empty() {
            out.extend_from_slice(b",\"client_ip\":");
            write_str(out, self.client_ip);
        }
        if let Some(agent) = self.user_agent {
            out.extend_from_slice(b",\"user_agent\":");
            write_str(out, agent);
        }
        out.extend_from_slice(b",\"method\":");
        write_str(out, self.method);
        out.extend_from_slice(b",\"host\":");
        write_str(out, self.host);
        out.extend_from_slice(b",\"path\":");
        write_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        write_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream\":");
        write_opt(out, self.upstream);
        if let Some(endpoint) = self.endpoint {
            out.extend_from_slice(b",\"endpoint\":");
            write_str(out, endpoint);
        }
        out.extend_from_slice(b",\"upstream_us\":");
        match self.upstream_us {
            Some(us) => write_u64(out, us),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"duration_us\":");
        write_u64(out, self.duration_us);
        out.extend_from_slice(b",\"bytes_in\":");
        write_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        write_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"error\":");
        write_opt(out, self.error);
        if let Some(detail) = self.detail {
            out.extend_from_slice(b",\"detail\":");
            write_str(out, detail);
        }
        out.extend_from_slice(b",\"snapshot\":");
        write_str(out, self.snapshot);
        out.push(b'}');
    }
}

fn write_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Whether any byte is `"`, `\\` or a control character.
fn any_needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        if needs_escape(u64::from_le_bytes(eight)) {
            return true;
        }
    }
    let rest = words.remainder();
    let mut tail = [b' '; 8];
    tail[..rest.len()].copy_from_slice(rest);
    needs_escape(u64::from_le_bytes(tail))
}

/// Whether any of eight bytes is `"`, `\\` or a control character (below
/// 0x20): the "has less" and "has zero byte" bit tricks.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space || has_zero(word ^ (ONES * u64::from(b'"'))) || has_zero(word ^ (ONES * u64::from(b'\\')))
}

/// A JSON string: `"`, `\\` and control characters escaped (as serde_json
/// does), everything else, UTF-8 included, as it is. Eight bytes are
/// checked at a time.
fn write_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    // NB: almost every value needs no escape: checked a word at a time
    // (the tail padded with spaces), it is copied in one go.
    if !any_needs_escape(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes[i..].first_chunk::<8>()
            && !needs_escape(u64::from_le_bytes(*word))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escape);
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// `2026-12-03T17:13:13.123456Z`: RFC 3339 in UTC with microseconds. The
/// date and time of day are kept per thread for the current second.
fn write_time(out: &mut Vec<u8>, time: std::time::SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = civil(secs);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let micros = since.subsec_micros();
    let mut frac = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut rest = micros;
    for digit in frac[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (UTC), by Howard
/// Hinnant's days-to-civil algorithm.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    text
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
        line.write_json(&mut buffer.bytes);
        buffer.bytes.push(b'\n');
        buffer.lines += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, time: std::time::SystemTime) -> CallLine<'a> {
        CallLine {
            kind: (text == "tunnel").then_some("tunnel"),
            time,
            request_id: text,
            route: Some(text),
            tenant: None,
            app: None,
            caller_tenant: Some(text),
            auth: None,
            credential: None,
            subscription: None,
            client_ip: "",
            user_agent: Some(text),
            method: "GET",
            host: text,
            path: text,
            status: 200,
            upstream: None,
            endpoint: Some("127.0.0.1:80"),
            upstream_us: Some(7),
            duration_us: 1234,
            bytes_in: 0,
            bytes_out: u64::MAX,
            error: None,
            detail: None,
            snapshot: "v1",
        }
    }

    #[test]
    fn lines_are_json_that_round_trips_any_text() {
        let nasty = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é 😀 </script>";
        let mut out = Vec::new();
        line(nasty, std::time::UNIX_EPOCH).write_json(&mut out);
        let json: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        for field in ["request_id", "route", "user_agent", "host", "path", "caller_tenant"] {
            assert_eq!(json[field], nasty, "{field}");
        }
        assert_eq!(json["tenant"], serde_json::Value::Null);
        assert_eq!(json["upstream_us"], 7);
        assert_eq!(json["bytes_out"], u64::MAX);
        assert!(json.get("client_ip").is_none() && json.get("kind").is_none() && json.get("detail").is_none());
        assert!(out.starts_with(b"{\"time\":\"1970-01-01T00:00:00.000000Z\",\"request_id\":"), "{out:?}");
        assert_eq!(std::str::from_utf8(&out).expect("text").lines().count(), 1);
        let mut tunnel = Vec::new();
        line("tunnel", std::time::UNIX_EPOCH).write_json(&mut tunnel);
        assert!(tunnel.starts_with(b"{\"kind\":\"tunnel\",\"time\":"), "{tunnel:?}");
        serde_json::from_slice::<serde_json::Value>(&tunnel).expect("valid JSON");
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_at_any_offset() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..17 {
                let mut text = "x".repeat(17);
                text.replace_range(at..=at, &char::from(special).to_string());
                let mut out = Vec::new();
                write_str(&mut out, &text);
                let back: String = serde_json::from_slice(&out).expect("valid JSON");
                assert_eq!(back, text, "byte {special:#x} at {at}");
            }
        }
        for b in 0x20u8..=0x7f {
            let text = char::from(b).to_string().repeat(9);
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(needs_escape(u64::from_le_bytes([b; 8])), b == b'"' || b == b'\\', "{b:#x}");
            assert_eq!(serde_json::from_slice::<String>(&out).expect("valid JSON"), text);
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        for secs in [0u64, 951_782_400, 1_709_164_799, 1_764_780_793, 4_102_444_800, 253_402_207_199] {
            for micros in [0u32, 1, 999_999, 123_456] {
                let at = UNIX_EPOCH + Duration::new(secs, micros * 1000);
                let mut out = Vec::new();
                write_time(&mut out, at);
                let expected = format!("{:.6}", jiff::Timestamp::try_from(at).expect("in range"));
                assert_eq!(std::str::from_utf8(&out).expect("text"), expected);
            }
        }
    }
}
