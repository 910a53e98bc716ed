//! The typed config model: exactly what a user writes in YAML, before validation.
//!
//! Every struct denies unknown fields so a typo is an error naming the key. Cross-field rules
//! (exactly one action per route, references that resolve, ...) live in `validate`, and the
//! request path never sees this model: it sees the compiled snapshot.

use std::collections::BTreeMap;
use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize};

use super::duration::Duration;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener (`/ready`, `/config`, `/clusters`). Default: `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide settings: worker threads and shutdown drain.
    #[serde(default)]
    pub runtime: Runtime,
    /// The per-request access log on stdout.
    #[serde(default)]
    pub access_log: AccessLog,
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads, each with its own event loop and SO_REUSEPORT socket per listener.
    /// Default: the number of CPUs available to the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
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
            drain_timeout: Self::default_drain_timeout(),
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

// === listeners ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs and when reconciling listeners on reload.
    pub name: String,
    /// `ip:port` to bind, IPv4 (`0.0.0.0:6533`) or IPv6 (`[::]:6533`).
    pub listen: String,
    /// Accept queue length. Default `1024`.
    #[serde(default = "Listener::default_backlog")]
    pub backlog: u32,
    /// Serve HTTP/1.1 and HTTP/2 (h2c prior knowledge) with a route table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpListener>,
}

impl Listener {
    fn default_backlog() -> u32 {
        1024
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    /// Name of an entry in `route_tables`.
    pub route_table: String,
    /// Time a client has to send a complete request head. On HTTP/1.1 the clock also runs while
    /// a keep-alive connection waits for its next request, so this bounds idle keep-alive time
    /// too. Default `30s`.
    #[serde(default = "HttpListener::default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight is closed after this long. Default `60s`.
    #[serde(default = "HttpListener::default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes. Default `65536`.
    #[serde(default = "HttpListener::default_max_header_size")]
    pub max_header_size: usize,
    /// Most HTTP/2 streams a client may have open at once on one connection. Default `100`.
    #[serde(default = "HttpListener::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

impl HttpListener {
    fn default_header_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_max_header_size() -> usize {
        64 * 1024
    }
    fn default_max_concurrent_streams() -> u32 {
        100
    }
}

// === routes ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Tried by Host: exact names first, then the longest `*.suffix`, then `*`.
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Host names: `maps.example.org`, `*.example.org`, or `*`. Case-insensitive; ports ignored.
    pub hosts: Vec<String>,
    /// Tried in order; the first that matches wins.
    pub routes: Vec<Route>,
}

/// One route: a match and exactly one action (`cluster`, `split`, `redirect` or `respond`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitTarget>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// Whole-request deadline, from routing to the end of the response head. Default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Replace the Host (`:authority`) sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Replace the matched `prefix` of the path with this (prefix routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Headers set on / removed from the request sent upstream.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Headers set on / removed from the response sent to the client.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Path (without query) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Path (without query) matches this regular expression as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Every listed header condition must hold as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// The header's value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The header's value matches this regular expression as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header is present (any value); `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negate the condition. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: String,
    /// Relative share of requests; `0` sends none.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`. Default: the request's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default: the request's port, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replace the whole path. Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Drop the query string. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308. Default `301`.
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
}

impl Redirect {
    fn default_status() -> u16 {
        301
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Extra response headers. `content-type` defaults to `text/plain` when a body is set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total tries including the first. Default `2`.
    #[serde(default = "RetryPolicy::default_attempts")]
    pub attempts: u32,
    /// Conditions that allow another try. Default `[connect-failure]`.
    #[serde(default = "RetryPolicy::default_on")]
    pub on: Vec<RetryOn>,
    /// Deadline for each try's response head. Default: none (the route timeout applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        2
    }
    fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure]
    }
}

/// When a failed try may be retried. A request whose body has started streaming upstream is
/// never retried, whatever the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The upstream connection could not be established.
    ConnectFailure,
    /// The upstream reset or closed the connection before a response head.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// The upstream answered 503.
    Status503,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The upstream answered any 5xx.
    Status5xx,
}

impl RetryOn {
    pub const ALL: [(&'static str, RetryOn); 6] = [
        ("connect-failure", RetryOn::ConnectFailure),
        ("reset", RetryOn::Reset),
        ("timeout", RetryOn::Timeout),
        ("503", RetryOn::Status503),
        ("gateway-error", RetryOn::GatewayError),
        ("5xx", RetryOn::Status5xx),
    ];

    pub fn as_str(self) -> &'static str {
        RetryOn::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(s, _)| s)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of connect-failure, reset, timeout, 503, gateway-error, 5xx")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RetryOn::ALL
                    .iter()
                    .find(|(s, _)| *s == v)
                    .map(|(_, r)| *r)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Set these headers, replacing any value already present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

// === clusters ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `http1` (default) or `http2` (prior knowledge, multiplexed).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Load balancer. Default `round_robin` (smooth weighted).
    #[serde(default)]
    pub lb: LbPolicy,
    /// Time allowed to establish a TCP connection to an endpoint. Default `1s`.
    #[serde(default = "Cluster::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per endpoint and worker. Default `64`.
    #[serde(default = "Cluster::default_max_idle")]
    pub max_idle_connections: usize,
    /// An idle pooled upstream connection is closed after this long. Default `60s`.
    #[serde(default = "Cluster::default_idle_timeout")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl Cluster {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_max_idle() -> usize {
        64
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
}

/// An upstream endpoint: `"ip:port"` or `{ address, weight, pooled }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Relative share of new requests. Default `1`.
    pub weight: u32,
    /// `false`: no new requests go to this endpoint; requests in flight finish. Default `true`.
    pub pooled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    pooled: bool,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address \"ip:port\" or a map { address, weight, pooled }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint {
                    address: v.to_owned(),
                    weight: 1,
                    pooled: true,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                let f = EndpointFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint {
                    address: f.address,
                    weight: f.weight,
                    pooled: f.pooled,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}
