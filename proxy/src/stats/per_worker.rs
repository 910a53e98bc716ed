//! One copy of a value per worker thread, written only by its worker, summed by the scraper.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many workers this process runs: set when they start, before any config is compiled.
static SLOTS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's worker number (0 on threads that are not workers).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Sizes every [`PerWorker`] made from now on for `workers` workers.
pub fn set_workers(workers: usize) {
    SLOTS.fetch_max(workers.max(1), Ordering::Relaxed);
}

/// Marks the current thread as worker `index`.
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// A value per worker, made on the worker's first use: a route no worker has served costs
/// one pointer per worker.
#[derive(Debug)]
pub struct PerWorker<T> {
    slots: Box<[OnceLock<Box<T>>]>,
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        let n = SLOTS.load(Ordering::Relaxed).max(1);
        PerWorker {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl<T: Default> PerWorker<T> {
    /// The current worker's copy. Its fields are atomics, so a thread that is not a worker
    /// (sharing slot 0) stays correct; workers never share one.
    pub fn local(&self) -> &T {
        // At least one slot, by construction.
        let index = WORKER.with(Cell::get) % self.slots.len();
        self.slots[index].get_or_init(Box::default)
    }
}

impl<T> PerWorker<T> {
    /// The copies made so far.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.get().map(|b| &**b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn workers_write_their_own_copy_and_each_sees_every_copy() {
        set_workers(2);
        let counts: PerWorker<AtomicU64> = PerWorker::default();
        std::thread::scope(|s| {
            for worker in 0..2 {
                let counts = &counts;
                s.spawn(move || {
                    enter_worker(worker);
                    for _ in 0..=worker {
                        counts.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let mut seen: Vec<u64> = counts.each().map(|c| c.load(Ordering::Relaxed)).collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
    }
}
