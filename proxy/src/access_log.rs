//! The access log: one line per request on stdout, text or JSON.
//!
//! Each worker formats into its own buffer and writes it out in one call when it fills or on a
//! short tick, so the request path never takes the stdout lock.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};

use crate::config::model::AccessLogFormat;

/// Buffered bytes that trigger an immediate write.
const FLUSH_AT: usize = 16 * 1024;

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
        BUFFER.with(|b| {
            let Ok(mut buf) = b.try_borrow_mut() else {
                return;
            };
            match self.format {
                AccessLogFormat::Text => self.format_text(&mut buf),
                AccessLogFormat::Json => self.format_json(&mut buf),
            }
            if buf.len() >= FLUSH_AT {
                write_out(&mut buf);
            }
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
        let _ = write!(
            out,
            "{} {} {} \"{} {} {} {:?}\" {} {:.3}ms",
            humantime::format_rfc3339_millis(self.time),
            self.listener,
            self.peer,
            self.method,
            host,
            path,
            self.version,
            self.status,
            self.start.elapsed().as_secs_f64() * 1000.0,
        );
        let _ = write!(out, " route={}", self.route.as_deref().unwrap_or("-"));
        let _ = write!(out, " cluster={}", self.cluster.as_deref().unwrap_or("-"));
        match self.upstream {
            Some(a) => {
                let _ = write!(out, " upstream={a}");
            }
            None => out.push_str(" upstream=-"),
        }
        let _ = writeln!(
            out,
            " attempts={} received={} sent={} request_id={} error={}{}",
            self.attempts,
            self.received(),
            self.bytes_sent,
            self.request_id
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or("-"),
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

/// Writes out whatever this thread has buffered. Called on a short tick by each worker.
pub fn flush() {
    BUFFER.with(|b| {
        if let Ok(mut buf) = b.try_borrow_mut() {
            write_out(&mut buf);
        }
    });
}

fn write_out(buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
    buf.clear();
}
