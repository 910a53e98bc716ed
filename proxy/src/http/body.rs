//! The response body sent to clients, streamed frame by frame, and the answer an error becomes.
//!
//! [`ProxyBody`] also carries the work due when a response is finished — returning the upstream
//! connection to its pool, releasing request counters, writing the access-log line — so that
//! it happens exactly once, whether the body ends cleanly or is dropped mid-stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::cluster::{ActiveRequest, Admitted};
use crate::listener::HttpSettings;
use crate::stats::route::{Outcome, TargetOutcome};

use super::conn::InFlight;
use super::error::{BoxError, ProxyError, LEGATE_ERROR};
use super::idle::{StreamClock, StreamIdle};
use super::upstream::Pooled;

/// The response body sent to a client.
pub struct ProxyBody {
    inner: Inner,
    end: Option<RequestEnd>,
    /// The request's idle clock, for a body streamed from upstream.
    clock: Option<Arc<StreamClock>>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// Work done once when a response body finishes or is dropped.
#[derive(Default)]
pub struct RequestEnd {
    pub log: Option<AccessRecord>,
    pub stats: Option<StatsEnd>,
    pub endpoint: Option<ActiveRequest>,
    pub cluster_slot: Option<Admitted>,
    pub pooled: Option<Pooled>,
    pub in_flight: Option<InFlight>,
    pub bytes_sent: u64,
}

/// What a routed request's stats need when its response ends.
pub struct StatsEnd {
    /// The settings it was routed with, which hold its route's stats.
    pub settings: Arc<HttpSettings>,
    /// Its route's [`Route::index`](crate::router::Route::index).
    pub route: usize,
    pub status: u16,
    pub start: Instant,
    /// When forwarding began, if it was forwarded.
    pub upstream_start: Option<Instant>,
    pub target: Option<TargetOutcome>,
}

impl StatsEnd {
    /// Records the request; `complete` when its response body reached the client whole.
    fn record(self, complete: bool) {
        let now = Instant::now();
        let target = self.target.map(|mut t| {
            // A body's end is timed only for a response the upstream sent, and sent whole.
            if t.head.is_some() {
                if complete {
                    t.end = self
                        .upstream_start
                        .map(|s| now.saturating_duration_since(s));
                } else {
                    t.incomplete = true;
                }
            }
            t
        });
        let outcome = Outcome {
            status: self.status,
            elapsed: now.saturating_duration_since(self.start),
            target,
        };
        if let Some(stats) = self.settings.route_stats.get(self.route) {
            stats.record(&outcome);
        }
    }
}

impl RequestEnd {
    fn finish(mut self, complete: bool) {
        if let Some(stats) = self.stats.take() {
            stats.record(complete);
        }
        if let Some(pooled) = self.pooled.take() {
            // A connection whose response was not read to the end cannot carry another request.
            if complete {
                pooled.release();
            }
        }
        if let Some(mut log) = self.log.take() {
            log.bytes_sent = self.bytes_sent;
            log.complete = complete;
            log.write();
        }
    }
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            end: None,
            clock: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// An upstream's body, which winds `clock` and fails once the clock is cut.
    pub fn upstream(body: Incoming, clock: Option<Arc<StreamClock>>) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            end: None,
            clock,
        }
    }

    /// Attaches the end-of-request work; it runs when the body ends or is dropped.
    pub fn on_end(&mut self, end: RequestEnd) {
        self.end = Some(end);
    }

    pub fn end_mut(&mut self) -> Option<&mut RequestEnd> {
        self.end.as_mut()
    }

    fn inner_done(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(end) = self.end.take() {
            end.finish(complete);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(clock) = &this.clock {
            if clock.is_cut() {
                this.finish(false);
                return Poll::Ready(Some(Err(StreamIdle.into())));
            }
        }
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(end) = this.end.as_mut() {
                        end.bytes_sent += data.len() as u64;
                    }
                    if let Some(clock) = &this.clock {
                        clock.wind();
                    }
                }
                if this.inner_done() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {
                if let Some(clock) = &this.clock {
                    clock.park_response(cx.waker());
                }
            }
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // An empty body may never be polled; it is complete all the same.
        let complete = self.inner_done();
        self.finish(complete);
    }
}

// Here rather than in `error.rs`, which sits below the body types.
impl ProxyError {
    /// The short answer a client gets: status, `legate-error`, and a one-line body.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = match self {
            ProxyError::NoRoute { .. } => "no route\n",
            ProxyError::MissingHost => "missing Host header\n",
            ProxyError::BadRequest(_) => "bad request\n",
            ProxyError::UriTooLong { .. } => "request target too long\n",
            ProxyError::NoEndpoint { .. } => "no healthy upstream\n",
            ProxyError::Overflow { .. } => "upstream overflow\n",
            ProxyError::LocalExhaustion { .. } => "proxy out of resources\n",
            ProxyError::ConnectFailed { .. } | ProxyError::ConnectTimeout { .. } => {
                "upstream connect error\n"
            }
            ProxyError::UpstreamReset { .. } => "upstream reset before response\n",
            ProxyError::UpstreamTls { .. } => "upstream TLS handshake failed\n",
            ProxyError::Timeout | ProxyError::PerTryTimeout => "upstream request timeout\n",
            ProxyError::RateLimited { .. } => "too many requests\n",
        };
        let mut resp = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(LEGATE_ERROR, HeaderValue::from_static(self.reason()));
        if let ProxyError::RateLimited { retry_after, .. } = self {
            // Whole seconds, rounded up: the bucket has room by then.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}
