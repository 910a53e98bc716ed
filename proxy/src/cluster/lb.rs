//! Load balancers: pick an endpoint index from a cluster's pooled endpoints.
//!
//! Each balancer is built once per config snapshot and picks without locks.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks endpoint indexes for one cluster.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// An index into the endpoint list the balancer was built from, or `None` when no endpoint
    /// can take traffic.
    fn pick(&self) -> Option<usize>;
}

/// Smooth weighted round robin (nginx's algorithm), precomputed into a schedule so a pick is
/// one atomic increment: weights 5/1/1 give `a a b a c a a`, never `a a a a a b c`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

/// Schedules longer than this are scaled down; shares stay proportional within 1/1000.
const MAX_SCHEDULE: u64 = 65_536;

impl WeightedRoundRobin {
    /// `weights[i]` is endpoint `i`'s weight; `0` excludes it (depooled).
    pub fn new(weights: &[u32]) -> Self {
        let weights = normalize(weights);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut schedule = Vec::with_capacity(total as usize);
        let mut current: Vec<i64> = vec![0; weights.len()];
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            schedule.push(best as u32);
        }
        // Start at a random point so proxies restarted together do not move in lockstep.
        let start = if schedule.is_empty() {
            0
        } else {
            fastrand::usize(..schedule.len())
        };
        WeightedRoundRobin {
            schedule: schedule.into_boxed_slice(),
            cursor: AtomicUsize::new(start),
        }
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.schedule
            .get(n % self.schedule.len())
            .map(|i| *i as usize)
    }
}

/// Divides weights by their greatest common divisor, then scales them down if the schedule
/// would still be too long (keeping every non-zero weight at least 1).
fn normalize(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let total: u64 = out.iter().map(|w| u64::from(*w)).sum();
    if total > MAX_SCHEDULE {
        for w in &mut out {
            if *w > 0 {
                let scaled = u64::from(*w) * MAX_SCHEDULE / total;
                *w = scaled.max(1) as u32;
            }
        }
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(lb: &WeightedRoundRobin, n: usize, len: usize) -> Vec<usize> {
        let mut c = vec![0; len];
        for _ in 0..n {
            c[lb.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn distribution_follows_weights_exactly_per_cycle() {
        let lb = WeightedRoundRobin::new(&[1, 2, 7]);
        assert_eq!(counts(&lb, 1000, 3), vec![100, 200, 700]);
    }

    #[test]
    fn smooth_interleaving() {
        let lb = WeightedRoundRobin::new(&[5, 1, 1]);
        // In any window of the cycle, the heavy endpoint never runs more than 3 in a row.
        let picks: Vec<usize> = (0..14).map(|_| lb.pick().unwrap()).collect();
        let longest = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest <= 4, "{picks:?}");
    }

    #[test]
    fn zero_weight_is_never_picked_and_all_zero_is_none() {
        let lb = WeightedRoundRobin::new(&[0, 3, 0]);
        assert_eq!(counts(&lb, 30, 3), vec![0, 30, 0]);
        assert_eq!(WeightedRoundRobin::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedRoundRobin::new(&[]).pick(), None);
    }

    #[test]
    fn huge_weights_are_scaled_not_dropped() {
        let lb = WeightedRoundRobin::new(&[1, 1_000_000]);
        assert!(lb.schedule.len() as u64 <= MAX_SCHEDULE + 2);
        let c = counts(&lb, lb.schedule.len(), 2);
        assert!(c[0] >= 1);
    }
}
