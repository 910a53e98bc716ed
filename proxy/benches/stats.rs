//! What recording a request's stats costs on the request path: the route's downstream
//! histogram, its target's counters and upstream histograms, and the clock reads that time
//! them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use legate::stats::per_worker::{enter_worker, set_workers};
use legate::stats::route::{Outcome, TargetOutcome};
use legate::stats::RouteStats;

fn record(c: &mut Criterion) {
    set_workers(2);
    enter_worker(1);
    let stats = RouteStats::new("front", "kartotherian", &["metal", "k8s"]);
    let mut group = c.benchmark_group("stats");
    // Varying durations, so the bucket search is not always the same branch.
    let mut ns = 0u64;
    let mut next = move || {
        ns = (ns + 7_919_993) % 2_000_000_000;
        Duration::from_nanos(ns)
    };
    group.bench_function("record", |b| {
        b.iter(|| {
            let d = next();
            stats.record(black_box(&Outcome {
                status: 200,
                elapsed: d,
                target: Some(TargetOutcome {
                    index: 1,
                    head: Some(d / 2),
                    end: Some(d),
                    ..TargetOutcome::default()
                }),
            }))
        })
    });
    // As a forwarded request does it: three more clock reads (forwarding, head, end) than
    // before, then the record.
    group.bench_function("record_with_clock", |b| {
        b.iter(|| {
            let start = Instant::now();
            let upstream = Instant::now();
            let head = upstream.elapsed();
            let now = Instant::now();
            stats.record(black_box(&Outcome {
                status: 200,
                elapsed: now - start,
                target: Some(TargetOutcome {
                    index: 1,
                    head: Some(head),
                    end: Some(now - upstream),
                    ..TargetOutcome::default()
                }),
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
