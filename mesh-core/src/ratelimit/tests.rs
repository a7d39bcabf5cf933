//! Which rate limits apply to a workload, how per-route settings resolve, and the
//! descriptors requests make (table tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use http::HeaderMap;

use super::*;
use crate::matcher::RequestHead;
use crate::mesh::CompiledMesh;
use crate::test_support::snapshot;
use crate::workload::{Role, Workload, WorkloadView};

/// Bookinfo's productpage and reviews (WorkloadEntries listening on 9081 and 9083 for
/// service port 9080) and an ingress gateway.
const REGISTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage-v1}
spec:
  address: 127.0.0.1
  ports: {http: 9081}
  labels: {app: productpage, version: v1}
  serviceAccount: bookinfo-productpage
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec:
  address: 127.0.0.1
  ports: {http: 9083}
  labels: {app: reviews, version: v1}
  serviceAccount: bookinfo-reviews
";

fn productpage() -> Workload {
    Workload::new("productpage-v1", "default")
        .labels([("app", "productpage"), ("version", "v1")])
        .service_account("bookinfo-productpage")
}

fn reviews() -> Workload {
    Workload::new("reviews-v1", "default")
        .labels([("app", "reviews"), ("version", "v1")])
        .service_account("bookinfo-reviews")
}

fn ingress() -> Workload {
    Workload::new("istio-ingressgateway", "istio-system").labels([("istio", "ingressgateway")])
}

fn view(yaml: &str, w: Workload, role: Role) -> WorkloadView {
    let s = snapshot(&format!("{REGISTRY}---\n{yaml}"));
    let mesh = Arc::new(CompiledMesh::compile(&s));
    assert!(mesh.errors.is_empty(), "{:?}", mesh.errors);
    WorkloadView::compile(mesh, Arc::new(w), role)
}

/// An EnvoyFilter `name` in `ns` (selector `selector`, a YAML flow map or empty)
/// inserting the local rate limit filter (stat prefix = the name) in `context`.
fn local_filter(name: &str, ns: &str, selector: &str, context: &str) -> String {
    let selector = if selector.is_empty() {
        String::new()
    } else {
        format!("  workloadSelector: {{labels: {selector}}}\n")
    };
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: {ns}}}
spec:
{selector}  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: {context}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: {name}
          token_bucket: {{max_tokens: 1, fill_interval: 1s}}
"#
    )
}

/// What the local filters of a view are: `envoy:<key>` or `policy:<key>`, without the
/// workload.
fn filters(v: &WorkloadView) -> Vec<String> {
    v.rate_limits()
        .local()
        .iter()
        .map(|f| {
            let key = match f {
                LocalFilter::Envoy(e) => format!("envoy:{}", e.base().key),
                LocalFilter::Policy(p) => format!("policy:{}", p.key),
            };
            let (_, rest) = key.split_once('|').unwrap();
            let kind = key.split_once(':').unwrap().0;
            format!("{kind}:{}", rest.split('|').next().unwrap())
        })
        .collect()
}

#[test]
fn filters_apply_as_istio_selects_envoy_filters() {
    let yaml = [
        local_filter(
            "root-productpage",
            "istio-system",
            "{app: productpage}",
            "SIDECAR_INBOUND",
        ),
        local_filter("default-all", "default", "", "ANY"),
        local_filter("prod-all", "prod", "", "ANY"),
        local_filter(
            "root-gateway",
            "istio-system",
            "{istio: ingressgateway}",
            "GATEWAY",
        ),
        local_filter("outbound", "default", "", "SIDECAR_OUTBOUND"),
        "apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: everyone, namespace: default}
spec:
  total: {requestsPerSecond: 10}
"
        .to_string(),
    ]
    .join("---\n");
    let table = [
        (
            productpage(),
            Role::Sidecar,
            vec![
                "envoy:EnvoyFilter istio-system/root-productpage",
                "envoy:EnvoyFilter default/default-all",
                "policy:LocalRateLimitPolicy default/everyone",
            ],
        ),
        (
            reviews(),
            Role::Sidecar,
            vec![
                "envoy:EnvoyFilter default/default-all",
                "policy:LocalRateLimitPolicy default/everyone",
            ],
        ),
        // The gateway: GATEWAY patches, no SIDECAR_INBOUND ones; the policy is of
        // another namespace.
        (
            ingress(),
            Role::Gateway,
            vec!["envoy:EnvoyFilter istio-system/root-gateway"],
        ),
    ];
    for (w, role, want) in table {
        let name = w.name.clone();
        assert_eq!(filters(&view(&yaml, w, role)), want, "{name}");
    }
}

#[test]
fn priority_orders_filters_and_insert_first_goes_first() {
    let mut late = local_filter("late", "default", "", "ANY");
    late = late.replace("spec:\n", "spec:\n  priority: 10\n");
    let first =
        local_filter("first", "default", "", "ANY").replace("INSERT_BEFORE", "INSERT_FIRST");
    let yaml = [late, local_filter("early", "default", "", "ANY"), first].join("---\n");
    assert_eq!(
        filters(&view(&yaml, productpage(), Role::Sidecar)),
        [
            "envoy:EnvoyFilter default/first",
            "envoy:EnvoyFilter default/early",
            "envoy:EnvoyFilter default/late",
        ]
    );
}

/// The filter of the task's per-route variant, with route settings `routes` (list
/// items of `configPatches`, indented by 2).
fn per_route(context: &str, routes: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: routes, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: {context}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: base
{routes}"#
    )
}

/// A route settings patch with a per-route configuration of `max` tokens.
fn route_config(apply_to: &str, context: &str, vhost: &str, route: &str, max: u32) -> String {
    format!(
        r#"  - applyTo: {apply_to}
    match:
      context: {context}
      routeConfiguration:
        vhost: {{name: "{vhost}", route: {route}}}
    patch:
      operation: MERGE
      value:
        typed_per_filter_config:
          envoy.filters.http.local_ratelimit:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: r{max}
            token_bucket: {{max_tokens: {max}, fill_interval: 1s}}
"#
    )
}

fn resolved_max(v: &WorkloadView, route: &RouteContext<'_>) -> Option<Option<u32>> {
    let LocalFilter::Envoy(f) = &v.rate_limits().local()[0] else {
        panic!("not an Envoy filter");
    };
    f.resolve(route)
        .map(|i| i.config.token_bucket.map(|b| b.max_tokens))
}

#[test]
fn per_route_settings_resolve_to_the_most_specific() {
    // Inbound: `inbound|http|9080` is productpage's service port, which it listens for
    // on 9081.
    let yaml = per_route(
        "SIDECAR_INBOUND",
        &[
            route_config(
                "VIRTUAL_HOST",
                "SIDECAR_INBOUND",
                "inbound|http|9080",
                "{}",
                4,
            ),
            route_config(
                "HTTP_ROUTE",
                "SIDECAR_INBOUND",
                "inbound|http|9080",
                "{action: ROUTE}",
                5,
            ),
            route_config(
                "HTTP_ROUTE",
                "SIDECAR_INBOUND",
                "inbound|http|9080",
                "{action: REDIRECT}",
                6,
            ),
            route_config(
                "HTTP_ROUTE",
                "SIDECAR_INBOUND",
                "inbound|http|7000",
                "{}",
                7,
            ),
        ]
        .concat(),
    );
    let v = view(&yaml, productpage(), Role::Sidecar);
    let table = [
        (9081, Some(Some(5))),
        (9080, Some(Some(5))),
        // Another port: the filter's own configuration (no token bucket).
        (8080, Some(None)),
        (7000, Some(Some(7))),
    ];
    for (port, want) in table {
        assert_eq!(
            resolved_max(&v, &RouteContext::inbound(port)),
            want,
            "port {port}"
        );
    }
    // The gateway: vhost `host:port`, routes by name and action; no route, no setting.
    let yaml = per_route(
        "GATEWAY",
        &[
            route_config("VIRTUAL_HOST", "GATEWAY", "*:80", "{}", 4),
            route_config("HTTP_ROUTE", "GATEWAY", "*:80", "{name: api}", 5),
            route_config("HTTP_ROUTE", "GATEWAY", "", "{action: DIRECT_RESPONSE}", 6),
            route_config("HTTP_ROUTE", "SIDECAR_INBOUND", "", "{}", 7),
        ]
        .concat(),
    );
    let v = view(&yaml, ingress(), Role::Gateway);
    let table = [
        (
            RouteContext::gateway(80, "*", None, "api", RouteAction::Route),
            Some(Some(5)),
        ),
        (
            RouteContext::gateway(80, "*", None, "", RouteAction::Route),
            Some(Some(4)),
        ),
        (
            RouteContext::gateway(80, "*", None, "", RouteAction::DirectResponse),
            Some(Some(6)),
        ),
        (
            RouteContext::gateway(8080, "*", None, "api", RouteAction::Route),
            Some(None),
        ),
        (
            RouteContext::gateway(80, "bookinfo.com", None, "api", RouteAction::Route),
            Some(None),
        ),
        (RouteContext::unrouted(80), Some(None)),
    ];
    for (route, want) in table {
        assert_eq!(resolved_max(&v, &route), want, "{route:?}");
    }
}

#[test]
fn a_listener_port_match_limits_one_port() {
    let yaml = local_filter("p", "default", "", "SIDECAR_INBOUND").replace(
        "match: {context: SIDECAR_INBOUND}",
        "match: {context: SIDECAR_INBOUND, listener: {portNumber: 9080}}",
    );
    let v = view(&yaml, productpage(), Role::Sidecar);
    for (port, applies) in [(9081, true), (9080, true), (8000, false)] {
        assert_eq!(
            resolved_max(&v, &RouteContext::inbound(port)).is_some(),
            applies,
            "{port}"
        );
    }
}

fn head<'a>(headers: &'a HeaderMap, path: &'a str) -> RequestHead<'a> {
    RequestHead {
        method: "GET",
        scheme: "http",
        authority: "productpage:9080",
        path,
        query: None,
        headers,
        port: 9080,
    }
}

/// Route rate limits with one `generic_key` action per entry (`stage:value`).
fn rate_limits_patch(apply_to: &str, route: &str, keys: &[(u32, &str)]) -> String {
    let value = if apply_to == "VIRTUAL_HOST" {
        ""
    } else {
        "route:\n          "
    };
    let mut limits = String::new();
    for (stage, v) in keys {
        limits.push_str(&format!(
            "\n          - stage: {stage}\n            actions: [{{generic_key: {{descriptor_value: {v}}}}}]"
        ));
    }
    let limits = if apply_to == "VIRTUAL_HOST" {
        limits
    } else {
        limits.replace("\n          ", "\n            ")
    };
    format!(
        r#"  - applyTo: {apply_to}
    match:
      context: SIDECAR_INBOUND
      routeConfiguration: {{vhost: {{name: "inbound|http|9080", route: {route}}}}}
    patch:
      operation: MERGE
      value:
        {value}rate_limits:{limits}
"#
    )
}

#[test]
fn descriptors_follow_the_route_and_virtual_host_rate_limits() {
    let descriptors = |vh: &str| {
        format!(
            r#"          token_bucket: {{max_tokens: 100, fill_interval: 1s}}
          vh_rate_limits: {vh}
          descriptors:
          - entries: [{{key: generic_key, value: slow}}]
            token_bucket: {{max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s}}
          - entries: [{{key: generic_key, value: fast}}]
            token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}}
          - entries: [{{key: generic_key, value: vhost}}]
            token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}}
"#
        )
    };
    let routes = [
        rate_limits_patch(
            "HTTP_ROUTE",
            "{}",
            &[(0, "fast"), (0, "slow"), (1, "other-stage")],
        ),
        rate_limits_patch("VIRTUAL_HOST", "{}", &[(0, "vhost")]),
    ]
    .concat();
    let headers = HeaderMap::new();
    let h = head(&headers, "/productpage");
    let req = DescriptorRequest {
        head: &h,
        remote_address: None,
        destination_cluster: None,
        source_cluster: "productpage.default",
    };
    // (vh_rate_limits, matched descriptor indices: smallest fill rate first)
    let table = [
        ("OVERRIDE", vec![0, 1]),
        ("INCLUDE", vec![0, 1, 2]),
        ("IGNORE", vec![0, 1]),
    ];
    for (vh, want) in table {
        let yaml = per_route("SIDECAR_INBOUND", &routes).replace(
            "          stat_prefix: base\n",
            &format!("          stat_prefix: base\n{}", descriptors(vh)),
        );
        let v = view(&yaml, productpage(), Role::Sidecar);
        let LocalFilter::Envoy(f) = &v.rate_limits().local()[0] else {
            panic!()
        };
        let route = RouteContext::inbound(9081);
        let config = &f.resolve(&route).unwrap().config;
        assert_eq!(f.matched_descriptors(config, &route, &req), want, "{vh}");
    }
    // Without route rate limits, OVERRIDE takes the virtual host's.
    let yaml = per_route(
        "SIDECAR_INBOUND",
        &rate_limits_patch("VIRTUAL_HOST", "{}", &[(0, "vhost")]),
    )
    .replace(
        "          stat_prefix: base\n",
        &format!("          stat_prefix: base\n{}", descriptors("OVERRIDE")),
    );
    let v = view(&yaml, productpage(), Role::Sidecar);
    let LocalFilter::Envoy(f) = &v.rate_limits().local()[0] else {
        panic!()
    };
    let route = RouteContext::inbound(9081);
    let config = &f.resolve(&route).unwrap().config;
    assert_eq!(f.matched_descriptors(config, &route, &req), vec![2]);
}

fn fixture(name: &str) -> String {
    let p = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/ratelimit"
    ))
    .join(name);
    std::fs::read_to_string(p).unwrap()
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
";

#[test]
fn the_global_filter_builds_the_task_descriptors() {
    let yaml = [
        GATEWAY.to_string(),
        fixture("global-ratelimit.yaml"),
        fixture("global-ratelimit-api.yaml").replace("*:8080", "*:80"),
    ]
    .join("---\n");
    let v = view(&yaml, ingress(), Role::Gateway);
    let [g] = v.rate_limits().global() else {
        panic!("{:?}", v.rate_limits().global());
    };
    assert_eq!(&*g.domain, "ratelimit");
    assert!(g.failure_mode_deny);
    assert_eq!(g.timeout, std::time::Duration::from_secs(10));
    assert_eq!(g.rate_limited_status, http::StatusCode::TOO_MANY_REQUESTS);
    let headers = HeaderMap::new();
    let owned = |pairs: &[(&str, &str)]| -> Vec<Descriptor> {
        vec![
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ]
    };
    // (path, route name, descriptors)
    let table: Vec<(&str, &str, Vec<Descriptor>)> = vec![
        // The virtual host's action: the path.
        ("/productpage", "", owned(&[("PATH", "/productpage")])),
        // Route `api` has its own rate limits (the virtual host's are overridden): the
        // regex matches products 1-99 only.
        ("/api/v1/products/7", "api", owned(&[("PATH", "api")])),
        ("/api/v1/products/700", "api", vec![]),
        (
            "/api/v1/products/7",
            "",
            owned(&[("PATH", "/api/v1/products/7")]),
        ),
    ];
    for (path, route_name, want) in table {
        let h = head(&headers, path);
        let req = DescriptorRequest {
            head: &h,
            remote_address: None,
            destination_cluster: None,
            source_cluster: v.rate_limits().source_cluster(),
        };
        let route = RouteContext::gateway(
            80,
            "*",
            Some("default/bookinfo-gateway"),
            route_name,
            RouteAction::Route,
        );
        assert_eq!(g.descriptors(&route, &req), want, "{path} {route_name}");
    }
    // No route matched: no route rate limit, no descriptor.
    let h = head(&headers, "/productpage");
    let req = DescriptorRequest {
        head: &h,
        remote_address: None,
        destination_cluster: None,
        source_cluster: "",
    };
    assert_eq!(
        g.descriptors(&RouteContext::unrouted(80), &req),
        Vec::<Descriptor>::new()
    );
    assert_eq!(
        v.rate_limits().source_cluster(),
        "istio-ingressgateway.istio-system"
    );
}

#[test]
fn policy_callers_are_found_by_spiffe_id_in_every_trust_domain() {
    let yaml = "apiVersion: mesh.rs/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec: {trustDomain: cluster.local, trustDomainAliases: [old.example]}
---
apiVersion: mesh.rs/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: reviews-callers, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  identity: {requestsPerSecond: 2}
  overrides:
  - requestsPerSecond: 5
    clientRefs: [{kind: ServiceAccount, name: bookinfo-productpage}]
  - requestsPerMinute: 30
    burst: 7
    clientRefs: [{kind: ServiceAccount, namespace: other, name: batch}]
";
    let v = view(yaml, reviews(), Role::Sidecar);
    let [LocalFilter::Policy(p)] = v.rate_limits().local() else {
        panic!()
    };
    let table = [
        (
            Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            CallerLimit::Override(0),
        ),
        (
            Some("spiffe://old.example/ns/default/sa/bookinfo-productpage"),
            CallerLimit::Override(0),
        ),
        (
            Some("spiffe://cluster.local/ns/other/sa/batch"),
            CallerLimit::Override(1),
        ),
        (
            Some("spiffe://cluster.local/ns/default/sa/batch"),
            CallerLimit::Identity,
        ),
        (None, CallerLimit::Identity),
    ];
    for (peer, want) in table {
        assert_eq!(p.caller_limit(peer), want, "{peer:?}");
    }
    assert_eq!(p.identity.unwrap().tokens_per_fill, 2);
    let o = p.overrides[1];
    assert_eq!(
        (o.max_tokens, o.tokens_per_fill, o.fill_interval),
        (7, 30, std::time::Duration::from_secs(60))
    );
    assert!(
        p.key
            .starts_with("reviews-v1.default|LocalRateLimitPolicy default/reviews-callers")
    );
}
