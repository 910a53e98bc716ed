//! Wiring: starts workers, listeners and the admin server from a config, applies new configs,
//! and drains on shutdown. Tests start the whole proxy in process through [`build`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::admin;
use crate::cluster::Registry;
use crate::config::{self, model, Config};
use crate::control::Control;
use crate::drain;
use crate::listener::{self, accept, diff, HttpSettings, Listener, Protocol, TcpSettings};
use crate::snapshot::{CompileError, Snapshot};
use crate::worker::Workers;

/// State the admin server and reloads read; never touched on the request path.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Arc<Registry>,
    pub draining: AtomicBool,
    pub last_reload: ArcSwap<Option<ReloadStatus>>,
    /// Bound address of each listener, by name.
    pub listener_addrs: ArcSwap<HashMap<String, SocketAddr>>,
    /// Each running listener's counters and open-connection count, for `/metrics`.
    pub listener_stats: ArcSwap<Vec<ListenerStats>>,
    /// Reloads the config file (`POST /reload`); set once the app is built.
    pub reload: OnceLock<Reloader>,
    /// The control plane session, if the config names one.
    pub xds: Arc<crate::xds::Shared>,
    /// The version of the config file last applied, to notice a change the watcher missed.
    pub file_version: Mutex<String>,
    /// Reload attempts, by outcome.
    pub reloads_ok: AtomicU64,
    pub reloads_rejected: AtomicU64,
}

/// What `/metrics` reads of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    pub name: String,
    pub counters: Arc<crate::metrics::ListenerCounters>,
    pub connections: drain::Watch,
}

/// Reloads the config file on request (`POST /reload`).
pub struct Reloader(Box<dyn Fn() -> Result<String, String> + Send + Sync>);

impl Reloader {
    /// Reloads; the new version, or why the file was rejected.
    pub fn reload(&self) -> Result<String, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// The outcome of the latest reload attempt, shown by `GET /config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub version: Option<String>,
    pub error: Option<String>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot start threads: {0}")]
    Workers(#[source] std::io::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("cannot bind admin listener {addr}: {source}")]
    Admin {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("listeners[{name}]: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] config::LoadError),
    #[error("config rejected: {0}")]
    Apply(#[from] ApplyError),
}

/// A running proxy. Dropping it closes everything at once; [`App::shutdown`] drains first.
#[derive(Debug)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    workers: Mutex<Option<Workers>>,
    listeners: Mutex<Listeners>,
    admin_addr: OnceLock<SocketAddr>,
    control: Mutex<Option<Control>>,
    /// Spawns onto the control thread.
    control_handle: tokio::runtime::Handle,
    /// The upkeep task of each cluster, on the control thread.
    managers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The task rotating TLS certificates when their files change.
    tls_watch: Mutex<Option<tokio::task::AbortHandle>>,
    /// The config file and the task reloading it when it changes.
    config_file: Mutex<Option<(PathBuf, tokio::task::AbortHandle)>>,
    /// With a control plane: the bootstrap config its client assembles resources with.
    xds_bootstrap: Mutex<Option<tokio::sync::watch::Sender<Config>>>,
    /// Serialises applies (SIGHUP, the file watch, POST /reload, the xDS client): each one
    /// reconciles against the snapshot the previous one published.
    apply_lock: Mutex<()>,
}

#[derive(Debug, Default)]
struct Listeners {
    running: HashMap<String, Running>,
    /// Listeners removed or moved by a reload, still draining their connections.
    retired: Vec<drain::Trigger>,
}

#[derive(Debug)]
struct Running {
    ctx: Arc<Listener>,
    trigger: drain::Trigger,
    watch: drain::Watch,
}

/// Starts Legate with `config`: binds every listener and the admin listener, then serves.
/// `version` identifies the config text (see [`config::version_of`]).
pub fn build(config: Config, version: String) -> Result<App, BuildError> {
    let workers = config
        .runtime
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let registry = Arc::new(Registry::default());
    let snapshot_version = version.clone();
    let snapshot = Snapshot::compile(config, version, &registry).map_err(ApplyError::from)?;
    let admin_listen = snapshot.config.admin.listen.clone();
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        registry,
        draining: AtomicBool::new(false),
        last_reload: ArcSwap::from_pointee(None),
        listener_addrs: ArcSwap::from_pointee(HashMap::new()),
        listener_stats: ArcSwap::from_pointee(Vec::new()),
        reload: OnceLock::new(),
        xds: Arc::new(crate::xds::Shared::default()),
        file_version: Mutex::new(snapshot_version.clone()),
        reloads_ok: AtomicU64::new(0),
        reloads_rejected: AtomicU64::new(0),
    });
    let control = Control::start().map_err(BuildError::Workers)?;
    let app = Inner {
        shared: shared.clone(),
        workers: Mutex::new(Some(Workers::start(workers).map_err(BuildError::Workers)?)),
        listeners: Mutex::new(Listeners::default()),
        admin_addr: OnceLock::new(),
        control_handle: control.handle(),
        control: Mutex::new(Some(control)),
        managers: Mutex::new(HashMap::new()),
        tls_watch: Mutex::new(None),
        config_file: Mutex::new(None),
        xds_bootstrap: Mutex::new(None),
        apply_lock: Mutex::new(()),
    };
    let app = App {
        inner: Arc::new(app),
    };
    let reloader = Arc::downgrade(&app.inner);
    let _ = shared
        .reload
        .set(Reloader(Box::new(move || match reloader.upgrade() {
            Some(inner) => inner.reload_config_file(),
            None => Err("shutting down".to_owned()),
        })));
    let snapshot = shared.snapshot.load_full();
    app.inner.reconcile(&[], &snapshot)?;
    app.inner.start_managers(&snapshot);
    app.inner.start_tls_watch(&snapshot);
    app.inner.start_xds(&app.inner, &snapshot.config);
    let admin_addr: SocketAddr = admin_listen.parse().map_err(|e| BuildError::Admin {
        addr: admin_listen.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let bound = admin::start(admin_addr, shared, &app.inner.control_handle).map_err(|source| {
        BuildError::Admin {
            addr: admin_listen,
            source,
        }
    })?;
    let _ = app.inner.admin_addr.set(bound);
    info!(version = %snapshot.version, listeners = snapshot.config.listeners.len(), workers, "legate started");
    Ok(app)
}

impl App {
    /// The bound address of a listener (the real port when the config said port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.shared.listener_addrs.load().get(name).copied()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr.get().copied()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.shared.snapshot.load_full()
    }

    /// Validates and applies a config file, all or nothing. On error the running config stays.
    pub fn reload_file(&self, path: &Path) -> Result<String, ReloadError> {
        self.inner.reload_file(path)
    }

    /// Applies a validated config: compiles it, reconciles listeners, publishes the snapshot.
    /// Requests in flight finish on the snapshot they started with.
    pub fn apply(&self, config: Config, version: String) -> Result<(), ApplyError> {
        self.inner.apply(config, version)
    }

    /// Reloads `path` whenever it (or its directory entry: rename, symlink swap) changes, and
    /// on `POST /reload`. A rejected file leaves the running config untouched.
    pub fn watch_config(&self, path: &Path) {
        self.inner.watch_config(path);
    }

    /// Graceful shutdown: `/ready` turns 503, listeners stop accepting, connections finish
    /// their requests (HTTP/1.1 gets `Connection: close`, HTTP/2 GOAWAY) and TCP sessions
    /// run on, until `timeout`; then everything left is closed. Returns whether everything
    /// finished in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let clean = self.inner.drain(timeout).await;
        self.inner.stop();
        clean
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.shared.draining.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Inner {
    fn reload_file(&self, path: &Path) -> Result<String, ReloadError> {
        let result =
            config::load_file(path)
                .map_err(ReloadError::from)
                .and_then(|(config, text)| {
                    let version = config::version_of(&text);
                    let following = self.xds_bootstrap.lock().unwrap_or_else(|e| e.into_inner());
                    match following.as_ref() {
                        // The control plane's resources are assembled with the new bootstrap
                        // by the client, which applies the combination.
                        Some(bootstrap) if self.shared.xds.ready.load(Ordering::Acquire) => {
                            bootstrap.send_replace(config);
                        }
                        Some(bootstrap) => {
                            bootstrap.send_replace(config.clone());
                            self.apply(config, version.clone())?;
                        }
                        None => self.apply(config, version.clone())?,
                    }
                    Ok(version)
                });
        self.shared.last_reload.store(Arc::new(Some(ReloadStatus {
            time: SystemTime::now(),
            version: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(ToString::to_string),
        })));
        match &result {
            Ok(v) => {
                *self
                    .shared
                    .file_version
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = v.clone();
                self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                info!(version = %v, "config reloaded");
            }
            Err(e) => {
                self.shared.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "config reload rejected; the running config stays");
            }
        }
        result
    }

    fn apply(&self, config: Config, version: String) -> Result<(), ApplyError> {
        let _one_at_a_time = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.snapshot.load_full();
        if config.admin != old.config.admin {
            warn!("admin.listen changed; it takes effect on restart");
        }
        if config.runtime.workers != old.config.runtime.workers {
            warn!("runtime.workers changed; it takes effect on restart");
        }
        let new = Arc::new(Snapshot::compile(config, version, &self.shared.registry)?);
        self.reconcile(&old.config.listeners, &new)?;
        self.shared.snapshot.store(new.clone());
        self.start_managers(&new);
        self.start_tls_watch(&new);
        Ok(())
    }

    /// Restarts cluster upkeep (health checks, DNS, ejections) for a newly applied snapshot.
    /// Health and ejection state live in the registry, so a restart loses nothing.
    fn start_managers(&self, snapshot: &Snapshot) {
        let control = &self.control_handle;
        let zone: Option<Arc<str>> = snapshot.config.node.zone.as_deref().map(Into::into);
        let mut managers = self.managers.lock().unwrap_or_else(|e| e.into_inner());
        for (_, task) in managers.drain() {
            task.abort();
        }
        for (name, cluster) in &snapshot.clusters {
            let task = control.spawn(crate::cluster::manager::run(
                cluster.clone(),
                self.shared.registry.clone(),
                zone.clone(),
            ));
            managers.insert(name.clone(), task.abort_handle());
        }
    }

    /// Watches the snapshot's TLS files; a change installs new certificates for new
    /// handshakes (a bad new pair is logged and the old one kept).
    fn start_tls_watch(&self, snapshot: &Arc<Snapshot>) {
        let control = &self.control_handle;
        let mut slot = self.tls_watch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            old.abort();
        }
        let servers: Vec<_> = snapshot.listener_tls.values().cloned().collect();
        let clients: Vec<_> = snapshot
            .clusters
            .values()
            .filter_map(|c| c.tls.clone())
            .collect();
        let files: Vec<String> = servers
            .iter()
            .flat_map(|t| t.files())
            .chain(clients.iter().flat_map(|t| t.files()))
            .collect();
        if files.is_empty() {
            return;
        }
        let task = control.spawn(async move {
            let (_watcher, mut changes) = match crate::watch::watch(&files) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch TLS files; SIGHUP reloads them");
                    return;
                }
            };
            // Files changed between loading and watching are picked up now (a no-op when
            // nothing changed).
            let mut pending = true;
            while std::mem::take(&mut pending) || crate::watch::next_change(&mut changes).await {
                for server in &servers {
                    if let Err(e) = server.reload() {
                        tracing::error!(error = %e, "new TLS certificate rejected; the current one keeps serving");
                    }
                }
                for client in &clients {
                    if let Err(e) = client.reload() {
                        tracing::error!(error = %e, "new upstream TLS files rejected; the current ones stay");
                    }
                }
            }
        });
        *slot = Some(task.abort_handle());
    }

    fn lock_listeners(&self) -> MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the running listeners to `new`'s: binds first (failing without side effects),
    /// then swaps settings, starts new accept loops and drains what is gone.
    fn reconcile(&self, old: &[model::Listener], new: &Snapshot) -> Result<(), ApplyError> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(workers) = workers.as_ref() else {
            return Ok(());
        };
        let zone = new.config.node.zone.as_deref();
        let ops = diff::diff(old, &new.config.listeners);
        let spec = |name: &str| new.config.listeners.iter().find(|l| l.name == name);

        // 1. Bind every new socket before changing anything.
        let mut bound = HashMap::new();
        for op in &ops {
            if let diff::Op::Bind(name) | diff::Op::Rebind(name) = op {
                let Some(l) = spec(name) else { continue };
                let addr = Snapshot::listen_addr(l)?;
                let group =
                    listener::bind_group(addr, l.backlog, workers.len()).map_err(|source| {
                        ApplyError::Bind {
                            name: name.clone(),
                            addr,
                            source,
                        }
                    })?;
                bound.insert(name.clone(), group);
            }
        }

        // 2. Nothing below can fail. Clusters new to this process get their endpoints before
        //    any listener can route to them; the others after the listeners' new settings are
        //    in place, so sessions woken by a drain read the new drain timeouts.
        let (fresh, known): (Vec<_>, Vec<_>) = new
            .clusters
            .values()
            .partition(|c| c.state.membership.load().endpoints.is_empty());
        for cluster in fresh {
            crate::cluster::manager::publish(cluster, &self.shared.registry, zone);
        }
        let mut listeners = self.lock_listeners();
        for op in ops {
            match op {
                diff::Op::Keep(name) => {
                    if let (Some(running), Some(l)) = (listeners.running.get(&name), spec(&name)) {
                        if let Some(settings) = listener_settings(l, new) {
                            running.ctx.settings.store(Arc::new(settings));
                        }
                    }
                }
                diff::Op::Bind(name) | diff::Op::Rebind(name) => {
                    let (Some(l), Some((addr, sockets))) = (spec(&name), bound.remove(&name))
                    else {
                        continue;
                    };
                    let Some(settings) = listener_settings(l, new) else {
                        continue;
                    };
                    let running = start_listener(workers, &name, addr, sockets, settings);
                    info!(listener = %name, %addr, "listening");
                    if let Some(old) = listeners.running.insert(name, running) {
                        old.trigger.drain();
                        listeners.retired.push(old.trigger);
                    }
                }
                diff::Op::Close(name) => {
                    if let Some(old) = listeners.running.remove(&name) {
                        info!(listener = %name, "closing; draining its connections");
                        old.trigger.drain();
                        listeners.retired.push(old.trigger);
                    }
                }
            }
        }
        for cluster in known {
            crate::cluster::manager::publish(cluster, &self.shared.registry, zone);
        }
        listeners.retired.retain(|t| t.active() > 0);
        let addrs = listeners
            .running
            .iter()
            .map(|(name, r)| (name.clone(), r.ctx.addr))
            .collect();
        self.shared.listener_addrs.store(Arc::new(addrs));
        let stats = listeners
            .running
            .iter()
            .map(|(name, r)| ListenerStats {
                name: name.clone(),
                counters: r.ctx.counters.clone(),
                connections: r.watch.clone(),
            })
            .collect();
        self.shared.listener_stats.store(Arc::new(stats));
        Ok(())
    }

    async fn drain(&self, timeout: Duration) -> bool {
        self.shared.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        let triggers: Vec<drain::Trigger> = {
            let mut listeners = self.lock_listeners();
            let mut all: Vec<_> = listeners.running.drain().map(|(_, r)| r.trigger).collect();
            all.append(&mut listeners.retired);
            all
        };
        let mut clean = true;
        for t in &triggers {
            t.drain();
        }
        for t in &triggers {
            clean &= t.drain_until(deadline).await;
        }
        info!(clean, "drained");
        clean
    }

    fn stop(&self) {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(workers) = workers {
            workers.stop();
        }
        let control = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(control) = control {
            control.stop();
        }
    }

    /// Follows the control plane named by the bootstrap config, if any; without one, the
    /// proxy is ready as soon as it serves.
    fn start_xds(&self, this: &Arc<Inner>, bootstrap: &Config) {
        let Some(xds) = bootstrap.xds.clone() else {
            self.shared.xds.ready.store(true, Ordering::Release);
            return;
        };
        let (tx, rx) = tokio::sync::watch::channel(bootstrap.clone());
        *self.xds_bootstrap.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let weak = Arc::downgrade(this);
        let apply: crate::xds::Apply = Arc::new(move |config, version| {
            let inner = weak.upgrade().ok_or_else(|| "shutting down".to_owned())?;
            inner.apply(config, version).map_err(|e| e.to_string())
        });
        self.control_handle.spawn(crate::xds::run(
            xds,
            bootstrap.node.clone(),
            rx,
            apply,
            self.shared.xds.clone(),
        ));
    }

    fn watch_config(&self, path: &Path) {
        let mut slot = self.config_file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = slot.take() {
            old.abort();
        }
        let file = path.display().to_string();
        let shared = self.shared.clone();
        let task = self.control_handle.spawn(async move {
            let (_watcher, mut changes) = match crate::watch::watch(std::slice::from_ref(&file)) {
                Ok(w) => w,
                Err(e) => {
                    warn!(file = %file, error = %e, "cannot watch the config file; SIGHUP and POST /reload still reload it");
                    return;
                }
            };
            let mut last = std::fs::read(&file).ok();
            // A change between loading the file and starting the watch would go unseen.
            let applied = shared.file_version.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let current = last.as_deref().map(|t| config::version_of(&String::from_utf8_lossy(t)));
            if current.is_some_and(|v| v != applied) {
                if let Some(reloader) = shared.reload.get() {
                    let _ = reloader.reload();
                }
            }
            while crate::watch::next_change(&mut changes).await {
                // A directory event may concern another file; reload only on a real change.
                let now = std::fs::read(&file).ok();
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                if let Some(reloader) = shared.reload.get() {
                    let _ = reloader.reload();
                }
            }
        });
        *slot = Some((path.to_path_buf(), task.abort_handle()));
    }

    /// Reloads the watched config file (for `POST /reload`).
    fn reload_config_file(&self) -> Result<String, String> {
        let path = self
            .config_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(p, _)| p.clone())
            .ok_or_else(|| {
                "no config file to reload (the config was not loaded from a file)".to_owned()
            })?;
        self.reload_file(&path).map_err(|e| e.to_string())
    }
}

fn listener_settings(l: &model::Listener, snapshot: &Snapshot) -> Option<Protocol> {
    let drain_timeout = snapshot.config.runtime.drain_timeout.get();
    if let Some(tcp) = &l.tcp {
        let cluster = snapshot.clusters.get(&tcp.cluster)?.clone();
        return Some(Protocol::Tcp(Arc::new(TcpSettings {
            endpoint_drain_timeout: tcp
                .drain_timeout
                .or(cluster.spec.drain_timeout)
                .map(|d| d.get()),
            cluster,
            postgres: tcp.protocol == Some(model::TcpProtocol::Postgres),
            idle_timeout: tcp.idle_timeout.map(|d| d.get()),
            connect_attempts: tcp.connect_attempts,
            drain_timeout,
        })));
    }
    let http = l.http.as_ref()?;
    let route_table = snapshot.route_tables.get(&http.route_table)?.clone();
    let access_log = &snapshot.config.access_log;
    Some(Protocol::Http(Arc::new(HttpSettings {
        route_table,
        header_read_timeout: http.header_read_timeout.get(),
        idle_timeout: http.idle_timeout.get(),
        max_header_size: http.max_header_size,
        max_concurrent_streams: http.max_concurrent_streams,
        access_log: access_log.enabled.then_some(access_log.format),
        drain_timeout,
        tls: snapshot.listener_tls.get(&l.name).cloned(),
    })))
}

fn start_listener(
    workers: &Workers,
    name: &str,
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    settings: Protocol,
) -> Running {
    let ctx = Arc::new(Listener {
        name: name.into(),
        addr,
        settings: ArcSwap::from_pointee(settings),
        counters: Arc::default(),
    });
    let (trigger, watch) = drain::channel();
    for (i, socket) in sockets.into_iter().enumerate() {
        let ctx = ctx.clone();
        let watch = watch.clone();
        workers.run_on(
            i % workers.len().max(1),
            Box::new(move || match tokio::net::TcpListener::from_std(socket) {
                Ok(socket) => {
                    tokio::spawn(accept::accept_loop(ctx, socket, watch));
                }
                Err(e) => warn!(listener = %ctx.name, error = %e, "cannot register socket"),
            }),
        );
    }
    Running {
        ctx,
        trigger,
        watch,
    }
}
