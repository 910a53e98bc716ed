//! Stats by identity across snapshots: a reload that keeps a route (same listener, table, name
//! and clusters) or a TCP listener's cluster keeps its counters. Used only off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::per_worker::PerWorker;
use super::route::RouteStats;
use super::SessionStats;

#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: HashMap<RouteKey, Weak<RouteStats>>,
    sessions: HashMap<(String, String), Weak<SessionStats>>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RouteKey {
    listener: String,
    table: String,
    route: String,
    targets: Vec<String>,
}

impl Registry {
    /// The stats of route `route` of `table` on `listener`, sending to `targets` in order.
    pub fn route(
        &self,
        listener: &str,
        table: &str,
        route: &str,
        targets: &[&str],
    ) -> Arc<RouteStats> {
        let key = RouteKey {
            listener: listener.to_owned(),
            table: table.to_owned(),
            route: route.to_owned(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = inner.routes.get(&key).and_then(Weak::upgrade) {
            return stats;
        }
        let stats = Arc::new(RouteStats::new(listener, route, targets));
        inner.routes.retain(|_, w| w.strong_count() > 0);
        inner.routes.insert(key, Arc::downgrade(&stats));
        stats
    }

    /// The session stats of TCP listener `listener` to `cluster`.
    pub fn sessions(&self, listener: &str, cluster: &str) -> Arc<SessionStats> {
        let key = (listener.to_owned(), cluster.to_owned());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = inner.sessions.get(&key).and_then(Weak::upgrade) {
            return stats;
        }
        let stats = Arc::new(SessionStats {
            listener: listener.into(),
            cluster: cluster.into(),
            duration: PerWorker::default(),
        });
        inner.sessions.retain(|_, w| w.strong_count() > 0);
        inner.sessions.insert(key, Arc::downgrade(&stats));
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_route_keeps_its_stats_while_held_and_a_changed_one_starts_afresh() {
        let registry = Registry::default();
        let held = registry.route("l", "t", "api", &["a", "b"]);
        assert!(Arc::ptr_eq(
            &held,
            &registry.route("l", "t", "api", &["a", "b"])
        ));
        let other = registry.route("l", "t", "api", &["a"]);
        assert!(!Arc::ptr_eq(&held, &other));
        let elsewhere = registry.route("m", "t", "api", &["a", "b"]);
        assert!(!Arc::ptr_eq(&held, &elsewhere));
        let weak = Arc::downgrade(&held);
        drop(held);
        let fresh = registry.route("l", "t", "api", &["a", "b"]);
        assert!(weak.upgrade().is_none(), "dropped stats are not revived");
        assert_eq!(fresh.targets.len(), 2);

        let s = registry.sessions("pg", "replicas");
        assert!(Arc::ptr_eq(&s, &registry.sessions("pg", "replicas")));
    }
}
