//! Graceful drain: a trigger that tells work to wind down, and a count of what is still running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// Starts a drain. Dropping the trigger without calling [`Trigger::drain`] also drains.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
    active: Arc<Active>,
}

/// Observes a drain and registers work that the drain must wait for.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    active: Arc<Active>,
}

#[derive(Debug, Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by one unit of work (a connection); the drain completes when all are dropped.
#[derive(Debug)]
pub struct Guard(Arc<Active>);

pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    let active = Arc::new(Active::default());
    (
        Trigger {
            tx,
            active: active.clone(),
        },
        Watch { rx, active },
    )
}

impl Trigger {
    /// Signals every watcher. Idempotent.
    pub fn drain(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Units of work still registered.
    pub fn active(&self) -> usize {
        self.active.count.load(Ordering::Acquire)
    }

    /// Resolves once every [`Guard`] has been dropped.
    pub async fn idle(&self) {
        loop {
            let notified = self.active.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Signals the drain and waits for work to finish, up to `deadline`. Returns whether
    /// everything finished in time.
    pub async fn drain_until(&self, deadline: tokio::time::Instant) -> bool {
        self.drain();
        match tokio::time::timeout_at(deadline, self.idle()).await {
            // Connections close themselves at their own drain deadline, which is never
            // earlier than this one: work that ended at or past it was cut, even when its
            // close won the race with this timer.
            Ok(()) => tokio::time::Instant::now() < deadline,
            Err(_) => false,
        }
    }
}

impl Watch {
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when the drain starts (at once if it already has, or if the trigger is gone).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    /// Units of work still registered.
    pub fn active(&self) -> usize {
        self.active.count.load(Ordering::Acquire)
    }

    pub fn guard(&self) -> Guard {
        self.active.count.fetch_add(1, Ordering::AcqRel);
        Guard(self.active.clone())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_guards_and_deadline() {
        let (trigger, watch) = channel();
        let g1 = watch.guard();
        let g2 = watch.guard();
        let mut w = watch.clone();
        let observed = tokio::spawn(async move {
            w.signaled().await;
            true
        });
        drop(g1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let d = tokio::spawn(async move { trigger.drain_until(deadline).await });
        assert!(observed.await.unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(g2);
        assert!(d.await.unwrap());
    }

    /// A connection that closes itself at its own drain deadline (the same instant) was cut,
    /// even when its close is seen before the drain's own timer fires.
    #[tokio::test(start_paused = true)]
    async fn work_cut_at_the_deadline_is_not_a_clean_drain() {
        let (trigger, watch) = channel();
        let guard = watch.guard();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // The close's timer is registered first, so it runs first at the deadline.
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            drop(guard);
        });
        tokio::task::yield_now().await;
        let drain = tokio::spawn(async move { trigger.drain_until(deadline).await });
        assert!(!drain.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_deadline() {
        let (trigger, watch) = channel();
        let _g = watch.guard();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        assert!(!trigger.drain_until(deadline).await);
        assert!(watch.is_draining());
    }
}
