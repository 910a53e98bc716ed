//! Request and session statistics: latency histograms and counters kept per worker, merged
//! at scrape time.
//!
//! Recording touches only the current worker's own cells ([`PerWorker`]), so no two workers
//! ever write one cache line; the scraper sums the cells on the control thread. The stats of a
//! route or a TCP listener live in a [`Registry`] by identity, so they survive reloads the way
//! endpoint health does.

pub mod histogram;
pub mod per_worker;
pub mod registry;
pub mod route;
pub mod window;

pub use histogram::{Histogram, Merged};
pub use per_worker::PerWorker;
pub use registry::Registry;
pub use route::{Outcome, RouteStats, TargetStats};

/// Response status classes, as the `code_class` label names them; index by [`class_of`].
pub const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The [`CLASSES`] slot of a status code.
pub fn class_of(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// The stats a listener's current settings record into, for the read model.
#[derive(Debug, Clone)]
pub enum ListenerStats {
    /// An HTTP listener's routes.
    Routes(std::sync::Arc<[std::sync::Arc<RouteStats>]>),
    /// A TCP listener's sessions.
    Sessions(std::sync::Arc<SessionStats>),
}

/// How long the sessions of one TCP listener to its cluster lasted.
#[derive(Debug)]
pub struct SessionStats {
    pub listener: std::sync::Arc<str>,
    pub cluster: std::sync::Arc<str>,
    pub duration: PerWorker<Histogram>,
}
