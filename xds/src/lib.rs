//! xDS-lite: the messages Legate proxies and the `legate-xds` control plane exchange (see
//! `PROTOCOL.md`, whose rules are cited as `R1`..), their line framing, and the control plane.
//!
//! - [`protocol`]: the messages and their framing, shared with the proxy's client.
//! - [`store`]: node groups from a directory of YAML files, with overrides applied, versions.
//! - [`overrides`]: operator overrides of endpoints and splits, and endpoint requests.
//! - [`splits`]: split weights operators set per group and route.
//! - [`state`]: where the overrides are persisted: a state file, or etcd for replicas.
//! - [`etcd`]: an etcd v3 client over its JSON gateway; [`follow`]: watching it.
//! - [`session`]: one proxy session as a state machine: what to send, given ACKs and NACKs.
//! - [`server`]: the stream and the operator API on one port; [`server::serve`].
//! - [`operator`]: the operator API: overrides, split weights, status, the audit log.
//! - [`access`]: who may do what: roles from client certificates, loopback without them.
//! - [`audit`]: the audit log of operator changes.
//! - [`shared`]: what the server's connections, streams and operator API share.
//! - [`channel_body`]: the stream's body, fed by a channel.
//! - [`limits`]: connection caps and timeouts of the server.
//! - [`metrics`] and [`propagation`]: `/metrics`, and how long changes take to reach proxies.
//! - [`exposition`]: Prometheus text or OpenMetrics; shared with the proxy.
//! - [`tls`]: TLS and mTLS for the server and the operator CLI (rustls, `ring`).
//! - [`pem`]: reading certificate chains, keys and CA bundles; shared with the proxy.
//! - [`watch`]: debounced change notices for files and directories; shared with the proxy.
//! - [`cli`]: the `legate-xds` command line.

pub mod access;
pub mod audit;
pub mod channel_body;
pub mod cli;
pub mod etcd;
pub mod exposition;
pub mod follow;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod overrides;
pub mod pem;
pub mod propagation;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shared;
pub mod splits;
pub mod state;
pub mod store;
pub mod tls;
pub mod watch;

pub use server::{serve, ServeConfig, ServeError, ServerHandle};
pub use state::StateStore;
pub use tls::{ClientTlsFiles, ServerTlsFiles};
