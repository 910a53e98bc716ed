//! Local rate limits: per route, a token bucket per key, shared exactly by every worker of the
//! process. Each bucket is one atomic word (GCRA: the time the bucket is next full, and whose
//! key holds it), so a check is a clock read, a hash and one compare-and-swap.
//!
//! - [`key`]: what a limit counts by (the route, the client's address or prefix, a header,
//!   the path), hashed to a bucket.
//! - [`registry`]: the same buckets for the same limit across reloads.

pub mod key;
pub mod registry;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::stats::per_worker::PerWorker;
pub use key::KeySpec;

/// Bits of a bucket word that hold the time (µs from the limiter's start): 2^48 µs is some
/// nine years.
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// What a limit allows, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
    pub key: KeySpec,
    /// `Some(bound)`: a request over the limit waits up to `bound` instead of a 429.
    pub delay: Option<Duration>,
    /// Buckets kept for keyed limits; one for a whole-route limit.
    pub max_keys: usize,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed after waiting this long (the bucket is reserved for it).
    Delay(Duration),
    /// Over the limit: the bucket has room again after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// One limit of one route, and its buckets.
#[derive(Debug)]
pub struct Limiter {
    pub name: Arc<str>,
    pub route: Arc<str>,
    pub spec: Spec,
    /// The time one request takes from the bucket, µs.
    interval: u64,
    /// How far ahead of now the bucket may be booked: `burst - 1` requests, µs.
    tolerance: u64,
    epoch: Instant,
    buckets: Box<[AtomicU64]>,
    counters: PerWorker<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    limited: AtomicU64,
    delayed: AtomicU64,
    evictions: AtomicU64,
}

/// A limiter's counts, summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub allowed: u64,
    pub limited: u64,
    pub delayed: u64,
    /// Keys whose bucket was taken over by another key while it still had a debt.
    pub evictions: u64,
}

impl Limiter {
    pub fn new(route: &str, name: &str, spec: Spec) -> Limiter {
        let per_us = u64::try_from(spec.per.as_micros()).unwrap_or(u64::MAX);
        let interval = (per_us / spec.requests.max(1)).max(1);
        let buckets = if spec.key.is_whole_route() {
            1
        } else {
            spec.max_keys.max(1)
        };
        Limiter {
            name: name.into(),
            route: route.into(),
            interval,
            tolerance: interval.saturating_mul(spec.burst.max(1) - 1),
            spec,
            epoch: Instant::now(),
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            counters: PerWorker::default(),
        }
    }

    /// Buckets kept: the memory bound whatever the number of keys.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Checks one request now, counting it.
    pub fn check(&self, client: IpAddr, path: &str, headers: &HeaderMap) -> Decision {
        let hash = self.spec.key.hash(client, path, headers);
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_hash(hash, now)
    }

    /// Checks one request of the key hashing to `hash` at `now` (µs from the limiter's start).
    pub fn check_hash(&self, hash: u64, now: u64) -> Decision {
        let index = (hash % self.buckets.len() as u64) as usize;
        // The key's mark in its bucket: never 0, so an unused bucket belongs to no key.
        let mark = (hash >> 48).max(1) << TIME_BITS;
        let bucket = &self.buckets[index];
        let counters = self.counters.local();
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let (owner, booked) = (current & !TIME_MASK, current & TIME_MASK);
            // Another key's bucket: taken over, from full. Counted when it still had a debt.
            let (booked, evicts) = if owner == mark || owner == 0 {
                (booked, false)
            } else {
                (0, booked > now)
            };
            let from = booked.max(now);
            let wait = (from - now).saturating_sub(self.tolerance);
            let decision = if wait == 0 {
                Decision::Allow
            } else {
                match self.spec.delay {
                    Some(bound) if Duration::from_micros(wait) <= bound => {
                        Decision::Delay(Duration::from_micros(wait))
                    }
                    _ => {
                        counters.limited.fetch_add(1, Ordering::Relaxed);
                        return Decision::Limited {
                            retry_after: Duration::from_micros(wait),
                        };
                    }
                }
            };
            let next = mark | ((from + self.interval) & TIME_MASK);
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if evicts {
                        counters.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    match decision {
                        Decision::Delay(_) => counters.delayed.fetch_add(1, Ordering::Relaxed),
                        _ => counters.allowed.fetch_add(1, Ordering::Relaxed),
                    };
                    return decision;
                }
                Err(seen) => current = seen,
            }
        }
    }

    pub fn read(&self) -> Reading {
        let mut r = Reading::default();
        for c in self.counters.each() {
            r.allowed += c.allowed.load(Ordering::Relaxed);
            r.limited += c.limited.load(Ordering::Relaxed);
            r.delayed += c.delayed.load(Ordering::Relaxed);
            r.evictions += c.evictions.load(Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u64, per: Duration, burst: u64) -> Spec {
        Spec {
            requests,
            per,
            burst,
            key: KeySpec::whole_route(),
            delay: None,
            max_keys: 1,
        }
    }

    /// Requests every `step` µs for `span` µs: how many were allowed.
    fn allowed(l: &Limiter, hash: u64, step: u64, span: u64) -> u64 {
        (0..=span / step)
            .filter(|i| l.check_hash(hash, i * step) == Decision::Allow)
            .count() as u64
    }

    #[test]
    fn a_burst_then_the_rate_and_no_more() {
        // 50 per second, burst 50: 50 at once, then one every 20 ms.
        let l = Limiter::new("r", "api", spec(50, Duration::from_secs(1), 50));
        for _ in 0..50 {
            assert_eq!(l.check_hash(7, 0), Decision::Allow);
        }
        assert_eq!(
            l.check_hash(7, 0),
            Decision::Limited {
                retry_after: Duration::from_millis(20)
            }
        );
        assert_eq!(l.check_hash(7, 20_000), Decision::Allow);
        assert!(matches!(l.check_hash(7, 20_000), Decision::Limited { .. }));
        // Over two seconds of requests every millisecond: 50 + 50 × 2, give or take one.
        let fresh = Limiter::new("r", "api", spec(50, Duration::from_secs(1), 50));
        let n = allowed(&fresh, 7, 1_000, 2_000_000);
        assert!((149..=151).contains(&n), "{n}");
        let r = fresh.read();
        assert_eq!(r.allowed, n);
        assert_eq!(r.allowed + r.limited, 2_001);
    }

    #[test]
    fn keys_have_buckets_of_their_own_and_memory_stays_bounded() {
        let mut s = spec(1, Duration::from_secs(3600), 2);
        s.key = KeySpec::parse(&["header:x-client-id".to_owned()]).unwrap();
        s.max_keys = 1024;
        let l = Limiter::new("r", "per-client", s);
        let (a, b) = (key::hash_str("a"), key::hash_str("b"));
        assert_eq!(l.check_hash(a, 0), Decision::Allow);
        assert_eq!(l.check_hash(a, 0), Decision::Allow);
        assert!(matches!(l.check_hash(a, 0), Decision::Limited { .. }));
        assert_eq!(l.check_hash(b, 0), Decision::Allow, "b has its own bucket");
        // 100,000 distinct keys: still 1,024 buckets; keys that take over a bucket in debt
        // are counted.
        for i in 0..100_000u32 {
            l.check_hash(key::hash_str(&i.to_string()), 1);
        }
        assert_eq!(l.buckets(), 1024);
        assert!(l.read().evictions > 0);
    }

    #[test]
    fn a_delay_waits_its_turn_up_to_the_bound() {
        let mut s = spec(10, Duration::from_secs(1), 1);
        s.delay = Some(Duration::from_millis(250));
        let l = Limiter::new("r", "smooth", s);
        assert_eq!(l.check_hash(1, 0), Decision::Allow);
        assert_eq!(
            l.check_hash(1, 0),
            Decision::Delay(Duration::from_millis(100))
        );
        assert_eq!(
            l.check_hash(1, 0),
            Decision::Delay(Duration::from_millis(200))
        );
        assert!(matches!(l.check_hash(1, 0), Decision::Limited { .. }));
        assert_eq!(l.read().delayed, 2);
    }
}
