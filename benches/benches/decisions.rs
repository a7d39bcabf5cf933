//! Per-request decisions in `mesh-core`: choosing a route among 10, 100 and 1,000 rules,
//! picking an endpoint among 3, 100 and 1,000 with each balancer, and authorizing a
//! request under 1, 10 and 100 AuthorizationPolicies.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mesh_config::ConfigSet;
use mesh_config::model::Labels;
use mesh_core::authz::{Authorizer, AuthzRequest};
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

/// How the benchmark's ALLOW policies name what they allow.
#[derive(Clone, Copy)]
enum Shape {
    /// `from` an exact principal (the policies are indexed by principal).
    Principal,
    /// `to` a path prefix only (indexed by path).
    Path,
    /// Only a header condition (not indexed: every policy is evaluated).
    Header,
}

/// `n` ALLOW policies selecting `app: httpbin` in `foo`; policy i allows GET and HEAD
/// with header `x-tenant: t-i`, from `cluster.local/ns/ns-i/sa/client` (`Principal`), on
/// `/api/i/*` (`Path`), or with nothing more (`Header`); plus one DENY policy (a path the
/// request does not take).
fn authorizer_with_policies(n: usize, shape: Shape) -> Authorizer {
    let mut yaml = String::from(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i}, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  rules:\n  - {from}to: [{{operation: {{methods: [GET, HEAD]{paths}}}}}]\n    when: [{{key: \"request.headers[x-tenant]\", values: [t-{i}]}}]\n",
            from = match shape {
                Shape::Principal => {
                    format!("from: [{{source: {{principals: [cluster.local/ns/ns-{i}/sa/client]}}}}]\n    ")
                }
                _ => String::new(),
            },
            paths = match shape {
                Shape::Path => format!(", paths: [\"/api/{i}/*\"]"),
                _ => String::new(),
            }
        ));
    }
    let mut set = ConfigSet::new();
    set.add_str("bench.yaml", &yaml);
    let snapshot = set.check().snapshot.expect("valid bench configuration");
    let mesh = CompiledMesh::compile(&snapshot);
    let labels: Labels = [("app".to_string(), "httpbin".to_string())].into();
    Authorizer::for_workload(
        mesh.authorization_policies(),
        "istio-system",
        "foo",
        &labels,
    )
}

fn authorization_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorization_decision");
    let shapes = [
        (Shape::Principal, "by_principal"),
        (Shape::Path, "by_path"),
        (Shape::Header, "unindexed"),
    ];
    for (n, (shape, name)) in [1, 10, 100]
        .into_iter()
        .flat_map(|n| shapes.map(|s| (n, s)))
    {
        let authz = authorizer_with_policies(n, shape);
        // The worst case: the last policy allows, after every other was evaluated.
        let last = n - 1;
        let peer = format!("spiffe://cluster.local/ns/ns-{last}/sa/client");
        let path = format!("/api/{last}/items");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-tenant",
            HeaderValue::from_str(&format!("t-{last}")).unwrap(),
        );
        let req = AuthzRequest {
            peer: Some(&peer),
            source_ip: "10.0.0.5".parse().unwrap(),
            remote_ip: None,
            destination_ip: "10.0.1.1".parse().unwrap(),
            destination_port: 8000,
            sni: None,
            method: "GET",
            host: "httpbin.foo:8000",
            path: &path,
            headers: &headers,
            auth: None,
        };
        assert!(authz.decide(&req).allowed, "the bench request is allowed");
        g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            b.iter(|| black_box(authz.decide(black_box(&req)).allowed));
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    route_decision,
    balancer_pick,
    authorization_decision
);
criterion_main!(benches);
