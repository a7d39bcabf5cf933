//! Per-request decisions in `mesh-core`: choosing a route among 10, 100 and 1,000 rules,
//! and picking an endpoint among 3, 100 and 1,000 with each balancer.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mesh_config::ConfigSet;
use mesh_config::model::Labels;
use mesh_core::balance::{Balancer, EndpointLoad, LbAlgorithm, Pick};
use mesh_core::{Caller, CompiledMesh, RequestHead};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// A registry with `reviews` (two subsets) and a VirtualService of `n` header rules:
/// rule i matches `x-rule: i`, the last rule catches all.
fn mesh_with_rules(n: usize) -> CompiledMesh {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n",
    );
    for i in 0..n - 1 {
        let subset = if i % 2 == 0 { "v1" } else { "v2" };
        yaml.push_str(&format!(
            "  - match: [{{headers: {{x-rule: {{exact: \"{i}\"}}}}, uri: {{prefix: /api/}}}}]\n    route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        ));
    }
    yaml.push_str("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n");
    let mut set = ConfigSet::new();
    set.add_str("bench.yaml", &yaml);
    let snapshot = set.check().snapshot.expect("valid bench configuration");
    CompiledMesh::compile(&snapshot)
}

fn route_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_decision");
    let labels = Labels::new();
    let src = Caller {
        namespace: "default",
        labels: &labels,
        gateway: None,
    };
    for n in [10, 100, 1000] {
        let mesh = mesh_with_rules(n);
        let mut rng = SmallRng::seed_from_u64(1);
        // The worst case for first-match: the request falls through to the last rule.
        let mut headers = HeaderMap::new();
        headers.insert("x-rule", HeaderValue::from_static("none"));
        let head = RequestHead {
            method: "GET",
            scheme: "http",
            authority: "reviews:9080",
            path: "/api/reviews/0",
            query: None,
            headers: &headers,
            port: 9080,
        };
        g.bench_with_input(BenchmarkId::new("last_rule", n), &n, |b, _| {
            b.iter(|| {
                let d = mesh.route(black_box(&head), &src, &mut rng).unwrap();
                black_box(d.rule.map(|(i, _)| i))
            })
        });
        // A header rule near the end: found through the index.
        let mut hit = HeaderMap::new();
        hit.insert(
            "x-rule",
            HeaderValue::from_str(&(n - 2).to_string()).unwrap(),
        );
        let head_hit = RequestHead {
            headers: &hit,
            ..head
        };
        g.bench_with_input(BenchmarkId::new("header_rule", n), &n, |b, _| {
            b.iter(|| {
                let d = mesh.route(black_box(&head_hit), &src, &mut rng).unwrap();
                black_box(d.rule.map(|(i, _)| i))
            })
        });
    }
    g.finish();
}

fn balancer_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    let algorithms = [
        ("round_robin", LbAlgorithm::RoundRobin),
        ("random", LbAlgorithm::Random),
        ("least_request", LbAlgorithm::LeastRequest),
        ("peak_ewma", LbAlgorithm::peak_ewma()),
        ("ring_hash", LbAlgorithm::ring_hash(None)),
        ("maglev", LbAlgorithm::Maglev { table_size: 65537 }),
    ];
    for n in [3usize, 100, 1000] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256))
            .collect();
        let weights = vec![1u32; n];
        for (name, algorithm) in &algorithms {
            let lb = Balancer::new(algorithm, &ids, &weights);
            let load: Vec<EndpointLoad> = (0..n).map(|_| EndpointLoad::new()).collect();
            let mut rng = SmallRng::seed_from_u64(2);
            let hashed = algorithm.is_hash();
            g.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    let mut p = if hashed {
                        Pick::with_key(&mut rng, b"user-1234")
                    } else {
                        Pick::new(&mut rng)
                    };
                    black_box(lb.pick(load.as_slice(), &mut p))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, route_decision, balancer_pick);
criterion_main!(benches);
