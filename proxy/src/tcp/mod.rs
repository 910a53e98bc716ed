//! L4 proxying: each client connection is relayed byte for byte to one endpoint of a cluster,
//! with half-close in both directions, bounded buffers, idle timeouts and drains that close a
//! session only when its endpoint's (or listener's) drain timeout says so.

pub mod postgres;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::cluster::{now_ms, ActiveSession, Admitted, Cluster, Picked};
use crate::drain;
use crate::io::Touching;
use crate::listener::{Listener, Protocol, TcpSettings};

/// A plain `tcp` listener's `idle_timeout` when the config sets none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Bytes buffered per direction: a slow reader stalls its writer rather than grow memory.
const BUFFER: usize = 16 * 1024;

/// Serves one client connection on a TCP listener.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    settings: Arc<TcpSettings>,
    drain: drain::Watch,
    _guard: drain::Guard,
) {
    let log = SessionLog::start(&listener, peer, &settings);
    let cluster = &settings.cluster;
    let opened = if settings.postgres {
        postgres_opening(&mut client, peer, &settings).await
    } else {
        connect(cluster, settings.connect_attempts)
            .await
            .map(|(server, slot)| (server, slot, Vec::new(), false))
            .map_err(Refused::end)
    };
    let (server, (endpoint, _slot), first, sniff) = match opened {
        Ok(opened) => opened,
        Err(end) => {
            log.end(None, (0, 0), end);
            return;
        }
    };
    let _session = ActiveSession::start(&endpoint.state);
    debug!(%peer, upstream = %endpoint.addr, "session started");
    let (to_upstream, to_client, end) = relay(
        client,
        server,
        (first, sniff),
        &listener,
        &settings,
        &endpoint,
        drain,
    )
    .await;
    endpoint
        .state
        .bytes_to_upstream
        .fetch_add(to_upstream, Ordering::Relaxed);
    endpoint
        .state
        .bytes_to_client
        .fetch_add(to_client, Ordering::Relaxed);
    debug!(%peer, upstream = %endpoint.addr, to_upstream, to_client, end = end.as_str(), "session ended");
    log.end(Some(endpoint.addr), (to_upstream, to_client), end);
}

/// How an L4 session ended, as its access-log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client's side ended first (both then finished).
    ClientClose,
    /// The server's side ended first.
    UpstreamClose,
    /// A read or write failed (a reset, say).
    Error,
    /// Nothing moved for the listener's `idle_timeout`.
    IdleTimeout,
    /// A drain deadline (the endpoint's or the listener's) passed.
    DrainTimeout,
    /// No endpoint could be reached.
    ConnectFailure,
    /// The cluster had `max_connections` sessions open.
    Overflow,
    /// A Postgres CancelRequest, routed to the server that owns its session.
    CancelRouted,
    /// The first bytes were not a Postgres client's (or its encryption talk failed).
    NotPostgres,
}

impl SessionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::ClientClose => "client-close",
            SessionEnd::UpstreamClose => "upstream-close",
            SessionEnd::Error => "error",
            SessionEnd::IdleTimeout => "idle-timeout",
            SessionEnd::DrainTimeout => "drain-timeout",
            SessionEnd::ConnectFailure => "connect-failure",
            SessionEnd::Overflow => "overflow",
            SessionEnd::CancelRouted => "cancel-routed",
            SessionEnd::NotPostgres => "not-postgres",
        }
    }
}

/// What a session's access-log line needs from its start.
struct SessionLog {
    format: Option<crate::config::model::AccessLogFormat>,
    time: std::time::SystemTime,
    start: std::time::Instant,
    listener: Arc<str>,
    peer: SocketAddr,
    cluster: Arc<str>,
    postgres: bool,
    stats: Arc<crate::stats::SessionStats>,
}

impl SessionLog {
    fn start(listener: &Listener, peer: SocketAddr, settings: &TcpSettings) -> SessionLog {
        SessionLog {
            format: settings.access_log,
            time: std::time::SystemTime::now(),
            start: std::time::Instant::now(),
            listener: listener.name.clone(),
            peer,
            cluster: settings.cluster.name.clone(),
            postgres: settings.postgres,
            stats: settings.sessions.clone(),
        }
    }

    fn end(
        self,
        upstream: Option<SocketAddr>,
        (to_upstream, to_client): (u64, u64),
        end: SessionEnd,
    ) {
        // Only sessions that reached a server have a duration worth a histogram.
        if upstream.is_some() {
            self.stats.duration.local().record(self.start.elapsed());
        }
        let Some(format) = self.format else { return };
        crate::access_log::SessionRecord {
            format,
            time: self.time,
            start: self.start,
            listener: self.listener,
            peer: self.peer,
            cluster: self.cluster,
            upstream,
            to_upstream,
            to_client,
            end: end.as_str(),
            postgres: self.postgres,
        }
        .write();
    }
}

/// The start of a Postgres connection: a cancel is routed and ends here; a session gets its
/// server. An SSL or GSS request is relayed to the server; when the server declines ('N'), the
/// client's next message may still be a cancel (libpq 17, tokio-postgres with TLS preferred),
/// so it is classified again. Returns the server, the bytes still to send it, and whether the
/// session's cancel key can be watched.
async fn postgres_opening(
    client: &mut TcpStream,
    peer: SocketAddr,
    settings: &TcpSettings,
) -> Result<(TcpStream, Slot, Vec<u8>, bool), SessionEnd> {
    let cluster = &settings.cluster;
    let mut server: Option<(TcpStream, Slot)> = None;
    loop {
        let raw = match postgres::read_first(client).await {
            Ok(postgres::First::Cancel { key, raw }) => {
                postgres::route_cancel(cluster, key, &raw).await;
                return Err(SessionEnd::CancelRouted);
            }
            Ok(postgres::First::Startup(raw)) => {
                let (s, e) = server_for(client, server.take(), settings).await?;
                return Ok((s, e, raw, true));
            }
            Ok(postgres::First::Encrypted(raw)) => raw,
            // After a declined SSL request, a client that required it hangs up.
            Err(e) if server.is_some() => {
                debug!(%peer, error = %e, "client left after encryption was declined");
                return Err(SessionEnd::ClientClose);
            }
            Err(e) => {
                debug!(%peer, error = %e, "not a postgres client");
                return Err(SessionEnd::NotPostgres);
            }
        };
        let (mut s, e) = server_for(client, server.take(), settings).await?;
        let answer = async {
            s.write_all(&raw).await?;
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await?;
            client.write_all(&byte).await?;
            Ok::<u8, std::io::Error>(byte[0])
        };
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            // Declined: still plaintext, so classify the client's next message.
            Ok(Ok(b'N')) => server = Some((s, e)),
            // Accepted (or an old server's error): the rest is relayed as it is.
            Ok(Ok(_)) => return Ok((s, e, Vec::new(), false)),
            // The server failed or went silent during the negotiation: its fault, not the
            // client's.
            Ok(Err(err)) => {
                debug!(%peer, error = %err, "encryption negotiation failed");
                return Err(SessionEnd::Error);
            }
            Err(_) => {
                debug!(%peer, "encryption negotiation timed out");
                return Err(SessionEnd::Error);
            }
        }
    }
}

/// The server already chosen for this client, or a new one; without one, the client is told
/// so in its own protocol.
async fn server_for(
    client: &mut TcpStream,
    chosen: Option<(TcpStream, Slot)>,
    settings: &TcpSettings,
) -> Result<(TcpStream, Slot), SessionEnd> {
    if let Some(chosen) = chosen {
        return Ok(chosen);
    }
    match connect(&settings.cluster, settings.connect_attempts).await {
        Ok(connected) => Ok(connected),
        Err(Refused::Overflow) => {
            let message = "too many connections to the database cluster";
            postgres::refuse_with(client, postgres::TOO_MANY_CONNECTIONS, message).await;
            Err(SessionEnd::Overflow)
        }
        Err(Refused::NoServer) => {
            postgres::refuse(client, "no database server is available").await;
            Err(SessionEnd::ConnectFailure)
        }
    }
}

/// The endpoint a session is relayed to, and its place under the cluster's
/// `circuit_breakers.max_connections`, held for the session's life.
type Slot = (Picked, Admitted);

/// Why a session got no server.
enum Refused {
    /// The cluster has `max_connections` sessions open.
    Overflow,
    /// No endpoint could be reached (or none is usable).
    NoServer,
}

impl Refused {
    fn end(self) -> SessionEnd {
        match self {
            Refused::Overflow => SessionEnd::Overflow,
            Refused::NoServer => SessionEnd::ConnectFailure,
        }
    }
}

/// Connects to an endpoint, trying others when a connect fails or is refused, once the
/// cluster admits one more session.
async fn connect(cluster: &Cluster, attempts: u32) -> Result<(TcpStream, Slot), Refused> {
    let Some(slot) = cluster
        .state
        .admit(|s| &s.connections, cluster.limits.max_connections)
    else {
        debug!(cluster = %cluster.name, "at max_connections; session refused");
        return Err(Refused::Overflow);
    };
    let mut previous = None;
    for _ in 0..attempts.max(1) {
        let endpoint = match previous {
            None => cluster.pick(None),
            Some(addr) => cluster.pick_other(addr, None),
        };
        let Some(endpoint) = endpoint else {
            debug!(cluster = %cluster.name, "no endpoint available");
            return Err(Refused::NoServer);
        };
        previous = Some(endpoint.addr);
        let started = std::time::Instant::now();
        let attempt =
            tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(endpoint.addr));
        match attempt.await {
            Ok(Ok(stream)) => {
                let connect = &cluster.state.connect_duration;
                connect.local().record(started.elapsed());
                let _ = stream.set_nodelay(true);
                return Ok((stream, (endpoint, slot)));
            }
            Ok(Err(e)) if crate::resources::is_local_exhaustion(&e) => {
                // No fault of the endpoint, and no other endpoint would fare better.
                warn!(upstream = %endpoint.addr, error = %e, "out of local resources to connect");
                return Err(Refused::NoServer);
            }
            Ok(Err(e)) => debug!(upstream = %endpoint.addr, error = %e, "connect failed"),
            Err(_) => debug!(upstream = %endpoint.addr, "connect timed out"),
        }
        endpoint
            .state
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    Err(Refused::NoServer)
}

/// Relays until both directions are done, the session idles out, or a drain deadline passes.
/// Returns the bytes relayed each way.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    (first, sniff): (Vec<u8>, bool),
    listener: &Listener,
    settings: &TcpSettings,
    endpoint: &Picked,
    mut drain: drain::Watch,
) -> (u64, u64, SessionEnd) {
    let touched = Arc::new(AtomicBool::new(false));
    // Which side's input ended first: 1 the client's, 2 the server's.
    let first_eof = Arc::new(AtomicU8::new(0));
    let mut client = Touching::new(client, touched.clone()).noting_eof(first_eof.clone(), 1);
    let registration =
        sniff.then(|| postgres::Registration::new(settings.cluster.state.clone(), endpoint.addr));
    let mut server = postgres::KeySniffer::new(
        Touching::new(server, touched.clone()).noting_eof(first_eof.clone(), 2),
        registration,
    );
    if !first.is_empty() {
        if let Err(e) = server.write_all(&first).await {
            debug!(error = %e, "upstream closed before the first bytes");
            return (
                server.to_upstream,
                server.to_client,
                SessionEnd::UpstreamClose,
            );
        }
    }
    let ended = copy_until_done(
        &mut client,
        &mut server,
        &touched,
        listener,
        settings,
        endpoint,
        &mut drain,
    )
    .await;
    let end = match ended {
        Ended::Copied(Ok(())) => match first_eof.load(Ordering::Relaxed) {
            2 => SessionEnd::UpstreamClose,
            _ => SessionEnd::ClientClose,
        },
        Ended::Copied(Err(_)) => SessionEnd::Error,
        Ended::Cut(end) => {
            // A session cut short still tells both sides it is gone.
            let _ = server.shutdown().await;
            let _ = client.shutdown().await;
            end
        }
    };
    (server.to_upstream, server.to_client, end)
}

/// How the copy of a session stopped.
enum Ended {
    /// Both directions finished (or one failed).
    Copied(std::io::Result<()>),
    /// Legate cut it: an idle or drain timeout.
    Cut(SessionEnd),
}

/// The drain timeout for sessions of a draining endpoint: the listener's current setting
/// (falling back to the one the session started with).
fn current_drain_timeout(listener: &Listener, started: &TcpSettings) -> Option<Duration> {
    match &**listener.settings.load() {
        Protocol::Tcp(current) => current.endpoint_drain_timeout,
        Protocol::Http(_) => started.endpoint_drain_timeout,
    }
}

/// Copies both ways until the copy ends by itself or a timeout cuts it.
async fn copy_until_done<C, S>(
    client: &mut C,
    server: &mut S,
    touched: &AtomicBool,
    listener: &Listener,
    settings: &TcpSettings,
    endpoint: &Picked,
    drain: &mut drain::Watch,
) -> Ended
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional_with_sizes(client, server, BUFFER, BUFFER);
    tokio::pin!(copy);

    let idle = settings.idle_timeout;
    let period = idle.map_or(Duration::from_secs(3600), |d| {
        (d / 4).max(Duration::from_millis(100))
    });
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut quiet = 0u32;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let deadline = tokio::time::sleep_until(far);
    tokio::pin!(deadline);
    let mut listener_deadline: Option<tokio::time::Instant> = None;
    let state = &endpoint.state;

    loop {
        // Registered before checking, so a drain that starts in between is not missed.
        let drain_changed = state.drain_changed.notified();
        tokio::pin!(drain_changed);
        drain_changed.as_mut().enable();
        // Recomputed on every change, so pooling an endpoint again lifts its deadline. The
        // drain timeout is the listener's current one (a reload may have just set it).
        let endpoint_deadline = state.draining_since_ms().and_then(|since| {
            let timeout = current_drain_timeout(listener, settings)?;
            let left = (since + timeout.as_millis() as u64).saturating_sub(now_ms());
            Some(tokio::time::Instant::now() + Duration::from_millis(left))
        });
        let at = [endpoint_deadline, listener_deadline]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far);
        if at != deadline.deadline() {
            deadline.as_mut().reset(at);
        }
        tokio::select! {
            res = copy.as_mut() => {
                if let Err(e) = &res {
                    debug!(upstream = %endpoint.addr, error = %e, "session ended with error");
                }
                return Ended::Copied(res.map(|_| ()));
            }
            _ = drain.signaled(), if listener_deadline.is_none() => {
                listener_deadline = Some(tokio::time::Instant::now() + settings.drain_timeout);
            }
            _ = &mut drain_changed => {}
            _ = &mut deadline => {
                info!(upstream = %endpoint.addr, "drain deadline reached; closing session");
                return Ended::Cut(SessionEnd::DrainTimeout);
            }
            _ = tick.tick(), if idle.is_some() => {
                if touched.swap(false, Ordering::Relaxed) {
                    quiet = 0;
                } else {
                    quiet += 1;
                    if quiet >= 4 {
                        debug!(upstream = %endpoint.addr, "idle timeout; closing session");
                        return Ended::Cut(SessionEnd::IdleTimeout);
                    }
                }
            }
        }
    }
}
