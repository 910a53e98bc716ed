//! Where the operator overrides live and how a change is persisted: a state file for a single
//! control plane ([`file`]), or etcd for replicas ([`replicated`]; `crate::follow` publishes
//! what the other replicas write).
//!
//! - [`file`]: the state file, written atomically.
//! - [`replicated`]: one etcd key per override, compare-and-swap, watch.

pub mod file;
pub mod replicated;

use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::etcd::{Etcd, EtcdError};
use crate::store::Overrides;
pub use replicated::Touched;
use replicated::{Replicated, SwapError};

/// Where to keep the overrides (`--state FILE` or `--store etcd://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStore {
    /// A JSON file; created on the first change.
    File(PathBuf),
    /// etcd: the members' client addresses, and the key prefix.
    Etcd {
        members: Vec<String>,
        prefix: String,
    },
}

/// The key prefix in etcd by default.
pub const DEFAULT_PREFIX: &str = "/legate-xds/";

impl StateStore {
    /// For the start-up log.
    pub fn describe(&self) -> String {
        match self {
            StateStore::File(path) => path.display().to_string(),
            StateStore::Etcd { members, prefix } => {
                format!("etcd://{} (prefix {prefix})", members.join(","))
            }
        }
    }
}

/// The open store.
#[derive(Debug)]
pub(crate) enum Backend {
    File(PathBuf),
    Etcd(Arc<Replicated>),
}

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error("cannot read the operator overrides from etcd: {0}")]
    Etcd(#[from] EtcdError),
}

/// Why a change was not persisted; nothing changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error("cannot write state file {}: {error}", path.display())]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Conflict(SwapError),
    #[error("cannot write the override to etcd: {0}")]
    Etcd(SwapError),
    #[error("state write failed: {0}")]
    Task(String),
}

impl PersistError {
    /// A conflict is the client's to retry (409); the rest are the server's (500).
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, PersistError::Conflict(_))
    }
}

impl Backend {
    /// Opens the store and reads the overrides it holds.
    pub(crate) async fn open(store: &StateStore) -> Result<(Backend, Overrides), StateError> {
        match store {
            StateStore::File(path) => {
                let overrides = file::load(path)?;
                Ok((Backend::File(path.clone()), overrides))
            }
            StateStore::Etcd { members, prefix } => {
                let replicated = Replicated::new(Etcd::new(members.clone()), prefix);
                let (overrides, revision) = replicated.load().await?;
                info!(store = %store.describe(), revision, clusters = overrides.clusters.len(),
                    "operator overrides loaded from etcd");
                Ok((Backend::Etcd(Arc::new(replicated)), overrides))
            }
        }
    }

    /// Persists `next` (the store's overrides are `before`), a change about `touched`.
    /// Called under the store lock.
    pub(crate) async fn persist(
        &self,
        before: &Overrides,
        next: &Overrides,
        touched: &Touched,
    ) -> Result<(), PersistError> {
        match self {
            Backend::File(path) => {
                let path = path.clone();
                let bytes = next.to_state_json();
                let target = path.clone();
                match tokio::task::spawn_blocking(move || file::write(&target, &bytes)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(PersistError::File { path, error }),
                    Err(e) => Err(PersistError::Task(e.to_string())),
                }
            }
            Backend::Etcd(replicated) => match replicated.swap(before, next, touched).await {
                Ok(()) => Ok(()),
                Err(e @ SwapError::Conflict) => Err(PersistError::Conflict(e)),
                Err(e) => Err(PersistError::Etcd(e)),
            },
        }
    }
}
