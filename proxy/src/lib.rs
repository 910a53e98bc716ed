//! Legate: a sidecar service-mesh proxy. HTTP routing by Host over many listeners, hot-swapped
//! config, per-core event loops with their own upstream pools.
//!
//! Architecture: YAML → [`config`] (typed model, validated) → [`snapshot`] (compiled, immutable,
//! published with arc-swap) → served by [`worker`]s, each a current-thread runtime that accepts on
//! its own SO_REUSEPORT socket per [`listener`] and proxies with [`http`] over [`cluster`]s.
//! [`app`] wires it together; [`admin`] and reloads run on a separate control thread.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod control;
pub mod drain;
pub mod http;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod router;
pub mod snapshot;
pub mod tcp;
pub mod tls;
pub mod watch;
pub mod worker;
pub mod xds;
