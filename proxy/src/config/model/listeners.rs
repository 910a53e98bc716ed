//! The `listeners` section: HTTP and TCP listeners, their TLS, and upstream TLS settings.

use super::*;

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

pub use crate::path::EscapedSlashes;

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
