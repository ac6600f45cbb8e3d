//! Operator-facing log lines on stderr. A closed or full stderr (a pipe to
//! `head`, `2>/dev/full`) must never stop the proxy or its config watcher:
//! `eprintln!` panics when the write fails, so every line goes through
//! [`line`], which drops what cannot be written.

use std::io::Write;

/// Writes `sluice-proxy: <message>` and a newline to stderr, ignoring
/// write errors.
pub fn line(message: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "sluice-proxy: {message}");
}

/// Writes `text` to stdout as is, ignoring write errors.
pub fn stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// `say!("...", args)`: one operator log line on stderr (see [`line`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
