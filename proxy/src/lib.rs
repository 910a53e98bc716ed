//! Legate: a sidecar service-mesh proxy. HTTP routing by Host over many listeners, hot-swapped
//! config, per-core event loops with their own upstream pools.
//!
//! Architecture (docs/architecture.md): a [`source`] (the file, the control plane) hands a
//! config to the [`apply`] road — check → compile into a [`snapshot`] → reconcile listeners →
//! publish — which is served by [`worker`]s, each a current-thread runtime that accepts on its
//! own SO_REUSEPORT socket per [`listener`] ([`serve`]) and proxies with [`http`] or [`tcp`]
//! over [`cluster`]s. [`admin`] and [`metrics`] read [`state`]; [`app`] wires it together.

/// The release this binary is.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision it was built from (`unknown` when the build could not tell).
pub const REVISION: &str = env!("LEGATE_REVISION");

pub mod access_log;
pub mod admin;
pub mod app;
pub mod apply;
pub mod cluster;
pub mod config;
pub mod control;
pub mod devcert;
pub mod drain;
pub mod http;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod path;
pub mod pidfile;
pub mod ratelimit;
pub mod resources;
pub mod router;
pub mod serve;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod stats;
pub mod status_page;
pub mod tcp;
pub mod tls;
pub mod upgrade;
pub mod worker;

/// File-change events closer together than this are one change (editors and `kubectl` write
/// in steps): for the watches on the config file and the TLS files.
pub const WATCH_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);
