//! The control plane's bounds on what clients may hold open or send: connections, time to
//! speak, streams, line length.

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
    /// The longest line a proxy may send on its stream (a hello, an ACK or NACK).
    pub max_line: usize,
}

/// [`Limits::max_line`] by default: 4 MiB.
pub const DEFAULT_MAX_LINE: usize = 4 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            first_bytes_timeout: HANDSHAKE_TIMEOUT,
            max_streams_per_connection: 100,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}
