//! `pick` cost of every load-balancing policy at 10 and 1,000 members.

use std::hint::black_box;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use legate::cluster::lb::{build, hash_bytes, Member};
use legate::config::model::LbPolicy;

const POLICIES: [LbPolicy; 6] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest,
    LbPolicy::LeastConnections,
    LbPolicy::Random,
    LbPolicy::RingHash,
    LbPolicy::Maglev,
];

/// Mixed weights and loads, so that weighted paths (not the equal-weight shortcut) are
/// measured and least-request comparisons go both ways.
fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            weight: 1 + (i % 7) as u32,
            hash_key: hash_bytes(format!("10.0.{}.{}:8080", i / 256, i % 256).as_bytes()),
            load: Arc::new(AtomicUsize::new(i % 5)),
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10, 1000] {
        let members = members(n);
        for policy in POLICIES {
            let lb = build(policy, &members);
            // A new hash each pick, as with real requests: a constant one would keep the
            // ring's search path and the table slot hot in cache.
            let mut hash = 0u64;
            group.bench_function(BenchmarkId::new(format!("{policy:?}"), n), |b| {
                b.iter(|| {
                    hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    lb.pick(black_box(Some(hash)))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
