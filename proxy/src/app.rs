//! Wiring: builds the data plane, the applier, the config sources and the admin server from a
//! config, and drains on shutdown. Tests start the whole proxy in process through [`build`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::admin::{self, Admin, Surface};
use crate::apply::reconcile::DataPlane;
use crate::apply::{Applier, Update};
use crate::cluster::Registry;
use crate::config::Checked;
use crate::control::Control;
use crate::snapshot::Snapshot;
use crate::source::file::FileSource;
use crate::state::State;
use crate::upgrade::Inherited;
use crate::worker::Workers;

pub use crate::apply::{Applied, ApplyError};
pub use crate::source::file::ReloadError;

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
    #[error("cannot bind probe listener {addr}: {source}")]
    Probes {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The upgrade group names of the admin and probe listeners' sockets.
const ADMIN_GROUP: &str = "admin";
const PROBES_GROUP: &str = "probes";

/// A running proxy. Dropping it closes everything at once; [`App::shutdown`] drains first.
#[derive(Debug)]
pub struct App {
    state: Arc<State>,
    applier: Arc<Applier>,
    file: Arc<FileSource>,
    admin_addr: SocketAddr,
    probes_addr: Option<SocketAddr>,
    /// Copies of the admin and probe listeners' sockets, for an upgrade.
    own_sockets: Vec<(&'static str, SocketAddr, std::net::TcpListener)>,
    /// The admin and probe listeners' accept loops.
    admin_tasks: Vec<tokio::task::AbortHandle>,
    /// The control thread: admin, upkeep, sources. Stopped after the workers.
    control: Mutex<Option<Control>>,
}

/// Starts Legate with a checked config: binds every listener and the admin listener, then
/// serves. `version` identifies the config text (see [`crate::config::version_of`]).
pub fn build(config: Checked, version: String) -> Result<App, BuildError> {
    build_with(config, version, Inherited::default())
}

/// Like [`build`], serving on the sockets a process being upgraded handed over where their
/// addresses are the config's, binding the others.
pub fn build_with(
    config: Checked,
    version: String,
    mut inherited: Inherited,
) -> Result<App, BuildError> {
    // The admin and probe listeners take theirs first; the data plane gets the rest.
    let mut inherited_one = |name: &str, listen: Option<SocketAddr>| {
        listen
            .and_then(|addr| inherited.take(name, addr))
            .and_then(|sockets| sockets.into_iter().next())
    };
    let admin_inherited = inherited_one(ADMIN_GROUP, config.admin.listen.parse().ok());
    let probes_inherited = inherited_one(
        PROBES_GROUP,
        config.probes.as_ref().and_then(|p| p.listen.parse().ok()),
    );
    let workers = config
        .runtime
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let xds = config.xds.clone().map(|x| (x, config.node.clone()));

    let control = Control::start().map_err(BuildError::Workers)?;
    let registry = Arc::new(Registry::default());
    let plane = DataPlane::new(
        Workers::start(workers).map_err(BuildError::Workers)?,
        control.handle(),
        registry.clone(),
    )
    .with_inherited(inherited);
    let (applier, state) = Applier::new(config, version.clone(), registry, plane)?;
    let applier = Arc::new(applier);
    applier.start()?;
    let file = Arc::new(FileSource::new(applier.clone(), state.clone(), version));
    control.spawn({
        let state = state.clone();
        async move {
            let mut every = tokio::time::interval(crate::stats::window::EVERY);
            loop {
                every.tick().await;
                state.sample_traffic();
            }
        }
    });
    match xds {
        // Follow the control plane the bootstrap names; ready once its first config is applied.
        Some((xds, node)) => {
            control.spawn(crate::source::xds::run(
                xds,
                node,
                applier.clone(),
                state.clone(),
            ));
        }
        None => state
            .xds
            .ready
            .store(true, std::sync::atomic::Ordering::Release),
    }
    let admin = Admin {
        state: state.clone(),
        reload: file.clone(),
    };
    let snapshot = state.snapshot.load();
    let probes = match snapshot.probes {
        Some(addr) => {
            match admin_socket(addr, probes_inherited).and_then(|socket| {
                let copy = socket.try_clone()?;
                let (bound, task) = admin::start_accepting(
                    socket,
                    Surface::Probes,
                    admin.clone(),
                    &control.handle(),
                )?;
                Ok((bound, copy, task))
            }) {
                Ok(started) => Some(started),
                Err(source) => {
                    applier.stop();
                    return Err(BuildError::Probes { addr, source });
                }
            }
        }
        None => None,
    };
    let probes_addr = probes.as_ref().map(|(addr, _, _)| *addr);
    let admin_started = admin_socket(snapshot.admin, admin_inherited).and_then(|socket| {
        let copy = socket.try_clone()?;
        let (bound, task) =
            admin::start_accepting(socket, Surface::Admin, admin, &control.handle())?;
        Ok((bound, copy, task))
    });
    let (admin_addr, admin_copy, admin_task) = match admin_started {
        Ok(started) => started,
        Err(source) => {
            // The listeners already serve: stop them before reporting.
            applier.stop();
            return Err(BuildError::Admin {
                addr: snapshot.config.admin.listen.clone(),
                source,
            });
        }
    };
    info!(
        version = %snapshot.version,
        listeners = snapshot.config.listeners.len(),
        workers,
        admin = %admin_addr,
        probes = ?probes_addr,
        "legate started"
    );
    let mut own_sockets = vec![(ADMIN_GROUP, admin_addr, admin_copy)];
    let mut admin_tasks = vec![admin_task];
    if let Some((addr, copy, task)) = probes {
        own_sockets.push((PROBES_GROUP, addr, copy));
        admin_tasks.push(task);
    }
    Ok(App {
        state,
        applier,
        file,
        admin_addr,
        probes_addr,
        own_sockets,
        admin_tasks,
        control: Mutex::new(Some(control)),
    })
}

/// The admin or probe listener's socket: handed over by an upgrade, or bound here (refusing
/// an address another process holds).
fn admin_socket(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
) -> std::io::Result<std::net::TcpListener> {
    match inherited {
        Some(socket) => Ok(socket),
        None => {
            crate::listener::holder::check_unheld(addr)?;
            crate::listener::bind(addr, 128)
        }
    }
}

impl admin::Reload for FileSource {
    fn reload(&self) -> Result<(String, Vec<&'static str>), String> {
        FileSource::reload(self)
            .map(|r| (r.version, r.not_in_effect))
            .map_err(|e| e.to_string())
    }
}

impl App {
    /// The bound address of a listener (the real port when the config said port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state
            .listeners
            .load()
            .iter()
            .find(|l| &*l.name == name)
            .map(|l| l.addr)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        Some(self.admin_addr)
    }

    /// The bound address of the probe listener, if the config has one.
    pub fn probes_addr(&self) -> Option<SocketAddr> {
        self.probes_addr
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.snapshot.load_full()
    }

    /// Validates and applies a config file, all or nothing. On error the running config stays.
    pub fn reload_file(&self, path: &Path) -> Result<String, ReloadError> {
        self.file.reload_file(path)
    }

    /// Applies a checked config: checks the files it names, compiles it, reconciles
    /// listeners, publishes the snapshot. Requests in flight finish on the snapshot they
    /// started with. Says which start-only fields it left out of effect.
    pub fn apply(&self, config: Checked, version: String) -> Result<Applied, ApplyError> {
        self.applier
            .apply(Update::Parsed(Box::new(config)), version)
    }

    /// Reloads `path` whenever it (or its directory entry: rename, symlink swap) changes, and
    /// on `POST /reload`. A rejected file leaves the running config untouched.
    pub fn watch_config(&self, path: &Path) {
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(control) = control.as_ref() {
            self.file.watch(path, &control.handle());
        }
    }

    /// Graceful shutdown: `/ready` turns 503, listeners stop accepting, connections finish
    /// their requests (HTTP/1.1 gets `Connection: close`, HTTP/2 GOAWAY) and TCP sessions
    /// run on, until `timeout`; then everything left is closed. Returns whether everything
    /// finished in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.state.begin_drain();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut clean = true;
        for t in &self.applier.drain_all() {
            clean &= t.drain_until(deadline).await;
        }
        if clean {
            info!("drained");
        } else {
            warn!(
                ?timeout,
                "drain_timeout expired: closing the connections and sessions still open"
            );
        }
        self.stop();
        clean
    }

    /// The first step of a graceful shutdown with `runtime.drain_delay`: `/ready` answers
    /// 503 at once while listeners keep accepting and serving for `delay`.
    pub async fn drain_delay(&self, delay: Duration) {
        self.state.begin_drain();
        self.applier.announce_drain();
        info!(
            ?delay,
            "/ready answers 503; serving on for drain_delay before draining"
        );
        tokio::time::sleep(delay).await;
    }

    /// Copies of every listening socket (listeners, one per worker; admin; probes) by
    /// address, to hand over to the process an upgrade starts.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<crate::upgrade::Group>> {
        let mut all = self.applier.listening_sockets()?;
        for (name, addr, socket) in &self.own_sockets {
            all.push(crate::upgrade::Group {
                name: (*name).to_owned(),
                addr: *addr,
                sockets: vec![socket.try_clone()?],
            });
        }
        Ok(all)
    }

    /// After an upgrade: the new process answers the admin and probe listeners alone (they
    /// are the same sockets), so this one stops accepting there.
    pub fn stop_admin(&self) {
        for task in &self.admin_tasks {
            task.abort();
        }
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.state.is_draining()
    }

    fn stop(&self) {
        self.applier.stop();
        // The workers handed their last access-log lines over as they ended.
        crate::access_log::written(Duration::from_secs(1));
        let control = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(control) = control {
            control.stop();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}
