//! Cross-resource analysis and the registry, rule by rule: each case is a small
//! configuration and the diagnostics (code and field path) it must — and must not —
//! produce; registry lookups are checked value by value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_config::model::Labels;
use mesh_config::{Checked, Code, ConfigSet};

const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

fn check(docs: &str) -> Checked {
    let mut set = ConfigSet::new();
    set.add_str("case.yaml", docs);
    set.check()
}

fn has(c: &Checked, code: Code, path: &str) -> bool {
    c.diagnostics
        .iter()
        .any(|d| d.code == code && d.path.as_ref().map(|p| p.to_string()).as_deref() == Some(path))
}

fn vs(name: &str, ns: &str, body: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
    )
}

#[test]
fn analysis_table() {
    // (case, extra YAML after the reviews registry, code, path, expected present?)
    let cases: Vec<(&str, String, Code, &str, bool)> = vec![
        (
            "two mesh VirtualServices for one host",
            vs("a", "default", "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n")
                + &vs("b", "default", "  hosts: [reviews.default.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews}}]}]\n"),
            Code::ConflictingMeshGatewayVirtualServiceHosts,
            "spec.hosts[0]",
            true,
        ),
        (
            "conflicting VirtualServices exported to disjoint namespaces do not conflict",
            vs("a", "default", "  hosts: [reviews.default.svc.cluster.local]\n  exportTo: [.]\n  http: [{route: [{destination: {host: reviews}}]}]\n")
                + &vs("b", "prod", "  hosts: [reviews.default.svc.cluster.local]\n  exportTo: [.]\n  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}]}]\n"),
            Code::ConflictingMeshGatewayVirtualServiceHosts,
            "spec.hosts[0]",
            false,
        ),
        (
            "a rule after a catch-all rule",
            vs("a", "default", "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{uri: {prefix: /x}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n"),
            Code::VirtualServiceUnreachableRule,
            "spec.http[1]",
            true,
        ),
        (
            // Istio's analysis takes only a rule without matches as a catch-all, not one
            // with an empty match block.
            "an empty match block is not taken as a catch-all, as in Istio",
            vs("a", "default", "  hosts: [reviews]\n  http:\n  - match: [{}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews, subset: v2}}]\n"),
            Code::VirtualServiceUnreachableRule,
            "spec.http[1]",
            false,
        ),
        (
            "a rule after a rule without matches is unused once per match",
            vs("a", "default", "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{uri: {prefix: /x}}, {uri: {prefix: /y}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n"),
            Code::VirtualServiceUnreachableRule,
            "spec.http[1]",
            true,
        ),
        (
            "a TCP rule whose every match an earlier one has",
            vs("a", "default", "  hosts: [reviews]\n  tcp:\n  - match: [{port: 9000}]\n    route: [{destination: {host: reviews}}]\n  - match: [{port: 9000}]\n    route: [{destination: {host: reviews}}]\n"),
            Code::VirtualServiceUnreachableRule,
            "spec.tcp[1]",
            true,
        ),
        (
            "a match repeating an earlier one",
            vs("a", "default", "  hosts: [reviews]\n  http:\n  - match: [{uri: {exact: /a}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{uri: {prefix: /b}}, {uri: {exact: /a}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n"),
            Code::VirtualServiceIneffectiveMatch,
            "spec.http[1].match[1]",
            true,
        ),
        (
            "a destination port the service does not have",
            vs("a", "default", "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, port: {number: 8080}}}]}]\n"),
            Code::ReferencedResourceNotFound,
            "spec.http[0].route[0].destination.port.number",
            true,
        ),
        (
            "a DestinationRule for an unknown host",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ghost}\nspec: {host: ghost}\n".to_string(),
            Code::UnknownDestinationRuleHost,
            "spec.host",
            true,
        ),
        (
            "a wildcard DestinationRule covering a service is not unknown",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: all}\nspec: {host: \"*.default.svc.cluster.local\"}\n".to_string(),
            Code::UnknownDestinationRuleHost,
            "spec.host",
            false,
        ),
        (
            "a second DestinationRule for one host",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\nspec: {host: reviews.default.svc.cluster.local}\n".to_string(),
            Code::ConflictingDestinationRules,
            "spec.host",
            true,
        ),
        (
            "a policy selecting no workload",
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {selector: {matchLabels: {app: nothing}}}\n".to_string(),
            Code::NoMatchingWorkloadsFound,
            "spec.selector.matchLabels",
            true,
        ),
        (
            "a VirtualService none of whose hosts its gateway serves",
            "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}]}\n".to_string()
                + &vs("a", "default", "  hosts: [b.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: reviews}}]}]\n"),
            Code::VirtualServiceHostNotFoundInGateway,
            "spec.gateways[0]",
            true,
        ),
        (
            "port-level TLS without a CA",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: tls, namespace: prod}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 9080}\n      tls: {mode: SIMPLE}\n".to_string(),
            Code::NoServerCertificateVerificationPortLevel,
            "spec.trafficPolicy.portLevelSettings[0].tls.mode",
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, extra, code, path, want) in &cases {
        let c = check(&format!("{REVIEWS}{extra}"));
        if has(&c, *code, path) != *want {
            failures.push(format!(
                "{name}: expected {code} at {path} to be {}\n{}",
                if *want { "reported" } else { "absent" },
                c.diagnostics
                    .iter()
                    .map(|d| format!(
                        "  {} [{:?}]",
                        d.short(),
                        d.path.as_ref().map(|p| p.to_string())
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn subsets_are_looked_up_in_the_destination_rule_that_applies() {
    // The rule in the caller's namespace takes precedence over the service's: it has no
    // subset v2, so routing to v2 from `prod` is IST0101 even though default's has it.
    let extra = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: prod}\nspec:\n  host: reviews.default.svc.cluster.local\n  subsets: [{name: v1, labels: {version: v1}}]\n".to_string()
        + &vs("r", "prod", "  hosts: [reviews.default.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]}]\n");
    let c = check(&format!("{REVIEWS}{extra}"));
    assert!(
        has(
            &c,
            Code::ReferencedResourceNotFound,
            "spec.http[0].route[0].destination.subset"
        ),
        "{:#?}",
        c.diagnostics.iter().map(|d| d.short()).collect::<Vec<_>>()
    );
    // From default, the default rule applies and has v2.
    let ok = vs(
        "r",
        "default",
        "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n",
    );
    let c = check(&format!("{REVIEWS}{ok}"));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let snap = c.snapshot.unwrap();
    let dr = snap
        .destination_rule_for("reviews.default.svc.cluster.local", "prod", "default")
        .unwrap();
    assert_eq!((dr.namespace(), dr.name()), ("default", "reviews"));
}

/// Istio names a missing subset of a route's destination `host+subset` and of a mirror's
/// `mirror+subset`.
#[test]
fn missing_subsets_are_named_as_istio_names_them() {
    let c = check(&format!(
        "{REVIEWS}{}",
        vs(
            "r",
            "default",
            "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v9}}]\n    mirror: {host: reviews, subset: v8}\n    mirrors: [{destination: {host: reviews, subset: v7}}]\n",
        )
    ));
    let messages: Vec<(String, &str)> = c
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::ReferencedResourceNotFound)
        .map(|d| (d.path.as_ref().unwrap().to_string(), d.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                "spec.http[0].route[0].destination.subset".to_string(),
                "Referenced host+subset in destinationrule not found: \"reviews+v9\""
            ),
            (
                "spec.http[0].mirror.subset".to_string(),
                "Referenced mirror+subset in destinationrule not found: \"reviews+v8\""
            ),
            (
                "spec.http[0].mirrors[0].destination.subset".to_string(),
                "Referenced mirror+subset in destinationrule not found: \"reviews+v7\""
            ),
        ]
    );
}

#[test]
fn registry_lookups() {
    let c = check(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild}
spec:
  hosts: [\"*.example.com\"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: team}
spec:
  hosts: [private.internal]
  exportTo: [.]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: private}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: p1, namespace: team}
spec: {address: 10.1.0.1, labels: {app: private}, ports: {http: 9000}, locality: eu/eu-1, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: p2, namespace: other}
spec: {address: 10.2.0.1, labels: {app: private}}
",
    );
    let snap = c.snapshot.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let reg = snap.registry();
    // exact host over wildcard; wildcard for the rest
    assert_eq!(
        reg.lookup("api.example.com", "default").unwrap().host,
        "api.example.com"
    );
    assert_eq!(
        reg.lookup("www.example.com", "default").unwrap().host,
        "*.example.com"
    );
    assert!(reg.lookup("example.com", "default").is_none());
    // DNS without endpoints: the host itself, on the target port
    let api = reg.lookup("api.example.com", "default").unwrap();
    assert_eq!(api.endpoints.len(), 1);
    assert_eq!(api.endpoints[0].address, "api.example.com");
    assert_eq!(api.endpoints[0].port_for(&api.ports[0]), 8080);
    // exportTo: . hides the service from other namespaces
    assert!(reg.lookup("private.internal", "default").is_none());
    let private = reg.lookup("private.internal", "team").unwrap();
    // the selector takes WorkloadEntries of its own namespace only
    assert_eq!(private.endpoints.len(), 1);
    let ep = &private.endpoints[0];
    assert_eq!(
        (
            ep.address.as_str(),
            ep.port_for(&private.ports[0]),
            ep.weight
        ),
        ("10.1.0.1", 9000, 3)
    );
    assert_eq!(
        private.ports[0].protocol, "TCP",
        "no protocol: TCP, as Istio assumes"
    );
    // topology labels from the locality
    let want: Labels = [
        ("app", "private"),
        ("topology.kubernetes.io/region", "eu"),
        ("topology.kubernetes.io/zone", "eu-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(ep.labels, want);
    assert_eq!(
        ep.principal("cluster.local"),
        "cluster.local/ns/team/sa/default"
    );
}

/// Istio reports a rule after a rule without matches once for each of its matches.
#[test]
fn a_rule_after_a_rule_without_matches_is_reported_once_per_match() {
    let c = check(&format!(
        "{REVIEWS}{}",
        vs(
            "a",
            "default",
            "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{uri: {prefix: /x}}, {uri: {prefix: /y}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n"
        )
    ));
    let unreachable: Vec<String> = c
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::VirtualServiceUnreachableRule)
        .map(|d| d.path.as_ref().map(|p| p.to_string()).unwrap_or_default())
        .collect();
    assert_eq!(unreachable, ["spec.http[1]", "spec.http[1]"]);
}
