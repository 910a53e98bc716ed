//! The control plane's bounds on what clients may hold open: connections, time to speak,
//! streams.

use std::time::Duration;

/// How long a new connection may take to send its first bytes (the TLS handshake
/// included), by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on what clients may hold open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it a new connection is closed at accept.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes (the TLS handshake, or the first
    /// HTTP bytes) and, on HTTP/1.1, each request head.
    pub first_bytes_timeout: Duration,
    /// Streams open at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            first_bytes_timeout: HANDSHAKE_TIMEOUT,
            max_streams_per_connection: 100,
        }
    }
}
