//! Routing decisions on real configuration: Istio's Bookinfo samples on the Bookinfo
//! registry, and small VirtualServices for the sharp edges. Statistical checks use fixed
//! seeds and state their tolerance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_config::ConfigSet;
use mesh_config::model::Labels;
use std::sync::Arc;

use mesh_core::explain::Via;
use mesh_core::gateway::GatewayRoutes;
use mesh_core::{
    Caller, CompiledMesh, Outcome, RequestHead, RouteError, Upstream, Workload, WorkloadView,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn bookinfo() -> ConfigSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo/config");
    ConfigSet::load(&[root]).unwrap()
}

fn sample(name: &str) -> ConfigSet {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bookinfo/istio/networking")
        .join(name);
    ConfigSet::load(&[p]).unwrap()
}

fn compile(mut set: ConfigSet, extra: &[ConfigSet]) -> Arc<CompiledMesh> {
    for e in extra {
        set.apply(e.clone());
    }
    let checked = set.check();
    let snap = checked
        .snapshot
        .clone()
        .unwrap_or_else(|| panic!("{}", checked.summary()));
    let mesh = CompiledMesh::compile(&snap);
    assert!(mesh.errors.is_empty(), "{:?}", mesh.errors);
    Arc::new(mesh)
}

/// The view of a workload in `ns` with `labels` (for `explain`).
fn view(mesh: &Arc<CompiledMesh>, ns: &str, labels: &Labels) -> WorkloadView {
    WorkloadView::compile(
        mesh.clone(),
        Arc::new(Workload::new("test", ns).labels(labels.clone())),
        mesh_core::Role::Sidecar,
    )
}

fn ingress_labels() -> Labels {
    labels(&[("istio", "ingressgateway")])
}

/// The routes of an ingress gateway workload in `ns` (labels `istio: ingressgateway`).
fn gateway_routes(mesh: &CompiledMesh, ns: &str) -> GatewayRoutes {
    GatewayRoutes::build(mesh, ns, &ingress_labels()).expect("a Gateway selects the workload")
}

fn yaml(text: &str) -> ConfigSet {
    let mut s = ConfigSet::new();
    s.add_str("test.yaml", text);
    s
}

struct Req {
    authority: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    method: &'static str,
    headers: HeaderMap,
}

fn req(authority: &'static str, path: &'static str) -> Req {
    Req {
        authority,
        path,
        query: None,
        method: "GET",
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
        self
    }
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method,
            scheme: "http",
            authority: self.authority,
            path: self.path,
            query: self.query,
            headers: &self.headers,
            port: self
                .authority
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(80),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (subset, endpoint port) a request lands on, for the mesh from namespace default.
fn land(
    mesh: &CompiledMesh,
    r: &Req,
    rng: &mut StdRng,
) -> Result<(Option<String>, Option<u16>), RouteError> {
    let l = labels(&[("app", "productpage"), ("version", "v1")]);
    let src = Caller {
        namespace: "default",
        labels: &l,
        gateway: None,
    };
    let d = mesh.route(&r.head(), &src, rng)?;
    match d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => {
            let mut p = mesh_core::balance::Pick::new(rng);
            let ep = c
                .pick(&mesh_core::balance::Idle, &mut p)
                .map(|(_, u)| u.port);
            Ok((c.key.subset.as_deref().map(String::from), ep))
        }
        Outcome::Forward {
            upstream: Upstream::Passthrough { .. },
            ..
        } => Ok((Some("passthrough".into()), None)),
        _ => Ok((Some("other".into()), None)),
    }
}

#[test]
fn no_virtual_service_reaches_every_version() {
    let mesh = compile(bookinfo(), &[]);
    let mut rng = StdRng::seed_from_u64(1);
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let (subset, port) = land(&mesh, &req("reviews:9080", "/reviews/0"), &mut rng).unwrap();
        assert_eq!(subset, None);
        ports.insert(port.unwrap());
    }
    assert_eq!(ports.into_iter().collect::<Vec<_>>(), [9083, 9084, 9085]);
}

#[test]
fn all_v1_and_test_v2() {
    let mesh = compile(bookinfo(), &[sample("virtual-service-all-v1.yaml")]);
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..50 {
        let r = req("reviews:9080", "/reviews/0").header("end-user", "jason");
        assert_eq!(
            land(&mesh, &r, &mut rng).unwrap(),
            (Some("v1".into()), Some(9083))
        );
    }
    let mesh = compile(
        bookinfo(),
        &[
            sample("virtual-service-all-v1.yaml"),
            sample("virtual-service-reviews-test-v2.yaml"),
        ],
    );
    // (request, subset, port)
    let table = [
        (
            req("reviews:9080", "/reviews/0").header("end-user", "jason"),
            "v2",
            9084,
        ),
        (
            req("reviews:9080", "/reviews/0").header("End-User", "jason"),
            "v2",
            9084,
        ),
        (
            req("reviews:9080", "/reviews/0").header("end-user", "Jason"),
            "v1",
            9083,
        ),
        (
            req("reviews:9080", "/reviews/0").header("end-user", "jason2"),
            "v1",
            9083,
        ),
        (req("reviews:9080", "/reviews/0"), "v1", 9083),
        (
            req("reviews", "/reviews/0").header("end-user", "jason"),
            "v2",
            9084,
        ),
        (req("reviews.default:9080", "/"), "v1", 9083),
        (
            req("reviews.default.svc.cluster.local:9080", "/").header("end-user", "jason"),
            "v2",
            9084,
        ),
    ];
    for (r, subset, port) in table {
        assert_eq!(
            land(&mesh, &r, &mut rng).unwrap(),
            (Some(subset.to_string()), Some(port)),
            "{} {:?}",
            r.authority,
            r.headers
        );
    }
}

fn shares(mesh: &CompiledMesh, n: usize, seed: u64) -> std::collections::BTreeMap<String, f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let (s, _) = land(mesh, &req("reviews:9080", "/"), &mut rng).unwrap();
        *counts.entry(s.unwrap()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 / n as f64))
        .collect()
}

#[test]
fn weighted_splits_within_2_percent_over_20000() {
    for (file, want) in [
        (
            "virtual-service-reviews-90-10.yaml",
            [("v1", 0.9), ("v2", 0.1)],
        ),
        (
            "virtual-service-reviews-80-20.yaml",
            [("v1", 0.8), ("v2", 0.2)],
        ),
        (
            "virtual-service-reviews-50-v3.yaml",
            [("v1", 0.5), ("v3", 0.5)],
        ),
    ] {
        let mesh = compile(bookinfo(), &[sample(file)]);
        let got = shares(&mesh, 20_000, 42);
        assert_eq!(got.len(), 2, "{file}: {got:?}");
        for (subset, share) in want {
            let g = got[subset];
            assert!((g - share).abs() < 0.02, "{file}: {subset} {g} vs {share}");
        }
    }
}

const REVIEWS_PREFIX: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n";

fn vs(rules: &str) -> ConfigSet {
    yaml(&format!("{REVIEWS_PREFIX}{rules}"))
}

#[test]
fn match_semantics_table() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - match: [{uri: {regex: \"/reviews/[0-9]+\"}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{uri: {exact: /exact}}, {uri: {prefix: /p/}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - match: [{headers: {x-a: {prefix: pre}, x-b: {}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - match: [{queryParams: {v: {exact: \"3\"}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - match: [{queryParams: {lang: {prefix: en}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{method: {exact: POST}, withoutHeaders: {x-skip: {}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
        )],
    );
    let mut rng = StdRng::seed_from_u64(3);
    let q = |path: &'static str, query: Option<&'static str>| Req {
        query,
        ..req("reviews:9080", path)
    };
    let post = |skip: bool| {
        let r = Req {
            method: "POST",
            ..req("reviews:9080", "/other")
        };
        if skip { r.header("x-skip", "1") } else { r }
    };
    // (request, expected subset)
    let table = [
        (req("reviews:9080", "/reviews/12"), "v2"),
        // regex is a full match, not a search
        (req("reviews:9080", "/reviews/12/x"), "v1"),
        (req("reviews:9080", "/api/reviews/12"), "v1"),
        (req("reviews:9080", "/exact"), "v3"),
        (req("reviews:9080", "/exact/"), "v1"),
        (req("reviews:9080", "/p/x"), "v3"),
        (req("reviews:9080", "/p"), "v1"),
        // headers: all conditions of a block (prefix and presence)
        (
            req("reviews:9080", "/h")
                .header("x-a", "prefix")
                .header("x-b", ""),
            "v3",
        ),
        (req("reviews:9080", "/h").header("x-a", "prefix"), "v1"),
        (
            req("reviews:9080", "/h")
                .header("X-A", "pre")
                .header("X-B", "1"),
            "v3",
        ),
        // the query string is not part of the uri match
        (q("/reviews/1", Some("x=1")), "v2"),
        (q("/q", Some("v=3")), "v3"),
        (q("/q", Some("v=33")), "v1"),
        // a query parameter by prefix (Envoy's string matcher), on its first value
        (q("/q", Some("lang=en-GB")), "v2"),
        (q("/q", Some("lang=fr&lang=en")), "v1"),
        (post(false), "v2"),
        (post(true), "v1"),
    ];
    for (r, want) in table {
        let got = land(&mesh, &r, &mut rng).unwrap().0.unwrap();
        assert_eq!(
            got, want,
            "{} {} {:?} {:?}",
            r.method, r.path, r.query, r.headers
        );
    }
}

#[test]
fn first_match_wins_and_prefix_slash_catches_all() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - match: [{uri: {exact: /reviews/0}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n",
        )],
    );
    let mut rng = StdRng::seed_from_u64(4);
    for p in ["/reviews/0", "/", "/anything"] {
        assert_eq!(
            land(&mesh, &req("reviews:9080", p), &mut rng)
                .unwrap()
                .0
                .as_deref(),
            Some("v3")
        );
    }
}

#[test]
fn no_rule_matched_is_an_error_not_a_default_route() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - match: [{uri: {exact: /only}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n",
        )],
    );
    let mut rng = StdRng::seed_from_u64(5);
    assert_eq!(
        land(&mesh, &req("reviews:9080", "/other"), &mut rng).unwrap_err(),
        RouteError::NoRouteMatched
    );
}

#[test]
fn weight_zero_takes_nothing_and_a_missing_subset_has_no_endpoints() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n      weight: 100\n",
        )],
    );
    let got = shares(&mesh, 2000, 6);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["v2"]);
    // ratings subset v2 exists in destination-rule-all but selects no workload
    let mut rng = StdRng::seed_from_u64(6);
    let l = Labels::new();
    let src = Caller {
        namespace: "default",
        labels: &l,
        gateway: None,
    };
    let mesh = compile(bookinfo(), &[sample("virtual-service-ratings-db.yaml")]);
    let r = req("ratings:9080", "/ratings/0");
    let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
    let Outcome::Forward {
        upstream: Upstream::Cluster(c),
        ..
    } = d.outcome
    else {
        panic!("not forwarded")
    };
    assert_eq!(c.key.subset.as_deref(), Some("v2"));
    assert!(c.endpoints.is_empty());
    assert!(
        c.pick(
            &mesh_core::balance::Idle,
            &mut mesh_core::balance::Pick::new(&mut rng)
        )
        .is_none()
    );
}

#[test]
fn source_labels_namespace_and_gateways() {
    let mesh = compile(
        bookinfo(),
        &[
            sample("bookinfo-gateway.yaml"),
            vs(
                "  - match: [{sourceLabels: {app: productpage}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{sourceNamespace: prod}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
            ),
        ],
    );
    let mut rng = StdRng::seed_from_u64(7);
    let r = req("reviews.default:9080", "/");
    let pp = labels(&[("app", "productpage")]);
    let other = labels(&[("app", "ratings")]);
    let ingress_routes = gateway_routes(&mesh, "istio-system");
    let route = |ns: &str, l: &Labels, gw: Option<&str>, r: &Req, rng: &mut StdRng| {
        let src = Caller {
            namespace: ns,
            labels: l,
            gateway: None,
        };
        match gw {
            None => mesh.route(&r.head(), &src, rng),
            // Through a gateway workload the Gateway selects.
            Some(_) => ingress_routes.route(&mesh, None, &r.head(), ns, &ingress_labels(), rng),
        }
    };
    let subset = |d: mesh_core::Decision<'_>| match d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => c.key.subset.as_deref().map(String::from),
        _ => None,
    };
    assert_eq!(
        subset(route("default", &pp, None, &r, &mut rng).unwrap()).as_deref(),
        Some("v2")
    );
    assert_eq!(
        subset(route("prod", &other, None, &r, &mut rng).unwrap()).as_deref(),
        Some("v3")
    );
    assert_eq!(
        subset(route("default", &other, None, &r, &mut rng).unwrap()).as_deref(),
        Some("v1")
    );
    // Through the ingress gateway, the gateway's VirtualService applies, by path.
    let ingress = req("bookinfo.example.com", "/productpage");
    let d = route(
        "istio-system",
        &other,
        Some("default/bookinfo-gateway"),
        &ingress,
        &mut rng,
    )
    .unwrap();
    assert_eq!(d.virtual_service.unwrap().name.as_ref(), "default/bookinfo");
    match d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => assert_eq!(&*c.key.host, "productpage.default.svc.cluster.local"),
        other => panic!("{other:?}"),
    }
    let nope = req("bookinfo.example.com", "/admin");
    assert_eq!(
        route(
            "istio-system",
            &other,
            Some("default/bookinfo-gateway"),
            &nope,
            &mut rng
        )
        .unwrap_err(),
        RouteError::NoRouteMatched
    );
}

#[test]
fn rule_locations_point_at_the_file() {
    let mesh = compile(
        bookinfo(),
        &[sample("virtual-service-reviews-test-v2.yaml")],
    );
    let mut rng = StdRng::seed_from_u64(8);
    let l = Labels::new();
    let src = Caller {
        namespace: "default",
        labels: &l,
        gateway: None,
    };
    let r = req("reviews:9080", "/").header("end-user", "jason");
    let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
    let rule = d.rule.unwrap().1;
    assert!(
        rule.origin
            .location()
            .ends_with("virtual-service-reviews-test-v2.yaml:9"),
        "{}",
        rule.origin.location()
    );
    assert_eq!(&*rule.origin.virtual_service, "default/reviews");
    let r = req("reviews:9080", "/");
    let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
    let rule = d.rule.unwrap().1;
    assert!(
        rule.origin.location().ends_with(":17"),
        "{}",
        rule.origin.location()
    );
}

#[test]
fn unknown_hosts_follow_the_outbound_policy() {
    let mesh = compile(bookinfo(), &[]);
    let mut rng = StdRng::seed_from_u64(9);
    let r = req("example.org:8080", "/");
    assert_eq!(
        land(&mesh, &r, &mut rng).unwrap().0.as_deref(),
        Some("passthrough")
    );
    let strict = yaml(
        "apiVersion: mesh.rs/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n",
    );
    let mesh = compile(bookinfo(), &[strict]);
    assert_eq!(
        land(&mesh, &r, &mut rng).unwrap_err(),
        RouteError::RegistryOnly("example.org".into())
    );
}

#[test]
fn delegated_rules_apply_under_the_root_match() {
    let mesh = compile(
        bookinfo(),
        &[yaml(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    delegate: {name: reviews-api}\n  - route: [{destination: {host: reviews, subset: v1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-api}\nspec:\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - route: [{destination: {host: reviews, subset: v2}}]\n",
        )],
    );
    let mut rng = StdRng::seed_from_u64(10);
    let table = [
        (
            req("reviews:9080", "/api/x").header("end-user", "jason"),
            "v3",
        ),
        (req("reviews:9080", "/api/x"), "v2"),
        (
            req("reviews:9080", "/other").header("end-user", "jason"),
            "v1",
        ),
    ];
    for (r, want) in table {
        assert_eq!(
            land(&mesh, &r, &mut rng).unwrap().0.as_deref(),
            Some(want),
            "{}",
            r.path
        );
    }
}

#[test]
fn pseudo_header_matches() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - match: [{headers: {\":authority\": {prefix: reviews.default}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{headers: {\":method\": {exact: DELETE}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
        )],
    );
    let mut rng = StdRng::seed_from_u64(11);
    assert_eq!(
        land(&mesh, &req("reviews.default:9080", "/"), &mut rng)
            .unwrap()
            .0
            .as_deref(),
        Some("v2")
    );
    let del = Req {
        method: "DELETE",
        ..req("reviews:9080", "/")
    };
    assert_eq!(
        land(&mesh, &del, &mut rng).unwrap().0.as_deref(),
        Some("v3")
    );
    assert_eq!(
        land(&mesh, &req("reviews:9080", "/"), &mut rng)
            .unwrap()
            .0
            .as_deref(),
        Some("v1")
    );
}

const REVIEWS_IN_TWO_NAMESPACES: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  exportTo: [.]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: pick, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: client}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: pick, labels: {version: v2}}]
";

/// What a request lands on: the cluster's DestinationRule and subset, or another
/// upstream kind.
fn landing(d: &mesh_core::Decision<'_>) -> String {
    match &d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => format!(
            "{}|{}|{}",
            c.key.host,
            c.key.subset.as_deref().unwrap_or(""),
            c.key.rule.as_deref().unwrap_or("")
        ),
        Outcome::Forward {
            upstream: Upstream::Passthrough { host, port },
            ..
        } => format!("passthrough {host}:{port}"),
        Outcome::Forward {
            upstream: Upstream::Missing { host, subset },
            ..
        } => format!("missing {host}|{}", subset.as_deref().unwrap_or("")),
        other => format!("{other:?}"),
    }
}

/// H4: the caller's namespace decides which service a destination names and which
/// DestinationRule applies (Istio: the caller's namespace, then the service's, then the
/// root), with or without a VirtualService, wherever the VirtualService lives.
#[test]
fn destinations_resolve_from_the_callers_namespace() {
    let vs_in_default = yaml(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews.default.svc.cluster.local, ratings.default.svc.cluster.local]\n  http:\n  - match: [{uri: {prefix: /ratings}}]\n    route: [{destination: {host: ratings.default.svc.cluster.local}}]\n  - match: [{uri: {prefix: /pick}}]\n    route: [{destination: {host: reviews.default.svc.cluster.local, subset: pick}}]\n  - route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
    );
    let without = compile(yaml(REVIEWS_IN_TWO_NAMESPACES), &[]);
    let with = compile(yaml(REVIEWS_IN_TWO_NAMESPACES), &[vs_in_default]);
    let l = Labels::new();
    let mut rng = StdRng::seed_from_u64(12);
    let h = "reviews.default.svc.cluster.local";
    // (mesh, caller namespace, path, landing)
    let table = [
        (&without, "client", "/", format!("{h}||client/reviews")),
        (&with, "client", "/", format!("{h}||client/reviews")),
        (&with, "client", "/pick", format!("{h}|pick|client/reviews")),
        (&without, "default", "/", format!("{h}||default/reviews")),
        (&with, "default", "/", format!("{h}||default/reviews")),
        (
            &with,
            "default",
            "/pick",
            format!("{h}|pick|default/reviews"),
        ),
        (&with, "other", "/pick", format!("{h}|pick|default/reviews")),
        // ratings is exported to its own namespace only: the caller in client does
        // not see it, even through a VirtualService in default
        (
            &with,
            "client",
            "/ratings",
            "passthrough ratings.default.svc.cluster.local:9080".into(),
        ),
        (
            &with,
            "default",
            "/ratings",
            "ratings.default.svc.cluster.local||".into(),
        ),
    ];
    for (mesh, ns, path, want) in table {
        let src = Caller {
            namespace: ns,
            labels: &l,
            gateway: None,
        };
        let r = req("reviews.default:9080", path);
        let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
        assert_eq!(landing(&d), want, "from {ns} {path}");
        // the subset picked selects the endpoint the caller's DestinationRule says
        if path == "/pick" {
            let Outcome::Forward {
                upstream: Upstream::Cluster(c),
                ..
            } = &d.outcome
            else {
                panic!()
            };
            let want_ep = if ns == "client" {
                "10.0.0.2"
            } else {
                "10.0.0.1"
            };
            assert_eq!(&*c.endpoints[0].address, want_ep);
        }
        // explain resolves from the caller's namespace too
        let e = mesh_core::explain::explain(
            &view(mesh, src.namespace, src.labels),
            &r.head(),
            Via::Mesh,
            &mut rng,
        );
        assert_eq!(e.error, None);
        assert!(e.destinations.iter().all(|d| d.port == 9080), "{e:?}");
    }
}

/// M3: among VirtualServices for one host, a caller sees those private to its namespace
/// first, then those exported to it by name, then public ones; the first loaded within
/// each. (Mesh-bound duplicates are rejected by validation, IST0109; gateway-bound ones
/// are not, and the gateway's namespace is the caller's.)
#[test]
fn virtual_service_precedence_follows_the_callers_namespace() {
    let vs = |name: &str, ns: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [shop.example.com]\n  gateways: [istio-system/gw]\n  exportTo: {export}\n  http:\n  - route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]\n---\n"
        )
    };
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*/*']}]\n---\n";
    // (VirtualServices in load order, gateway namespace, VirtualService chosen)
    /// (name, namespace, exportTo)
    type Vs<'a> = (&'a str, &'a str, &'a str);
    let cases: &[(&[Vs<'_>], &str, &str)] = &[
        // private to the caller's namespace wins over public ones loaded earlier
        (
            &[
                ("public", "default", "['*']"),
                ("public-here", "gwns", "['*']"),
                ("to-gwns", "other", "[gwns]"),
                ("private", "gwns", "[.]"),
            ],
            "gwns",
            "gwns/private",
        ),
        // exported to itself by name is private too
        (
            &[
                ("public", "default", "['*']"),
                ("private", "gwns", "[gwns]"),
            ],
            "gwns",
            "gwns/private",
        ),
        // exported by name before public, load order within a class
        (
            &[
                ("public", "default", "['*']"),
                ("to-gwns", "other", "[x, gwns]"),
                ("to-gwns-2", "third", "[gwns]"),
            ],
            "gwns",
            "other/to-gwns",
        ),
        // a public VirtualService in the caller's namespace is just public
        (
            &[
                ("public", "default", "['*']"),
                ("public-here", "gwns", "['*']"),
            ],
            "gwns",
            "default/public",
        ),
        // neither private nor exported to this namespace: the public one
        (
            &[
                ("public", "default", "['*']"),
                ("to-x", "other", "[x]"),
                ("private", "third", "[.]"),
            ],
            "gwns",
            "default/public",
        ),
        (
            &[
                ("public", "default", "['*']"),
                ("to-x", "other", "[x]"),
                ("private", "third", "[.]"),
            ],
            "x",
            "other/to-x",
        ),
        (
            &[
                ("public", "default", "['*']"),
                ("to-x", "other", "[x]"),
                ("private", "third", "[.]"),
            ],
            "third",
            "third/private",
        ),
    ];
    for (vss, gw_ns, want) in cases {
        let mut text = gateway.to_string();
        for (name, ns, export) in *vss {
            text += &vs(name, ns, export);
        }
        let mesh = compile(yaml(REVIEWS_IN_TWO_NAMESPACES), &[yaml(&text)]);
        let mut rng = StdRng::seed_from_u64(15);
        let routes = gateway_routes(&mesh, gw_ns);
        let d = routes
            .route(
                &mesh,
                None,
                &req("shop.example.com", "/").head(),
                gw_ns,
                &ingress_labels(),
                &mut rng,
            )
            .unwrap();
        assert_eq!(
            d.virtual_service.map(|v| v.name.to_string()).as_deref(),
            Some(*want),
            "{vss:?} from {gw_ns}"
        );
    }
}

/// NC: a subset the DestinationRule applying to the caller does not define, or a port
/// the service lacks, is `Upstream::Missing` (Envoy: 503 with an empty body, flag NC) —
/// no cluster is built per request.
#[test]
fn undefined_subsets_and_ports_are_missing_clusters() {
    let extra = yaml(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: default}\nspec:\n  host: ratings.default.svc.cluster.local\n  subsets: [{name: only-default}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: client}\nspec:\n  host: ratings.default.svc.cluster.local\n  exportTo: [.]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: details, namespace: default}\nspec:\n  hosts: [details.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9081, name: http-alt, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.4}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings, namespace: default}\nspec:\n  hosts: [ratings.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: ratings.default.svc.cluster.local, subset: only-default}}]\n",
    );
    let mut set = yaml(REVIEWS_IN_TWO_NAMESPACES);
    // ratings exported everywhere for this test
    set.apply(yaml(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ratings, namespace: default}\nspec:\n  hosts: [ratings.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.3}]\n",
    ));
    let mesh = compile(set, &[extra]);
    let l = Labels::new();
    let mut rng = StdRng::seed_from_u64(13);
    let ratings = "ratings.default.svc.cluster.local";
    let details = "details.default.svc.cluster.local";
    // (caller namespace, authority, landing)
    let table = [
        // default's rule defines the subset
        (
            "default",
            "ratings.default:9080",
            format!("{ratings}|only-default|default/ratings"),
        ),
        // client's own rule applies to a caller in client, and lacks it
        (
            "client",
            "ratings.default:9080",
            format!("missing {ratings}|only-default"),
        ),
        // a port details does not have
        ("default", "details:7000", format!("missing {details}|")),
        ("default", "details:9081", format!("{details}||")),
        // no VirtualService: the request's port, which reviews lacks
        (
            "default",
            "reviews.default:7000",
            "missing reviews.default.svc.cluster.local|".into(),
        ),
    ];
    for (ns, authority, want) in table {
        let src = Caller {
            namespace: ns,
            labels: &l,
            gateway: None,
        };
        for _ in 0..2 {
            let d = mesh
                .route(&req(authority, "/").head(), &src, &mut rng)
                .unwrap();
            assert_eq!(landing(&d), want, "from {ns} to {authority}");
        }
        // explain names the port the runtime uses
        let head = req(authority, "/");
        let e = mesh_core::explain::explain(
            &view(&mesh, src.namespace, src.labels),
            &head.head(),
            Via::Mesh,
            &mut rng,
        );
        let port: u16 = authority.rsplit_once(':').unwrap().1.parse().unwrap();
        let want_port = if authority.starts_with("ratings") {
            9080
        } else {
            port
        };
        assert_eq!(e.destinations[0].port, want_port, "{e:?}");
    }
    assert!(matches!(
        mesh.upstream(ratings, Some("v9"), 0, 9080, "default"),
        Ok(Upstream::Missing { subset: Some(s), .. }) if &*s == "v9"
    ));
    // no cluster was added for them
    assert!(mesh.clusters().iter().all(|c| c.key.port != 7000));
}

/// M4 and L1 through the router: a redirect to https keeps a non-default port, and
/// `withoutHeaders` with a catch-all regex does not match a request without the header.
#[test]
fn redirect_and_without_headers_through_the_router() {
    let mesh = compile(
        bookinfo(),
        &[vs(
            "  - match: [{uri: {prefix: /old}}]\n    redirect: {scheme: https}\n  - match: [{withoutHeaders: {x-debug: {regex: '.*'}}}]\n    directResponse: {status: 418}\n  - match: [{withoutHeaders: {x-trace: {}}}]\n    directResponse: {status: 204}\n  - directResponse: {status: 200}\n",
        )],
    );
    let l = Labels::new();
    let src = Caller {
        namespace: "default",
        labels: &l,
        gateway: None,
    };
    let mut rng = StdRng::seed_from_u64(14);
    let r = req("reviews:9080", "/old");
    let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
    let Outcome::Redirect(redirect) = d.outcome else {
        panic!("{:?}", d.outcome)
    };
    assert_eq!(
        redirect.location(&r.head(), None),
        "https://reviews:9080/old"
    );
    // (request, status)
    let table = [
        (req("reviews:9080", "/"), 204),
        (req("reviews:9080", "/").header("x-trace", "1"), 200),
        (
            req("reviews:9080", "/")
                .header("x-trace", "1")
                .header("x-debug", "1"),
            200,
        ),
    ];
    for (r, want) in table {
        let d = mesh.route(&r.head(), &src, &mut rng).unwrap();
        let Outcome::Direct(dr) = d.outcome else {
            panic!("{:?}", d.outcome)
        };
        assert_eq!(dr.status, want, "{:?}", r.headers);
    }
}

/// An endpoint with a network and no address (Istio reaches it through its network's
/// gateway; the mesh has none) is not in its cluster: nothing could connect to it.
#[test]
fn an_endpoint_without_an_address_is_skipped() {
    let mesh = compile(
        yaml(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: remote, namespace: default}
spec:
  hosts: [remote.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.7}
  - {network: network-2}
",
        ),
        &[],
    );
    let c = cluster_for(&mesh, req("remote.example.com", "/"));
    let addresses: Vec<&str> = c.endpoints.iter().map(|e| &*e.address).collect();
    assert_eq!(addresses, ["10.0.0.7"]);
}

/// The cluster a request from an unlabelled workload in `default` is forwarded to.
fn cluster_for(mesh: &CompiledMesh, r: Req) -> std::sync::Arc<mesh_core::cluster::Cluster> {
    let l = Labels::new();
    let src = Caller {
        namespace: "default",
        labels: &l,
        gateway: None,
    };
    let d = mesh
        .route(&r.head(), &src, &mut StdRng::seed_from_u64(8))
        .unwrap();
    match d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => c.clone(),
        _ => panic!("not forwarded to a cluster"),
    }
}
