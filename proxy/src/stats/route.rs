//! The statistics of one route on one listener, and of each cluster it sends to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::histogram::{Histogram, Merged};
use super::per_worker::PerWorker;
use super::{class_of, CLASSES};

/// Slots for error reasons (`legate-error` values), indexed by the caller's numbering.
pub const MAX_REASONS: usize = 16;

/// One route as one listener serves it.
#[derive(Debug)]
pub struct RouteStats {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    /// How long requests took as clients saw them, by status class.
    downstream: PerWorker<[Histogram; CLASSES.len()]>,
    /// One per cluster the route sends to, in the order of its action's targets.
    pub targets: Box<[TargetStats]>,
}

/// One cluster a route sends to (its split target, or its only cluster).
#[derive(Debug)]
pub struct TargetStats {
    pub cluster: Arc<str>,
    cells: PerWorker<TargetCell>,
}

#[derive(Debug, Default)]
struct TargetCell {
    responses: [AtomicU64; CLASSES.len()],
    retries: AtomicU64,
    timeouts: AtomicU64,
    incomplete: AtomicU64,
    errors: [AtomicU64; MAX_REASONS],
    head: Histogram,
    end: Histogram,
}

/// What one request came to, recorded once when its response ends.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    /// From the request's arrival to the end of its response.
    pub elapsed: Duration,
    /// The cluster it went to, if the route picked one.
    pub target: Option<TargetOutcome>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TargetOutcome {
    /// Index into [`RouteStats::targets`].
    pub index: usize,
    /// From forwarding to the upstream's response head, when one came.
    pub head: Option<Duration>,
    /// From forwarding to the end of the upstream's response body.
    pub end: Option<Duration>,
    /// Tries after the first.
    pub retries: u32,
    /// Tries (or the whole request) cut by a timeout.
    pub timeouts: u32,
    /// The upstream's response began but its body did not reach the client whole.
    pub incomplete: bool,
    /// The reason of the error Legate answered with, numbered below [`MAX_REASONS`].
    pub error: Option<usize>,
}

/// A target's counters summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetReading {
    pub responses: [u64; CLASSES.len()],
    pub retries: u64,
    pub timeouts: u64,
    pub incomplete: u64,
    pub errors: [u64; MAX_REASONS],
    pub head: Merged,
    pub end: Merged,
}

impl RouteStats {
    pub fn new(listener: &str, route: &str, targets: &[&str]) -> RouteStats {
        RouteStats {
            listener: listener.into(),
            route: route.into(),
            downstream: PerWorker::default(),
            targets: targets
                .iter()
                .map(|cluster| TargetStats {
                    cluster: (*cluster).into(),
                    cells: PerWorker::default(),
                })
                .collect(),
        }
    }

    pub fn record(&self, outcome: &Outcome) {
        let class = class_of(outcome.status);
        if let Some(h) = self.downstream.local().get(class) {
            h.record(outcome.elapsed);
        }
        let Some(t) = outcome.target else { return };
        let Some(target) = self.targets.get(t.index) else {
            return;
        };
        let cell = target.cells.local();
        if let Some(n) = cell.responses.get(class) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if t.retries > 0 {
            cell.retries
                .fetch_add(u64::from(t.retries), Ordering::Relaxed);
        }
        if t.timeouts > 0 {
            cell.timeouts
                .fetch_add(u64::from(t.timeouts), Ordering::Relaxed);
        }
        if t.incomplete {
            cell.incomplete.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(n) = t.error.and_then(|e| cell.errors.get(e)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(head) = t.head {
            cell.head.record(head);
        }
        if let Some(end) = t.end {
            cell.end.record(end);
        }
    }

    /// Request durations by status class ([`CLASSES`]), summed over workers.
    pub fn downstream(&self) -> [Merged; CLASSES.len()] {
        let mut out = [Merged::default(); CLASSES.len()];
        for cell in self.downstream.each() {
            for (into, h) in out.iter_mut().zip(cell) {
                h.add_to(into);
            }
        }
        out
    }
}

impl TargetStats {
    pub fn read(&self) -> TargetReading {
        let mut r = TargetReading::default();
        for cell in self.cells.each() {
            for (into, n) in r.responses.iter_mut().zip(&cell.responses) {
                *into += n.load(Ordering::Relaxed);
            }
            r.retries += cell.retries.load(Ordering::Relaxed);
            r.timeouts += cell.timeouts.load(Ordering::Relaxed);
            r.incomplete += cell.incomplete.load(Ordering::Relaxed);
            for (into, n) in r.errors.iter_mut().zip(&cell.errors) {
                *into += n.load(Ordering::Relaxed);
            }
            cell.head.add_to(&mut r.head);
            cell.end.add_to(&mut r.end);
        }
        r
    }
}

impl TargetReading {
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Responses with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.responses[5]
    }

    pub fn add(&mut self, other: &TargetReading) {
        for (a, b) in self.responses.iter_mut().zip(other.responses) {
            *a += b;
        }
        self.retries += other.retries;
        self.timeouts += other.timeouts;
        self.incomplete += other.incomplete;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.head.add(&other.head);
        self.end.add(&other.end);
    }

    /// What happened since `earlier` (a reading of the same target); everything, when the
    /// counts went down (a reload replaced the target's counters with new ones).
    pub fn since(&self, earlier: &TargetReading) -> TargetReading {
        if self.requests() < earlier.requests() {
            return *self;
        }
        let mut out = *self;
        for (a, b) in out.responses.iter_mut().zip(earlier.responses) {
            *a = a.saturating_sub(b);
        }
        out.retries = self.retries.saturating_sub(earlier.retries);
        out.timeouts = self.timeouts.saturating_sub(earlier.timeouts);
        out.incomplete = self.incomplete.saturating_sub(earlier.incomplete);
        for (a, b) in out.errors.iter_mut().zip(earlier.errors) {
            *a = a.saturating_sub(b);
        }
        out.head = self.head.since(&earlier.head);
        out.end = self.end.since(&earlier.end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_lands_in_its_class_and_its_target() {
        let stats = RouteStats::new("l", "r", &["metal", "k8s"]);
        stats.record(&Outcome {
            status: 200,
            elapsed: Duration::from_millis(3),
            target: Some(TargetOutcome {
                index: 1,
                head: Some(Duration::from_millis(2)),
                end: Some(Duration::from_millis(3)),
                retries: 2,
                timeouts: 1,
                incomplete: false,
                error: None,
            }),
        });
        stats.record(&Outcome {
            status: 504,
            elapsed: Duration::from_secs(1),
            target: Some(TargetOutcome {
                index: 0,
                error: Some(3),
                timeouts: 1,
                ..TargetOutcome::default()
            }),
        });
        stats.record(&Outcome {
            status: 404,
            elapsed: Duration::from_micros(50),
            target: None,
        });
        let down = stats.downstream();
        assert_eq!(down.map(|m| m.count()), [0, 0, 1, 0, 1, 1]);
        let metal = stats.targets[0].read();
        let k8s = stats.targets[1].read();
        assert_eq!((metal.requests(), metal.server_errors()), (1, 1));
        assert_eq!(
            (metal.errors[3], metal.timeouts, metal.head.count()),
            (1, 1, 0)
        );
        assert_eq!((k8s.responses[2], k8s.retries, k8s.timeouts), (1, 2, 1));
        assert_eq!((k8s.head.count(), k8s.end.count()), (1, 1));
        let mut both = metal;
        both.add(&k8s);
        assert_eq!(both.requests(), 2);
        assert_eq!(both.since(&metal), {
            let mut k = k8s;
            k.errors = [0; MAX_REASONS];
            k
        });
    }

    #[test]
    fn since_a_reading_of_counters_that_were_replaced_takes_them_whole() {
        let old = RouteStats::new("l", "r", &["metal"]);
        let new = RouteStats::new("l", "r", &["metal", "k8s"]);
        let ok = |index| Outcome {
            status: 200,
            elapsed: Duration::from_millis(1),
            target: Some(TargetOutcome {
                index,
                incomplete: true,
                ..TargetOutcome::default()
            }),
        };
        for _ in 0..5 {
            old.record(&ok(0));
        }
        new.record(&ok(0));
        let before = old.targets[0].read();
        let after = new.targets[0].read();
        assert_eq!(before.incomplete, 5);
        // A reload made new counters for the same target: the window sees 1, not 0.
        assert_eq!(after.since(&before).requests(), 1);
        assert_eq!(after.since(&before).incomplete, 1);
        new.record(&ok(0));
        let later = new.targets[0].read();
        assert_eq!(later.since(&after).requests(), 1);
    }
}
