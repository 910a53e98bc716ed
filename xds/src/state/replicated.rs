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

use crate::etcd::{Etcd, EtcdError, Event, Kv, Swap};
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
    /// The store's revision the keys were last brought up to.
    revision: i64,
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
        keys.revision = revision;
        Ok((self.overrides_of(&keys), revision))
    }

    /// The revision the keys are up to.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Applies watched events; the overrides now.
    pub fn apply(&self, events: Vec<Event>) -> Overrides {
        let mut keys = self.lock();
        for event in events {
            match event {
                Event::Put(Kv {
                    key,
                    value,
                    mod_revision,
                }) => {
                    keys.revision = keys.revision.max(mod_revision);
                    keys.values.insert(key, (mod_revision, value));
                }
                Event::Delete { key, mod_revision } => {
                    keys.revision = keys.revision.max(mod_revision);
                    keys.values.remove(&key);
                }
            }
        }
        self.overrides_of(&keys)
    }

    /// Writes the keys in which `next` differs from `before`, in one transaction that holds
    /// only if none of them changed since it was read.
    pub async fn swap(&self, before: &Overrides, next: &Overrides) -> Result<(), SwapError> {
        let old = self.encode(before);
        let new = self.encode(next);
        let mut changes: Vec<(String, i64, Option<Vec<u8>>)> = Vec::new();
        {
            let keys = self.lock();
            let revision_of = |key: &str| keys.values.get(key).map_or(0, |(r, _)| *r);
            for (key, value) in &new {
                if old.get(key) != Some(value) {
                    changes.push((key.clone(), revision_of(key), Some(value.clone())));
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                changes.push((key.clone(), revision_of(key), None));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        match self.etcd.swap_all(&changes).await? {
            Swap::Conflict => Err(SwapError::Conflict),
            Swap::Done(revision) => {
                let mut keys = self.lock();
                for (key, _, value) in changes {
                    match value {
                        Some(v) => {
                            keys.values.insert(key, (revision, v));
                        }
                        None => {
                            keys.values.remove(&key);
                        }
                    }
                }
                keys.revision = keys.revision.max(revision);
                Ok(())
            }
        }
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
}
