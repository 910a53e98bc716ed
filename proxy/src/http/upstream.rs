//! Upstream connections: each worker's own pools over `hyper::client::conn` handles.
//!
//! HTTP/1.1 keeps a stack of idle keep-alive connections per endpoint; HTTP/2 keeps one
//! multiplexed connection per endpoint. Pools are thread-local: a worker's requests never
//! contend with another worker's for a connection, and no lock is taken.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::UpstreamBody;
use super::error::ProxyError;
use crate::cluster::{Admitted, Cluster, Picked as Endpoint};
use crate::config::model::UpstreamProtocol;

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

    /// Returns an HTTP/1.1 connection to its pool once its response has been read to the end.
    pub fn release(self) {
        let Sender::H1(tx) = self.sender else {
            return;
        };
        if tx.is_closed() {
            return;
        }
        POOLS.with(|p| {
            let Ok(mut pools) = p.try_borrow_mut() else {
                return;
            };
            let pool = pools.entry(self.key).or_default();
            pool.idle_timeout = self.idle_timeout;
            if pool.idle.len() < self.max_idle {
                pool.idle.push(Idle {
                    tx,
                    since: Instant::now(),
                });
            }
        });
    }
}

/// A connection to `endpoint`: an idle pooled one if there is one, else a new one.
pub async fn checkout(cluster: &Cluster, endpoint: &Endpoint) -> Result<Pooled, ProxyError> {
    let key = endpoint.state.id;
    let pooled = |sender, reused| Pooled {
        key,
        max_idle: cluster.max_idle_connections,
        idle_timeout: cluster.idle_timeout,
        sender,
        reused,
    };
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            while let Some(mut tx) = take_idle(key, cluster.idle_timeout) {
                // An idle connection the upstream has closed fails here and is discarded.
                if tx.ready().await.is_ok() {
                    return Ok(pooled(Sender::H1(tx), true));
                }
            }
            let slot = admit_connection(cluster)?;
            let tx = connect_h1(cluster, endpoint, slot).await?;
            Ok(pooled(Sender::H1(tx), false))
        }
        UpstreamProtocol::Http2 => {
            if let Some(tx) = shared_h2(key) {
                return Ok(pooled(Sender::H2(tx), true));
            }
            let slot = admit_connection(cluster)?;
            let tx = connect_h2(cluster, endpoint, slot).await?;
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
    }
}

/// A new connection for an HTTP/1.1 upgrade (WebSocket): never pooled afterwards.
pub async fn connect_for_upgrade(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
    let slot = admit_connection(cluster)?;
    connect_h1(cluster, endpoint, slot).await
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

async fn connect_tcp(cluster: &Cluster, endpoint: &Endpoint) -> Result<TcpStream, ProxyError> {
    let addr = endpoint.addr;
    let result = tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(addr)).await;
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            count_connect_failure(endpoint);
            return Err(ProxyError::ConnectFailed { addr, source });
        }
        Err(_) => {
            count_connect_failure(endpoint);
            return Err(ProxyError::ConnectTimeout { addr });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn count_connect_failure(endpoint: &Endpoint) {
    endpoint
        .state
        .connect_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn connect_h1(
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut slot: ConnectionSlot,
) -> Result<http1::SendRequest<UpstreamBody>, ProxyError> {
    let addr = endpoint.addr;
    let stream = connect_tcp(cluster, endpoint).await?;
    slot.pending = None;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::UpstreamReset { addr, source })?;
    tokio::spawn(async move {
        let _open = slot.open;
        if let Err(e) = conn.with_upgrades().await {
            debug!(upstream = %addr, error = %e, "upstream connection closed with error");
        }
    });
    Ok(tx)
}

async fn connect_h2(
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut slot: ConnectionSlot,
) -> Result<http2::SendRequest<UpstreamBody>, ProxyError> {
    let addr = endpoint.addr;
    let stream = connect_tcp(cluster, endpoint).await?;
    slot.pending = None;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::UpstreamReset { addr, source })?;
    tokio::spawn(async move {
        let _open = slot.open;
        if let Err(e) = conn.await {
            debug!(upstream = %addr, error = %e, "upstream h2 connection closed with error");
        }
    });
    Ok(tx)
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
