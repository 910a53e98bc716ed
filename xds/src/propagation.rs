//! How long a change takes to reach a node group: from publishing the group's new versions to
//! the ACK that leaves every connected proxy of the group holding them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::ResourceType;
use crate::session::SessionStatus;

/// Bucket upper bounds, in seconds.
pub const BOUNDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Per node group: the change still on its way, and how long past ones took.
#[derive(Debug, Default)]
pub struct Propagation {
    groups: Mutex<BTreeMap<String, Group>>,
}

#[derive(Debug, Clone, Default)]
struct Group {
    /// When the versions not yet held by every proxy were published.
    pending: Option<Instant>,
    timings: Timings,
}

/// The changes timed for one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Not cumulative; the last is above every bound.
    pub counts: [u64; BOUNDS.len() + 1],
    pub sum: f64,
    /// The latest change's time.
    pub last: Option<Duration>,
}

impl Timings {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, count)` per bucket, ending with `+Inf`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

impl Propagation {
    /// `group` has new versions from `now`. Timed only when proxies of the group are
    /// connected to take them (`connected`); a change supersedes one still on its way.
    pub fn published(&self, group: &str, connected: bool, now: Instant) {
        let mut groups = self.lock();
        let g = groups.entry(group.to_owned()).or_default();
        g.pending = connected.then_some(now);
    }

    /// Whether a change of `group` is on its way.
    pub fn waiting(&self, group: &str) -> bool {
        self.lock().get(group).is_some_and(|g| g.pending.is_some())
    }

    /// Every connected proxy of `group` holds its versions since `now`.
    pub fn reached(&self, group: &str, now: Instant) {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        let Some(since) = g.pending.take() else {
            return;
        };
        let took = now.saturating_duration_since(since);
        let secs = took.as_secs_f64();
        let i = BOUNDS.partition_point(|b| *b < secs);
        if let Some(n) = g.timings.counts.get_mut(i) {
            *n += 1;
        }
        g.timings.sum += secs;
        g.timings.last = Some(took);
    }

    /// The timings of every group that has had one.
    /// The change `group` waits for is no longer timed: its last lagging proxy left, so no
    /// ACK will end the wait (and the time to a disconnection is not a propagation time).
    pub fn abandon(&self, group: &str) {
        if let Some(g) = self.lock().get_mut(group) {
            g.pending = None;
        }
    }

    /// Drops a group that is gone, and its timings.
    pub fn forget(&self, group: &str) {
        self.lock().remove(group);
    }

    pub fn reading(&self) -> BTreeMap<String, Timings> {
        self.lock()
            .iter()
            .filter(|(_, g)| g.timings.count() > 0)
            .map(|(name, g)| (name.clone(), g.timings.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a proxy has ACKed every version in `served`.
pub fn holds(status: &SessionStatus, served: &BTreeMap<ResourceType, String>) -> bool {
    served
        .iter()
        .all(|(kind, v)| status.versions.get(kind).and_then(|s| s.acked.as_ref()) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_timed_once_from_its_publication_to_the_last_ack() {
        let p = Propagation::default();
        let t0 = Instant::now();
        p.published("maps", true, t0);
        assert!(p.waiting("maps"));
        p.reached("maps", t0 + Duration::from_millis(300));
        assert!(!p.waiting("maps"));
        // A second "reached" for the same change times nothing.
        p.reached("maps", t0 + Duration::from_secs(9));
        let t = &p.reading()["maps"];
        assert_eq!(t.count(), 1);
        assert_eq!(t.counts[5], 1, "0.3 s is in the 0.5 s bucket");
        assert_eq!(t.last, Some(Duration::from_millis(300)));
        assert_eq!(t.buckets().last(), Some(&(f64::INFINITY, 0)));
    }

    #[test]
    fn nothing_is_timed_without_proxies_and_a_newer_change_restarts_the_clock() {
        let p = Propagation::default();
        let t0 = Instant::now();
        p.published("maps", false, t0);
        assert!(!p.waiting("maps"));
        p.reached("maps", t0 + Duration::from_secs(1));
        assert!(p.reading().is_empty());
        p.published("maps", true, t0);
        p.published("maps", true, t0 + Duration::from_secs(2));
        p.reached("maps", t0 + Duration::from_millis(2050));
        assert_eq!(p.reading()["maps"].last, Some(Duration::from_millis(50)));
    }

    #[test]
    fn an_abandoned_change_is_not_timed_and_a_forgotten_group_is_gone() {
        let p = Propagation::default();
        let t0 = Instant::now();
        p.published("maps", true, t0);
        p.abandon("maps");
        assert!(!p.waiting("maps"));
        p.reached("maps", t0 + Duration::from_secs(3600));
        assert!(p.reading().is_empty(), "an hour-late ACK is not a timing");
        p.published("maps", true, t0);
        p.reached("maps", t0 + Duration::from_millis(20));
        assert_eq!(p.reading()["maps"].count(), 1);
        p.forget("maps");
        assert!(p.reading().is_empty());
    }
}
