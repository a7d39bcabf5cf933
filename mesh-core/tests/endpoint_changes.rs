//! An endpoint change applied incrementally gives exactly what compiling the whole
//! configuration gives: for random sequences of WorkloadEntries appearing, changing and
//! going away, `Snapshot::with_workload_entries` and `CompiledMesh::with_endpoints`
//! are compared, after every step, with `ConfigSet::check` and `CompiledMesh::compile`
//! of the same entries (services and their endpoints, every cluster under its id, the
//! workloads metrics name, the route a request takes). Fixed seed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use mesh_config::model::{AnyResource, Labels, Resource, WorkloadEntry};
use mesh_config::registry::WorkloadChange;
use mesh_config::{ConfigSet, Snapshot};
use mesh_core::{Caller, CompiledMesh, RequestHead};
use proptest::prelude::*;

/// ServiceEntries that select WorkloadEntries in two namespaces (three merged into one
/// service, one of them with an inline endpoint, one DNS service that resolves its own host
/// while it selects nothing), a DestinationRule with subsets, and a PeerAuthentication
/// that turns mutual TLS off for some workloads (endpoints carry whether it is on).
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one, namespace: a}
spec:
  hosts: [one.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: x}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one-inline, namespace: a}
spec:
  hosts: [one.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.9.9.9, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one-more, namespace: a}
spec:
  hosts: [one.a.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: y}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: two, namespace: a}
spec:
  hosts: [two.example.com]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}, {number: 9090, name: grpc, protocol: GRPC}]
  resolution: DNS
  workloadSelector: {labels: {app: z}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: three, namespace: b}
spec:
  hosts: [three.b.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: x}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fixed, namespace: b}
spec:
  hosts: [fixed.b.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.8.8.8}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: one, namespace: a}
spec:
  host: one.a.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: plain, namespace: a}
spec:
  selector: {matchLabels: {version: v2}}
  mtls: {mode: DISABLE}
"#;

const NAMES: &[&str] = &["w0", "w1", "w2", "w3", "w4", "w5"];
const NAMESPACES: &[&str] = &["a", "b"];
const APPS: &[&str] = &["x", "y", "z", "q"];

/// One WorkloadEntry as it may be written.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    app: usize,
    version: usize,
    address: u8,
    weight: u8,
    account: bool,
}

fn entry() -> impl Strategy<Value = Entry> {
    (0..APPS.len(), 1..3usize, 1..6u8, 0..3u8, any::<bool>()).prop_map(
        |(app, version, address, weight, account)| Entry {
            app,
            version,
            address,
            weight,
            account,
        },
    )
}

/// A step: the entry `name` of `namespace` written as given, or deleted.
type Step = (usize, usize, Option<Entry>);

fn step() -> impl Strategy<Value = Step> {
    (
        0..NAMESPACES.len(),
        0..NAMES.len(),
        prop::option::weighted(0.75, entry()),
    )
}

fn yaml(ns: &str, name: &str, e: &Entry) -> String {
    let account = if e.account {
        format!("\n  serviceAccount: {name}-sa")
    } else {
        String::new()
    };
    let weight = if e.weight > 0 {
        format!("\n  weight: {}", e.weight)
    } else {
        String::new()
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  address: 10.0.{}.{}\n  labels: {{app: {}, version: v{}}}{account}{weight}\n",
        e.version, e.address, APPS[e.app], e.version
    )
}

fn parsed(ns: &str, name: &str, e: &Entry) -> Arc<Resource<WorkloadEntry>> {
    let mut set = ConfigSet::new();
    set.add_str(&format!("{ns}-{name}.yaml"), &yaml(ns, name, e));
    match set.resources() {
        [AnyResource::WorkloadEntry(we)] => we.clone(),
        other => panic!("not one WorkloadEntry: {other:?}"),
    }
}

/// The whole configuration with `entries`, checked and compiled.
fn whole(entries: &BTreeMap<(usize, usize), Entry>) -> (Snapshot, CompiledMesh) {
    let mut set = ConfigSet::new();
    set.add_str("base.yaml", BASE);
    for ((ns, name), e) in entries {
        let (ns, name) = (NAMESPACES[*ns], NAMES[*name]);
        set.add_str(&format!("{ns}-{name}.yaml"), &yaml(ns, name, e));
    }
    let checked = set.check();
    let summary = checked.summary();
    let snapshot = checked.snapshot.unwrap_or_else(|| panic!("{summary}"));
    let mesh = CompiledMesh::compile(&snapshot);
    (snapshot, mesh)
}

/// The cluster a request for `host` from namespace `from` goes to.
fn routed(mesh: &CompiledMesh, host: &str, from: &str) -> Option<u32> {
    let headers = HeaderMap::new();
    let labels = Labels::new();
    let port = host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(80);
    let head = RequestHead {
        method: "GET",
        scheme: "http",
        authority: host,
        path: "/",
        query: None,
        headers: &headers,
        port,
    };
    let caller = Caller {
        namespace: from,
        labels: &labels,
        gateway: None,
    };
    let decision = mesh.route(&head, &caller, &mut rand::rng()).ok()?;
    match decision.outcome {
        mesh_core::Outcome::Forward {
            upstream: mesh_core::Upstream::Cluster(c),
            ..
        } => Some(c.id),
        _ => None,
    }
}

fn same(step: usize, incremental: (&Snapshot, &CompiledMesh), full: (&Snapshot, &CompiledMesh)) {
    let (snap, mesh) = incremental;
    let (want_snap, want) = full;
    assert_eq!(
        snap.registry().services(),
        want_snap.registry().services(),
        "step {step}: services"
    );
    assert_eq!(
        snap.registry().workloads(),
        want_snap.registry().workloads(),
        "step {step}: workload set"
    );
    let mut names: Vec<String> = snap
        .workload_entries()
        .iter()
        .map(|w| format!("{}/{}", w.namespace(), w.name()))
        .collect();
    let mut want_names: Vec<String> = want_snap
        .workload_entries()
        .iter()
        .map(|w| format!("{}/{}", w.namespace(), w.name()))
        .collect();
    names.sort();
    want_names.sort();
    assert_eq!(names, want_names, "step {step}: WorkloadEntries");
    assert_eq!(
        snap.resources().len(),
        want_snap.resources().len(),
        "step {step}: resources"
    );
    assert_eq!(mesh.clusters().len(), want.clusters().len(), "step {step}");
    for (c, w) in mesh.clusters().iter().zip(want.clusters()) {
        assert_eq!((c.id, &c.key), (w.id, &w.key), "step {step}: cluster ids");
        assert_eq!(
            c.endpoints, w.endpoints,
            "step {step}: endpoints of {}",
            c.name
        );
        assert_eq!(c.service, w.service, "step {step}: service of {}", c.name);
    }
    assert_eq!(mesh.peers().len(), want.peers().len(), "step {step}: peers");
    for ns in NAMESPACES {
        for name in NAMES {
            assert_eq!(
                mesh.peers().get(name, ns),
                want.peers().get(name, ns),
                "step {step}: peer {ns}/{name}"
            );
            if let Some(p) = want.peers().get(name, ns) {
                assert_eq!(
                    mesh.peers().by_baggage(p.baggage().as_bytes()),
                    Some(p),
                    "step {step}: baggage of {ns}/{name}"
                );
            }
        }
    }
    for (host, from) in [
        ("one.a.svc.cluster.local", "a"),
        ("one.a.svc.cluster.local", "b"),
        ("two.example.com:8080", "a"),
        ("three.b.svc.cluster.local", "b"),
        ("fixed.b.svc.cluster.local", "a"),
    ] {
        assert_eq!(
            routed(mesh, host, from),
            routed(want, host, from),
            "step {step}: route to {host} from {from}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0e7d),
        ..ProptestConfig::with_source_file(file!())
    })]

    #[test]
    fn incremental_endpoint_changes_equal_a_whole_compile(
        first in prop::collection::btree_map((0..2usize, 0..6usize), entry(), 0..6),
        steps in prop::collection::vec(prop::collection::vec(step(), 1..4), 1..8),
    ) {
        let mut entries = first;
        let (mut snapshot, mut mesh) = whole(&entries);
        for (i, batch) in steps.iter().enumerate() {
            let changes: Vec<WorkloadChange> = batch
                .iter()
                .map(|(ns, name, e)| WorkloadChange {
                    namespace: NAMESPACES[*ns].to_string(),
                    name: NAMES[*name].to_string(),
                    entry: e.as_ref().map(|e| parsed(NAMESPACES[*ns], NAMES[*name], e)),
                })
                .collect();
            for (ns, name, e) in batch {
                match e {
                    Some(e) => entries.insert((*ns, *name), e.clone()),
                    None => entries.remove(&(*ns, *name)),
                };
            }
            let (next, changed) = snapshot.with_workload_entries(&changes).unwrap();
            let (next_mesh, ids) = mesh
                .with_endpoints(&next, &changed)
                .expect("an endpoint change is applied incrementally");
            // Only the clusters of the changed services were built again.
            for id in &ids {
                let c = &next_mesh.clusters()[*id as usize];
                prop_assert!(changed.iter().any(|&s| Arc::ptr_eq(&next.registry().services()[s], &c.service)));
            }
            let (want_snap, want) = whole(&entries);
            same(i, (&next, &next_mesh), (&want_snap, &want));
            snapshot = next;
            mesh = next_mesh;
        }
    }
}

/// Services that select none of the changed entries are shared, not built again.
#[test]
fn unrelated_services_are_shared() {
    let mut entries = BTreeMap::new();
    let e = |app| Entry {
        app,
        version: 1,
        address: 1,
        weight: 0,
        account: false,
    };
    entries.insert((1, 0), e(0));
    let (snapshot, mesh) = whole(&entries);
    let change = WorkloadChange {
        namespace: "a".into(),
        name: "w1".into(),
        entry: Some(parsed("a", "w1", &e(2))),
    };
    let (next, changed) = snapshot.with_workload_entries(&[change]).unwrap();
    let hosts: Vec<&str> = changed
        .iter()
        .map(|&i| next.registry().services()[i].host.as_str())
        .collect();
    assert_eq!(hosts, ["two.example.com"]);
    let (next_mesh, ids) = mesh.with_endpoints(&next, &changed).unwrap();
    // two.example.com: 2 ports, one cluster each (no DestinationRule).
    assert_eq!(ids.len(), 2);
    for (c, old) in next_mesh.clusters().iter().zip(mesh.clusters()) {
        let rebuilt = ids.contains(&c.id);
        assert_eq!(!rebuilt, Arc::ptr_eq(c, old), "{}", c.name);
    }
    // The DNS service resolved its own host; now it has the workload instead.
    let two = next_mesh
        .clusters()
        .iter()
        .find(|c| c.key.host.as_ref() == "two.example.com" && c.key.port == 8080)
        .unwrap();
    let addresses: Vec<&str> = two.endpoints.iter().map(|e| &*e.address).collect();
    assert_eq!(addresses, ["10.0.1.1"]);
    let before = mesh
        .clusters()
        .iter()
        .find(|c| c.key.host.as_ref() == "two.example.com" && c.key.port == 8080)
        .unwrap();
    let addresses: Vec<&str> = before.endpoints.iter().map(|e| &*e.address).collect();
    assert_eq!(addresses, ["two.example.com"]);
}
