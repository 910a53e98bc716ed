//! The config file as a source: read on SIGHUP, `POST /reload` and file system events, then
//! handed to the applier; the outcome is recorded for `/config` and `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use legate_xds::watch::Changes;
use tracing::{info, warn};

use crate::apply::{Applier, ApplyError, Update};
use crate::config::{self, LoadError};
use crate::notify;
use crate::state::State;
use crate::WATCH_DEBOUNCE;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("config rejected: {0}")]
    Apply(#[from] ApplyError),
    #[error("no config file to reload (the config was not loaded from a file)")]
    NoFile,
}

/// Reloads the config file through the applier.
#[derive(Debug)]
pub struct FileSource {
    applier: Arc<Applier>,
    state: Arc<State>,
    inner: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    /// The watched file and the task watching it.
    file: Option<(PathBuf, tokio::task::AbortHandle)>,
    /// The version of the file last applied, to notice a change the watcher missed.
    applied: Option<String>,
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub version: String,
    /// Fields the file changed that take effect only on restart.
    pub not_in_effect: Vec<&'static str>,
}

impl FileSource {
    /// `version` is that of the config already running, if it came from a file.
    pub fn new(applier: Arc<Applier>, state: Arc<State>, version: String) -> FileSource {
        FileSource {
            applier,
            state,
            inner: Mutex::new(Watched {
                file: None,
                applied: Some(version),
            }),
        }
    }

    /// Loads `path` and applies it, all or nothing; the new version, or why it was rejected.
    pub fn reload_file(&self, path: &Path) -> Result<String, ReloadError> {
        self.reload_file_applied(path).map(|r| r.version)
    }

    /// Like [`FileSource::reload_file`], also saying what the reload left out of effect.
    pub fn reload_file_applied(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        // A draining process keeps its config to the end and tells the service manager
        // nothing: after an upgrade, the new process reloads and notifies.
        let result = if self.state.is_draining() {
            Err(ApplyError::Draining.into())
        } else {
            self.load_and_apply(path)
        };
        self.state.reloads.record(
            result
                .as_ref()
                .map(|r| (r.version.as_str(), r.not_in_effect.as_slice()))
                .map_err(ToString::to_string),
        );
        match &result {
            Ok(r) => {
                self.lock().applied = Some(r.version.clone());
                info!(version = %r.version, "config reloaded");
            }
            Err(e) => warn!(error = %e, "config reload rejected; the running config stays"),
        }
        result
    }

    /// Loads and applies `path`, telling the service manager: a file that does not load
    /// changes only the status line; one that does is applied between `RELOADING=1` and
    /// `READY=1`.
    fn load_and_apply(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        let serving = self.lock().applied.clone();
        let (config, text) = match config::load_file(path) {
            Ok(loaded) => loaded,
            Err(e) => {
                notify::reload_rejected(&e.to_string(), serving.as_deref());
                return Err(e.into());
            }
        };
        let version = config::version_of(&text);
        notify::reloading();
        let result = self.apply_loaded(path, config, text, version);
        match &result {
            Ok(r) => notify::ready(&r.version),
            Err(e) => notify::reload_failed_after_start(&e.to_string(), serving.as_deref()),
        }
        result
    }

    fn apply_loaded(
        &self,
        path: &Path,
        config: config::Checked,
        text: String,
        version: String,
    ) -> Result<Reloaded, ReloadError> {
        match self
            .applier
            .apply(Update::Parsed(Box::new(config)), version.clone())
        {
            Ok(applied) => Ok(Reloaded {
                version,
                not_in_effect: applied.not_in_effect,
            }),
            // Problems with the files the config names are the file's problems: show their lines.
            Err(ApplyError::Invalid(mut errors)) => {
                config::locate(&text, &mut errors.0);
                Err(LoadError::Invalid {
                    path: path.display().to_string(),
                    errors,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reloads the watched file (`POST /reload`).
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.lock().file.as_ref().map(|(p, _)| p.clone());
        self.reload_file_applied(&path.ok_or(ReloadError::NoFile)?)
    }

    /// Reloads `path` whenever it (or its directory entry: rename, symlink swap) changes. A
    /// rejected file leaves the running config untouched.
    pub fn watch(self: &Arc<Self>, path: &Path, control: &tokio::runtime::Handle) {
        let file = path.to_path_buf();
        let this = self.clone();
        let task = control.spawn(async move {
            let mut changes = match Changes::new(std::slice::from_ref(&file), WATCH_DEBOUNCE) {
                Ok(w) => w,
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "cannot watch the config file; SIGHUP and POST /reload still reload it");
                    return;
                }
            };
            let mut last = std::fs::read(&file).ok();
            // A change between loading the file and starting the watch would go unseen.
            let current = last
                .as_deref()
                .map(|t| config::version_of(&String::from_utf8_lossy(t)));
            if current.is_some() && current != this.lock().applied {
                let _ = this.reload_file(&file);
            }
            while changes.next().await {
                // A directory event may concern another file; reload only on a real change.
                let now = std::fs::read(&file).ok();
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                let _ = this.reload_file(&file);
            }
        });
        let mut inner = self.lock();
        if let Some((_, old)) = inner
            .file
            .replace((path.to_path_buf(), task.abort_handle()))
        {
            old.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
