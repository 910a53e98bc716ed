//! Moves the running data plane to a new snapshot: listener diff, bind, swap and drain, then
//! cluster upkeep and TLS file watches restarted for the new snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use legate_xds::watch::Changes;
use tracing::{info, warn};

use super::ApplyError;
use crate::cluster::dns::Resolver;
use crate::cluster::{manager, Registry};
use crate::config::model;
use crate::drain;
use crate::listener::{self, diff, HttpSettings, Listener, Protocol, TcpSettings};
use crate::resources;
use crate::serve;
use crate::snapshot::Snapshot;
use crate::state::ListenerView;
use crate::stats;
use crate::worker::Workers;
use crate::WATCH_DEBOUNCE;

/// The running listeners and upkeep tasks; only the applier changes them.
#[derive(Debug)]
pub struct DataPlane {
    workers: Workers,
    /// Spawns onto the control thread (cluster upkeep, TLS watches).
    control: tokio::runtime::Handle,
    registry: Arc<Registry>,
    /// Route and session stats, kept across reloads like `registry`'s cluster state.
    stats: stats::Registry,
    running: HashMap<String, Running>,
    /// Listeners removed or moved by a reload, still draining their connections.
    retired: Vec<drain::Trigger>,
    /// The upkeep task of each cluster.
    managers: Vec<tokio::task::AbortHandle>,
    /// The task rotating TLS certificates when their files change.
    tls_watch: Option<tokio::task::AbortHandle>,
    /// The resolver of endpoint names, rebuilt when the `dns` section changes.
    resolver: Option<Arc<Resolver>>,
    /// Listening sockets handed over by the process this one upgraded, used instead of
    /// binding their addresses.
    inherited: crate::upgrade::Inherited,
}

#[derive(Debug)]
struct Running {
    ctx: Arc<Listener>,
    trigger: drain::Trigger,
    watch: drain::Watch,
    /// Copies of the listening sockets (one per worker), for handing over on upgrade.
    sockets: Vec<std::net::TcpListener>,
}

impl DataPlane {
    pub fn new(
        workers: Workers,
        control: tokio::runtime::Handle,
        registry: Arc<Registry>,
    ) -> DataPlane {
        DataPlane {
            workers,
            control,
            registry,
            stats: stats::Registry::default(),
            running: HashMap::new(),
            retired: Vec::new(),
            managers: Vec::new(),
            tls_watch: None,
            resolver: None,
            inherited: crate::upgrade::Inherited::default(),
        }
    }

    /// Serves on `inherited`'s sockets rather than binding their addresses.
    pub fn with_inherited(mut self, inherited: crate::upgrade::Inherited) -> DataPlane {
        self.inherited = inherited;
        self
    }

    /// Every running listener's name, address and copies of its listening sockets, for an
    /// upgrade.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<crate::upgrade::Group>> {
        self.running
            .values()
            .map(|r| {
                let copies = r
                    .sockets
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok(crate::upgrade::Group {
                    name: crate::upgrade::listener_group(&r.ctx.name),
                    addr: r.ctx.addr,
                    sockets: copies,
                })
            })
            .collect()
    }

    /// Moves the running listeners from `old` to `new`'s: binds first (failing without side
    /// effects), then swaps settings, starts new accept loops and drains what is gone.
    /// Returns the listeners now running.
    pub fn reconcile(
        &mut self,
        old: &[model::Listener],
        new: &Snapshot,
    ) -> Result<Vec<ListenerView>, ApplyError> {
        let zone = new.config.node.zone.as_deref();
        let ops = diff::diff(old, &new.config.listeners);
        let spec = |name: &str| new.config.listeners.iter().find(|l| l.name == name);

        // 1. Bind every new socket before changing anything.
        let mut bound = HashMap::new();
        for op in &ops {
            if let diff::Op::Bind(name) | diff::Op::Rebind(name) = op {
                let Some(l) = spec(name) else { continue };
                // Compiling matched every listener with its address.
                let Some(&addr) = new.listen.get(name) else {
                    return Err(crate::snapshot::CompileError {
                        path: format!("listeners[{name}].listen"),
                        message: "no checked address".into(),
                    }
                    .into());
                };
                let bind_error = |source| ApplyError::Bind {
                    name: name.clone(),
                    addr,
                    source,
                };
                let group = match self
                    .inherited
                    .take(&crate::upgrade::listener_group(name), addr)
                {
                    // Handed over by the process this one upgraded: its sockets, plus one
                    // more per worker beyond their number (joining the SO_REUSEPORT group).
                    Some(mut sockets) => {
                        let bound = match sockets.first().map(std::net::TcpListener::local_addr) {
                            Some(Ok(bound)) => bound,
                            Some(Err(e)) => return Err(bind_error(e)),
                            None => addr,
                        };
                        while sockets.len() < self.workers.len() {
                            sockets.push(listener::bind(bound, l.backlog).map_err(bind_error)?);
                        }
                        info!(listener = %name, addr = %bound, sockets = sockets.len(), "serving on handed-over sockets");
                        (bound, sockets)
                    }
                    None => listener::bind_group(addr, l.backlog, self.workers.len())
                        .map_err(bind_error)?,
                };
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
            manager::publish(cluster, &self.registry, zone);
        }
        for op in ops {
            match op {
                diff::Op::Keep(name) => {
                    if let (Some(running), Some(l)) = (self.running.get(&name), spec(&name)) {
                        if let Some(settings) = listener_settings(l, new, &self.stats) {
                            running.ctx.settings.store(Arc::new(settings));
                        }
                        running
                            .ctx
                            .max_connections
                            .store(max_connections(l), Ordering::Relaxed);
                    }
                }
                diff::Op::Bind(name) | diff::Op::Rebind(name) => {
                    let (Some(l), Some((addr, sockets))) = (spec(&name), bound.remove(&name))
                    else {
                        continue;
                    };
                    let Some(settings) = listener_settings(l, new, &self.stats) else {
                        continue;
                    };
                    let running = start_listener(
                        &self.workers,
                        &name,
                        addr,
                        sockets,
                        settings,
                        max_connections(l),
                    );
                    info!(listener = %name, %addr, "listening");
                    if let Some(old) = self.running.insert(name, running) {
                        old.trigger.drain();
                        self.retired.push(old.trigger);
                    }
                }
                diff::Op::Close(name) => {
                    if let Some(old) = self.running.remove(&name) {
                        info!(listener = %name, "closing; draining its connections");
                        old.trigger.drain();
                        self.retired.push(old.trigger);
                    }
                }
            }
        }
        for cluster in known {
            manager::publish(cluster, &self.registry, zone);
        }
        // Handed-over sockets the new config has no listener for close now; the process
        // that handed them over closes its copies as it drains.
        if !self.inherited.is_empty() {
            info!(addresses = ?self.inherited.left(), "no listener for these handed-over sockets; closing them");
            self.inherited = crate::upgrade::Inherited::default();
        }
        self.retired.retain(|t| t.active() > 0);
        Ok(self
            .running
            .values()
            .map(|r| ListenerView {
                name: r.ctx.name.clone(),
                addr: r.ctx.addr,
                counters: r.ctx.counters.clone(),
                connections: r.watch.clone(),
                stats: match &**r.ctx.settings.load() {
                    Protocol::Http(h) => stats::ListenerStats::Routes(h.route_stats.clone()),
                    Protocol::Tcp(t) => stats::ListenerStats::Sessions(t.sessions.clone()),
                },
            })
            .collect())
    }

    /// Restarts cluster upkeep (health checks, DNS, ejections) and the TLS file watch for a
    /// newly published snapshot. Health and ejection state live in the registry, so a restart
    /// loses nothing.
    pub fn restart_upkeep(&mut self, snapshot: &Arc<Snapshot>) {
        let zone: Option<Arc<str>> = snapshot.config.node.zone.as_deref().map(Into::into);
        for task in self.managers.drain(..) {
            task.abort();
        }
        let resolver = match &self.resolver {
            Some(r) if *r.settings() == snapshot.dns => r.clone(),
            _ => {
                let r = Arc::new(Resolver::new(snapshot.dns.clone()));
                self.resolver = Some(r.clone());
                r
            }
        };
        for cluster in snapshot.clusters.values() {
            let task = self.control.spawn(manager::run(
                cluster.clone(),
                self.registry.clone(),
                resolver.clone(),
                zone.clone(),
            ));
            self.managers.push(task.abort_handle());
        }
        self.start_tls_watch(snapshot);
    }

    /// Watches the snapshot's TLS files; a change installs new certificates for new
    /// handshakes (a bad new pair is logged and the old one kept).
    fn start_tls_watch(&mut self, snapshot: &Arc<Snapshot>) {
        if let Some(old) = self.tls_watch.take() {
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
        let task = self.control.spawn(async move {
            let mut changes = match Changes::new(&files, WATCH_DEBOUNCE) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch TLS files; SIGHUP reloads them");
                    return;
                }
            };
            // Files changed between loading and watching are picked up now (a no-op when
            // nothing changed).
            let mut pending = true;
            while std::mem::take(&mut pending) || changes.next().await {
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
        self.tls_watch = Some(task.abort_handle());
    }

    /// Marks every running listener as closing (`runtime.drain_delay`): they keep accepting,
    /// and HTTP/1.1 responses ask clients to reconnect.
    pub fn announce_drain(&self) {
        for r in self.running.values() {
            r.ctx.closing.store(true, Ordering::Relaxed);
        }
    }

    /// Starts draining every listener (running or retired); returns their triggers to wait on.
    pub fn drain_all(&mut self) -> Vec<drain::Trigger> {
        let mut all: Vec<_> = self.running.drain().map(|(_, r)| r.trigger).collect();
        all.append(&mut self.retired);
        for t in &all {
            t.drain();
        }
        all
    }

    /// Ends every worker (closing what they still hold) and upkeep task.
    pub fn stop(self) {
        for task in &self.managers {
            task.abort();
        }
        if let Some(t) = &self.tls_watch {
            t.abort();
        }
        self.workers.stop();
    }
}

/// A `tcp` listener's idle timeout: as configured; by default an hour for plain TCP and
/// none for Postgres, whose clients' pools keep idle sessions open on purpose.
fn tcp_idle_timeout(tcp: &model::TcpListener) -> Option<std::time::Duration> {
    match (tcp.idle_timeout, tcp.protocol) {
        (Some(d), _) => Some(d.get()),
        (None, Some(model::TcpProtocol::Postgres)) => None,
        (None, None) => Some(crate::tcp::DEFAULT_IDLE_TIMEOUT),
    }
}

fn listener_settings(
    l: &model::Listener,
    snapshot: &Snapshot,
    stats: &stats::Registry,
) -> Option<Protocol> {
    let drain_timeout = snapshot.config.runtime.drain_timeout.get();
    if let Some(tcp) = &l.tcp {
        let cluster = snapshot.clusters.get(&tcp.cluster)?.clone();
        return Some(Protocol::Tcp(Arc::new(TcpSettings {
            endpoint_drain_timeout: tcp
                .drain_timeout
                .or(cluster.spec.drain_timeout)
                .map(|d| d.get()),
            postgres: tcp.protocol == Some(model::TcpProtocol::Postgres),
            idle_timeout: tcp_idle_timeout(tcp),
            connect_attempts: tcp.connect_attempts,
            drain_timeout,
            access_log: snapshot
                .config
                .access_log
                .enabled
                .then_some(snapshot.config.access_log.format),
            sessions: stats.sessions(&l.name, &cluster.name),
            cluster,
        })));
    }
    let http = l.http.as_ref()?;
    let route_table = snapshot.route_tables.get(&http.route_table)?.clone();
    let access_log = &snapshot.config.access_log;
    let stream_idle_timeout = http.stream_idle_timeout.get();
    let shortest = route_table
        .shortest_stream_idle_timeout()
        .map_or(stream_idle_timeout, |r| r.min(stream_idle_timeout));
    let tick = crate::http::idle::tick(http.idle_timeout.get(), shortest);
    let route_stats = route_table
        .routes()
        .map(|r| stats.route(&l.name, &route_table.name, &r.name, &r.clusters()))
        .collect();
    Some(Protocol::Http(Arc::new(HttpSettings {
        route_table,
        route_stats,
        header_read_timeout: http.header_read_timeout.get(),
        idle_timeout: http.idle_timeout.get(),
        max_header_size: http.max_header_size,
        max_uri_length: http.max_uri_length,
        max_concurrent_streams: http.max_concurrent_streams,
        stream_idle_timeout,
        tick,
        normalize: crate::path::Normalize {
            merge_slashes: http.merge_slashes,
            escaped_slashes: http.escaped_slashes,
        },
        access_log: access_log.enabled.then_some(access_log.format),
        drain_timeout,
        tls: snapshot.listener_tls.get(&l.name).cloned(),
    })))
}

/// A listener's connection limit: as configured, or what the open-file limit allows.
fn max_connections(l: &model::Listener) -> usize {
    l.max_connections.map_or_else(
        || resources::default_max_connections(resources::open_file_limit()),
        |n| n as usize,
    )
}

fn start_listener(
    workers: &Workers,
    name: &str,
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    settings: Protocol,
    max_connections: usize,
) -> Running {
    let ctx = Arc::new(Listener {
        name: name.into(),
        addr,
        settings: ArcSwap::from_pointee(settings),
        counters: Arc::default(),
        max_connections: AtomicUsize::new(max_connections),
        closing: AtomicBool::new(false),
    });
    let (trigger, watch) = drain::channel();
    let copies = sockets
        .iter()
        .filter_map(|s| match s.try_clone() {
            Ok(copy) => Some(copy),
            Err(e) => {
                warn!(listener = %name, error = %e, "cannot keep a socket for upgrades");
                None
            }
        })
        .collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        let ctx = ctx.clone();
        let watch = watch.clone();
        workers.run_on(
            i % workers.len().max(1),
            Box::new(move || match tokio::net::TcpListener::from_std(socket) {
                Ok(socket) => {
                    tokio::spawn(serve::accept_loop(ctx, socket, watch));
                }
                Err(e) => warn!(listener = %ctx.name, error = %e, "cannot register socket"),
            }),
        );
    }
    Running {
        ctx,
        trigger,
        watch,
        sockets: copies,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::tcp_idle_timeout;
    use crate::config::model::TcpListener;

    fn tcp(yaml: &str) -> TcpListener {
        serde_yaml::from_str(yaml).expect("a tcp listener")
    }

    #[test]
    fn plain_tcp_idles_out_after_an_hour_by_default_and_postgres_never() {
        assert_eq!(
            tcp_idle_timeout(&tcp("{ cluster: c }")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            tcp_idle_timeout(&tcp("{ cluster: c, protocol: postgres }")),
            None
        );
        assert_eq!(
            tcp_idle_timeout(&tcp("{ cluster: c, protocol: postgres, idle_timeout: 5m }")),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            tcp_idle_timeout(&tcp("{ cluster: c, idle_timeout: 30s }")),
            Some(Duration::from_secs(30))
        );
    }
}
