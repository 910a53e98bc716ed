//! The control plane server: the xDS-lite stream (R1–R4) and the operator API, on one port,
//! HTTP/2 with prior knowledge or HTTP/1.1; over TLS (ALPN `h2` and `http/1.1`, optionally
//! requiring client certificates) when [`ServeConfig::tls`] is set.
//!
//! - `POST /xds/v1/stream`: one proxy session (see [`crate::session`]).
//! - `POST /v1/endpoints/{set-weight,pool,depool,reset}`: operator overrides, persisted to the
//!   state file before they are acknowledged (R14) and pushed at once.
//! - `GET /v1/status`: connected proxies, overrides in force, each group's versions.
//! - `GET /v1/audit`: the latest operator changes (see [`crate::audit`]).
//! - `GET /metrics`: the same counted, for Prometheus (see [`crate::metrics`]).
//!
//! Every request passes [`crate::access`]: with client certificates, the role the certificate's
//! names map to; without, changes only from loopback.
//!
//! The resource directory is watched; a change is loaded after 100 ms of quiet and only what
//! changed is pushed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::access::{Access, Action, Client, Principal, Roles, RolesError};
use crate::audit::{AuditError, AuditLog};
use crate::follow::follow;
use crate::operator::{audit, error_response, json_response, operate, operate_route, status};
use crate::propagation::{holds, Propagation};
use crate::protocol::{
    DecodeError, LineDecoder, Message, CONTENT_TYPE, DEAD_AFTER, PING_EVERY, STREAM_PATH,
};
use crate::session::{kind, Session, SessionError};
use crate::shared::{
    in_sync, lock, lock_registry, publish, session_ended, sessions, Body, SessionEntry, Shared,
};
use crate::state::{Backend, StateError, StateStore};
use crate::store::{load_dir, GroupEvent, GroupLookup, OperatorError, Store};
use crate::tls::{server_config, ServerTlsFiles, TlsError};
use crate::watch::{Changes, RecursiveMode};
use tokio_rustls::TlsAcceptor;

/// Directory events closer together than this are one change.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Messages queued towards one proxy before sending waits.
const SEND_QUEUE: usize = 64;

pub use crate::channel_body::ChannelBody;
pub use crate::limits::{Limits, HANDSHAKE_TIMEOUT};

/// Where to read resources, listen, and keep operator state.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `DIR/<group>/*.yaml`.
    pub dir: PathBuf,
    /// Port 0 picks a free port; see [`ServerHandle::local_addr`].
    pub listen: SocketAddr,
    /// Where the operator overrides are kept: a JSON file (created on the first change), or
    /// etcd, shared with other replicas.
    pub store: StateStore,
    /// Serve TLS (and, with a client CA, require client certificates); plaintext when `None`.
    pub tls: Option<ServerTlsFiles>,
    /// With client certificates: the roles file mapping their names to roles; `None` for the
    /// SPIFFE defaults ([`Roles::default`]).
    pub roles: Option<PathBuf>,
    /// The audit log; `None` for the state file's name with `.audit.jsonl` (with etcd it must
    /// be given).
    pub audit: Option<PathBuf>,
    pub limits: Limits,
}

impl ServeConfig {
    /// Where the audit log is.
    pub fn audit_path(&self) -> Result<PathBuf, ServeError> {
        match (&self.audit, &self.store) {
            (Some(path), _) => Ok(path.clone()),
            (None, StateStore::File(state)) => Ok(state.with_extension("audit.jsonl")),
            (None, StateStore::Etcd { .. }) => Err(ServeError::AuditPathNeeded),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read resource directory {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("with the overrides in etcd, give each replica its audit log file (--audit FILE)")]
    AuditPathNeeded,
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Roles(#[from] RolesError),
    #[error("a roles file needs client certificates: add --client-ca")]
    RolesWithoutClientCa,
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends every session and waits (up to 5 s) for connections to close.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            error!(error = %e, "server task failed");
        }
    }
}

/// Starts the control plane: loads the state file and the directory, binds, and serves until
/// [`ServerHandle::shutdown`].
pub async fn serve(config: ServeConfig) -> Result<ServerHandle, ServeError> {
    let acceptor = match &config.tls {
        Some(files) => Some(TlsAcceptor::from(server_config(files)?)),
        None => None,
    };
    let access = access(&config)?;
    let audit_path = config.audit_path()?;
    let audit_log = AuditLog::open(&audit_path)?;
    let (backend, overrides) = Backend::open(&config.store).await?;
    let loaded = load_dir(&config.dir).map_err(|error| ServeError::Dir {
        dir: config.dir.clone(),
        error,
    })?;
    let mut store = Store::new(overrides);
    log_events(store.update(loaded));
    let snapshots = Arc::new(store.snapshots());
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServeError::Bind {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| ServeError::Bind {
        addr: config.listen,
        error,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        dir: config.dir.clone(),
        backend,
        store: tokio::sync::Mutex::new(store),
        snapshots: watch::channel(snapshots).0,
        sessions: Mutex::new(BTreeMap::new()),
        next_session: AtomicU64::new(1),
        updates_sent: AtomicU64::new(0),
        acks: AtomicU64::new(0),
        nacks: AtomicU64::new(0),
        propagation: Propagation::default(),
        boot: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        access,
        audit: Arc::new(audit_log),
        limits: config.limits,
        shutdown: shutdown_rx,
    });
    start_watching(shared.clone());
    if let Backend::Etcd(replicated) = &shared.backend {
        tokio::spawn(follow(shared.clone(), replicated.clone()));
    }
    let tls = match &config.tls {
        None => "off",
        Some(ServerTlsFiles {
            client_ca: None, ..
        }) => "on",
        Some(_) => "on, client certificates required",
    };
    info!(%addr, dir = %config.dir.display(), store = %config.store.describe(),
        audit = %audit_path.display(), tls, "legate-xds serving");
    match &shared.access {
        Access::Certificates(roles) => {
            info!(roles = %roles.describe(), "client roles");
            if roles.is_default() {
                warn!(
                    "the default roles accept any trust domain the client CA signs for; \
                       give --roles to name yours"
                );
            }
        }
        Access::Addresses => warn!(
            "no client certificates (--client-ca): operator changes are accepted from loopback \
             only, and any client may open the stream of any node group and read status"
        ),
    }
    let task = tokio::spawn(accept_loop(shared, listener, acceptor, config.limits));
    Ok(ServerHandle {
        addr,
        shutdown: shutdown_tx,
        task,
    })
}

/// How clients are told apart: by certificate with `--client-ca`, else by address.
fn access(config: &ServeConfig) -> Result<Access, ServeError> {
    let client_certificates = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    match (&config.roles, client_certificates) {
        (Some(_), false) => Err(ServeError::RolesWithoutClientCa),
        (Some(path), true) => Ok(Access::Certificates(Arc::new(Roles::load(path)?))),
        (None, true) => Ok(Access::Certificates(Arc::new(Roles::default()))),
        (None, false) => Ok(Access::Addresses),
    }
}

fn log_events(events: Vec<GroupEvent>) {
    for event in events {
        match event {
            GroupEvent::Loaded(group) => info!(%group, "node group loaded"),
            GroupEvent::Removed(group) => {
                warn!(%group, "node group directory gone: its proxies now get empty resources")
            }
            GroupEvent::Failed { group, errors } => {
                for e in &errors {
                    error!(%group, error = %e, "node group rejected; its last good resources stay");
                }
            }
        }
    }
}

/// Watches the directory and reloads it on changes, until shutdown; a warning if it cannot be
/// watched.
fn start_watching(shared: Arc<Shared>) {
    match Changes::watch([(shared.dir.as_path(), RecursiveMode::Recursive)], DEBOUNCE) {
        Ok(changes) => {
            tokio::spawn(reload_loop(shared, changes));
        }
        Err(e) => {
            warn!(dir = %shared.dir.display(), error = %e, "cannot watch the resource directory: changes will not be seen");
        }
    }
}

async fn reload_loop(shared: Arc<Shared>, mut changes: Changes) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            more = changes.next() => {
                if !more {
                    return;
                }
                reload(&shared).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn reload(shared: &Arc<Shared>) {
    let dir = shared.dir.clone();
    let loaded = match tokio::task::spawn_blocking(move || load_dir(&dir)).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            error!(dir = %shared.dir.display(), error = %e, "cannot read the resource directory; keeping every group as it was");
            return;
        }
        Err(e) => {
            error!(error = %e, "directory load failed");
            return;
        }
    };
    let mut store = shared.store.lock().await;
    let events = store.update(loaded);
    for event in &events {
        if let GroupEvent::Removed(group) = event {
            shared.propagation.forget(group);
        }
    }
    log_events(events);
    publish(shared, &store);
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.first_bytes_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    warn!(%peer, max = limits.max_connections, "at the connection limit; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    shared: shared.clone(),
                    peer,
                    _slot: slot,
                    first_bytes_timeout: limits.first_bytes_timeout,
                };
                match &acceptor {
                    None => tokio::spawn(conn.serve_plain(stream)),
                    Some(acceptor) => tokio::spawn(conn.serve_tls(acceptor.clone(), stream)),
                };
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the shutdown grace period");
    }
    info!("legate-xds stopped");
}

/// One accepted connection, ready to serve HTTP once its transport is (after TLS, say).
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// This connection's place under [`Limits::max_connections`], for its life.
    _slot: tokio::sync::OwnedSemaphorePermit,
    first_bytes_timeout: Duration,
}

impl Connection {
    /// A plaintext connection: served once its first bytes arrive; one silent for
    /// [`Limits::first_bytes_timeout`] is closed (the version detection would wait for ever).
    async fn serve_plain(self, stream: TcpStream) {
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.first_bytes_timeout, stream.peek(&mut first)).await {
            Ok(Ok(_)) => {
                let client = Client::new(&self.shared.access, self.peer, None);
                self.serve(stream, client).await
            }
            Ok(Err(e)) => {
                debug!(peer = %self.peer, error = %e, "connection failed before its first bytes")
            }
            Err(_) => {
                debug!(peer = %self.peer, "nothing sent within {:?}; closing", self.first_bytes_timeout)
            }
        }
    }

    /// The TLS handshake, then [`Connection::serve`]. It runs in the connection's own task, so
    /// a slow or failed handshake never holds up the accept loop; one that fails, takes longer
    /// than [`HANDSHAKE_TIMEOUT`] or is under way at shutdown just closes the connection.
    async fn serve_tls(self, acceptor: TlsAcceptor, stream: TcpStream) {
        let peer = self.peer;
        let mut shutdown = self.shared.shutdown.clone();
        let stream = tokio::select! {
            r = tokio::time::timeout(self.first_bytes_timeout, acceptor.accept(stream)) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake not done after {:?}", self.first_bytes_timeout);
                    return;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let tls = stream.get_ref().1;
        let leaf = tls.peer_certificates().and_then(|chain| chain.first());
        let client = Client::new(&self.shared.access, peer, leaf);
        debug!(%peer, alpn = %String::from_utf8_lossy(tls.alpn_protocol().unwrap_or_default()),
            client = %client.who(), "TLS handshake done");
        self.serve(stream, client).await;
    }

    /// Serves the stream and the operator API on `io` (HTTP/2 or HTTP/1.1, as the client
    /// speaks) until the connection closes or shutdown ends it.
    async fn serve<I>(self, io: I, client: Client)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // `_slot` lives to the end of the connection.
        let Connection {
            builder,
            watcher,
            shared,
            peer,
            _slot,
            first_bytes_timeout: _,
        } = self;
        let client = Arc::new(client);
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(handle(shared, client, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = watcher.watch(conn).await {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    client: Arc<Client>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let expect = |wanted: Method| {
        (method != wanted)
            .then(|| error_response(StatusCode::METHOD_NOT_ALLOWED, format!("use {wanted}")))
    };
    let refuse = |action: Action<'_>| {
        client.check(action).err().map(|denied| {
            warn!(client = %client.who(), %path, reason = %denied, "refused");
            error_response(StatusCode::FORBIDDEN, denied)
        })
    };
    if path == STREAM_PATH {
        if let Some(resp) = expect(Method::POST) {
            return resp;
        }
        return open_stream(shared, client, req).await;
    }
    if matches!(path.as_str(), "/v1/status" | "/v1/audit" | "/metrics") {
        if let Some(resp) = expect(Method::GET).or_else(|| refuse(Action::Read)) {
            return resp;
        }
    }
    match path.as_str() {
        "/v1/status" => return json_response(StatusCode::OK, &status(&shared).await),
        "/v1/audit" => return audit(&shared, req.uri().query()),
        "/metrics" => {
            let openmetrics = crate::exposition::prefers_openmetrics(req.headers());
            let body = crate::metrics::render(reading(&shared), openmetrics);
            let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(if openmetrics {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                } else {
                    "text/plain; version=0.0.4; charset=utf-8"
                }),
            );
            return resp;
        }
        _ => {}
    }
    if let Some(operation) = path.strip_prefix("/v1/endpoints/") {
        if !matches!(operation, "set-weight" | "pool" | "depool" | "reset") {
            return error_response(
                StatusCode::NOT_FOUND,
                OperatorError::UnknownOperation(operation.to_string()),
            );
        }
        if let Some(resp) = expect(Method::POST).or_else(|| refuse(Action::Change)) {
            return resp;
        }
        let operation = operation.to_owned();
        return operate(shared, client, &operation, req.into_body()).await;
    }
    if let Some(operation) = path.strip_prefix("/v1/routes/") {
        if !matches!(operation, "set-split" | "step" | "reset-split") {
            let unknown = format!(
                "unknown operation {operation:?} (expected set-split, step or reset-split)"
            );
            return error_response(StatusCode::NOT_FOUND, unknown);
        }
        if let Some(resp) = expect(Method::POST).or_else(|| refuse(Action::Change)) {
            return resp;
        }
        let operation = operation.to_owned();
        return operate_route(shared, client, &operation, req.into_body()).await;
    }
    error_response(StatusCode::NOT_FOUND, format!("no such path: {path}"))
}

/// What `/metrics` reports now: sessions by group (and whether each holds what its group
/// serves), the served versions, and the update counters.
fn reading(shared: &Shared) -> crate::metrics::Reading {
    let snapshots = shared.snapshots.borrow().clone();
    let mut reading = crate::metrics::Reading {
        updates_sent: shared.updates_sent.load(Ordering::Relaxed),
        acks: shared.acks.load(Ordering::Relaxed),
        nacks: shared.nacks.load(Ordering::Relaxed),
        propagation: shared.propagation.reading(),
        ..Default::default()
    };
    for (group, snapshot) in &snapshots.groups {
        for (kind, version) in snapshot.versions() {
            reading
                .versions
                .push((group.clone(), kind.as_str().to_owned(), version));
        }
    }
    for st in sessions(shared) {
        let group = st.node.cluster.clone();
        let served = snapshots.groups.get(&group).map(|s| s.versions());
        let in_sync = served.is_some_and(|served| holds(&st, &served));
        *reading.connected.entry(group.clone()).or_default() += 1;
        let synced = reading.in_sync.entry(group).or_default();
        if in_sync {
            *synced += 1;
        }
    }
    reading
}

// ---------------------------------------------------------------------------------------------
// The stream

/// `POST /xds/v1/stream`. With client certificates the hello is read first, so a proxy may be
/// refused (403) the stream of a group its certificate does not name.
async fn open_stream(
    shared: Arc<Shared>,
    client: Arc<Client>,
    req: Request<Incoming>,
) -> Response<Body> {
    let peer = client.addr;
    let mut reader = Reader {
        body: req.into_body(),
        decoder: LineDecoder::with_max_line(shared.limits.max_line),
    };
    let hello = match &client.principal {
        Principal::Address => None,
        Principal::Certificate { .. } => {
            // Only a proxy's certificate may open a stream at all: refused before its hello.
            if let Err(denied) = client.check(Action::OpenStream) {
                warn!(client = %client.who(), reason = %denied, "stream refused");
                return error_response(StatusCode::FORBIDDEN, denied);
            }
            let mut shutdown = shared.shutdown.clone();
            let read = tokio::select! {
                read = tokio::time::timeout(DEAD_AFTER, reader.next()) => read,
                _ = shutdown.wait_for(|stop| *stop) => {
                    return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
            };
            let hello = match read {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "the stream ended before its hello (R7)",
                    )
                }
                Ok(Err(e)) => return error_response(StatusCode::BAD_REQUEST, e),
                Err(_) => {
                    return error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("no hello within {DEAD_AFTER:?} (R7)"),
                    )
                }
            };
            let Message::Hello { node, .. } = &hello else {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the first message must be a hello, not {} (R7)",
                        kind(&hello)
                    ),
                );
            };
            if let Err(denied) = client.check(Action::Stream {
                group: &node.cluster,
            }) {
                warn!(client = %client.who(), node = %node.id, group = %node.cluster,
                    reason = %denied, "stream refused");
                return error_response(StatusCode::FORBIDDEN, denied);
            }
            Some(hello)
        }
    };
    let (tx, body) = ChannelBody::channel(SEND_QUEUE);
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _registered = Registered::new(&shared, id, peer);
        let mut stream = Stream {
            shared: &shared,
            id,
            peer,
            reader,
            tx,
            last_sent: Instant::now(),
            last_received: Instant::now(),
        };
        match stream.run(hello).await {
            Ok(reason) => info!(%peer, session = id, %reason, "session ended"),
            Err(reason) => warn!(%peer, session = id, %reason, "session closed"),
        }
    });
    let mut resp = Response::new(body.boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

/// A session in the registry, removed when dropped.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Registered<'a> {
    fn new(shared: &'a Shared, id: u64, peer: SocketAddr) -> Registered<'a> {
        shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                id,
                SessionEntry {
                    peer,
                    connected_since: SystemTime::now(),
                    session: None,
                },
            );
        Registered { shared, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let removed = lock_registry(self.shared).remove(&self.id);
        let group = removed
            .and_then(|entry| entry.session)
            .map(|session| lock(&session).node().cluster.clone());
        if let Some(group) = group {
            session_ended(self.shared, &group);
        }
    }
}

/// Why a session ended badly.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("protocol error (R4): {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol error: {0}")]
    Session(#[from] SessionError),
    #[error("stream error: {0}")]
    Transport(#[from] hyper::Error),
    #[error("nothing received for {0:?} (R3)")]
    Silent(Duration),
    #[error("the proxy is not reading: a message waited {0:?}")]
    Stuck(Duration),
    #[error("the proxy reset the stream")]
    Gone,
}

/// Reads messages from the request body.
struct Reader {
    body: Incoming,
    decoder: LineDecoder,
}

impl Reader {
    /// The next message; `None` when the body ended. Cancel-safe: bytes read are kept.
    async fn next(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(m) = self.decoder.next_message() {
                return Ok(Some(m?));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
            }
        }
    }
}

struct Stream<'a> {
    shared: &'a Shared,
    id: u64,
    peer: SocketAddr,
    reader: Reader,
    tx: mpsc::Sender<Bytes>,
    last_sent: Instant,
    last_received: Instant,
}

impl Stream<'_> {
    async fn send(&mut self, messages: Vec<Message>) -> Result<(), StreamError> {
        for m in messages {
            debug!(peer = %self.peer, session = self.id, kind = kind(&m), "send");
            if matches!(m, Message::Response { .. } | Message::Delta { .. }) {
                self.shared.updates_sent.fetch_add(1, Ordering::Relaxed);
            }
            let line = Bytes::from(m.encode());
            match tokio::time::timeout(DEAD_AFTER, self.tx.send(line)).await {
                Ok(Ok(())) => self.last_sent = Instant::now(),
                Ok(Err(_)) => return Err(StreamError::Gone),
                Err(_) => return Err(StreamError::Stuck(DEAD_AFTER)),
            }
        }
        Ok(())
    }

    /// Times the change `group` waits for if this ACK left every proxy of it in sync.
    fn check_reached(&self, group: &str) {
        if in_sync(self.shared, group) == Some(true) {
            let now = Instant::now().into_std();
            self.shared.propagation.reached(group, now);
        }
    }

    /// Runs the session, from its `hello` if it was read already; `Ok` with why it ended
    /// normally.
    async fn run(&mut self, hello: Option<Message>) -> Result<&'static str, StreamError> {
        let mut shutdown = self.shared.shutdown.clone();
        let hello = if let Some(hello) = hello {
            hello
        } else {
            tokio::select! {
            m = tokio::time::timeout(DEAD_AFTER, self.reader.next()) => match m {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Ok("the proxy closed the stream before its hello"),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StreamError::Silent(DEAD_AFTER)),
            },
            _ = shutdown.changed() => return Ok("shutting down"),
            }
        };
        self.last_received = Instant::now();
        let prefix = format!("{:x}-{}", self.shared.boot, self.id);
        let session = Arc::new(Mutex::new(Session::from_hello(hello, &prefix)?));
        let node = lock(&session).node().clone();
        if let Some(entry) = lock_registry(self.shared).get_mut(&self.id) {
            entry.session = Some(session.clone());
        }
        let group = node.cluster.clone();
        info!(peer = %self.peer, session = self.id, node = %node.id, %group,
            zone = node.zone.as_deref().unwrap_or(""), "proxy connected");
        let mut snapshots = self.shared.snapshots.subscribe();
        let mut was = "";
        loop {
            // Bring the proxy up to date with what its group has now.
            let lookup = snapshots.borrow_and_update().lookup(&group);
            let now = match &lookup {
                GroupLookup::Known(_) => "known",
                GroupLookup::Unknown(_) => "unknown",
                GroupLookup::Failing => "failing",
            };
            if now != was {
                match now {
                    "unknown" => {
                        warn!(node = %node.id, %group, "unknown node group: sending empty resources")
                    }
                    "failing" => {
                        warn!(node = %node.id, %group, "node group has never loaded: sending nothing")
                    }
                    _ => {}
                }
                was = now;
            }
            let updates = match lookup.snapshot() {
                Some(snapshot) => lock(&session).updates(snapshot),
                None => Vec::new(),
            };
            self.send(updates).await?;

            // Wait for the next thing to do.
            let ping_at = self.last_sent + PING_EVERY;
            let dead_at = self.last_received + DEAD_AFTER;
            tokio::select! {
                m = self.reader.next() => {
                    let Some(m) = m? else {
                        return Ok("the proxy closed the stream");
                    };
                    debug!(peer = %self.peer, session = self.id, kind = kind(&m), "received");
                    self.last_received = Instant::now();
                    match m {
                        Message::Ack { .. } => self.shared.acks.fetch_add(1, Ordering::Relaxed),
                        Message::Nack { .. } => self.shared.nacks.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    let ack = matches!(m, Message::Ack { .. });
                    let replies = lock(&session).receive(m)?;
                    if ack && self.shared.propagation.waiting(&group) {
                        self.check_reached(&group);
                    }
                    self.send(replies).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Ok("shutting down");
                    }
                }
                _ = tokio::time::sleep_until(ping_at.min(dead_at)) => {
                    if Instant::now() >= dead_at {
                        return Err(StreamError::Silent(DEAD_AFTER));
                    }
                    self.send(vec![Message::Ping]).await?;
                }
                _ = shutdown.changed() => return Ok("shutting down"),
            }
        }
    }
}
