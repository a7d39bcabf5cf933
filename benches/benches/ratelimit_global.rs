//! One global rate limit check against a real Redis (`redis-server` on a loopback port):
//! counted in Redis (an `INCRBY` and an `EXPIRE` pipelined in one round trip), answered
//! by the local over-limit cache without Redis, and a descriptor no limit matches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

use std::alloc::System;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_config::rls::RlsConfig;
use mesh_tower::ratelimit::global::{Descriptor, GlobalRateLimiter, RedisSettings};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Every allocation of the process is counted, to report allocations per check.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "../../tests/tests/support/redis.rs"]
mod redis_server;

const CONFIG: &str = r#"
domain: bench
descriptors:
  - key: PATH
    value: /productpage
    rate_limit: {unit: hour, requests_per_unit: 0}
  - key: PATH
    rate_limit: {unit: hour, requests_per_unit: 4294967295}
"#;

fn limiter(url: String, cache_bytes: u64) -> GlobalRateLimiter {
    let config = RlsConfig::parse_str("config.yaml", CONFIG).config.unwrap();
    let mut settings = RedisSettings::new(url);
    settings.timeout = Duration::from_secs(1);
    settings.local_cache_size_bytes = cache_bytes;
    GlobalRateLimiter::new(config, settings).unwrap()
}

fn global_check(c: &mut Criterion) {
    let redis = redis_server::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (counted, cached) = rt.block_on(async {
        let counted = limiter(redis.url(), 0);
        let cached = limiter(redis.url(), 1 << 20);
        assert!(counted.ready(Duration::from_secs(10)).await);
        assert!(cached.ready(Duration::from_secs(10)).await);
        (counted, cached)
    });
    let counted_path = [Descriptor::new([("PATH", "/reviews/0")])];
    let limited_path = [Descriptor::new([("PATH", "/productpage")])];
    let unmatched = [Descriptor::new([("HOST", "reviews")])];
    rt.block_on(async {
        // The first check of the limited path goes over its limit in Redis; the cache
        // answers the following ones.
        assert!(
            cached
                .should_rate_limit("bench", &limited_path, 1)
                .await
                .is_over_limit()
        );
        assert!(
            cached
                .should_rate_limit("bench", &limited_path, 1)
                .await
                .is_over_limit()
        );
        assert_eq!(cached.stats().cache_hits, 1);
        assert!(
            counted
                .should_rate_limit("bench", &counted_path, 1)
                .await
                .is_ok()
        );
    });

    // Allocations per check (the whole process: the connection's task included).
    const N: usize = 1000;
    let (on_redis, on_cache) = rt.block_on(async {
        let region = Region::new(GLOBAL);
        for _ in 0..N {
            counted.should_rate_limit("bench", &counted_path, 1).await;
        }
        let on_redis = region.change().allocations;
        let region = Region::new(GLOBAL);
        for _ in 0..N {
            cached.should_rate_limit("bench", &limited_path, 1).await;
        }
        (on_redis, region.change().allocations)
    });
    println!(
        "allocations per global check: {:.1} counted in Redis, {:.1} answered by the over-limit cache",
        on_redis as f64 / N as f64,
        on_cache as f64 / N as f64
    );
    assert_eq!(
        on_cache, 0,
        "the over-limit cache answers without allocating"
    );

    let mut g = c.benchmark_group("global_check");
    g.bench_function("redis_round_trip", |b| {
        b.to_async(&rt)
            .iter(|| async { counted.should_rate_limit("bench", &counted_path, 1).await })
    });
    g.bench_function("over_limit_cache", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.should_rate_limit("bench", &limited_path, 1).await })
    });
    g.bench_function("no_matching_limit", |b| {
        b.to_async(&rt)
            .iter(|| async { counted.should_rate_limit("bench", &unmatched, 1).await })
    });
    g.finish();
    assert_eq!(counted.stats().redis_errors, 0);
    assert_eq!(cached.stats().redis_errors, 0);
    drop(rt);
    drop(redis);
}

criterion_group!(benches, global_check);
criterion_main!(benches);
