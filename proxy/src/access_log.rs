//! The access log: one line per HTTP request, and one per L4 session, on stdout, text or JSON.
//!
//! Each worker formats into its own buffer and hands it, when it fills or on a short tick, to
//! one writer thread through a bounded queue. A worker never waits for stdout: when the
//! queue is full (a stalled log reader), the batch is dropped and its lines counted.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};

use crate::config::model::AccessLogFormat;

/// Buffered bytes that trigger an immediate hand-off to the writer.
const FLUSH_AT: usize = 16 * 1024;
/// Batches waiting for the writer thread before workers start dropping them (up to 4 MiB).
const QUEUE: usize = 256;

/// Lines dropped because the writer could not keep up.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<SyncSender<Batch>> = OnceLock::new();

enum Batch {
    Lines(String),
    /// Answered once everything queued before it is written.
    Barrier(mpsc::Sender<()>),
}

thread_local! {
    static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(FLUSH_AT * 2));
}

/// Everything one access-log line says about a request.
#[derive(Debug)]
pub struct AccessRecord {
    pub format: AccessLogFormat,
    pub time: SystemTime,
    pub start: Instant,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub request_id: Option<HeaderValue>,
    pub bytes_received: Option<Arc<AtomicU64>>,
    pub bytes_sent: u64,
    pub error: Option<&'static str>,
    /// Whether the response body was sent to the end.
    pub complete: bool,
}

impl AccessRecord {
    /// Formats the line into this thread's buffer.
    pub fn write(&self) {
        buffer_line(|buf| match self.format {
            AccessLogFormat::Text => self.format_text(buf),
            AccessLogFormat::Json => self.format_json(buf),
        });
    }

    fn received(&self) -> u64 {
        self.bytes_received
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn format_text(&self, out: &mut String) {
        let host = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let _ = write!(out, "{} ", humantime::format_rfc3339_millis(self.time));
        escaped(out, &self.listener);
        let _ = write!(out, " {} \"{} ", self.peer, self.method);
        escaped(out, host);
        out.push(' ');
        escaped(out, path);
        let _ = write!(
            out,
            " {:?}\" {} {:.3}ms route=",
            self.version,
            self.status,
            self.start.elapsed().as_secs_f64() * 1000.0,
        );
        escaped(out, self.route.as_deref().unwrap_or("-"));
        out.push_str(" cluster=");
        escaped(out, self.cluster.as_deref().unwrap_or("-"));
        match self.upstream {
            Some(a) => {
                let _ = write!(out, " upstream={a}");
            }
            None => out.push_str(" upstream=-"),
        }
        let _ = write!(
            out,
            " attempts={} received={} sent={} request_id=",
            self.attempts,
            self.received(),
            self.bytes_sent,
        );
        let request_id = self.request_id.as_ref().and_then(|h| h.to_str().ok());
        escaped(out, request_id.unwrap_or("-"));
        let _ = writeln!(
            out,
            " error={}{}",
            self.error.unwrap_or("-"),
            if self.complete { "" } else { " incomplete" },
        );
    }

    fn format_json(&self, out: &mut String) {
        let v = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "listener": &*self.listener,
            "peer": self.peer.to_string(),
            "method": self.method.as_str(),
            "host": self.host.as_ref().and_then(|h| h.to_str().ok()),
            "path": self.uri.path_and_query().map_or("/", |p| p.as_str()),
            "protocol": format!("{:?}", self.version),
            "status": self.status,
            "duration_ms": self.start.elapsed().as_secs_f64() * 1000.0,
            "route": self.route.as_deref(),
            "cluster": self.cluster.as_deref(),
            "upstream": self.upstream.map(|a| a.to_string()),
            "attempts": self.attempts,
            "bytes_received": self.received(),
            "bytes_sent": self.bytes_sent,
            "request_id": self.request_id.as_ref().and_then(|h| h.to_str().ok()),
            "error": self.error,
            "complete": self.complete,
        });
        let _ = writeln!(out, "{v}");
    }
}

/// Everything one access-log line says about an L4 (TCP, Postgres) session, at its end.
#[derive(Debug)]
pub struct SessionRecord {
    pub format: AccessLogFormat,
    pub time: SystemTime,
    pub start: Instant,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub cluster: Arc<str>,
    /// The endpoint relayed to; none when no connection was made.
    pub upstream: Option<SocketAddr>,
    pub to_upstream: u64,
    pub to_client: u64,
    /// How it ended: `client-close`, `upstream-close`, `idle-timeout`, `drain-timeout`,
    /// `connect-failure`, `overflow`, `error`, and for Postgres `cancel-routed`,
    /// `not-postgres`.
    pub end: &'static str,
    pub postgres: bool,
}

impl SessionRecord {
    /// Formats the line into this thread's buffer.
    pub fn write(&self) {
        buffer_line(|buf| match self.format {
            AccessLogFormat::Text => self.format_text(buf),
            AccessLogFormat::Json => self.format_json(buf),
        });
    }

    fn protocol(&self) -> &'static str {
        if self.postgres {
            "postgres"
        } else {
            "tcp"
        }
    }

    fn format_text(&self, out: &mut String) {
        let _ = write!(out, "{} ", humantime::format_rfc3339_millis(self.time));
        escaped(out, &self.listener);
        let _ = write!(
            out,
            " {} \"{}\" {:.3}ms cluster=",
            self.peer,
            self.protocol(),
            self.start.elapsed().as_secs_f64() * 1000.0,
        );
        escaped(out, &self.cluster);
        match self.upstream {
            Some(a) => {
                let _ = write!(out, " upstream={a}");
            }
            None => out.push_str(" upstream=-"),
        }
        let _ = writeln!(
            out,
            " to_upstream={} to_client={} end={}",
            self.to_upstream, self.to_client, self.end
        );
    }

    fn format_json(&self, out: &mut String) {
        let v = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "listener": &*self.listener,
            "peer": self.peer.to_string(),
            "protocol": self.protocol(),
            "duration_ms": self.start.elapsed().as_secs_f64() * 1000.0,
            "cluster": &*self.cluster,
            "upstream": self.upstream.map(|a| a.to_string()),
            "bytes_to_upstream": self.to_upstream,
            "bytes_to_client": self.to_client,
            "end": self.end,
        });
        let _ = writeln!(out, "{v}");
    }
}

/// Formats one line into this thread's buffer, handing the buffer to the writer once full.
fn buffer_line(format: impl FnOnce(&mut String)) {
    BUFFER.with(|b| {
        let Ok(mut buf) = b.try_borrow_mut() else {
            return;
        };
        format(&mut buf);
        if buf.len() >= FLUSH_AT {
            write_out(&mut buf);
        }
    });
}

/// Appends `text` so that it cannot end the line or the quoted request: `"` and `\` are
/// escaped with a backslash, spaces and control bytes as `\xNN`.
fn escaped(out: &mut String, text: &str) {
    if !text
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b <= b' ' || b == 0x7f)
    {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c <= ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Hands whatever this thread has buffered to the writer. Called on a short tick by each
/// worker.
pub fn flush() {
    BUFFER.with(|b| {
        if let Ok(mut buf) = b.try_borrow_mut() {
            write_out(&mut buf);
        }
    });
}

/// Lines dropped so far because the log could not be written fast enough.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits, at most `timeout`, until everything handed to the writer so far is written (at
/// shutdown, so the last lines are not lost).
pub fn written(timeout: Duration) {
    let Some(writer) = WRITER.get() else { return };
    let (tx, rx) = mpsc::channel();
    if writer.try_send(Batch::Barrier(tx)).is_ok() {
        let _ = rx.recv_timeout(timeout);
    }
}

fn write_out(buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    let batch = std::mem::replace(buf, String::with_capacity(FLUSH_AT * 2));
    match writer().map(|w| w.try_send(Batch::Lines(batch))) {
        Some(Ok(())) => {}
        Some(Err(TrySendError::Full(Batch::Lines(lines))))
        | Some(Err(TrySendError::Disconnected(Batch::Lines(lines)))) => {
            let lines = lines.bytes().filter(|b| *b == b'\n').count();
            DROPPED.fetch_add(lines as u64, Ordering::Relaxed);
        }
        Some(Err(_)) | None => {}
    }
}

/// The writer thread, started on first use: it alone waits for stdout.
fn writer() -> Option<&'static SyncSender<Batch>> {
    if let Some(w) = WRITER.get() {
        return Some(w);
    }
    let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUE);
    let started = std::thread::Builder::new()
        .name("legate-access-log".into())
        .spawn(move || {
            for batch in rx {
                match batch {
                    Batch::Lines(lines) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(lines.as_bytes());
                        let _ = out.flush();
                    }
                    Batch::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
    if started.is_err() {
        return None;
    }
    // Two workers may race to start it; the loser's thread ends when its sender drops.
    Some(WRITER.get_or_init(|| tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_cannot_forge_lines_or_quotes() {
        let mut out = String::new();
        escaped(&mut out, "plain.example.org");
        assert_eq!(out, "plain.example.org");
        out.clear();
        escaped(&mut out, "a\" 200 x\\y\nforged line\r\x01");
        assert_eq!(
            out,
            "a\\\"\\x20200\\x20x\\\\y\\x0aforged\\x20line\\x0d\\x01"
        );
    }
}
