//! Harness for Legate's end-to-end tests: real upstreams, the real proxy (in process or as the
//! `legate` binary), real clients, all on 127.0.0.1 with ephemeral ports.
//!
//! - [`upstream`]: echo servers and misbehaving ones, counting what reaches them;
//! - [`proxy`]: Legate in process from a YAML template;
//! - [`process`]: the `legate` binary as a subprocess, with signals and its output;
//! - [`postgres`]: real PostgreSQL servers (a primary and streaming replicas) and clients;
//! - [`etcd`]: a real etcd cluster on loopback;
//! - [`dns`]: a name server whose answers a test sets;
//! - [`prometheus`]: `promtool check metrics` on a scrape;
//! - [`container`]: the container image built and run under podman;
//! - [`client`]: HTTP/1.1 and HTTP/2 client connections, and `curl`;
//! - [`body`]: request/response bodies, including streamed ones;
//! - [`eventually`]: retry an assertion that has no readiness signal until a deadline.
//!
//! A typical test:
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use legate_integration::{client, proxy::{yaml, Proxy}, upstream::Upstream};
//! let app = Upstream::echo("app").await?;
//! let proxy = Proxy::start(yaml(r#"
//! admin: { listen: 127.0.0.1:0 }
//! access_log: { enabled: false }
//! listeners: [{ name: front, listen: 127.0.0.1:0, http: { route_table: t } }]
//! route_tables:
//!   t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, cluster: app }] }] }
//! clusters: [{ name: app, endpoints: ["${APP}"] }]
//! "#).set("APP", app.addr()))?;
//! let reply = client::get(proxy.addr("front"), "example.org", "/").await?;
//! assert_eq!(reply.echo()?.upstream, "app");
//! # Ok(()) }
//! ```

pub mod body;
pub mod certs;
pub mod client;
pub mod container;
pub mod dns;
pub mod etcd;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

/// Retries `check` every 20 ms until it succeeds, failing with its last error after `limit`.
/// Only for conditions that have no signal to wait on.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {limit:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
