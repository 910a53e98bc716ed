//! What a request's handling learns for the access log and its stats ([`Trace`]), and the
//! guard that still counts a request its client abandoned ([`Abandoned`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::upstream::Pooled;
use crate::cluster::{ActiveRequest, Admitted};
use crate::listener::HttpSettings;
use crate::stats::route::{Outcome, TargetOutcome};

/// What the access log and the end-of-request work learn while a request is handled.
#[derive(Default)]
pub(super) struct Trace {
    pub(super) route: Option<Arc<str>>,
    /// The route's [`crate::router::Route::index`], for its stats.
    pub(super) route_index: Option<usize>,
    /// Which of the route's clusters the request went to, and what came of it upstream.
    pub(super) target: Option<TargetOutcome>,
    /// When forwarding began.
    pub(super) upstream_start: Option<Instant>,
    pub(super) cluster: Option<Arc<str>>,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) attempts: u32,
    pub(super) endpoint: Option<ActiveRequest>,
    pub(super) cluster_slot: Option<Admitted>,
    pub(super) pooled: Option<Pooled>,
    pub(super) bytes_received: Option<Arc<AtomicU64>>,
    /// How long a rate limit delayed the request: taken off the route's timeout.
    pub(super) waited: Duration,
}

/// A request being routed and forwarded; if the client goes away before the response head
/// (hyper then drops the handler), its route and target still count it: class `other`, and
/// incomplete on the target it was sent to.
pub(super) struct Abandoned<'a> {
    pub(super) settings: &'a HttpSettings,
    pub(super) start: Instant,
    pub(super) trace: Trace,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(stats) = self
            .trace
            .route_index
            .and_then(|route| self.settings.route_stats.get(route))
        else {
            return;
        };
        let attempts = self.trace.attempts;
        stats.record(&Outcome {
            status: 0,
            elapsed: self.start.elapsed(),
            target: self.trace.target.map(|mut t| {
                t.retries = attempts.saturating_sub(1);
                t.incomplete = true;
                t
            }),
        });
    }
}
