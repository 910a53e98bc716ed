//! What the server's connections, proxy streams and operator API share: the store, the
//! published snapshots, the sessions, and publishing a change.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::access::Access;
use crate::audit::AuditLog;
use crate::limits::Limits;
use crate::propagation::Propagation;
use crate::session::Session;
use crate::state::Backend;
use crate::store::{Snapshots, Store};

/// A response body of the server.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything the connections and tasks share.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    /// Where the overrides are persisted.
    pub(crate) backend: Backend,
    pub(crate) store: tokio::sync::Mutex<Store>,
    pub(crate) snapshots: watch::Sender<Arc<Snapshots>>,
    pub(crate) sessions: Mutex<BTreeMap<u64, SessionEntry>>,
    pub(crate) next_session: AtomicU64,
    /// Resource updates sent, and the ACKs and NACKs received, over all sessions.
    pub(crate) updates_sent: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) nacks: AtomicU64,
    /// How long changes take to reach each group's proxies.
    pub(crate) propagation: Propagation,
    /// Start time, in nonces, so nonces differ across restarts too.
    pub(crate) boot: u64,
    /// How clients are told apart and what each may do.
    pub(crate) access: Access,
    /// Every operator change, before it is persisted.
    pub(crate) audit: Arc<AuditLog>,
    /// Bounds on what clients may hold open or send.
    pub(crate) limits: Limits,
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) struct SessionEntry {
    pub(crate) peer: SocketAddr,
    pub(crate) connected_since: SystemTime,
    /// Set once the hello has arrived.
    pub(crate) session: Option<Arc<Mutex<Session>>>,
}

/// Replaces the published snapshots if any group's content changed (no push otherwise).
/// Callers hold the store lock, so publications do not race.
pub(crate) fn publish(shared: &Shared, store: &Store) {
    let next = store.snapshots();
    let changed: Vec<String> = {
        let current = shared.snapshots.borrow();
        if current.same_as(&next) {
            return;
        }
        next.groups
            .iter()
            .filter(|(group, snapshot)| {
                current.groups.get(*group).map(|s| s.versions()) != Some(snapshot.versions())
            })
            .map(|(group, _)| group.clone())
            .collect()
    };
    // The clocks start before any proxy can see the change, so no ACK comes before them.
    let now = Instant::now().into_std();
    for group in &changed {
        let connected = sessions(shared).iter().any(|st| &st.node.cluster == group);
        shared.propagation.published(group, connected, now);
    }
    shared.snapshots.send_replace(Arc::new(next));
}

/// After a session of `group` ended: if the proxies of the group still connected all hold what
/// it serves, the change it waited for is no longer timed ([`Propagation::abandon`]).
pub(crate) fn session_ended(shared: &Shared, group: &str) {
    if shared.propagation.waiting(group) && in_sync(shared, group) == Some(true) {
        shared.propagation.abandon(group);
    }
}

/// Whether every connected proxy of `group` holds what the group serves (`None`: the group
/// serves nothing). Called on every ACK while a change is under way, so it looks at each
/// session's versions in place (no status is built) and stops at the first proxy behind.
pub(crate) fn in_sync(shared: &Shared, group: &str) -> Option<bool> {
    let served = shared
        .snapshots
        .borrow()
        .groups
        .get(group)
        .map(|s| s.versions())?;
    Some(lock_registry(shared).values().all(|entry| {
        entry.session.as_ref().is_none_or(|session| {
            let session = lock(session);
            session.node().cluster != group || session.holds(&served)
        })
    }))
}

/// The status of each connected proxy (after its hello).
pub(crate) fn sessions(shared: &Shared) -> Vec<crate::session::SessionStatus> {
    let sessions: Vec<Arc<Mutex<Session>>> = lock_registry(shared)
        .values()
        .filter_map(|e| e.session.clone())
        .collect();
    sessions.iter().map(|s| lock(s).status()).collect()
}

pub(crate) fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn lock_registry(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, BTreeMap<u64, SessionEntry>> {
    shared
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
