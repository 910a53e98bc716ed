//! The applier: the one road every config takes, from any source — check → compile →
//! reconcile → publish — one config at a time.

pub mod check;
pub mod reconcile;
pub mod restart;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use crate::cluster::Registry;
use crate::config::merge::{self, Resources};
use crate::config::{Checked, Config, ConfigErrors};
use crate::snapshot::{CompileError, Snapshot};
use crate::state::State;
use reconcile::DataPlane;

/// A new config, as a source hands it over.
#[derive(Debug, Clone)]
pub enum Update {
    /// A whole checked config: a file, or a test's text. With a control plane, it is the
    /// bootstrap its resources are added to.
    Parsed(Box<Checked>),
    /// The control plane's resources, added to the last parsed config.
    Xds(Resources),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config breaks a rule or names an unusable file; nothing was changed.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The combination of the parsed config and the control plane's resources breaks a rule
    /// or names an unusable file; nothing was changed. Paths are those of the combination.
    #[error("with the control plane's resources:\n{0}")]
    InvalidWithResources(ConfigErrors),
    /// A TLS file changed between the check and its use.
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("listeners[{name}]: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("shutting down")]
    Stopped,
    /// Draining (SIGTERM, or an upgrade's new process serves): the config in effect stays
    /// to the end, so a change reaches only the process that goes on.
    #[error("draining: no config is applied any more")]
    Draining,
}

/// Applies configs one at a time; the only writer of the published snapshot.
#[derive(Debug)]
pub struct Applier {
    state: Arc<State>,
    registry: Arc<Registry>,
    /// What the first config set that only a restart changes.
    at_start: restart::AtStart,
    inner: Mutex<Inner>,
}

/// What an applied config left out of effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Fields that differ from what the process started with; they apply on restart.
    pub not_in_effect: Vec<&'static str>,
}

#[derive(Debug)]
struct Inner {
    /// The last parsed config applied (the bootstrap, with a control plane).
    parsed: Config,
    /// The control plane's last applied resources and their version label.
    xds: Option<(Resources, String)>,
    /// `None` once stopped.
    plane: Option<DataPlane>,
}

impl Applier {
    /// Checks and compiles the first config; nothing runs until [`Applier::start`].
    pub fn new(
        config: Checked,
        version: String,
        registry: Arc<Registry>,
        plane: DataPlane,
    ) -> Result<(Applier, Arc<State>), ApplyError> {
        check::files_ok(&config).map_err(ApplyError::Invalid)?;
        let parsed = config.config().clone();
        let snapshot = Snapshot::compile(config, version, &registry)?;
        let state = Arc::new(State::new(snapshot));
        let applier = Applier {
            state: state.clone(),
            registry,
            at_start: restart::AtStart::of(&parsed),
            inner: Mutex::new(Inner {
                parsed,
                xds: None,
                plane: Some(plane),
            }),
        };
        Ok((applier, state))
    }

    /// Binds and serves the first config's listeners and starts its upkeep.
    pub fn start(&self) -> Result<(), ApplyError> {
        let mut inner = self.lock();
        let snapshot = self.state.snapshot.load_full();
        let plane = inner.plane.as_mut().ok_or(ApplyError::Stopped)?;
        let listeners = plane.reconcile(&[], &snapshot)?;
        self.state.listeners.store(Arc::new(listeners));
        plane.restart_upkeep(&snapshot);
        Ok(())
    }

    /// Applies `update`, all or nothing: on error the running config stays. `version` labels
    /// the snapshot; a parsed config applied while control plane resources are held takes
    /// their label, as the combination serves what the control plane last sent.
    pub fn apply(&self, update: Update, version: String) -> Result<Applied, ApplyError> {
        if self.state.is_draining() {
            return Err(ApplyError::Draining);
        }
        let mut inner = self.lock();
        if inner.plane.is_none() {
            return Err(ApplyError::Stopped);
        }
        let combined = |parsed: &Config, resources: &Resources| {
            merge::merge(parsed, resources)
                .map_err(ConfigErrors)
                .and_then(check::assembled)
                .map_err(ApplyError::InvalidWithResources)
        };
        let (checked, version, parsed, xds) = match update {
            // The whole config, or the bootstrap of what the control plane sent.
            Update::Parsed(checked) => match &inner.xds {
                Some((resources, label)) => {
                    let merged = combined(checked.config(), resources)?;
                    (merged, label.clone(), checked.into_config(), None)
                }
                None => {
                    check::files_ok(&checked).map_err(ApplyError::Invalid)?;
                    let parsed = checked.config().clone();
                    (*checked, version, parsed, None)
                }
            },
            Update::Xds(resources) => {
                let merged = combined(&inner.parsed, &resources)?;
                let parsed = inner.parsed.clone();
                (merged, version.clone(), parsed, Some((resources, version)))
            }
        };
        let old = self.state.snapshot.load_full();
        let applied = Applied {
            not_in_effect: self.at_start.not_in_effect(&checked),
        };
        if !applied.not_in_effect.is_empty() {
            let fields = applied.not_in_effect.join(", ");
            warn!(%fields, "applied, except what takes effect only on restart");
        }
        let new = Arc::new(Snapshot::compile(checked, version, &self.registry)?);
        let plane = inner.plane.as_mut().ok_or(ApplyError::Stopped)?;
        let listeners = plane.reconcile(&old.config.listeners, &new)?;
        self.state.listeners.store(Arc::new(listeners));
        self.state.snapshot.store(new.clone());
        plane.restart_upkeep(&new);
        inner.parsed = parsed;
        if xds.is_some() {
            inner.xds = xds;
        }
        Ok(applied)
    }

    /// Whether `resources` can be added to the parsed config at all (no entry defined by
    /// both), before the set they belong to is complete enough to check.
    pub fn precheck(&self, resources: &Resources) -> Result<(), ApplyError> {
        let inner = self.lock();
        merge::merge(&inner.parsed, resources)
            .map(drop)
            .map_err(|e| ApplyError::InvalidWithResources(ConfigErrors(e)))
    }

    /// Marks every listener as closing for `runtime.drain_delay` (see `DataPlane`).
    pub fn announce_drain(&self) {
        if let Some(plane) = self.lock().plane.as_ref() {
            plane.announce_drain();
        }
    }

    /// Starts draining every listener; returns the triggers to wait on.
    pub fn drain_all(&self) -> Vec<crate::drain::Trigger> {
        let mut inner = self.lock();
        inner
            .plane
            .as_mut()
            .map(DataPlane::drain_all)
            .unwrap_or_default()
    }

    /// Copies of every running listener's sockets, by address, for an upgrade.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<crate::upgrade::Group>> {
        match self.lock().plane.as_ref() {
            Some(plane) => plane.listening_sockets(),
            None => Ok(Vec::new()),
        }
    }

    /// Stops the data plane: every worker and upkeep task ends; later applies fail.
    pub fn stop(&self) {
        let plane = self.lock().plane.take();
        if let Some(plane) = plane {
            plane.stop();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
