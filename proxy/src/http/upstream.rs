//! Upstream connections: each worker's own pools over `hyper::client::conn` handles.
//!
//! HTTP/1.1 keeps a stack of idle keep-alive connections per endpoint; HTTP/2 keeps one
//! multiplexed connection per endpoint. Pools are thread-local: a worker's requests never
//! contend with another worker's for a connection, and no lock is taken. Requests go out with
//! an [`UpstreamBody`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::error::{BoxError, ProxyError};
use super::idle::{StreamClock, StreamIdle};
use crate::cluster::{Admitted, Cluster, Picked as Endpoint};
use crate::config::model::UpstreamProtocol;
use crate::io::MaybeTls;

thread_local! {
    static POOLS: RefCell<HashMap<u64, EndpointPool>> = RefCell::new(HashMap::new());
}

#[derive(Default)]
struct EndpointPool {
    idle: Vec<Idle>,
    h2: Option<http2::SendRequest<UpstreamBody>>,
    h2_used: Option<Instant>,
    idle_timeout: Duration,
}

struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// A connection checked out for one request.
pub struct Pooled {
    key: u64,
    max_idle: usize,
    idle_timeout: Duration,
    sender: Sender,
    /// Whether it served an earlier request (a stale keep-alive connection may fail at once).
    pub reused: bool,
}

impl Pooled {
    /// Sends a request; a request that never left is handed back in the error.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match &mut self.sender {
            Sender::H1(tx) => tx.try_send_request(req).await,
            Sender::H2(tx) => tx.try_send_request(req).await,
        }
    }

    /// A connection used once and never pooled (an upgrade's).
    pub fn dedicated(tx: http1::SendRequest<UpstreamBody>) -> Self {
        Pooled {
            key: 0,
            max_idle: 0,
            idle_timeout: Duration::ZERO,
            sender: Sender::H1(tx),
            reused: false,
        }
    }

    /// Returns an HTTP/1.1 connection to its pool once its response has been read to the end
    /// and its request body sent: one still uploading (a slow client, an upstream that
    /// answered early) waits for that on its own, bounded by the idle timeout, so the next
    /// request never queues behind someone else's upload.
    pub fn release(self) {
        let Sender::H1(mut tx) = self.sender else {
            return;
        };
        if tx.is_closed() {
            return;
        }
        let (key, max_idle, idle_timeout) = (self.key, self.max_idle, self.idle_timeout);
        if tx.is_ready() {
            return pool_idle(key, max_idle, idle_timeout, tx);
        }
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(idle_timeout, tx.ready()).await {
                pool_idle(key, max_idle, idle_timeout, tx);
            }
        });
    }
}

/// Keeps an idle HTTP/1.1 connection in its endpoint's pool, if there is room.
fn pool_idle(
    key: u64,
    max_idle: usize,
    idle_timeout: Duration,
    tx: http1::SendRequest<UpstreamBody>,
) {
    POOLS.with(|p| {
        let Ok(mut pools) = p.try_borrow_mut() else {
            return;
        };
        let pool = pools.entry(key).or_default();
        pool.idle_timeout = idle_timeout;
        if pool.idle.len() < max_idle {
            pool.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    });
}

/// The request body sent to an upstream.
pub enum UpstreamBody {
    Empty,
    /// The client's body, counted into the access log as it streams and winding the
    /// request's idle clock.
    Client(Incoming, Arc<AtomicU64>, Arc<StreamClock>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Client(body, counter, clock) => {
                if clock.is_cut() {
                    return Poll::Ready(Some(Err(StreamIdle.into())));
                }
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                            clock.wind();
                        }
                    }
                    Poll::Pending => clock.park_request(cx.waker()),
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(b, _, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(b, _, _) => b.size_hint(),
        }
    }
}

/// A connection to `endpoint`: the shared HTTP/2 connection or an idle HTTP/1.1 one if there
/// is one, else a new one (whose protocol TLS ALPN may decide).
pub async fn checkout(cluster: &Cluster, endpoint: &Endpoint) -> Result<Pooled, ProxyError> {
    let key = endpoint.state.id;
    let pooled = |sender, reused| Pooled {
        key,
        max_idle: cluster.max_idle_connections,
        idle_timeout: cluster.idle_timeout,
        sender,
        reused,
    };
    if may_use_h2(cluster) {
        if let Some(tx) = shared_h2(key) {
            return Ok(pooled(Sender::H2(tx), true));
        }
    }
    while let Some(mut tx) = take_idle(key, cluster.idle_timeout) {
        // An idle connection the upstream has closed fails here and is discarded.
        if tx.ready().await.is_ok() {
            return Ok(pooled(Sender::H1(tx), true));
        }
    }
    let slot = admit_connection(cluster)?;
    match connect(cluster, endpoint, slot, false).await? {
        Sender::H2(tx) => {
            POOLS.with(|p| {
                if let Ok(mut pools) = p.try_borrow_mut() {
                    let pool = pools.entry(key).or_default();
                    pool.idle_timeout = cluster.idle_timeout;
                    pool.h2 = Some(tx.clone());
                    pool.h2_used = Some(Instant::now());
                }
            });
            Ok(pooled(Sender::H2(tx), false))
        }
        h1 => Ok(pooled(h1, false)),
    }
}

fn may_use_h2(cluster: &Cluster) -> bool {
    cluster.protocol == UpstreamProtocol::Http2
        || cluster
            .tls
            .as_ref()
            .is_some_and(|t| t.config().alpn_protocols.iter().any(|p| p == b"h2"))
}

/// A new connection for an HTTP/1.1 upgrade (WebSocket): never pooled afterwards.
pub async fn connect_for_upgrade(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
    let slot = admit_connection(cluster)?;
    match connect(cluster, endpoint, slot, true).await? {
        Sender::H1(tx) => Ok(tx),
        Sender::H2(_) => Err(ProxyError::BadRequest("upgrade to an HTTP/2 upstream")),
    }
}

/// Circuit breakers for a new connection: a pending slot while it connects, and a connection
/// slot for as long as it stays open.
fn admit_connection(cluster: &Cluster) -> Result<ConnectionSlot, ProxyError> {
    let overflow = |limit| ProxyError::Overflow {
        cluster: cluster.name.clone(),
        limit,
    };
    let pending = cluster
        .state
        .admit(|s| &s.pending, cluster.limits.max_pending)
        .ok_or_else(|| overflow("max_pending"))?;
    let open = cluster
        .state
        .admit(|s| &s.connections, cluster.limits.max_connections)
        .ok_or_else(|| overflow("max_connections"))?;
    Ok(ConnectionSlot {
        pending: Some(pending),
        open,
    })
}

struct ConnectionSlot {
    pending: Option<Admitted>,
    open: Admitted,
}

fn take_idle(key: u64, idle_timeout: Duration) -> Option<http1::SendRequest<UpstreamBody>> {
    POOLS.with(|p| {
        let mut pools = p.try_borrow_mut().ok()?;
        let pool = pools.get_mut(&key)?;
        while let Some(idle) = pool.idle.pop() {
            if !idle.tx.is_closed() && idle.since.elapsed() < idle_timeout {
                return Some(idle.tx);
            }
        }
        None
    })
}

fn shared_h2(key: u64) -> Option<http2::SendRequest<UpstreamBody>> {
    POOLS.with(|p| {
        let mut pools = p.try_borrow_mut().ok()?;
        let pool = pools.get_mut(&key)?;
        match &pool.h2 {
            Some(tx) if !tx.is_closed() => {
                let tx = tx.clone();
                pool.h2_used = Some(Instant::now());
                Some(tx)
            }
            _ => {
                pool.h2 = None;
                None
            }
        }
    })
}

/// Connects to `endpoint` within the cluster's connect timeout (TCP and, if configured, the
/// TLS handshake), then starts HTTP/1.1 or HTTP/2 over it: HTTP/2 when the cluster says so
/// or TLS ALPN picked `h2` (unless `force_h1`).
async fn connect(
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut slot: ConnectionSlot,
    force_h1: bool,
) -> Result<Sender, ProxyError> {
    let addr = endpoint.addr;
    let started = Instant::now();
    let established = tokio::time::timeout(cluster.connect_timeout, async {
        let tcp = TcpStream::connect(addr).await.map_err(|source| {
            // Out of descriptors here is no fault of the endpoint.
            if crate::resources::is_local_exhaustion(&source) {
                ProxyError::LocalExhaustion { source }
            } else {
                ProxyError::ConnectFailed { addr, source }
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &cluster.tls else {
            let h2 = cluster.protocol == UpstreamProtocol::Http2;
            return Ok((MaybeTls::Plain(tcp), h2));
        };
        let name = tls.server_name(endpoint.hostname.as_deref(), addr);
        let mut config = tls.config();
        if force_h1 && config.alpn_protocols.iter().any(|p| p == b"h2") {
            // An upgrade needs HTTP/1.1; never let the server pick h2 for it. Upgrades are
            // rare enough that a copy of the config per connection costs nothing that matters.
            let mut h1 = (*config).clone();
            h1.alpn_protocols = vec![b"http/1.1".to_vec()];
            config = std::sync::Arc::new(h1);
        }
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ProxyError::UpstreamTls { addr, source })?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((MaybeTls::Tls(Box::new(stream)), h2))
    })
    .await;
    let (io, h2) = match established {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            if !matches!(e, ProxyError::LocalExhaustion { .. }) {
                count_connect_failure(endpoint);
            }
            return Err(e);
        }
        Err(_) => {
            count_connect_failure(endpoint);
            return Err(ProxyError::ConnectTimeout { addr });
        }
    };
    let connect = &cluster.state.connect_duration;
    connect.local().record(started.elapsed());
    slot.pending = None;
    let open = slot.open;
    let io = TokioIo::new(io);
    if h2 && !force_h1 {
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|source| ProxyError::UpstreamReset { addr, source })?;
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = conn.await {
                debug!(upstream = %addr, error = %e, "upstream h2 connection closed with error");
            }
        });
        return Ok(Sender::H2(tx));
    }
    let (tx, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ProxyError::UpstreamReset { addr, source })?;
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = conn.with_upgrades().await {
            debug!(upstream = %addr, error = %e, "upstream connection closed with error");
        }
    });
    Ok(Sender::H1(tx))
}

fn count_connect_failure(endpoint: &Endpoint) {
    endpoint
        .state
        .connect_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Drops this worker's idle connections that have outlived their idle timeout, and pools
/// left empty (endpoints removed by a reload).
pub fn sweep() {
    POOLS.with(|p| {
        if let Ok(mut pools) = p.try_borrow_mut() {
            pools.retain(|_, pool| {
                let timeout = pool.idle_timeout;
                pool.idle
                    .retain(|i| !i.tx.is_closed() && i.since.elapsed() < timeout);
                let unused = pool.h2_used.is_none_or(|t| t.elapsed() >= timeout);
                if unused || pool.h2.as_ref().is_some_and(|tx| tx.is_closed()) {
                    pool.h2 = None;
                }
                !pool.idle.is_empty() || pool.h2.is_some()
            });
        }
    });
}
