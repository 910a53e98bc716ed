//! What a local rate-limit check costs on the request path: the clock read, the key's hash
//! and the bucket's compare-and-swap, for a whole-route limit and for one keyed by client
//! address and header. The limits are high enough that every check is allowed (the common
//! case).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use legate::ratelimit::{KeySpec, Limiter, Spec};
use legate::stats::per_worker::{enter_worker, set_workers};

fn check(c: &mut Criterion) {
    set_workers(2);
    enter_worker(1);
    let spec = |key: KeySpec| Spec {
        requests: u64::MAX / 4,
        per: Duration::from_secs(1),
        burst: u64::MAX / 4,
        key,
        delay: None,
        max_keys: 65_536,
    };
    let whole = Limiter::new("api", "route", spec(KeySpec::whole_route()));
    let keyed = Limiter::new(
        "api",
        "client",
        spec(KeySpec::parse(&["client_ip".into(), "header:x-client-id".into()]).unwrap()),
    );
    let client: IpAddr = "10.64.0.5".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-client-id", HeaderValue::from_static("maps-frontend"));
    let mut group = c.benchmark_group("ratelimit");
    group.bench_function("whole_route", |b| {
        b.iter(|| {
            whole.check(
                black_box(client),
                black_box("/v1/tiles"),
                black_box(&headers),
            )
        })
    });
    group.bench_function("client_ip_and_header", |b| {
        b.iter(|| {
            keyed.check(
                black_box(client),
                black_box("/v1/tiles"),
                black_box(&headers),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
