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
    /// `host:port` of the control plane (HTTP/2, h2c).
    pub server: String,
    /// Time allowed to connect (TCP and TLS). Default `5s`.
    #[serde(default = "Xds::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Connect over TLS (mTLS with `client_cert`/`client_key`), with the same settings as a
    /// cluster's `tls`; ALPN is always `h2`. Default: h2c (plaintext, for loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl Xds {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
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
    /// Client connections open at once, across workers; past it a new connection is closed
    /// as soon as it is accepted. Default: what the open-file limit allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Serve HTTP/1.1 and HTTP/2 (h2c prior knowledge) with a route table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpListener>,
    /// Terminate TLS on this listener (HTTP listeners). Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Forward TCP connections to a cluster (L4), instead of `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpListener>,
}

/// An L4 listener: every connection is relayed byte for byte to one endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// Name of the cluster sessions go to.
    pub cluster: String,
    /// `postgres` adds cancel routing (a CancelRequest goes to the server that owns the
    /// session). Default: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TcpProtocol>,
    /// A session with no bytes moving either way for this long is closed. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Endpoints tried when connecting fails or is refused. Default `3`.
    #[serde(default = "TcpListener::default_connect_attempts")]
    pub connect_attempts: u32,
    /// When a session's endpoint is depooled or removed, close the session after this long
    /// (overrides the cluster's `drain_timeout`). Default: the cluster's; none means sessions
    /// end only when their clients end them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
}

impl TcpListener {
    fn default_connect_attempts() -> u32 {
        3
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpProtocol {
    Postgres,
}

/// TLS termination for a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate and key pairs, chosen by SNI (exact SAN, then wildcard SAN); the first is
    /// the default for clients without SNI or with an unknown name.
    pub certificates: Vec<CertificatePair>,
    /// ALPN protocols offered, in preference order. Default `[h2, http/1.1]`.
    #[serde(default = "ListenerTls::default_alpn")]
    pub alpn: Vec<String>,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Ask clients for a certificate (mTLS). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Time a client has to complete the handshake. Default `10s`.
    #[serde(default = "ListenerTls::default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Send the verified client certificate's identity upstream in
    /// `x-forwarded-client-cert`. A client's own such header is always removed. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_client_cert: bool,
}

impl ListenerTls {
    fn default_alpn() -> Vec<String> {
        vec!["h2".to_owned(), "http/1.1".to_owned()]
    }
    fn default_handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// PEM files: a certificate chain (leaf first) and its private key (RSA, ECDSA or Ed25519).
/// Relative paths are relative to the process's working directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM bundle of the CAs that client certificates must chain to.
    pub ca: String,
    /// `required` (default): no valid certificate, no connection. `optional`: clients
    /// without one are served, unmarked.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent (SNI) and verified. Default: the endpoint's DNS name, else its IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle of trusted CAs. Default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate chain (PEM) for mTLS; needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// ALPN offered. Default: `[h2]` for `protocol: http2`, `[http/1.1]` otherwise. With both,
    /// the protocol the server picks is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Accept any server certificate. Dangerous; logged as a warning. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
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
    /// Longest request target (the URI, `:path` on HTTP/2) accepted, in bytes; a longer one is
    /// answered 414. Default `8192`.
    #[serde(default = "HttpListener::default_max_uri_length")]
    pub max_uri_length: usize,
    /// Most HTTP/2 streams a client may have open at once on one connection. Default `100`.
    #[serde(default = "HttpListener::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Once the response head has arrived, a request (or an upgraded tunnel) with no body
    /// bytes moving either way for this long is cut; a route may say otherwise. Default `5m`.
    #[serde(default = "HttpListener::default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// Merge runs of `/` in request paths before routing. Default `true`.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// What an encoded `/` or `\` (`%2F`, `%5C`) in a request path does. Default `keep`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

/// An encoded slash in a request path: kept as it is (it never separates segments, and
/// reaches the upstream encoded), or refused with 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
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
    fn default_stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    fn default_max_uri_length() -> usize {
        8 * 1024
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
    /// Once the response head has arrived, a request (or an upgraded tunnel) with no body
    /// bytes moving either way for this long is cut. Default: the listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
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
    /// Protocols an HTTP/1.1 `Upgrade` may switch to through this route, as `Upgrade`
    /// tokens (case-insensitive). Default `[websocket]`; `h2c` is never allowed.
    #[serde(
        default = "default_upgrades",
        skip_serializing_if = "is_default_upgrades"
    )]
    pub upgrades: Vec<String>,
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

fn is_default_upgrades(upgrades: &[String]) -> bool {
    upgrades == ["websocket"]
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
    /// `true`: a request carrying an `Idempotency-Key` header counts as idempotent, so it may
    /// be tried again after it reached the upstream. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotency_key: bool,
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
    /// Load balancer. Default `least_request`.
    #[serde(default)]
    pub lb: LbPolicy,
    /// What `ring_hash` and `maglev` hash a request on. Default: the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
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
    /// Connect to endpoints over TLS. Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Active health checking. Default: none (every pooled endpoint is assumed healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits that fail fast with 503 `overflow` instead of queueing.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// An endpoint that becomes usable ramps from a small share to its full weight over this
    /// long. Default: none (full weight at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Duration>,
    /// When an endpoint is depooled or removed, close its TCP sessions after this long.
    /// Default: none (sessions end when their clients end them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// How often DNS names in endpoint addresses are resolved again. Default `30s`.
    #[serde(default = "Cluster::default_dns_refresh")]
    pub dns_refresh: Duration,
    /// When fewer than this percentage of endpoints are usable (healthy, not ejected),
    /// balance across all pooled endpoints rather than overload the few. Default `50`;
    /// `0` disables panic mode.
    #[serde(default = "Cluster::default_panic_threshold")]
    pub panic_threshold: u32,
}

impl Cluster {
    fn default_dns_refresh() -> Duration {
        Duration::from_secs(30)
    }
    fn default_panic_threshold() -> u32 {
        50
    }
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
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on active requests, weighted.
    #[default]
    LeastRequest,
    /// Power of two choices on open connections/sessions, weighted (long-lived L4 sessions).
    LeastConnections,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring: a removed endpoint moves only its own share.
    RingHash,
    /// Consistent hashing with a Maglev table: O(1) picks, minimal disruption.
    Maglev,
}

/// The request property consistent hashing uses. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// Hash this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "is_false")]
    pub client_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP GET that must answer one of `expect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// A TCP connect that must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// A PostgreSQL server that accepts connections (and, with credentials, is a replica
    /// that is not lagging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresHealthCheck>,
    /// Time between checks of one endpoint. Default `5s`.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// A check not answered within this fails. Default `1s`.
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Up to this much random delay is added to each interval, so checks from many proxies
    /// do not arrive together. Default `0s`.
    #[serde(default)]
    pub jitter: Duration,
    /// Consecutive failures that mark a healthy endpoint unhealthy. Default `3`.
    #[serde(default = "HealthCheck::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy endpoint healthy. Default `2`.
    #[serde(default = "HealthCheck::default_healthy_threshold")]
    pub healthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_unhealthy_threshold() -> u32 {
        3
    }
    fn default_healthy_threshold() -> u32 {
        2
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path requested. Default `/healthz`.
    #[serde(default = "HttpHealthCheck::default_path")]
    pub path: String,
    /// Host header sent. Default: the endpoint address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as healthy: codes (`200`) or ranges (`200-299`). Default `[200-299]`.
    #[serde(default = "HttpHealthCheck::default_expect")]
    pub expect: Vec<StatusRange>,
}

impl HttpHealthCheck {
    fn default_path() -> String {
        "/healthz".to_owned()
    }
    fn default_expect() -> Vec<StatusRange> {
        vec![StatusRange { lo: 200, hi: 299 }]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Without credentials: a StartupMessage is sent and a server that asks for authentication
/// (or refuses it) is up; one that is starting up, shutting down, out of connection slots or
/// silent is down. With `password` or `password_file`, the check also logs in and queries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresHealthCheck {
    /// Default `postgres`.
    #[serde(default = "PostgresHealthCheck::default_name")]
    pub user: String,
    /// Default `postgres`.
    #[serde(default = "PostgresHealthCheck::default_name")]
    pub database: String,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Down when the server is not in recovery (a primary). Needs credentials. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_replica: bool,
    /// Down when replay lags the primary by more than this. Needs credentials. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<Duration>,
}

impl PostgresHealthCheck {
    fn default_name() -> String {
        "postgres".to_owned()
    }

    pub fn has_credentials(&self) -> bool {
        self.password.is_some() || self.password_file.is_some()
    }
}

/// An inclusive range of HTTP status codes, written `200` or `200-299`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (200) or an inclusive range (200-299)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let code = u16::try_from(v)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| E::custom(format!("status {v} is not between 100 and 599")))?;
                Ok(StatusRange { lo: code, hi: code })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom("status is negative"))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let parse = |s: &str| -> Result<u16, E> {
                    s.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| {
                            E::custom(format!("{s:?} is not a status between 100 and 599"))
                        })
                };
                let (lo, hi) = match v.split_once('-') {
                    Some((a, b)) => (parse(a)?, parse(b)?),
                    None => {
                        let c = parse(v)?;
                        (c, c)
                    }
                };
                if lo > hi {
                    return Err(E::custom(format!("range {v:?} is empty")));
                }
                Ok(StatusRange { lo, hi })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures (5xx responses, connect failures, resets) that eject an endpoint.
    /// Default `5`.
    #[serde(default = "OutlierDetection::default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each further one of the same endpoint lasts this
    /// times the number of ejections so far. Default `30s`.
    #[serde(default = "OutlierDetection::default_base_ejection")]
    pub base_ejection: Duration,
    /// Longest ejection. Default `300s`.
    #[serde(default = "OutlierDetection::default_max_ejection")]
    pub max_ejection: Duration,
    /// Never eject more than this percentage of the cluster's endpoints (at least one may
    /// always be ejected). Default `10`.
    #[serde(default = "OutlierDetection::default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    fn default_consecutive_failures() -> u32 {
        5
    }
    fn default_base_ejection() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    fn default_max_ejected_percent() -> u32 {
        10
    }
}

/// Per-cluster limits; past one, a request is answered 503 `overflow` at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Upstream connections open at once, across workers. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_connections: u32,
    /// Requests waiting for a new upstream connection. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_pending: u32,
    /// Requests in flight. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_requests: u32,
    /// Retries in flight. Default `3`.
    #[serde(default = "CircuitBreakers::default_retries")]
    pub max_retries: u32,
    /// Retries in flight as a share of requests in flight, on top of `max_retries`.
    /// Default: none (only `max_retries` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Retries in flight may be `percent` of the requests in flight, and at least
/// `min_concurrent` whatever the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of the requests in flight. Default `20`.
    #[serde(default = "RetryBudget::default_percent")]
    pub percent: u32,
    /// Retries always allowed at once, however few requests are in flight. Default `3`.
    #[serde(default = "RetryBudget::default_min_concurrent")]
    pub min_concurrent: u32,
}

impl RetryBudget {
    fn default_percent() -> u32 {
        20
    }
    fn default_min_concurrent() -> u32 {
        3
    }

    /// Retries allowed in flight while `active` requests are.
    pub fn allowed(self, active: usize) -> usize {
        let share = active.saturating_mul(self.percent as usize) / 100;
        share.max(self.min_concurrent as usize)
    }
}

impl CircuitBreakers {
    fn default_limit() -> u32 {
        1024
    }
    fn default_retries() -> u32 {
        3
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: Self::default_limit(),
            max_pending: Self::default_limit(),
            max_requests: Self::default_limit(),
            max_retries: Self::default_retries(),
            retry_budget: None,
        }
    }
}

/// An upstream endpoint: `"ip:port"` or `{ address, weight, pooled }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Relative share of new requests. Default `1`.
    pub weight: u32,
    /// `false`: no new requests go to this endpoint; requests in flight finish. Default `true`.
    pub pooled: bool,
    /// Zone (datacenter) of the endpoint, for zone-aware routing. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    pooled: bool,
    #[serde(default)]
    zone: Option<String>,
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
                    zone: None,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                let f = EndpointFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint {
                    address: f.address,
                    weight: f.weight,
                    pooled: f.pooled,
                    zone: f.zone,
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

fn default_true() -> bool {
    true
}
