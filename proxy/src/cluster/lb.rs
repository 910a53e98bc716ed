//! Load balancers: pick a member of a cluster's current membership, without locks.
//!
//! A balancer is built once per membership change and then shared by every worker thread, so
//! everything expensive (schedules, rings, tables, cumulative weights) happens in the
//! constructor and `pick` only reads immutable arrays, a thread-local RNG and a few atomics.

use std::fmt;
use std::hash::Hasher as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::model::LbPolicy;

/// One endpoint as a balancer sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Effective weight (after slow start etc.); 0 means never pick.
    pub weight: u32,
    /// Stable identity for consistent hashing (derived from the endpoint address by the caller).
    pub hash_key: u64,
    /// Live load read at pick time: active requests (HTTP) or open sessions (TCP).
    pub load: Arc<AtomicUsize>,
}

/// Picks member indexes for one membership. Built once per membership change, then shared
/// by all worker threads: `pick` must be lock-free (atomics only) and allocation-free.
pub trait Balancer: Send + Sync + fmt::Debug {
    /// An index into the members the balancer was built from, or None if none can be picked.
    /// `hash` is the request's hash for consistent-hash policies (None → pick as `random`).
    fn pick(&self, hash: Option<u64>) -> Option<usize>;
}

/// Builds the balancer for `policy` over `members` (indexes returned by `pick` refer to it).
pub fn build(policy: LbPolicy, members: &[Member]) -> Box<dyn Balancer> {
    // Indexes are stored as u32 to halve the size of schedules, rings and tables.
    let members = &members[..members.len().min(u32::MAX as usize)];
    match policy {
        LbPolicy::RoundRobin => Box::new(RoundRobin::new(members)),
        LbPolicy::LeastRequest | LbPolicy::LeastConnections => Box::new(LeastLoaded::new(members)),
        LbPolicy::Random => Box::new(Random::new(members)),
        LbPolicy::RingHash => Box::new(RingHash::new(members)),
        LbPolicy::Maglev => Box::new(Maglev::new(members)),
    }
}

/// A stable 64-bit hash of bytes (for hash keys and request hashing): FNV-1a then a
/// splitmix64 finaliser, so that results don't change between builds or platforms.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut fnv = fnv::FnvHasher::default();
    fnv.write(bytes);
    mix64(fnv.finish())
}

/// splitmix64's finaliser: FNV alone leaves the high bits poorly mixed for short inputs, and
/// ring positions and table slots depend on all 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Weighted random sampling, shared by Random, the power-of-two-choices balancers and the
// hash balancers' no-hash fallback.

/// Draws a member with probability proportional to its weight in O(log n).
struct WeightedSampler {
    /// Member indexes of the members with weight > 0, in input order.
    index: Box<[u32]>,
    /// `cumulative[i]` is the total weight of `index[..=i]`; u64 so that any number of u32
    /// weights adds up without overflow.
    cumulative: Box<[u64]>,
    /// Every candidate has the same weight (the common case): a uniform draw is enough.
    uniform: bool,
}

impl WeightedSampler {
    fn new(members: &[Member]) -> Self {
        let mut index = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (i, m) in members.iter().enumerate() {
            if m.weight > 0 {
                total += u64::from(m.weight);
                index.push(i as u32);
                cumulative.push(total);
            }
        }
        let first = members.iter().map(|m| m.weight).find(|w| *w > 0);
        let uniform = members
            .iter()
            .all(|m| m.weight == 0 || Some(m.weight) == first);
        WeightedSampler {
            index: index.into_boxed_slice(),
            cumulative: cumulative.into_boxed_slice(),
            uniform,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn pick(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let slot = if self.uniform {
            fastrand::usize(..self.index.len())
        } else {
            // The first cumulative weight strictly above r owns r: weight w covers w values.
            let r = fastrand::u64(..total);
            self.cumulative.partition_point(|c| *c <= r)
        };
        self.index.get(slot).map(|i| *i as usize)
    }
}

impl fmt::Debug for WeightedSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedSampler")
            .field("candidates", &self.index.len())
            .field(
                "total_weight",
                &self.cumulative.last().copied().unwrap_or(0),
            )
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------

/// Smooth weighted round robin (nginx's algorithm), precomputed into a schedule so a pick is
/// one atomic increment: weights 5/1/1 give `a a b a c a a`, never `a a a a a b c`.
struct RoundRobin {
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

/// Schedules longer than this are scaled down; shares stay proportional within about
/// 1/65536 of the total (plus the rounding of tiny weights up to 1).
const MAX_SCHEDULE: u64 = 65_536;

impl RoundRobin {
    fn new(members: &[Member]) -> Self {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let schedule = smooth_schedule(&normalize(&weights, MAX_SCHEDULE));
        // Start at a random point so proxies restarted together do not move in lockstep.
        let start = if schedule.is_empty() {
            0
        } else {
            fastrand::usize(..schedule.len())
        };
        RoundRobin {
            schedule: schedule.into_boxed_slice(),
            cursor: AtomicUsize::new(start),
        }
    }
}

/// One cycle of nginx's smooth weighted round robin: each step every member's `current` grows
/// by its weight, the largest (lowest index on ties) is picked and loses the total.
///
/// Scanning every member each step would cost members × total; instead members of equal
/// weight are grouped. Within a group `current` only differs by how often a member has been
/// picked, so the group's best is always its next member in index order, and a step costs
/// one comparison per distinct weight (at most a few hundred, since distinct weights add up
/// to at most the total).
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    struct Group {
        weight: i64,
        members: Vec<u32>,
        /// Members before `next` have been picked `round + 1` times, the rest `round` times.
        next: usize,
        round: i64,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut by_weight: Vec<(u32, u32)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| (*w, i as u32))
        .collect();
    by_weight.sort_unstable();
    for (w, i) in by_weight {
        match groups.last_mut() {
            Some(g) if g.weight == i64::from(w) => g.members.push(i),
            _ => groups.push(Group {
                weight: i64::from(w),
                members: vec![i],
                next: 0,
                round: 0,
            }),
        }
    }

    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut schedule = Vec::with_capacity(total as usize);
    for step in 1..=total {
        // current = step·weight − total·picks, for the group's next member.
        let mut best: Option<(i64, u32, usize)> = None;
        for (gi, g) in groups.iter().enumerate() {
            let current = step * g.weight - total * g.round;
            let member = g.members[g.next];
            let better = match best {
                None => true,
                Some((c, m, _)) => current > c || (current == c && member < m),
            };
            if better {
                best = Some((current, member, gi));
            }
        }
        let Some((_, member, gi)) = best else {
            break;
        };
        schedule.push(member);
        let g = &mut groups[gi];
        g.next += 1;
        if g.next == g.members.len() {
            g.next = 0;
            g.round += 1;
        }
    }
    schedule
}

impl Balancer for RoundRobin {
    fn pick(&self, _hash: Option<u64>) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        // Relaxed: the cursor only spreads picks; no other memory is published through it.
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.schedule
            .get(n % self.schedule.len())
            .map(|i| *i as usize)
    }
}

impl fmt::Debug for RoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoundRobin")
            .field("schedule_len", &self.schedule.len())
            .finish_non_exhaustive()
    }
}

/// Divides weights by their greatest common divisor, then scales them down if the schedule
/// would still be longer than `cap` (keeping every non-zero weight at least 1).
fn normalize(weights: &[u32], cap: u64) -> Vec<u32> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let total: u64 = out.iter().map(|w| u64::from(*w)).sum();
    if total > cap {
        for w in &mut out {
            if *w > 0 {
                // Rounded, not truncated: truncation would shortchange every member by up
                // to one slot, a large share of a light member's traffic.
                let scaled = (u64::from(*w) * cap + total / 2) / total;
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

// ---------------------------------------------------------------------------------------------

/// Power of two choices, weighted: two weighted-random candidates, the one with the lower
/// `load / weight` wins. Serves both least-request and least-connections; only the counter
/// behind `load` differs, and the caller chooses it.
///
/// Two choices rather than a full scan: O(log n), no herding of every worker onto the one
/// least-loaded member between load updates, and nearly the balance of a scan.
#[derive(Debug)]
struct LeastLoaded {
    sampler: WeightedSampler,
    weights: Box<[u32]>,
    loads: Box<[Arc<AtomicUsize>]>,
}

impl LeastLoaded {
    fn new(members: &[Member]) -> Self {
        LeastLoaded {
            sampler: WeightedSampler::new(members),
            weights: members.iter().map(|m| m.weight).collect(),
            loads: members.iter().map(|m| Arc::clone(&m.load)).collect(),
        }
    }

    /// `load / weight` of a, compared with b's without dividing: u128 because a load is up to
    /// 64 bits and a weight 32.
    fn not_busier(&self, a: usize, b: usize) -> Option<bool> {
        let load = |i: usize| self.loads.get(i).map(|l| l.load(Ordering::Relaxed) as u128);
        let weight = |i: usize| self.weights.get(i).map(|w| u128::from(*w));
        Some(load(a)? * weight(b)? <= load(b)? * weight(a)?)
    }
}

impl Balancer for LeastLoaded {
    fn pick(&self, _hash: Option<u64>) -> Option<usize> {
        let a = self.sampler.pick()?;
        if self.sampler.len() == 1 {
            return Some(a);
        }
        let b = self.sampler.pick()?;
        // Ties go to the first candidate so that, at equal load, picks follow the weights.
        match self.not_busier(a, b) {
            Some(false) => Some(b),
            _ => Some(a),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Weighted random.
#[derive(Debug)]
struct Random {
    sampler: WeightedSampler,
}

impl Random {
    fn new(members: &[Member]) -> Self {
        Random {
            sampler: WeightedSampler::new(members),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, _hash: Option<u64>) -> Option<usize> {
        self.sampler.pick()
    }
}

// ---------------------------------------------------------------------------------------------

/// Consistent hashing on a ring of virtual nodes: a request goes to the owner of the first
/// virtual node at or after its hash.
struct RingHash {
    /// Sorted virtual node positions.
    positions: Box<[u64]>,
    /// `owners[i]` is the member index owning `positions[i]`.
    owners: Box<[u32]>,
    /// `starts[b]` is the first node whose position's top bits are `b` or more: a pick
    /// searches only its hash's bucket (a node or two) instead of the whole ring, one or two
    /// cache misses instead of twenty on a large ring.
    starts: Box<[u32]>,
    /// How many top bits of a hash select its bucket.
    bucket_bits: u32,
    /// Requests without a hash are spread by weight instead of all landing on one node.
    fallback: WeightedSampler,
}

/// Virtual nodes of the heaviest member. The count of every member depends only on its own
/// weight and the heaviest weight, not on how many members there are, so removing a member
/// (other than the single heaviest) leaves every other member's nodes exactly where they were
/// and moves only the removed member's keys. Members ramping up in slow start change only
/// their own node counts, so they take keys from every other member in proportion. 1024 keeps each member's share within a few
/// percent of its weight (the spread of a share is about 1/√nodes).
const RING_NODES_PER_MAX_WEIGHT: u64 = 1024;

/// Memory bound (about 15 bytes a node): past this the whole ring is scaled down, and then
/// membership changes may move more than the changed member's keys.
const RING_MAX_NODES: u64 = 8 * 1024 * 1024;

impl RingHash {
    fn new(members: &[Member]) -> Self {
        let max_weight = u64::from(members.iter().map(|m| m.weight).max().unwrap_or(0));
        let nodes_of = |per_max: u64, w: u32| -> u64 {
            if w == 0 || max_weight == 0 {
                0
            } else {
                ((u64::from(w) * per_max + max_weight / 2) / max_weight).max(1)
            }
        };
        let mut per_max = RING_NODES_PER_MAX_WEIGHT;
        let total: u64 = members.iter().map(|m| nodes_of(per_max, m.weight)).sum();
        if total > RING_MAX_NODES {
            per_max = (per_max * RING_MAX_NODES / total).max(1);
        }

        let mut nodes: Vec<(u64, u64, u32)> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            for replica in 0..nodes_of(per_max, m.weight) {
                let mut buf = [0u8; 16];
                buf[..8].copy_from_slice(&m.hash_key.to_le_bytes());
                buf[8..].copy_from_slice(&replica.to_le_bytes());
                nodes.push((hash_bytes(&buf), m.hash_key, i as u32));
            }
        }
        // Collisions are broken by hash key, not index, so the ring does not depend on the
        // order the members were listed in.
        nodes.sort_unstable();
        let positions: Box<[u64]> = nodes.iter().map(|n| n.0).collect();

        // One or two nodes a bucket, for 2 to 4 extra bytes a node.
        let buckets = (positions.len().next_power_of_two() / 2).max(1);
        let bucket_bits = buckets.trailing_zeros();
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut at = 0;
        for b in 0..buckets {
            while positions
                .get(at)
                .is_some_and(|p| bucket_of(*p, bucket_bits) < b)
            {
                at += 1;
            }
            starts.push(at as u32);
        }
        starts.push(positions.len() as u32);

        RingHash {
            owners: nodes.iter().map(|n| n.2).collect(),
            positions,
            starts: starts.into_boxed_slice(),
            bucket_bits,
            fallback: WeightedSampler::new(members),
        }
    }
}

/// The bucket of a position or hash: its top `bits` bits.
fn bucket_of(hash: u64, bits: u32) -> usize {
    hash.checked_shr(64 - bits).unwrap_or(0) as usize
}

impl Balancer for RingHash {
    fn pick(&self, hash: Option<u64>) -> Option<usize> {
        let Some(hash) = hash else {
            return self.fallback.pick();
        };
        // Nodes before the bucket are below the hash and nodes after it above, so the first
        // node at or after the hash is in the bucket or is the next bucket's first.
        let b = bucket_of(hash, self.bucket_bits);
        let lo = *self.starts.get(b)? as usize;
        let hi = *self.starts.get(b + 1)? as usize;
        let at = lo + self.positions.get(lo..hi)?.partition_point(|p| *p < hash);
        // Past the last node wraps around to the first.
        let at = if at == self.positions.len() { 0 } else { at };
        self.owners.get(at).map(|i| *i as usize)
    }
}

impl fmt::Debug for RingHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingHash")
            .field("nodes", &self.positions.len())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------

/// Consistent hashing with a Maglev lookup table: each member walks its own permutation of
/// the slots and claims the next free one when its turn comes; a pick is one table read.
struct Maglev {
    table: Box<[u32]>,
    fallback: WeightedSampler,
}

/// Prime table sizes (a prime makes every skip a full permutation). The smallest one that
/// gives each member at least `MAGLEV_MIN_SLOTS_PER_MEMBER` slots is used; crossing a size
/// remaps most keys, so the sizes are far apart and the first covers thousands of members.
const MAGLEV_SIZES: [u64; 3] = [65_537, 655_373, 6_553_621];
const MAGLEV_MIN_SLOTS_PER_MEMBER: u64 = 16;

/// Marks a slot nobody has claimed yet while the table is being filled.
const FREE: u32 = u32::MAX;

impl Maglev {
    fn new(members: &[Member]) -> Self {
        // Fill in hash-key order so that the table does not depend on the order the members
        // were listed in, only on the set.
        let mut live: Vec<(u64, u32, u64)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.weight > 0)
            .map(|(i, m)| (m.hash_key, i as u32, u64::from(m.weight)))
            .collect();
        live.sort_unstable();
        let fallback = WeightedSampler::new(members);
        let Some(max_weight) = live.iter().map(|l| l.2).max() else {
            return Maglev {
                table: Box::new([]),
                fallback,
            };
        };

        let want = live.len() as u64 * MAGLEV_MIN_SLOTS_PER_MEMBER;
        let size = MAGLEV_SIZES
            .iter()
            .copied()
            .find(|s| *s >= want)
            .unwrap_or(MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);

        // Each member's permutation: slot_j = (offset + j·skip) mod size, from two independent
        // hashes of its key. `next` holds the member's current slot in that walk.
        let skip: Vec<u64> = live
            .iter()
            .map(|l| mix64(l.0 ^ 0x5bd1_e995_7f4a_7c15) % (size - 1) + 1)
            .collect();
        let mut next: Vec<u64> = live
            .iter()
            .map(|l| mix64(l.0 ^ 0x9e37_79b9_7f4a_7c15) % size)
            .collect();
        // Weighted turns: every round each member earns its weight; whenever its credit reaches
        // the heaviest weight it claims one slot. The heaviest member claims every round, one
        // of half its weight every other round, so slots end up proportional to weights (a
        // member lighter than about 1/size of the total weight may get no slot at all).
        let mut credit: Vec<u64> = vec![0; live.len()];
        let mut table = vec![FREE; size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (k, (_, index, weight)) in live.iter().enumerate() {
                credit[k] += weight;
                if credit[k] < max_weight {
                    continue;
                }
                credit[k] -= max_weight;
                // Terminates: the walk visits every slot and at least one is still free.
                loop {
                    let slot = next[k] as usize;
                    next[k] = (next[k] + skip[k]) % size;
                    if table[slot] == FREE {
                        table[slot] = *index;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
            fallback,
        }
    }
}

impl Balancer for Maglev {
    fn pick(&self, hash: Option<u64>) -> Option<usize> {
        let Some(hash) = hash else {
            return self.fallback.pick();
        };
        if self.table.is_empty() {
            return None;
        }
        let slot = (hash % self.table.len() as u64) as usize;
        self.table.get(slot).map(|i| *i as usize)
    }
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("table_size", &self.table.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [LbPolicy; 6] = [
        LbPolicy::RoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::LeastConnections,
        LbPolicy::Random,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
    ];

    fn key(i: usize) -> u64 {
        hash_bytes(format!("10.0.0.{i}:80").as_bytes())
    }

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                weight: *w,
                hash_key: key(i),
                load: Arc::new(AtomicUsize::new(0)),
            })
            .collect()
    }

    /// How often each member is picked in `n` picks; hashes are random for hash policies.
    fn counts(lb: &dyn Balancer, n: usize, len: usize) -> Vec<usize> {
        let mut c = vec![0; len];
        for _ in 0..n {
            c[lb.pick(Some(fastrand::u64(..))).unwrap()] += 1;
        }
        c
    }

    /// Asserts each share is within `tol` (absolute) of its weight's share.
    fn assert_shares(c: &[usize], weights: &[u32], tol: f64) {
        let n: usize = c.iter().sum();
        let total: u32 = weights.iter().sum();
        for (got, w) in c.iter().zip(weights) {
            let share = *got as f64 / n as f64;
            let want = f64::from(*w) / f64::from(total);
            assert!((share - want).abs() <= tol, "{c:?} vs weights {weights:?}");
        }
    }

    // --- hash_bytes ---

    #[test]
    fn hash_bytes_is_stable_across_builds() {
        // Pinned values: a change here would remap every consistent-hash key in a fleet that is
        // upgraded one proxy at a time.
        assert_eq!(hash_bytes(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_bytes(b"a"), mix64(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash_bytes(b"10.0.0.1:80"), 0xdbbc_907f_2153_1a73);
        assert_ne!(hash_bytes(b"10.0.0.1:80"), hash_bytes(b"10.0.0.2:80"));
    }

    // --- all policies ---

    #[test]
    fn zero_weight_is_never_picked_and_all_zero_is_none() {
        for policy in ALL {
            let lb = build(policy, &members(&[0, 3, 0]));
            for _ in 0..1000 {
                assert_eq!(lb.pick(Some(fastrand::u64(..))), Some(1), "{policy:?}");
                assert_eq!(lb.pick(None), Some(1), "{policy:?}");
            }
            for weights in [&[0, 0][..], &[]] {
                let lb = build(policy, &members(weights));
                assert_eq!(lb.pick(Some(42)), None, "{policy:?}");
                assert_eq!(lb.pick(None), None, "{policy:?}");
            }
        }
    }

    #[test]
    fn balancers_are_shared_across_threads() {
        for policy in ALL {
            let lb: Arc<dyn Balancer> = Arc::from(build(policy, &members(&[1, 2, 3])));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let lb = Arc::clone(&lb);
                    std::thread::spawn(move || {
                        (0..1000).all(|i| lb.pick(Some(i)).is_some_and(|m| m < 3))
                    })
                })
                .collect();
            for t in threads {
                assert!(t.join().unwrap(), "{policy:?}");
            }
        }
    }

    // --- round robin ---

    #[test]
    fn round_robin_follows_weights_exactly_per_cycle() {
        let lb = build(LbPolicy::RoundRobin, &members(&[1, 2, 7]));
        assert_eq!(counts(&*lb, 1000, 3), vec![100, 200, 700]);
        // Common factors are divided out: a cycle is still 10 picks.
        let lb = build(LbPolicy::RoundRobin, &members(&[10, 20, 70]));
        assert_eq!(counts(&*lb, 10, 3), vec![1, 2, 7]);
    }

    #[test]
    fn round_robin_interleaves_smoothly() {
        let lb = build(LbPolicy::RoundRobin, &members(&[5, 1, 1]));
        // Wherever the random start falls, the heavy member never runs more than 4 in a row
        // (the schedule is `a a b a c a a`, and a cycle's end joins the next's start).
        let picks: Vec<usize> = (0..14).map(|_| lb.pick(None).unwrap()).collect();
        let longest = picks
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest <= 4, "{picks:?}");
    }

    #[test]
    fn round_robin_scales_huge_weights_instead_of_dropping_small_ones() {
        let weights = normalize(&[1, 1_000_000], MAX_SCHEDULE);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        assert!(total <= MAX_SCHEDULE + 2, "{weights:?}");
        let lb = build(LbPolicy::RoundRobin, &members(&[1, 1_000_000]));
        let c = counts(&*lb, total as usize, 2);
        assert!(c[0] >= 1, "{c:?}");
    }

    #[test]
    fn round_robin_matches_the_plain_nginx_algorithm() {
        // The reference: scan every member each step.
        fn reference(weights: &[u32]) -> Vec<u32> {
            let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
            let mut current = vec![0i64; weights.len()];
            let mut out = Vec::new();
            for _ in 0..total {
                let mut best = 0;
                for (i, w) in weights.iter().enumerate() {
                    current[i] += i64::from(*w);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                out.push(best as u32);
            }
            out
        }
        for weights in [
            vec![5, 1, 1],
            vec![1, 2, 7],
            vec![3, 0, 3, 2, 2, 2, 9, 0, 1, 3],
            (0..50).map(|_| fastrand::u32(0..20)).collect(),
        ] {
            assert_eq!(
                smooth_schedule(&weights),
                reference(&weights),
                "{weights:?}"
            );
        }
    }

    #[test]
    fn round_robin_on_a_large_cluster_stays_proportional() {
        // 2000 members, total weight 101000: scaled down to a 65536-step schedule.
        let weights: Vec<u32> = (0..2000).map(|i| 1 + i % 100).collect();
        let lb = RoundRobin::new(&members(&weights));
        let len = lb.schedule.len();
        assert!(len <= MAX_SCHEDULE as usize + weights.len(), "{len}");
        let c = counts(&lb, len, weights.len());
        let total: u32 = weights.iter().sum();
        for (got, w) in c.iter().zip(&weights) {
            assert!(*got >= 1);
            let want = f64::from(*w) / f64::from(total) * len as f64;
            // Rounding the scaled weight is off by at most half a slot (light members are
            // rounded up to one slot).
            assert!(
                (*got as f64 - want).abs() <= 0.5 + 1e-9 || *w == 1,
                "{w}: {got} vs {want}"
            );
        }
    }

    // --- weighted random ---

    #[test]
    fn random_follows_weights() {
        let lb = build(LbPolicy::Random, &members(&[1, 2, 7]));
        assert_shares(&counts(&*lb, 100_000, 3), &[1, 2, 7], 0.02);
        let lb = build(LbPolicy::Random, &members(&[4, 4, 4, 4]));
        assert_shares(&counts(&*lb, 100_000, 4), &[1, 1, 1, 1], 0.02);
    }

    // --- least request / least connections ---

    #[test]
    fn least_loaded_follows_weights_at_equal_load() {
        for policy in [LbPolicy::LeastRequest, LbPolicy::LeastConnections] {
            let lb = build(policy, &members(&[1, 2, 7]));
            assert_shares(&counts(&*lb, 100_000, 3), &[1, 2, 7], 0.02);
        }
    }

    #[test]
    fn least_loaded_prefers_the_less_loaded_member() {
        let m = members(&[1, 1, 1]);
        m[0].load.store(100, Ordering::Relaxed);
        let lb = build(LbPolicy::LeastRequest, &m);
        // The busy member wins only when it is drawn twice: 1/9 of picks.
        let c = counts(&*lb, 90_000, 3);
        assert!((8_000..12_000).contains(&c[0]), "{c:?}");

        // Load changes are seen by the next pick, with no rebuild.
        m[0].load.store(0, Ordering::Relaxed);
        m[1].load.store(5, Ordering::Relaxed);
        m[2].load.store(5, Ordering::Relaxed);
        // Now the idle member wins whenever it is drawn: 1 - (2/3)² = 5/9 of picks.
        let c = counts(&*lb, 90_000, 3);
        assert!((47_000..53_000).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_loaded_compares_load_per_weight() {
        // 3/4 < 1/1: the heavy member is less loaded for its weight, so the light one wins
        // only when drawn twice, (1/5)² = 4% of picks.
        let m = members(&[4, 1]);
        m[0].load.store(3, Ordering::Relaxed);
        m[1].load.store(1, Ordering::Relaxed);
        let lb = build(LbPolicy::LeastConnections, &m);
        let c = counts(&*lb, 100_000, 2);
        assert!((3_000..5_000).contains(&c[1]), "{c:?}");
        // Huge loads do not overflow the cross-multiplication: now the light member wins
        // whenever it is drawn, 1 - (4/5)² = 36% of picks.
        m[0].load.store(usize::MAX, Ordering::Relaxed);
        let c = counts(&*lb, 100_000, 2);
        assert!((33_000..39_000).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn least_loaded_with_one_member_picks_it() {
        let m = members(&[0, 5]);
        m[1].load.store(1_000, Ordering::Relaxed);
        let lb = build(LbPolicy::LeastRequest, &m);
        assert_eq!(lb.pick(None), Some(1));
    }

    // --- consistent hashing ---

    /// With 10 members, removing one: the share of the other members' keys that stay put.
    fn kept_after_removal(policy: LbPolicy) -> f64 {
        let before = members(&[1; 10]);
        let removed = 3;
        let mut after = before.clone();
        after.remove(removed);
        let lb_before = build(policy, &before);
        let lb_after = build(policy, &after);
        // Indexes after the removed one shift down by one; compare hash keys instead.
        let (mut kept, mut total) = (0, 0);
        for _ in 0..10_000 {
            let h = fastrand::u64(..);
            let b = lb_before.pick(Some(h)).unwrap();
            if b == removed {
                continue;
            }
            total += 1;
            let a = lb_after.pick(Some(h)).unwrap();
            if before[b].hash_key == after[a].hash_key {
                kept += 1;
            }
        }
        f64::from(kept) / f64::from(total)
    }

    #[test]
    fn ring_hash_moves_only_the_removed_members_keys() {
        assert_eq!(kept_after_removal(LbPolicy::RingHash), 1.0);
    }

    #[test]
    fn maglev_moves_few_other_keys_on_removal() {
        let kept = kept_after_removal(LbPolicy::Maglev);
        assert!(kept >= 0.95, "{kept}");
    }

    #[test]
    fn hash_policies_are_consistent_and_order_independent() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let m = members(&[1, 2, 3, 4, 5]);
            let lb = build(policy, &m);
            let mut reversed = m.clone();
            reversed.reverse();
            let rev = build(policy, &reversed);
            for _ in 0..1000 {
                let h = fastrand::u64(..);
                let first = lb.pick(Some(h)).unwrap();
                assert_eq!(lb.pick(Some(h)), Some(first), "{policy:?}");
                let other = rev.pick(Some(h)).unwrap();
                assert_eq!(m[first].hash_key, reversed[other].hash_key, "{policy:?}");
            }
        }
    }

    #[test]
    fn hash_policies_spread_equal_members_fairly() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let lb = build(policy, &members(&[1; 10]));
            let c = counts(&*lb, 100_000, 10);
            for got in &c {
                assert!((8_000..=12_000).contains(got), "{policy:?} {c:?}");
            }
        }
    }

    #[test]
    fn hash_policies_follow_weights() {
        // Ring hash shares vary by a few percent with node placement; Maglev's are exact to a
        // slot.
        for (policy, tol) in [(LbPolicy::RingHash, 0.03), (LbPolicy::Maglev, 0.02)] {
            let lb = build(policy, &members(&[1, 2, 7]));
            assert_shares(&counts(&*lb, 100_000, 3), &[1, 2, 7], tol);
        }
    }

    #[test]
    fn hash_policies_without_a_hash_pick_by_weight() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let lb = build(policy, &members(&[1, 2, 7]));
            let mut c = [0usize; 3];
            for _ in 0..100_000 {
                c[lb.pick(None).unwrap()] += 1;
            }
            assert_shares(&c, &[1, 2, 7], 0.02);
        }
    }

    #[test]
    fn ring_hash_gives_light_members_a_node_and_bounds_the_ring() {
        let m = members(&[1, u32::MAX]);
        let lb = RingHash::new(&m);
        assert_eq!(lb.owners.iter().filter(|o| **o == 0).count(), 1);
        assert_eq!(lb.positions.len() as u64, RING_NODES_PER_MAX_WEIGHT + 1);
        assert!(lb.positions.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ring_hash_buckets_find_the_same_node_as_a_full_search() {
        for weights in [vec![1], vec![1, 1], vec![3, 1, 2, 5], vec![1; 300]] {
            let lb = RingHash::new(&members(&weights));
            let mut hashes: Vec<u64> = (0..20_000).map(|_| fastrand::u64(..)).collect();
            // Exactly on nodes, just around them, and at the ends of the hash space.
            for p in lb.positions.iter().take(500) {
                hashes.extend([*p, p.wrapping_sub(1), p.wrapping_add(1)]);
            }
            hashes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63]);
            for h in hashes {
                let full = lb.positions.partition_point(|p| *p < h) % lb.positions.len();
                assert_eq!(lb.pick(Some(h)), Some(lb.owners[full] as usize), "{h:#x}");
            }
        }
    }

    #[test]
    fn maglev_grows_its_table_for_large_memberships() {
        assert_eq!(Maglev::new(&members(&[1; 3])).table.len(), 65_537);
        let lb = Maglev::new(&members(&[1; 5000]));
        assert_eq!(lb.table.len(), 655_373);
        assert!(lb.table.iter().all(|i| *i < 5000));
    }
}
