//! The typed config model: exactly what a user writes in YAML, before validation.
//!
//! Every struct denies unknown fields so a typo is an error naming the key. Cross-field rules
//! (exactly one action per route, references that resolve, ...) live in `validate`, and the
//! request path never sees this model: it sees the compiled snapshot.

use std::collections::BTreeMap;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize};

use super::duration::Duration;

mod clusters;
mod listeners;
mod routes;

pub use clusters::*;
pub use listeners::*;
pub use routes::*;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this proxy is: its identity, node group and zone.
    #[serde(default)]
    pub node: Node,
    /// Get listeners, route tables, clusters and endpoints from an xDS-lite control plane, in
    /// addition to the ones in this file. Default: none (this file is the whole config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<Xds>,
    /// The admin listener (`/ready`, `/config`, `/clusters`). Default: `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: Admin,
    /// A listener serving only `GET /ready` and `GET /healthz`, for probes from outside the
    /// host (the kubelet). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    /// Process-wide settings: worker threads and shutdown drain.
    #[serde(default)]
    pub runtime: Runtime,
    /// The per-request access log on stdout.
    #[serde(default)]
    pub access_log: AccessLog,
    /// How the DNS names of endpoints are resolved. Default: as `/etc/resolv.conf` says.
    #[serde(default)]
    pub dns: Dns,
    /// Ports Legate accepts connections on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named route tables; several listeners may share one.
    #[serde(default)]
    pub route_tables: BTreeMap<String, RouteTable>,
    /// Upstream clusters that routes send traffic to.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This proxy's name, e.g. the pod name. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The group of proxies sharing one config, e.g. the service name. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The zone (datacenter) this proxy runs in. With it, clusters whose endpoints carry
    /// zones keep traffic in this zone while it has enough healthy capacity. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The control plane to follow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    /// `host:port` of the control plane (HTTP/2, h2c), or a list of its replicas, tried in
    /// turn: a session that fails or ends moves to the next.
    pub server: Servers,
    /// Time allowed to connect (TCP and TLS). Default `5s`.
    #[serde(default = "Xds::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Connect over TLS (mTLS with `client_cert`/`client_key`), with the same settings as a
    /// cluster's `tls`; ALPN is always `h2`. Default: h2c (plaintext, for loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Local files the control plane's resources may name (TLS certificates, keys and CAs,
    /// Postgres password files): absolute paths, or directories ending in `/`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_files: Vec<String>,
}

impl Xds {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

/// One `host:port`, or several: the replicas of a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers(pub Vec<String>);

impl Servers {
    pub fn list(&self) -> &[String] {
        &self.0
    }
}

impl From<&str> for Servers {
    fn from(one: &str) -> Servers {
        Servers(vec![one.to_owned()])
    }
}

impl fmt::Display for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Serialize for Servers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Servers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Servers, D::Error> {
        match one_or_many(d, "host:port")? {
            v if v.is_empty() => Err(de::Error::custom("an empty list of servers")),
            v => Ok(Servers(v)),
        }
    }
}

/// A string, or a list of them; `what` names one in the error.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(de::Error::custom(format!(
            "expected {what}, or a list of them"
        ))),
    }
}

/// `/a/b`: absolute, every part a name (no empty, `.` or `..` part); the form
/// [`Xds::allow_files`] entries and the files pushed resources name must have.
pub fn is_plain_absolute(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
    })
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener. Default `127.0.0.1:9901`.
    #[serde(default = "Admin::default_listen")]
    pub listen: String,
}

impl Admin {
    fn default_listen() -> String {
        "127.0.0.1:9901".to_owned()
    }
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
        }
    }
}

/// The probe listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    /// Address of the probe listener, e.g. `0.0.0.0:9902`.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads, each with its own event loop and SO_REUSEPORT socket per listener.
    /// Default: the number of CPUs available to the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// On SIGTERM, how long to keep accepting and serving with `/ready` at 503 before the
    /// drain starts, so load balancers stop sending first. Default `0s`.
    #[serde(default)]
    pub drain_delay: Duration,
    /// How long SIGTERM waits for in-flight work before closing what is left. Default `30s`.
    #[serde(default = "Runtime::default_drain_timeout")]
    pub drain_timeout: Duration,
}

impl Runtime {
    fn default_drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            workers: None,
            drain_delay: Duration::from_secs(0),
            drain_timeout: Self::default_drain_timeout(),
        }
    }
}

/// The resolver of endpoint DNS names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers to ask, `ip` or `ip:port` (port 53 when left out), in order. Default:
    /// the `nameserver`s, `search` list and `ndots` of `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// How long one lookup may take before it counts as failed. Default `5s`.
    #[serde(default = "Dns::default_timeout")]
    pub timeout: Duration,
}

impl Dns {
    fn default_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            servers: None,
            timeout: Self::default_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Write one line per request to stdout. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            format: AccessLogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn one() -> u32 {
    1
}

pub(super) fn is_false(b: &bool) -> bool {
    !*b
}

pub(super) fn default_true() -> bool {
    true
}
