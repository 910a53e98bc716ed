//! Listeners: binding sockets, the per-listener state shared by workers, and the diff that
//! reconciliation follows.

pub mod diff;
pub mod holder;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};

use crate::config::model::AccessLogFormat;
use crate::router::RouteTable;

/// A running listener, shared by the accept loops of every worker.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    /// The bound address (with the real port when the config said port 0).
    pub addr: SocketAddr,
    /// Swapped on reload; each connection (and each HTTP request) loads it once.
    pub settings: ArcSwap<Protocol>,
    pub counters: Arc<ListenerCounters>,
    /// Client connections allowed open at once (`max_connections`), updated on reload.
    pub max_connections: AtomicUsize,
    /// Set for `runtime.drain_delay`: HTTP/1.1 responses carry `Connection: close`, so
    /// clients come back on a new connection (to another pod, once this one is unready).
    pub closing: AtomicBool,
}

/// Responses sent by one listener, by status class (index: status / 100; 0 for anything else).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub responses: [AtomicU64; 6],
    /// Connections closed at accept because `max_connections` were open.
    pub refused: AtomicU64,
}

impl ListenerCounters {
    pub fn record(&self, status: u16) {
        let class = usize::from(status / 100);
        let slot = if (1..=5).contains(&class) { class } else { 0 };
        if let Some(counter) = self.responses.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone)]
pub enum Protocol {
    Http(Arc<HttpSettings>),
    Tcp(Arc<TcpSettings>),
}

/// Everything a TCP session on this listener needs from the config.
#[derive(Debug)]
pub struct TcpSettings {
    pub cluster: Arc<crate::cluster::Cluster>,
    pub postgres: bool,
    pub idle_timeout: Option<Duration>,
    pub connect_attempts: u32,
    /// Closes sessions on a depooled or removed endpoint after this long; `None` defers to
    /// the cluster's `drain_timeout`.
    pub endpoint_drain_timeout: Option<Duration>,
    /// How long sessions may run on after the listener itself starts draining.
    pub drain_timeout: Duration,
    /// One access-log line per session, in this format, when the log is on.
    pub access_log: Option<AccessLogFormat>,
    /// Session durations of this listener.
    pub sessions: Arc<crate::stats::SessionStats>,
}

/// Everything an HTTP connection on this listener needs from the config.
#[derive(Debug)]
pub struct HttpSettings {
    pub route_table: Arc<RouteTable>,
    /// The stats of each route of `route_table` on this listener, by [`Route::index`].
    ///
    /// [`Route::index`]: crate::router::Route::index
    pub route_stats: Arc<[Arc<crate::stats::RouteStats>]>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_uri_length: usize,
    pub max_concurrent_streams: u32,
    /// Cut a request with no body bytes moving this long after its response head, unless
    /// its route says otherwise.
    pub stream_idle_timeout: Duration,
    /// How often a connection's tick checks its idleness and its streams: fine enough for
    /// `idle_timeout` and for the shortest `stream_idle_timeout` of the listener and its
    /// routes. Fixed for a connection's life.
    pub tick: Duration,
    /// How request paths are normalised before routing.
    pub normalize: crate::path::Normalize,
    pub access_log: Option<AccessLogFormat>,
    /// How long a draining connection may take to finish before it is closed.
    pub drain_timeout: Duration,
    /// TLS termination, if the listener has it.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
}

/// Binds `count` sockets to one address with SO_REUSEPORT, one per worker, so the kernel
/// spreads new connections across workers. Port 0 is resolved by the first bind. An address
/// another process listens on is refused ([`holder::check_unheld`]).
pub fn bind_group(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    holder::check_unheld(addr)?;
    let first = bind(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut sockets = Vec::with_capacity(count.max(1));
    sockets.push(first);
    for _ in 1..count {
        sockets.push(bind(bound, backlog)?);
    }
    Ok((bound, sockets))
}

/// A TCP socket for `addr`, not yet bound: SO_REUSEADDR (connections of an earlier process
/// in TIME_WAIT are no conflict), and v6-only for an IPv6 address.
pub(crate) fn unbound(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// One listening socket: SO_REUSEADDR (restart without TIME_WAIT trouble), SO_REUSEPORT (one
/// socket per worker), TCP_NODELAY inherited by accepted sockets, IPv6 sockets v6-only so
/// `[::]:p` and `0.0.0.0:p` can be separate listeners.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = unbound(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let c = ListenerCounters::default();
        for s in [200, 204, 404, 503, 101, 999] {
            c.record(s);
        }
        let counts: Vec<u64> = c
            .responses
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![1, 1, 2, 0, 1, 1]);
    }

    #[test]
    fn group_shares_one_resolved_port() {
        let (addr, sockets) = bind_group("127.0.0.1:0".parse().unwrap(), 128, 3).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(sockets.len(), 3);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
    }

    #[test]
    fn ipv6_loopback_binds_when_available() {
        // Hosts without IPv6 loopback cannot run this; the failure must be the address, not us.
        match bind("[::1]:0".parse().unwrap(), 16) {
            Ok(s) => assert!(s.local_addr().unwrap().is_ipv6()),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable, "{e}"),
        }
    }
}
