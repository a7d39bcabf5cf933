//! Table-driven: each case is a set of policies, a workload, a request and Istio's
//! decision for it (allowed or not, and the policy that decided).

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

use super::*;

mod fields;

fn policies(yaml: &str) -> Vec<Arc<Policy>> {
    crate::test_support::snapshot(yaml)
        .authorization_policies()
        .iter()
        .map(|r| Arc::new(Policy::compile(r)))
        .collect()
}

fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// A request to the `httpbin` workload (labels app=httpbin, version=v1) in `foo`.
#[derive(Clone)]
struct Req {
    ns: &'static str,
    labels: &'static [(&'static str, &'static str)],
    peer: Option<&'static str>,
    source_ip: &'static str,
    remote_ip: Option<&'static str>,
    destination_ip: &'static str,
    port: u16,
    sni: Option<&'static str>,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    jwt: Option<(&'static str, &'static str)>,
    claims: &'static [(&'static str, Claim)],
}

const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const BAR: &str = "spiffe://cluster.local/ns/bar/sa/client";
const OTHER_TD: &str = "spiffe://other.domain/ns/foo/sa/sleep";

fn req() -> Req {
    Req {
        ns: "foo",
        labels: &[("app", "httpbin"), ("version", "v1")],
        peer: Some(SLEEP),
        source_ip: "10.0.0.5",
        remote_ip: None,
        destination_ip: "10.0.1.1",
        port: 8000,
        sni: None,
        method: "GET",
        host: "httpbin.foo:8000",
        path: "/get",
        headers: &[],
        jwt: None,
        claims: &[],
    }
}

/// Decides `r` under `all` (root namespace `istio-system`): (allowed, deciding policy).
fn decide_with(all: &[Arc<Policy>], r: &Req) -> (bool, Option<String>) {
    let labels: Labels = r
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let authz = Authorizer::for_workload(all, "istio-system", r.ns, &labels);
    let mut headers = HeaderMap::new();
    for (k, v) in r.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_static(v),
        );
    }
    let auth = r.jwt.map(|(iss, sub)| RequestAuth {
        issuer: iss.into(),
        subject: sub.into(),
        claims: r
            .claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    });
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let q = AuthzRequest {
        peer: r.peer,
        source_ip: ip(r.source_ip),
        remote_ip: r.remote_ip.map(ip),
        destination_ip: ip(r.destination_ip),
        destination_port: r.port,
        sni: r.sni,
        method: r.method,
        host: r.host,
        path: r.path,
        headers: &headers,
        auth: auth.as_ref(),
    };
    if let Some(p) = authz.custom(&q) {
        return (false, Some(format!("custom:{}", p.name())));
    }
    let v = authz.decide(&q);
    (v.allowed, v.policy.map(|p| p.name().to_string()))
}

fn s(v: &str) -> Claim {
    Claim::Str(v.into())
}

type Case = (&'static str, Req, bool, Option<&'static str>);

fn run(yaml: &str, cases: Vec<Case>) {
    let all = policies(yaml);
    for (what, r, allowed, policy) in cases {
        let got = decide_with(&all, &r);
        assert_eq!(
            got,
            (allowed, policy.map(String::from)),
            "{what}: (allowed, policy)"
        );
    }
}

#[test]
fn scoping_and_actions() {
    let yaml = [
        // Root namespace, no selector: every workload.
        ap(
            "istio-system",
            "deny-evil",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/evil]}}]}]",
        ),
        // Root namespace with a selector: selected workloads in every namespace.
        ap(
            "istio-system",
            "deny-admin-on-httpbin",
            "  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]",
        ),
        // Namespace-wide ALLOW in foo.
        ap(
            "foo",
            "allow-get",
            "  rules: [{to: [{operation: {methods: [GET]}}]}]",
        ),
        // Workload policy in foo.
        ap(
            "foo",
            "allow-post-v2",
            "  selector: {matchLabels: {version: v2}}\n  rules: [{to: [{operation: {methods: [POST]}}]}]",
        ),
        // Another namespace's policy never applies to foo.
        ap(
            "bar",
            "deny-all-bar",
            "  action: DENY\n  rules: [{}]",
        ),
        // AUDIT has no effect on the decision.
        ap(
            "foo",
            "audit-everything",
            "  action: AUDIT\n  rules: [{}]",
        ),
        // A policy attached by targetRef does not apply by namespace.
        ap(
            "foo",
            "attached",
            "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n  action: DENY\n  rules: [{}]",
        ),
    ]
    .concat();
    let v2 = Req {
        labels: &[("app", "httpbin"), ("version", "v2")],
        ..req()
    };
    let in_bar = Req { ns: "bar", ..req() };
    let other_app = Req {
        labels: &[("app", "reviews")],
        ..req()
    };
    run(
        &yaml,
        vec![
            (
                "GET matches the namespace ALLOW",
                req(),
                true,
                Some("allow-get"),
            ),
            (
                "POST on v1: ALLOW policies apply, none matches",
                Req {
                    method: "POST",
                    ..req()
                },
                false,
                None,
            ),
            (
                "POST on v2: the workload policy allows",
                Req {
                    method: "POST",
                    ..v2.clone()
                },
                true,
                Some("allow-post-v2"),
            ),
            (
                "root DENY applies in foo",
                Req {
                    path: "/evil",
                    ..req()
                },
                false,
                Some("deny-evil"),
            ),
            (
                "root DENY applies in bar too",
                Req {
                    path: "/evil",
                    ..in_bar.clone()
                },
                false,
                Some("deny-evil"),
            ),
            (
                "root selector picks httpbin in foo",
                Req {
                    path: "/admin",
                    ..req()
                },
                false,
                Some("deny-admin-on-httpbin"),
            ),
            (
                "root selector skips reviews",
                Req {
                    path: "/admin",
                    ..other_app
                },
                true,
                Some("allow-get"),
            ),
            (
                "bar's deny-all applies in bar (DENY before the absent ALLOW)",
                in_bar,
                false,
                Some("deny-all-bar"),
            ),
            (
                "DENY wins over a matching ALLOW",
                Req {
                    path: "/evil",
                    method: "GET",
                    ..v2
                },
                false,
                Some("deny-evil"),
            ),
        ],
    );
}

#[test]
fn no_policy_allows_and_allow_nothing_denies() {
    run(
        &ap("bar", "unrelated", "  rules: [{}]"),
        vec![("no policy applies to foo", req(), true, None)],
    );
    let yaml = ap("foo", "allow-nothing", "  {}");
    run(
        &yaml,
        vec![
            ("spec {} allows nothing", req(), false, None),
            (
                "not even plaintext",
                Req {
                    peer: None,
                    ..req()
                },
                false,
                None,
            ),
        ],
    );
    let yaml = ap("foo", "allow-all", "  rules: [{}]");
    run(
        &yaml,
        vec![(
            "an empty rule matches everything",
            Req {
                peer: None,
                ..req()
            },
            true,
            Some("allow-all"),
        )],
    );
}

#[test]
fn dry_run_enforces_nothing() {
    let yaml = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry-deny\n  namespace: foo\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n";
    let all = policies(yaml);
    let labels: Labels = [("app".to_string(), "httpbin".to_string())].into();
    let authz = Authorizer::for_workload(&all, "istio-system", "foo", &labels);
    let headers = HeaderMap::new();
    let q = AuthzRequest {
        peer: None,
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: None,
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 80,
        sni: None,
        method: "GET",
        host: "h",
        path: "/",
        headers: &headers,
        auth: None,
    };
    let v = authz.decide(&q);
    assert!(v.allowed && v.policy.is_none(), "enforced: {v:?}");
    let shadow = authz.dry_run(&q).expect("a shadow result");
    assert!(!shadow.allowed);
    assert_eq!(shadow.policy.map(Policy::name), Some("dry-deny"));
}

#[test]
fn custom_comes_first() {
    let yaml = [
        ap(
            "foo",
            "ext-authz",
            "  action: CUSTOM\n  provider: {name: my-authz}\n  rules: [{to: [{operation: {paths: [\"/ext/*\"]}}]}]",
        ),
        ap("foo", "allow-all", "  rules: [{}]"),
    ]
    .concat();
    let all = policies(&yaml);
    assert_eq!(
        decide_with(
            &all,
            &Req {
                path: "/ext/a",
                ..req()
            }
        ),
        (false, Some("custom:ext-authz".into()))
    );
    assert_eq!(decide_with(&all, &req()), (true, Some("allow-all".into())));
    assert_eq!(all[0].provider(), Some("my-authz"));
}

#[test]
fn request_principal_forms_follow_istio() {
    let cases = [
        ("*", ("a", "b"), true),
        ("iss/sub", ("iss", "sub"), true),
        ("iss/sub", ("iss", "other"), false),
        ("*/sub", ("anything", "sub"), true),
        ("*suffix/sub", ("my-suffix", "sub"), true),
        ("*suffix/sub", ("my-suffix", "x"), false),
        ("iss/*", ("iss", "x"), true),
        ("iss/pre*", ("iss", "prefix"), true),
        ("iss/pre*", ("iss", "other"), false),
        ("*tail", ("x", "my-tail"), true),
        ("head*", ("header-issuer", "anything"), true),
        ("plain", ("plain", ""), true),
        ("plain", ("plain", "sub"), false),
        ("https://a.b/c/sub", ("https://a.b/c", "sub"), true),
    ];
    for (pattern, (iss, sub), want) in cases {
        let (i, s) = request_principal(pattern);
        assert_eq!(
            i.matches(iss) && s.matches(sub),
            want,
            "{pattern} ~ {iss}/{sub}"
        );
    }
}

#[test]
fn each_workload_view_holds_the_policies_that_select_it() {
    let yaml = [
        ap(
            "foo",
            "deny-httpbin",
            "  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules: [{}]",
        ),
        ap(
            "istio-system",
            "root-audit",
            "  action: AUDIT\n  rules: [{}]",
        ),
    ]
    .concat();
    let mesh = Arc::new(crate::CompiledMesh::compile(
        &crate::test_support::snapshot(&yaml),
    ));
    assert_eq!(mesh.authorization_policies().len(), 2);
    let view = |name: &str, app: &str| {
        let w = crate::Workload::new(name, "foo").labels([("app", app)]);
        crate::WorkloadView::compile(mesh.clone(), Arc::new(w), crate::Role::Sidecar)
    };
    let httpbin = view("httpbin-v1", "httpbin");
    let reviews = view("reviews-v1", "reviews");
    assert_eq!(httpbin.authorizer().deny.len(), 1);
    assert_eq!(httpbin.authorizer().audit.len(), 1);
    assert!(reviews.authorizer().deny.is_empty());
    assert_eq!(
        reviews.authorizer().audit.len(),
        1,
        "root policies apply everywhere"
    );
    assert!(!reviews.authorizer().is_empty());
}

#[test]
fn envoy_metadata_conditions_never_hold() {
    // Istio turns `experimental.envoy.filters.*` into metadata matchers; in-process the
    // metadata is never there: `values` never hold and `notValues` always do.
    let yaml = [
        ap(
            "foo",
            "deny-values",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/a]}}]\n    when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [\"[update]\"]}]",
        ),
        ap(
            "foo",
            "deny-not-values",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/b]}}]\n    when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", notValues: [\"[update]\"]}]",
        ),
    ]
    .concat();
    run(
        &yaml,
        vec![
            (
                "values never hold",
                Req {
                    path: "/a",
                    ..req()
                },
                true,
                None,
            ),
            (
                "notValues always hold",
                Req {
                    path: "/b",
                    ..req()
                },
                false,
                Some("deny-not-values"),
            ),
        ],
    );
}

#[test]
fn trust_domain_aliases_follow_istio() {
    let yaml = [
        ap(
            "foo",
            "local",
            "  rules:\n  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]\n    to: [{operation: {paths: [/local]}}]",
        ),
        ap(
            "foo",
            "td2",
            "  rules:\n  - from: [{source: {principals: [td2/ns/foo/sa/sleep]}}]\n    to: [{operation: {paths: [/td2]}}]",
        ),
        ap(
            "foo",
            "other",
            "  rules:\n  - from: [{source: {principals: [other/ns/foo/sa/sleep]}}]\n    to: [{operation: {paths: [/other]}}]",
        ),
        ap(
            "foo",
            "domains",
            "  rules:\n  - from: [{source: {trustDomains: [td1]}}]\n    to: [{operation: {paths: [/domains]}}]",
        ),
    ]
    .concat();
    let trust = TrustDomains::new("td1", &["td2".to_string()]);
    let all: Vec<Arc<Policy>> = crate::test_support::snapshot(&yaml)
        .authorization_policies()
        .iter()
        .map(|r| Arc::new(Policy::compile_in(r, &trust)))
        .collect();
    let cases = [
        (
            "cluster.local stands for td1",
            "/local",
            "spiffe://td1/ns/foo/sa/sleep",
            true,
        ),
        (
            "... and its alias td2",
            "/local",
            "spiffe://td2/ns/foo/sa/sleep",
            true,
        ),
        (
            "... not for cluster.local itself",
            "/local",
            "spiffe://cluster.local/ns/foo/sa/sleep",
            false,
        ),
        (
            "an alias stands for the trust domain",
            "/td2",
            "spiffe://td1/ns/foo/sa/sleep",
            true,
        ),
        (
            "another account is not",
            "/td2",
            "spiffe://td1/ns/foo/sa/other",
            false,
        ),
        (
            "a foreign trust domain is kept",
            "/other",
            "spiffe://other/ns/foo/sa/sleep",
            true,
        ),
        (
            "... and not rewritten",
            "/other",
            "spiffe://td1/ns/foo/sa/sleep",
            false,
        ),
        (
            "trustDomains td1 expands to td2",
            "/domains",
            "spiffe://td2/ns/x/sa/y",
            true,
        ),
        (
            "... not to others",
            "/domains",
            "spiffe://td3/ns/x/sa/y",
            false,
        ),
    ];
    for (what, path, peer, want) in cases {
        let leaked: &'static str = Box::leak(peer.to_string().into_boxed_str());
        let leaked_path: &'static str = Box::leak(path.to_string().into_boxed_str());
        let r = Req {
            peer: Some(leaked),
            path: leaked_path,
            ..req()
        };
        assert_eq!(decide_with(&all, &r).0, want, "{what}");
    }
}

#[test]
fn dry_run_annotation_is_a_go_boolean() {
    for (value, dry) in [
        ("true", true),
        ("1", true),
        ("T", true),
        ("True", true),
        ("false", false),
        ("0", false),
        ("tRuE", false),
        ("yes", false),
    ] {
        let yaml = format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n  annotations: {{istio.io/dry-run: \"{value}\"}}\nspec:\n  action: DENY\n  rules: [{{}}]\n"
        );
        let invalid = value == "tRuE" || value == "yes";
        let mut set = mesh_config::ConfigSet::new();
        set.add_str("p.yaml", &yaml);
        // Validation refuses what Go's ParseBool refuses, as Istio's webhook does ...
        assert_eq!(set.check().has_errors(), invalid, "{value}");
        // ... and a policy that reaches the runtime unvalidated is enforced, with a note.
        let all: Vec<Arc<Policy>> = set
            .resources()
            .iter()
            .filter_map(|r| match r {
                mesh_config::model::AnyResource::AuthorizationPolicy(ap) => {
                    Some(Arc::new(Policy::compile(ap)))
                }
                _ => None,
            })
            .collect();
        assert_eq!(all[0].dry_run(), dry, "{value}");
        assert_eq!(
            decide_with(&all, &req()).0,
            dry,
            "{value}: enforced unless dry-run"
        );
        assert_eq!(all[0].dropped().len(), usize::from(invalid), "{value}");
    }
}

#[test]
fn pseudo_headers_normalized_paths_and_odd_identities() {
    let yaml = [
        ap(
            "foo",
            "deny-path-header",
            "  action: DENY\n  rules: [{when: [{key: \"request.headers[:path]\", values: [\"/get?secret*\"]}]}]",
        ),
        ap(
            "foo",
            "deny-authority",
            "  action: DENY\n  rules: [{when: [{key: \"request.headers[:authority]\", values: [evil.example]}]}]",
        ),
        ap(
            "foo",
            "deny-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
        ),
        ap(
            "foo",
            "deny-sa-namespace",
            "  action: DENY\n  rules: [{from: [{source: {serviceAccounts: [sa/bar]}}]}]",
        ),
    ]
    .concat();
    run(
        &yaml,
        vec![
            (
                "the :path header has the query",
                Req {
                    path: "/get?secret=1",
                    ..req()
                },
                false,
                Some("deny-path-header"),
            ),
            (
                "paths are matched without it",
                Req {
                    path: "/get?x=1",
                    ..req()
                },
                true,
                None,
            ),
            (
                "the :authority header is the host",
                Req {
                    host: "evil.example",
                    ..req()
                },
                false,
                Some("deny-authority"),
            ),
            (
                "dot segments are resolved",
                Req {
                    path: "/public/../admin",
                    ..req()
                },
                false,
                Some("deny-admin"),
            ),
            (
                "encoded dot segments too",
                Req {
                    path: "/public/%2e%2e/admin",
                    ..req()
                },
                false,
                Some("deny-admin"),
            ),
            (
                "a namespace named sa",
                Req {
                    peer: Some("spiffe://cluster.local/ns/sa/sa/bar"),
                    ..req()
                },
                false,
                Some("deny-sa-namespace"),
            ),
            (
                "its other accounts",
                Req {
                    peer: Some("spiffe://cluster.local/ns/sa/sa/baz"),
                    ..req()
                },
                true,
                None,
            ),
        ],
    );
}

#[test]
fn the_index_keeps_configuration_order() {
    // Five ALLOW policies that all match, each filed differently (by principal, exact
    // path, path prefix, namespace, not at all). The first in configuration order
    // decides.
    let by_principal = ap(
        "foo",
        "by-principal",
        "  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]",
    );
    let by_exact = ap(
        "foo",
        "by-exact-path",
        "  rules: [{to: [{operation: {paths: [/get]}}]}]",
    );
    let by_prefix = ap(
        "foo",
        "by-prefix",
        "  rules: [{to: [{operation: {paths: [\"/g*\"]}}]}]",
    );
    let unindexed = ap(
        "foo",
        "unindexed",
        "  rules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    let by_namespace = ap(
        "foo",
        "by-namespace",
        "  rules: [{from: [{source: {namespaces: [foo]}}]}]",
    );
    let all = [
        &by_principal,
        &by_exact,
        &by_prefix,
        &by_namespace,
        &unindexed,
    ];
    for first in 0..all.len() {
        let mut order: Vec<&String> = all.to_vec();
        order.rotate_left(first);
        let yaml: String = order.iter().map(|s| s.as_str()).collect();
        let want = [
            "by-principal",
            "by-exact-path",
            "by-prefix",
            "by-namespace",
            "unindexed",
        ][first];
        run(&yaml, vec![("first in order", req(), true, Some(want))]);
        // A request only the unindexed one matches still finds it.
        run(
            &yaml,
            vec![(
                "only the unindexed one",
                Req {
                    peer: Some(BAR),
                    path: "/other",
                    ..req()
                },
                true,
                Some("unindexed"),
            )],
        );
    }
}

#[test]
fn custom_policies_of_two_providers_deny_what_they_match() {
    let yaml = [
        ap(
            "foo",
            "ext-a",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/a/*\"]}}]}]",
        ),
        ap(
            "foo",
            "ext-b",
            "  action: CUSTOM\n  provider: {name: authz-b}\n  rules: [{to: [{operation: {paths: [\"/b/*\"]}}]}]",
        ),
    ]
    .concat();
    run(
        &yaml,
        vec![
            (
                "a CUSTOM rule denies",
                Req {
                    path: "/a/x",
                    ..req()
                },
                false,
                Some("ext-a"),
            ),
            (
                "the other too",
                Req {
                    path: "/b/x",
                    ..req()
                },
                false,
                Some("ext-b"),
            ),
            (
                "other requests pass",
                Req {
                    path: "/c",
                    ..req()
                },
                true,
                None,
            ),
        ],
    );
    // One provider: its policies ask it (`custom` names the policy).
    let one = ap(
        "foo",
        "ext-a",
        "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/a/*\"]}}]}]",
    );
    run(
        &one,
        vec![(
            "asks the provider",
            Req {
                path: "/a/x",
                ..req()
            },
            false,
            Some("custom:ext-a"),
        )],
    );
}
