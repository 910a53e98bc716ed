//! Operator overrides kept in etcd, shared by every replica of the control plane: one key per
//! endpoint override and per split override, written by compare-and-swap on the key's
//! revision, and watched, so a change made through any replica reaches every other.
//!
//! Keys, under the prefix (default `/legate-xds/`), each part with `%` and `/` escaped:
//! `endpoints/<cluster>/<address>` → `{"weight":N,"pooled":B}`, and
//! `splits/<group>/<route table>/<route>` → `[{"cluster":C,"weight":N},…]`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::warn;

use crate::etcd::{Etcd, EtcdError, Event, Kv, Swap, Write};
use crate::splits::SplitTarget;
use crate::store::{EndpointOverride, Overrides};

/// The overrides as etcd holds them: every key, its value and the revision that wrote it.
#[derive(Debug)]
pub struct Replicated {
    pub(crate) etcd: Etcd,
    prefix: String,
    /// Changed only under the store lock, with the store's overrides, so a change is always
    /// computed from the revision it is swapped against.
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    values: BTreeMap<String, (i64, Vec<u8>)>,
    /// Keys this replica deleted, at the revision it did, until the watch has passed it (so a
    /// late event of the key's older value cannot bring it back).
    deleted: BTreeMap<String, i64>,
    /// The revision the watch (or a full read) has seen everything up to; the watch resumes
    /// after it. This replica's own writes do not move it: events before them may still come.
    watched: i64,
}

/// The one override an operator change is about: it is compared even when the change leaves
/// it as this replica sees it, so a change made elsewhere meanwhile is not silently
/// confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Endpoint {
        cluster: String,
        address: String,
    },
    Split {
        group: String,
        route_table: String,
        route: String,
    },
}

/// Why a change was not written.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the override was changed meanwhile (through another replica, or by another operator); nothing changed: see `legate-xds status` and try again")]
    Conflict,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

fn unescape(part: &str) -> String {
    part.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%25", "%")
}

impl Replicated {
    pub fn new(etcd: Etcd, prefix: &str) -> Replicated {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Replicated {
            etcd,
            prefix,
            keys: Mutex::new(Keys::default()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads every key; the overrides they make and the revision read at.
    pub async fn load(&self) -> Result<(Overrides, i64), EtcdError> {
        let (revision, kvs) = self.etcd.range(&self.prefix).await?;
        let mut keys = self.lock();
        keys.values = kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.mod_revision, kv.value)))
            .collect();
        keys.deleted.clear();
        keys.watched = revision;
        Ok((self.overrides_of(&keys), revision))
    }

    /// The revision the watch has seen everything up to.
    pub fn revision(&self) -> i64 {
        self.lock().watched
    }

    /// Applies watched events (in revision order, as etcd sends them); the overrides now.
    /// An event older than what this replica already holds of its key is skipped.
    pub fn apply(&self, events: Vec<Event>) -> Overrides {
        let mut keys = self.lock();
        for event in events {
            let (key, revision) = match &event {
                Event::Put(kv) => (kv.key.clone(), kv.mod_revision),
                Event::Delete { key, mod_revision } => (key.clone(), *mod_revision),
            };
            keys.watched = keys.watched.max(revision);
            let held = keys.values.get(&key).map(|(r, _)| *r);
            let gone = keys.deleted.get(&key).copied();
            if held.is_some_and(|r| r >= revision) || gone.is_some_and(|r| r >= revision) {
                continue;
            }
            match event {
                Event::Put(Kv {
                    key,
                    value,
                    mod_revision,
                }) => {
                    keys.deleted.remove(&key);
                    keys.values.insert(key, (mod_revision, value));
                }
                Event::Delete { key, mod_revision } => {
                    keys.values.remove(&key);
                    keys.deleted.insert(key, mod_revision);
                }
            }
        }
        let watched = keys.watched;
        keys.deleted.retain(|_, r| *r > watched);
        self.overrides_of(&keys)
    }

    /// The key of the override a change is about.
    fn key_of(&self, touched: &Touched) -> String {
        match touched {
            Touched::Endpoint { cluster, address } => format!(
                "{}endpoints/{}/{}",
                self.prefix,
                escape(cluster),
                escape(address)
            ),
            Touched::Split {
                group,
                route_table,
                route,
            } => format!(
                "{}splits/{}/{}/{}",
                self.prefix,
                escape(group),
                escape(route_table),
                escape(route)
            ),
        }
    }

    /// Writes the keys in which `next` differs from `before`, in one transaction that holds
    /// only if none of them, nor the `touched` one, changed since this replica saw them.
    pub async fn swap(
        &self,
        before: &Overrides,
        next: &Overrides,
        touched: &Touched,
    ) -> Result<(), SwapError> {
        let old = self.encode(before);
        let new = self.encode(next);
        let mut changes: Vec<(String, i64, Write)> = Vec::new();
        {
            let keys = self.lock();
            let revision_of = |key: &str| keys.values.get(key).map_or(0, |(r, _)| *r);
            for (key, value) in &new {
                if old.get(key) != Some(value) {
                    changes.push((key.clone(), revision_of(key), Write::Put(value.clone())));
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                changes.push((key.clone(), revision_of(key), Write::Delete));
            }
            let touched = self.key_of(touched);
            if !changes.iter().any(|(k, _, _)| *k == touched) {
                let revision = revision_of(&touched);
                changes.push((touched, revision, Write::Unchanged));
            }
        }
        let revision = match self.etcd.swap_all(&changes).await {
            Ok(Swap::Done(revision)) => revision,
            Ok(Swap::Conflict) => return Err(SwapError::Conflict),
            // A lost answer may hide a write that did land (a member that timed out, then
            // committed): look.
            Err(e) => match self.landed(&changes).await {
                Some(revision) => {
                    warn!(error = %e, "the etcd write landed although its answer was lost; taken as done");
                    revision
                }
                None => return Err(SwapError::Etcd(e)),
            },
        };
        let mut keys = self.lock();
        for (key, _, write) in changes {
            match write {
                Write::Put(v) => {
                    keys.deleted.remove(&key);
                    keys.values.insert(key, (revision, v));
                }
                Write::Delete => {
                    keys.values.remove(&key);
                    keys.deleted.insert(key, revision);
                }
                Write::Unchanged => {}
            }
        }
        Ok(())
    }

    /// Whether every write of `changes` is what etcd holds now (each put's value there, each
    /// deleted key gone), with all of them at one revision newer than the one compared: the
    /// transaction landed. That revision.
    async fn landed(&self, changes: &[(String, i64, Write)]) -> Option<i64> {
        // A transaction that only compares cannot be told from a conflict: take it as one.
        if changes.iter().all(|(_, _, w)| *w == Write::Unchanged) {
            return None;
        }
        let mut at = None;
        for (key, compared, write) in changes {
            let now = self.etcd.get(key).await.ok()?;
            match (write, now) {
                (Write::Put(v), Some(kv)) if kv.value == *v && kv.mod_revision > *compared => {
                    if at.is_some_and(|r| r != kv.mod_revision) {
                        return None;
                    }
                    at = Some(kv.mod_revision);
                }
                (Write::Delete, None) => {}
                (Write::Unchanged, _) => {}
                _ => return None,
            }
        }
        // Only deletes (or none): no revision to tell; the watch brings the right one.
        Some(at.unwrap_or_else(|| self.revision()))
    }

    /// Every key `overrides` makes, and its value.
    fn encode(&self, overrides: &Overrides) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (cluster, endpoints) in &overrides.clusters {
            for (address, o) in endpoints {
                let key = format!(
                    "{}endpoints/{}/{}",
                    self.prefix,
                    escape(cluster),
                    escape(address)
                );
                out.insert(key, serde_json::to_vec(o).unwrap_or_default());
            }
        }
        for (group, tables) in &overrides.splits {
            for (table, routes) in tables {
                for (route, targets) in routes {
                    let key = format!(
                        "{}splits/{}/{}/{}",
                        self.prefix,
                        escape(group),
                        escape(table),
                        escape(route)
                    );
                    out.insert(key, serde_json::to_vec(targets).unwrap_or_default());
                }
            }
        }
        out
    }

    /// The overrides the keys make; a key that is not one of ours, or a value that does not
    /// parse, is skipped with a warning.
    fn overrides_of(&self, keys: &Keys) -> Overrides {
        let mut out = Overrides::default();
        for (key, (_, value)) in &keys.values {
            let Some(rest) = key.strip_prefix(&self.prefix) else {
                continue;
            };
            let parts: Vec<String> = rest.split('/').map(unescape).collect();
            let ok = match parts.as_slice() {
                [kind, cluster, address] if kind == "endpoints" => {
                    serde_json::from_slice::<EndpointOverride>(value)
                        .map(|o| {
                            out.clusters
                                .entry(cluster.clone())
                                .or_default()
                                .insert(address.clone(), o);
                        })
                        .is_ok()
                }
                [kind, group, table, route] if kind == "splits" => {
                    serde_json::from_slice::<Vec<SplitTarget>>(value)
                        .map(|targets| {
                            out.splits
                                .entry(group.clone())
                                .or_default()
                                .entry(table.clone())
                                .or_default()
                                .insert(route.clone(), targets);
                        })
                        .is_ok()
                }
                _ => false,
            };
            if !ok {
                warn!(%key, "an etcd key under the prefix that is not an override; skipped");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Operation, OperatorRequest};

    #[test]
    fn overrides_round_trip_through_their_keys() {
        let r = Replicated::new(Etcd::new(vec!["127.0.0.1:1".into()]), "/lx");
        let o = Overrides::default().with(&OperatorRequest {
            cluster: "a/b%c".into(),
            address: "10.0.0.1:80".into(),
            operation: Operation::SetWeight(3),
        });
        let mut o = o;
        o.splits
            .entry("maps".into())
            .or_default()
            .entry("main".into())
            .or_default()
            .insert(
                "route/x".into(),
                vec![SplitTarget {
                    cluster: "k8s".into(),
                    weight: 1,
                }],
            );
        let encoded = r.encode(&o);
        let keys: Vec<&str> = encoded.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/lx/endpoints/a%2Fb%25c/10.0.0.1:80",
                "/lx/splits/maps/main/route%2Fx"
            ]
        );
        let mut k = Keys::default();
        for (key, value) in encoded {
            k.values.insert(key, (1, value));
        }
        k.values.insert("/lx/other".into(), (1, b"x".to_vec()));
        assert_eq!(r.overrides_of(&k), o);
    }

    #[test]
    fn older_events_never_undo_what_this_replica_wrote_since() {
        let r = Replicated::new(Etcd::new(vec!["127.0.0.1:1".into()]), "/lx/");
        let key = "/lx/endpoints/tiles/10.0.0.1:80".to_owned();
        let gone = "/lx/endpoints/tiles/10.0.0.2:80".to_owned();
        let put = |key: &str, revision, weight: u32| {
            Event::Put(Kv {
                key: key.to_owned(),
                value: format!("{{\"weight\":{weight}}}").into_bytes(),
                mod_revision: revision,
            })
        };
        let weight = |o: &Overrides, address: &str| o.get("tiles", address).and_then(|e| e.weight);
        {
            // This replica wrote weight 5 at 101 and deleted the other at 102; the watch has
            // seen up to 99.
            let mut k = r.lock();
            k.values
                .insert(key.clone(), (101, b"{\"weight\":5}".to_vec()));
            k.deleted.insert(gone.clone(), 102);
            k.watched = 99;
        }
        assert_eq!(r.revision(), 99, "its own writes do not move the watch on");
        let o = r.apply(vec![put(&key, 100, 3), put(&gone, 100, 7)]);
        assert_eq!(
            weight(&o, "10.0.0.1:80"),
            Some(5),
            "weight 3 at 100 is older"
        );
        assert_eq!(
            weight(&o, "10.0.0.2:80"),
            None,
            "the put at 100 precedes the delete"
        );
        assert_eq!(r.revision(), 100);
        let o = r.apply(vec![put(&key, 101, 5)]);
        assert_eq!(weight(&o, "10.0.0.1:80"), Some(5));
        let o = r.apply(vec![Event::Delete {
            key: gone.clone(),
            mod_revision: 102,
        }]);
        assert_eq!(weight(&o, "10.0.0.2:80"), None);
        assert!(
            r.lock().deleted.is_empty(),
            "passed by the watch: forgotten"
        );
        // A newer write from another replica wins.
        let o = r.apply(vec![put(&key, 103, 9)]);
        assert_eq!(weight(&o, "10.0.0.1:80"), Some(9));
    }
}
