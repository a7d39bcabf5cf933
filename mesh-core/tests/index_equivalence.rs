//! The rule index never changes a decision: for random rule sets and random requests,
//! the rule `CompiledMesh::route` picks is the first rule a linear scan finds. Fixed seed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_config::ConfigSet;
use mesh_config::model::Labels;
use mesh_core::{Caller, CompiledMesh, RequestHead, RouteError};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "/api/v1",
    "/api/v1/x",
    "/apix",
    "/static/a.css",
    "/x",
];
const VALUES: &[&str] = &["a", "b", "c"];

#[derive(Debug, Clone)]
enum Cond {
    HeaderExact(usize, usize),
    HeaderPrefix(usize, usize),
    HeaderPresent(usize),
    Without(usize),
    UriExact(usize),
    UriPrefix(usize),
    UriRegex,
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        (0..2usize, 0..3usize).prop_map(|(h, v)| Cond::HeaderExact(h, v)),
        (0..2usize, 0..3usize).prop_map(|(h, v)| Cond::HeaderPrefix(h, v)),
        (0..2usize).prop_map(Cond::HeaderPresent),
        (0..2usize).prop_map(Cond::Without),
        (0..PATHS.len()).prop_map(Cond::UriExact),
        (0..PATHS.len()).prop_map(Cond::UriPrefix),
        Just(Cond::UriRegex),
    ]
}

fn block_yaml(conds: &[Cond]) -> String {
    let mut headers = Vec::new();
    let mut without = Vec::new();
    let mut uri = None;
    for c in conds {
        match c {
            Cond::HeaderExact(h, v) => headers.push(format!("x-h{h}: {{exact: {}}}", VALUES[*v])),
            Cond::HeaderPrefix(h, v) => headers.push(format!("x-h{h}: {{prefix: {}}}", VALUES[*v])),
            Cond::HeaderPresent(h) => headers.push(format!("x-h{h}: {{}}")),
            Cond::Without(h) => without.push(format!("x-h{h}: {{}}")),
            Cond::UriExact(p) => uri = Some(format!("{{exact: \"{}\"}}", PATHS[*p])),
            Cond::UriPrefix(p) => uri = Some(format!("{{prefix: \"{}\"}}", PATHS[*p])),
            Cond::UriRegex => uri = Some("{regex: \"/api/.*\"}".into()),
        }
    }
    // later conditions on one header replace earlier ones (a YAML map has one key)
    headers.dedup_by_key(|h| h.split(':').next().unwrap().to_string());
    let mut parts = Vec::new();
    if !headers.is_empty() {
        let mut seen = std::collections::BTreeMap::new();
        for h in headers {
            seen.insert(h.split(':').next().unwrap().to_string(), h);
        }
        parts.push(format!(
            "headers: {{{}}}",
            seen.into_values().collect::<Vec<_>>().join(", ")
        ));
    }
    if !without.is_empty() {
        let mut seen = std::collections::BTreeMap::new();
        for h in without {
            seen.insert(h.split(':').next().unwrap().to_string(), h);
        }
        parts.push(format!(
            "withoutHeaders: {{{}}}",
            seen.into_values().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(u) = uri {
        parts.push(format!("uri: {u}"));
    }
    format!("{{{}}}", parts.join(", "))
}

fn mesh(rules: &[Vec<Vec<Cond>>]) -> CompiledMesh {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n",
    );
    for blocks in rules {
        if blocks.is_empty() {
            yaml.push_str("  - route: [{destination: {host: reviews}}]\n");
        } else {
            let b: Vec<String> = blocks.iter().map(|c| block_yaml(c)).collect();
            yaml.push_str(&format!(
                "  - match: [{}]\n    route: [{{destination: {{host: reviews}}}}]\n",
                b.join(", ")
            ));
        }
    }
    let mut set = ConfigSet::new();
    set.add_str("prop.yaml", &yaml);
    let checked = set.check();
    let snap = checked
        .snapshot
        .unwrap_or_else(|| panic!("{yaml}\n{:?}", checked.diagnostics));
    CompiledMesh::compile(&snap)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x1d8),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn index_agrees_with_a_linear_scan(
        rules in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(cond(), 1..3), 0..3),
            1..12,
        ),
        requests in prop::collection::vec(
            (0..PATHS.len(), prop::option::of(0..3usize), prop::collection::vec(0..3usize, 0..3)),
            1..20,
        ),
    ) {
        let m = mesh(&rules);
        let vh = m.visible_hosts("default").find("reviews.default.svc.cluster.local").unwrap().clone();
        let labels = Labels::new();
        let src = Caller { namespace: "default", labels: &labels, gateway: None };
        let mut rng = StdRng::seed_from_u64(1);
        for (p, h0, h1) in requests {
            let mut headers = HeaderMap::new();
            if let Some(v) = h0 {
                headers.insert("x-h0", HeaderValue::from_static(VALUES[v]));
            }
            for v in h1 {
                headers.append(HeaderName::from_static("x-h1"), HeaderValue::from_static(VALUES[v]));
            }
            let head = RequestHead { method: "GET", scheme: "http", authority: "reviews:9080", path: PATHS[p], query: None, headers: &headers, port: 9080 };
            let linear = vh.rules.iter().position(|r| r.matching_block(&head, &src, &vh.gateways).is_some());
            let indexed = match m.route(&head, &src, &mut rng) {
                Ok(d) => d.rule.map(|(i, _)| i),
                Err(RouteError::NoRouteMatched) => None,
                Err(e) => panic!("{e}"),
            };
            prop_assert_eq!(indexed, linear, "path {} headers {:?}", PATHS[p], headers);
        }
    }
}
