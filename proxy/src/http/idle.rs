//! Stream idle timeouts: a clock per forwarded request that its bodies wind, and the check
//! each connection runs on its coarse tick to cut streams with no body bytes moving.
//!
//! A clock costs one store per body frame and one lock-free send to its connection's
//! checker. The check runs on the connection's own tick, never a timer per request: a clock found unwound for `stream_idle_timeout` is cut — its
//! bodies, woken, fail, which resets an HTTP/2 stream or closes an HTTP/1.1 connection. A
//! body that nobody polls (a client that stopped reading) cannot fail that way; its
//! connection is closed at the next check instead.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::task::Waker;
use std::time::Duration;

use atomic_waker::AtomicWaker;

/// Checks per `stream_idle_timeout` at the shortest: the cut comes at most a quarter late.
const CHECKS_PER_TIMEOUT: u32 = 4;
const MIN_PERIOD: Duration = Duration::from_millis(100);
const MAX_PERIOD: Duration = Duration::from_secs(15);

/// How often to check streams whose shortest idle timeout is `shortest`.
pub fn check_period(shortest: Duration) -> Duration {
    (shortest / CHECKS_PER_TIMEOUT).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// A connection's tick: fine enough for its `idle_timeout` and for its streams' shortest
/// idle timeout. Clocks count in ticks of this length.
pub fn tick(idle_timeout: Duration, shortest_stream_idle: Duration) -> Duration {
    (idle_timeout / CHECKS_PER_TIMEOUT)
        .max(MIN_PERIOD)
        .min(check_period(shortest_stream_idle))
}

/// The idle clock of one forwarded request.
#[derive(Debug)]
pub struct StreamClock {
    /// Set by every body frame either way; cleared by each check.
    moved: AtomicBool,
    /// Checks in a row that found nothing moving (only the connection's check touches it).
    quiet: AtomicU32,
    /// Quiet checks allowed before the cut.
    limit: u32,
    /// Runs once the response head has arrived; before, the route `timeout` applies.
    armed: AtomicBool,
    cut: AtomicBool,
    /// The tasks polling the response body and the request body, to wake when cut.
    response: AtomicWaker,
    request: AtomicWaker,
}

/// The error a body fails with when its stream is cut.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes moved for the stream idle timeout")]
pub struct StreamIdle;

impl StreamClock {
    /// Notes that body bytes moved.
    pub fn wind(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Starts the clock: the response head has arrived.
    pub fn arm(&self) {
        self.moved.store(true, Ordering::Relaxed);
        self.armed.store(true, Ordering::Release);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Registers the task polling the response body, to be woken if the clock is cut.
    pub fn park_response(&self, waker: &Waker) {
        self.response.register(waker);
    }

    /// Registers the task polling the request body, to be woken if the clock is cut.
    pub fn park_request(&self, waker: &Waker) {
        self.request.register(waker);
    }
}

/// Starts the clocks of one connection's requests.
#[derive(Debug)]
pub struct Streams {
    tx: mpsc::Sender<Arc<StreamClock>>,
}

/// Checks the clocks of one connection's requests; owned by the connection's loop.
#[derive(Debug)]
pub struct Checker {
    rx: mpsc::Receiver<Arc<StreamClock>>,
    clocks: Vec<Arc<StreamClock>>,
}

/// The two halves for one connection.
pub fn streams() -> (Streams, Checker) {
    let (tx, rx) = mpsc::channel();
    (
        Streams { tx },
        Checker {
            rx,
            clocks: Vec::new(),
        },
    )
}

/// What a check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Streams cut by this check.
    pub cut: usize,
    /// Streams cut by an earlier check and still not over: nothing polls their bodies, so
    /// only closing the connection ends them.
    pub stuck: usize,
}

impl Streams {
    /// A clock for a new request that may idle `timeout` once armed, checked every `period`.
    pub fn start(&self, timeout: Duration, period: Duration) -> Arc<StreamClock> {
        let checks = timeout.as_millis().div_ceil(period.as_millis().max(1));
        let clock = Arc::new(StreamClock {
            moved: AtomicBool::new(true),
            quiet: AtomicU32::new(0),
            limit: u32::try_from(checks).unwrap_or(u32::MAX).max(1),
            armed: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            response: AtomicWaker::new(),
            request: AtomicWaker::new(),
        });
        // The checker is gone only with its connection, and then nothing checks anyway.
        let _ = self.tx.send(clock.clone());
        clock
    }
}

impl Checker {
    /// One check, on the connection's tick.
    pub fn check(&mut self) -> Checked {
        let mut found = Checked::default();
        self.clocks.extend(self.rx.try_iter());
        // A clock only the checker holds belongs to a request that is over.
        self.clocks.retain(|c| Arc::strong_count(c) > 1);
        for clock in &self.clocks {
            if !clock.armed.load(Ordering::Acquire) {
                continue;
            }
            if clock.is_cut() {
                found.stuck += 1;
                continue;
            }
            if clock.moved.swap(false, Ordering::Relaxed) {
                clock.quiet.store(0, Ordering::Relaxed);
                continue;
            }
            let quiet = clock.quiet.fetch_add(1, Ordering::Relaxed) + 1;
            if quiet >= clock.limit {
                clock.cut.store(true, Ordering::Release);
                clock.response.wake();
                clock.request.wake();
                found.cut += 1;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(100);

    #[test]
    fn a_quiet_armed_clock_is_cut_after_its_timeout_then_reported_stuck() {
        let (streams, mut checker) = super::streams();
        let clock = streams.start(Duration::from_millis(300), PERIOD);
        // Not armed: the route timeout governs, whatever the wait.
        for _ in 0..10 {
            assert_eq!(checker.check(), Checked::default());
        }
        clock.arm();
        assert_eq!(checker.check().cut, 0, "armed counts as movement");
        assert_eq!(checker.check().cut, 0);
        assert_eq!(checker.check().cut, 0);
        assert_eq!(checker.check().cut, 1, "three quiet checks of 100ms");
        assert!(clock.is_cut());
        assert_eq!(checker.check().stuck, 1);
        drop(clock);
        assert_eq!(checker.check(), Checked::default());
        assert!(
            checker.clocks.is_empty(),
            "a clock nobody holds is forgotten"
        );
    }

    #[test]
    fn movement_resets_the_count() {
        let (streams, mut checker) = super::streams();
        let clock = streams.start(Duration::from_millis(200), PERIOD);
        clock.arm();
        for _ in 0..20 {
            checker.check();
            clock.wind();
        }
        assert!(!clock.is_cut());
    }

    #[test]
    fn periods_follow_the_shortest_timeout_within_bounds() {
        assert_eq!(check_period(Duration::from_secs(300)), MAX_PERIOD);
        assert_eq!(
            check_period(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(check_period(Duration::from_millis(10)), MIN_PERIOD);
    }

    #[test]
    fn a_short_idle_timeout_makes_the_tick_finer_and_clocks_count_more_ticks() {
        let tick = tick(Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(tick, Duration::from_millis(2500));
        let (streams, mut checker) = super::streams();
        let clock = streams.start(Duration::from_secs(300), tick);
        clock.arm();
        checker.check();
        for _ in 0..119 {
            assert_eq!(checker.check().cut, 0, "cut before 300s of 2.5s ticks");
        }
        assert_eq!(checker.check().cut, 1);
    }
}
