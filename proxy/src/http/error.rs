//! Errors the proxy answers itself, and the one place they become status codes.

use http::StatusCode;

/// The error type of the bodies Legate streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header naming why Legate, not the upstream, produced a response.
pub const LEGATE_ERROR: &str = "legate-error";

/// Where a failure came from, so logs and metrics can tell a bad client from a bad upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for host {host:?} path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("request has no Host header or authority")]
    MissingHost,
    #[error("cluster {cluster} has no pooled endpoint")]
    NoEndpoint { cluster: std::sync::Arc<str> },
    #[error("connect to {addr} failed: {source}")]
    ConnectFailed {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: std::net::SocketAddr },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    UpstreamTls {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} reset the request: {source}")]
    UpstreamReset {
        addr: std::net::SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream did not answer within the route timeout")]
    Timeout,
    #[error("upstream did not answer within the per-try timeout")]
    PerTryTimeout,
    #[error("invalid request: {0}")]
    BadRequest(&'static str),
    #[error("request target of {length} bytes is over the listener's {limit}-byte limit")]
    UriTooLong { length: usize, limit: usize },
    #[error("out of local resources for an upstream connection: {source}")]
    LocalExhaustion {
        #[source]
        source: std::io::Error,
    },
    #[error("cluster {cluster} is at its {limit} circuit-breaker limit")]
    Overflow {
        cluster: std::sync::Arc<str>,
        limit: &'static str,
    },
    #[error("over rate limit {limit}; room again in {retry_after:?}")]
    RateLimited {
        limit: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
}

/// Every `legate-error` value, numbered by [`ProxyError::reason_index`].
pub const REASONS: [&str; 14] = [
    "no-route",
    "missing-host",
    "bad-request",
    "uri-too-long",
    "no-endpoint",
    "overflow",
    "local-exhaustion",
    "connect-failure",
    "connect-timeout",
    "upstream-tls",
    "upstream-reset",
    "timeout",
    "per-try-timeout",
    "rate-limited",
];

// Per-reason counters have a slot for every reason.
const _: () = assert!(REASONS.len() <= crate::stats::route::MAX_REASONS);

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::NoEndpoint { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::LocalExhaustion { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout | ProxyError::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `legate-error` header value: a stable, machine-readable reason.
    pub fn reason(&self) -> &'static str {
        REASONS[self.reason_index()]
    }

    /// The place of [`reason`](Self::reason) in [`REASONS`], for per-reason counters.
    pub fn reason_index(&self) -> usize {
        match self {
            ProxyError::NoRoute { .. } => 0,
            ProxyError::MissingHost => 1,
            ProxyError::BadRequest(_) => 2,
            ProxyError::UriTooLong { .. } => 3,
            ProxyError::NoEndpoint { .. } => 4,
            ProxyError::Overflow { .. } => 5,
            ProxyError::LocalExhaustion { .. } => 6,
            ProxyError::ConnectFailed { .. } => 7,
            ProxyError::ConnectTimeout { .. } => 8,
            ProxyError::UpstreamTls { .. } => 9,
            ProxyError::UpstreamReset { .. } => 10,
            ProxyError::Timeout => 11,
            ProxyError::PerTryTimeout => 12,
            ProxyError::RateLimited { .. } => 13,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::MissingHost
            | ProxyError::BadRequest(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::RateLimited { .. } => Origin::Downstream,
            ProxyError::NoEndpoint { .. }
            | ProxyError::Overflow { .. }
            | ProxyError::LocalExhaustion { .. } => Origin::Internal,
            _ => Origin::Upstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let cases = [
            (
                ProxyError::NoRoute {
                    host: "h".into(),
                    path: "/".into(),
                },
                404,
                "no-route",
            ),
            (
                ProxyError::NoEndpoint {
                    cluster: "c".into(),
                },
                503,
                "no-endpoint",
            ),
            (
                ProxyError::ConnectFailed {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                502,
                "connect-failure",
            ),
            (ProxyError::Timeout, 504, "timeout"),
        ];
        for (e, status, reason) in cases {
            let r = e.to_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[LEGATE_ERROR], reason);
        }
    }
}
