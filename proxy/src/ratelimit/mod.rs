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

/// A keyed bucket's word: a 16-bit mark of the key that last used it, and 48 bits of time in
/// µs from the limiter's start (some nine years). A whole-route limit's single bucket is all
/// time, in ns.
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

impl Spec {
    /// The time unit of the buckets, in ns: 1 for a whole-route limit, 1000 for a keyed one.
    pub fn unit_ns(&self) -> u64 {
        if self.key.is_whole_route() {
            1
        } else {
            1000
        }
    }

    /// The time one request takes from its bucket, in units, and how far its rounding to a
    /// whole unit is off the configured rate (0.01: 1 %).
    pub fn interval(&self) -> (u64, f64) {
        let per = self.per.as_nanos() as f64 / self.unit_ns() as f64;
        let exact = per / self.requests.max(1) as f64;
        let rounded = exact.floor().max(1.0);
        (rounded as u64, (rounded - exact).abs() / exact)
    }

    /// How far ahead a bucket may ever be booked, in units: the burst, plus the longest delay.
    pub fn horizon(&self) -> u128 {
        let (interval, _) = self.interval();
        let delay = self
            .delay
            .map_or(0, |d| d.as_nanos() / u128::from(self.unit_ns()));
        u128::from(interval) * u128::from(self.burst.max(1)) + delay
    }

    /// The most units a bucket's time can hold.
    pub fn max_units(&self) -> u128 {
        if self.key.is_whole_route() {
            u128::from(u64::MAX)
        } else {
            u128::from(TIME_MASK)
        }
    }
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

/// A request a limiter let through (or booked for later): what [`Limiter::refund`] takes back
/// when a later limit refuses the request.
#[derive(Debug, Clone, Copy)]
pub struct Booked {
    index: usize,
    delayed: bool,
}

/// One limit of one route, and its buckets.
#[derive(Debug)]
pub struct Limiter {
    pub name: Arc<str>,
    pub route: Arc<str>,
    pub spec: Spec,
    /// The time one request takes from the bucket, in units ([`Spec::unit_ns`]).
    interval: u64,
    /// How far ahead of now the bucket may be booked: `burst - 1` requests, in units.
    tolerance: u64,
    unit_ns: u64,
    /// Keys hash with this, chosen at random when the limiter is made, so which keys share a
    /// bucket cannot be worked out from outside.
    seed: u64,
    epoch: Instant,
    buckets: Box<[AtomicU64]>,
    counters: PerWorker<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    limited: AtomicU64,
    delayed: AtomicU64,
    collisions: AtomicU64,
}

/// A limiter's counts, summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub allowed: u64,
    pub limited: u64,
    pub delayed: u64,
    /// Requests whose key met its bucket in debt to another key (more active keys than
    /// buckets): they share it, so neither gets more than the limit.
    pub collisions: u64,
}

impl Limiter {
    pub fn new(route: &str, name: &str, spec: Spec) -> Limiter {
        let (interval, _) = spec.interval();
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
            unit_ns: spec.unit_ns(),
            spec,
            seed: fastrand::u64(..),
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
    pub fn check(&self, client: IpAddr, path: &str, headers: &HeaderMap) -> (Decision, Booked) {
        let hash = self.spec.key.hash(self.seed, client, path, headers);
        let now = u64::try_from(self.epoch.elapsed().as_nanos() / u128::from(self.unit_ns))
            .unwrap_or(u64::MAX);
        self.check_hash(hash, now)
    }

    /// Checks one request of the key hashing to `hash` at `now` (units from the limiter's
    /// start).
    pub fn check_hash(&self, hash: u64, now: u64) -> (Decision, Booked) {
        let keyed = self.buckets.len() > 1 || !self.spec.key.is_whole_route();
        let index = (hash % self.buckets.len() as u64) as usize;
        let mut booked_of = Booked {
            index,
            delayed: false,
        };
        // The key's mark in its bucket (never 0: an unused bucket belongs to no key). It only
        // tells a collision apart: a bucket in debt is never reset for another key.
        let (mark, time_mask) = if keyed {
            ((hash >> 48).max(1) << TIME_BITS, TIME_MASK)
        } else {
            (0, u64::MAX)
        };
        let bucket = &self.buckets[index];
        let counters = self.counters.local();
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let (owner, booked) = (current & !time_mask, current & time_mask);
            let collides = keyed && owner != mark && owner != 0 && booked > now;
            let from = booked.max(now);
            let wait = (from - now).saturating_sub(self.tolerance);
            let decision = if wait == 0 {
                Decision::Allow
            } else {
                let wait = Duration::from_nanos(wait.saturating_mul(self.unit_ns));
                match self.spec.delay {
                    Some(bound) if wait <= bound => Decision::Delay(wait),
                    _ => {
                        counters.limited.fetch_add(1, Ordering::Relaxed);
                        return (Decision::Limited { retry_after: wait }, booked_of);
                    }
                }
            };
            let next = mark | ((from + self.interval) & time_mask);
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if collides {
                        counters.collisions.fetch_add(1, Ordering::Relaxed);
                    }
                    match decision {
                        Decision::Delay(_) => counters.delayed.fetch_add(1, Ordering::Relaxed),
                        _ => counters.allowed.fetch_add(1, Ordering::Relaxed),
                    };
                    booked_of.delayed = matches!(decision, Decision::Delay(_));
                    return (decision, booked_of);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back what a check booked, for a request a later limit refused (counted as
    /// limited here too, not allowed).
    pub fn refund(&self, booked: Booked) {
        let Some(bucket) = self.buckets.get(booked.index) else {
            return;
        };
        let time_mask = if self.buckets.len() > 1 || !self.spec.key.is_whole_route() {
            TIME_MASK
        } else {
            u64::MAX
        };
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            let (owner, time) = (w & !time_mask, w & time_mask);
            Some(owner | time.saturating_sub(self.interval))
        });
        let counters = self.counters.local();
        let counted = if booked.delayed {
            &counters.delayed
        } else {
            &counters.allowed
        };
        counted.fetch_sub(1, Ordering::Relaxed);
        counters.limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> Reading {
        let mut r = Reading::default();
        for c in self.counters.each() {
            r.allowed += c.allowed.load(Ordering::Relaxed);
            r.limited += c.limited.load(Ordering::Relaxed);
            r.delayed += c.delayed.load(Ordering::Relaxed);
            r.collisions += c.collisions.load(Ordering::Relaxed);
        }
        r
    }
}

/// Checks a request against `limits` in order. All must pass: when one refuses, what the
/// earlier ones booked is given back, so a request refused by one limit costs no other. The
/// wait, when some delay it, is the longest of their delays; a wait past `deadline` refuses
/// the request too.
pub fn check_all(
    limits: &[Arc<Limiter>],
    client: IpAddr,
    path: &str,
    headers: &HeaderMap,
    deadline: Duration,
) -> Result<Duration, (Arc<str>, Duration)> {
    let mut booked: Vec<(&Limiter, Booked)> = Vec::with_capacity(limits.len());
    let mut wait = Duration::ZERO;
    for limit in limits {
        let (decision, b) = limit.check(client, path, headers);
        let refused = match decision {
            Decision::Allow => None,
            Decision::Delay(d) if d <= deadline => {
                wait = wait.max(d);
                None
            }
            Decision::Delay(d) => Some(d),
            Decision::Limited { retry_after } => Some(retry_after),
        };
        if let Some(retry_after) = refused {
            if matches!(decision, Decision::Delay(_)) {
                limit.refund(b);
            }
            for (l, b) in booked {
                l.refund(b);
            }
            return Err((limit.name.clone(), retry_after));
        }
        booked.push((limit, b));
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000; // ns: a whole-route limit's unit is 1 ns

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

    fn keyed(requests: u64, per: Duration, burst: u64, max_keys: usize) -> Spec {
        Spec {
            key: KeySpec::parse(&["header:x-client-id".to_owned()]).unwrap(),
            max_keys,
            ..spec(requests, per, burst)
        }
    }

    #[test]
    fn a_burst_then_the_rate_and_no_more() {
        // 50 per second, burst 50: 50 at once, then one every 20 ms.
        let l = Limiter::new("r", "api", spec(50, Duration::from_secs(1), 50));
        for _ in 0..50 {
            assert_eq!(l.check_hash(7, 0).0, Decision::Allow);
        }
        assert_eq!(
            l.check_hash(7, 0).0,
            Decision::Limited {
                retry_after: Duration::from_millis(20)
            }
        );
        assert_eq!(l.check_hash(7, 20 * MS).0, Decision::Allow);
        assert!(matches!(
            l.check_hash(7, 20 * MS).0,
            Decision::Limited { .. }
        ));
        // Over two seconds of requests every millisecond: 50 + 50 × 2, give or take one.
        let fresh = Limiter::new("r", "api", spec(50, Duration::from_secs(1), 50));
        let n = (0..=2000u64)
            .filter(|i| fresh.check_hash(7, i * MS).0 == Decision::Allow)
            .count() as u64;
        assert!((149..=151).contains(&n), "{n}");
        let r = fresh.read();
        assert_eq!(r.allowed, n);
        assert_eq!(r.allowed + r.limited, 2_001);
    }

    #[test]
    fn high_rates_are_kept_to_within_a_percent() {
        for requests in [3, 400_000, 600_000, 2_000_000] {
            let (_, error) = spec(requests, Duration::from_secs(1), 1).interval();
            assert!(error < 0.01, "{requests}/s off by {error}");
        }
    }

    #[test]
    fn keys_have_buckets_of_their_own_and_a_flood_resets_no_debt() {
        let l = Limiter::new(
            "r",
            "per-client",
            keyed(1, Duration::from_secs(3600), 2, 1024),
        );
        let (a, b) = (key::hash_str("a"), key::hash_str("b"));
        assert_eq!(l.check_hash(a, 0).0, Decision::Allow);
        assert_eq!(l.check_hash(a, 0).0, Decision::Allow);
        assert!(matches!(l.check_hash(a, 0).0, Decision::Limited { .. }));
        assert_eq!(
            l.check_hash(b, 0).0,
            Decision::Allow,
            "b has its own bucket"
        );
        // 100,000 distinct keys: still 1,024 buckets; keys meeting a bucket in debt share it
        // (and are counted), so `a` gets no fresh burst from the flood.
        for i in 0..100_000u32 {
            l.check_hash(key::hash_str(&i.to_string()), 1);
        }
        assert_eq!(l.buckets(), 1024);
        assert!(l.read().collisions > 0);
        assert!(matches!(l.check_hash(a, 2).0, Decision::Limited { .. }));
    }

    #[test]
    fn a_delay_waits_its_turn_up_to_the_bound() {
        let mut s = spec(10, Duration::from_secs(1), 1);
        s.delay = Some(Duration::from_millis(250));
        let l = Limiter::new("r", "smooth", s);
        assert_eq!(l.check_hash(1, 0).0, Decision::Allow);
        assert_eq!(
            l.check_hash(1, 0).0,
            Decision::Delay(Duration::from_millis(100))
        );
        assert_eq!(
            l.check_hash(1, 0).0,
            Decision::Delay(Duration::from_millis(200))
        );
        assert!(matches!(l.check_hash(1, 0).0, Decision::Limited { .. }));
        assert_eq!(l.read().delayed, 2);
    }

    #[test]
    fn a_request_refused_by_one_limit_costs_the_others_nothing() {
        let hour = Duration::from_secs(3600);
        let wide = Arc::new(Limiter::new("r", "wide", spec(2, hour, 2)));
        let narrow = Arc::new(Limiter::new("r", "narrow", spec(1, hour, 1)));
        let limits = [wide.clone(), narrow.clone()];
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        assert_eq!(check_all(&limits, ip, "/", &h, hour), Ok(Duration::ZERO));
        let refused = check_all(&limits, ip, "/", &h, hour).unwrap_err();
        assert_eq!(&*refused.0, "narrow");
        // `wide` gave back the token the refused request had taken: one is left.
        assert_eq!(wide.check(ip, "/", &h).0, Decision::Allow);
        assert!(matches!(
            wide.check(ip, "/", &h).0,
            Decision::Limited { .. }
        ));
        assert_eq!(wide.read().allowed, 2);
        // A delay past the deadline (the route's timeout) is a refusal.
        let mut slow = spec(1, Duration::from_secs(1), 1);
        slow.delay = Some(Duration::from_secs(5));
        let slow = [Arc::new(Limiter::new("r", "slow", slow))];
        assert_eq!(check_all(&slow, ip, "/", &h, hour), Ok(Duration::ZERO));
        assert!(check_all(&slow, ip, "/", &h, Duration::from_millis(100)).is_err());
        assert_eq!(slow[0].read().delayed, 0);
    }
}
