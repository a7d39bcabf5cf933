//! The `MESH0120` "parsed, not enforced" warnings follow what the mesh enforces: a
//! DestinationRule's TLS modes not at all (every mode is enforced, SIMPLE and MUTUAL
//! origination included), only the secrets and CRLs origination would read;
//! PeerAuthentication, AUDIT policies and trust domain aliases not at all; and Istio's
//! client TLS rules decide what is an error. Each case is a small configuration and the
//! diagnostics (code, field path, severity, message) it must — and must not — produce.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_config::{Checked, Code, ConfigSet, Diagnostic, Severity};

fn check(docs: &str) -> Checked {
    let mut set = ConfigSet::new();
    set.add_str("case.yaml", docs);
    set.check()
}

fn path_of(d: &Diagnostic) -> String {
    d.path.as_ref().map(|p| p.to_string()).unwrap_or_default()
}

fn find<'a>(c: &'a Checked, code: Code, path: &str) -> Option<&'a Diagnostic> {
    c.diagnostics
        .iter()
        .find(|d| d.code == code && path_of(d) == path)
}

fn show(c: &Checked) -> String {
    c.diagnostics
        .iter()
        .map(|d| format!("  {} [{}]", d.short(), path_of(d)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A DestinationRule for `reviews` with `tls` (a flow mapping) as its traffic policy's.
fn dr_tls(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

fn not_enforced(c: &Checked) -> Vec<String> {
    c.diagnostics
        .iter()
        .filter(|d| d.code == Code::NotEnforced)
        .map(path_of)
        .collect()
}

#[test]
fn enforced_tls_modes_are_not_warned_about() {
    for tls in [
        "{mode: DISABLE}",
        "{mode: ISTIO_MUTUAL}",
        "{mode: ISTIO_MUTUAL, sni: reviews.example.com, subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]}",
        "{sni: reviews.example.com}",
        "{mode: SIMPLE}",
        "{mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.com, subjectAltNames: [api.example.com]}",
        "{mode: SIMPLE, insecureSkipVerify: true}",
        "{mode: MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem, caCertificates: /etc/ca.pem}",
    ] {
        let c = check(&dr_tls(tls));
        assert!(!c.has_errors(), "{tls}:\n{}", show(&c));
        assert!(not_enforced(&c).is_empty(), "{tls}:\n{}", show(&c));
    }
    // No `tls` at all: auto mTLS, enforced.
    let c = check(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
    );
    assert!(not_enforced(&c).is_empty(), "{}", show(&c));
}

#[test]
fn tls_origination_is_enforced_at_every_level() {
    let c = check(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}
    portLevelSettings:
    - port: {number: 9443}
      tls: {mode: MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem}
    - port: {number: 9080}
      tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}
",
    );
    assert!(!c.has_errors(), "{}", show(&c));
    assert!(not_enforced(&c).is_empty(), "{}", show(&c));
    assert!(
        !c.diagnostics
            .iter()
            .any(|d| d.message.contains("not implemented")),
        "{}",
        show(&c)
    );
}

#[test]
fn secrets_and_crls_are_warned_about_only_where_they_would_be_used() {
    // SIMPLE and MUTUAL would read them: not enforced (the mode is).
    let c = check(&dr_tls("{mode: SIMPLE, credentialName: api-ca}"));
    assert!(!c.has_errors(), "{}", show(&c));
    assert_eq!(
        not_enforced(&c),
        ["spec.trafficPolicy.tls.credentialName"],
        "{}",
        show(&c)
    );
    let d = find(
        &c,
        Code::NotEnforced,
        "spec.trafficPolicy.tls.credentialName",
    )
    .unwrap();
    assert!(
        d.message
            .ends_with("is parsed but not enforced: Kubernetes secrets are not read (there is no cluster; use certificate files)"),
        "{}",
        d.message
    );
    let c = check(&dr_tls(
        "{mode: SIMPLE, caCertificates: /etc/ca.pem, caCrl: /etc/crl.pem}",
    ));
    let d = find(&c, Code::NotEnforced, "spec.trafficPolicy.tls.caCrl").unwrap();
    assert!(
        d.message.contains("certificate revocation lists"),
        "{}",
        d.message
    );
    // DISABLE uses none of them, nor does Istio: nothing to warn about.
    let c = check(&dr_tls(
        "{mode: DISABLE, credentialName: api-ca, caCrl: /etc/crl.pem}",
    ));
    assert!(!c.has_errors(), "{}", show(&c));
    assert!(not_enforced(&c).is_empty(), "{}", show(&c));
}

#[test]
fn istio_mutual_accepts_and_ignores_files_and_secrets_as_istio_does() {
    let c = check(&dr_tls(
        "{mode: ISTIO_MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, credentialName: s, caCrl: /crl.pem, insecureSkipVerify: true, subjectAltNames: [a]}",
    ));
    assert!(!c.has_errors(), "{}", show(&c));
    assert!(not_enforced(&c).is_empty(), "{}", show(&c));
    for field in [
        "clientCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "caCrl",
        "insecureSkipVerify",
    ] {
        let path = format!("spec.trafficPolicy.tls.{field}");
        let d = find(&c, Code::InvalidValue, &path)
            .unwrap_or_else(|| panic!("no warning at {path}:\n{}", show(&c)));
        assert_eq!(d.severity, Severity::Warning, "{path}");
        assert!(
            d.message
                .starts_with(&format!("`{field}` is ignored with ISTIO_MUTUAL")),
            "{}",
            d.message
        );
    }
    // `insecureSkipVerify: false` is the default: nothing ignored.
    let c = check(&dr_tls("{mode: ISTIO_MUTUAL, insecureSkipVerify: false}"));
    assert!(
        c.diagnostics
            .iter()
            .all(|d| d.code == Code::UnknownDestinationRuleHost),
        "{}",
        show(&c)
    );
}

/// Istio's `ValidateTLS`, case by case: (TLS settings, error code and field, if any).
#[test]
fn client_tls_rules_follow_istio() {
    let cases: &[(&str, Option<(Code, &str)>)] = &[
        // MUTUAL needs a certificate and a key, unless a secret provides them.
        (
            "{mode: MUTUAL, privateKey: /k.pem}",
            Some((Code::MissingField, "clientCertificate")),
        ),
        (
            "{mode: MUTUAL, clientCertificate: /c.pem}",
            Some((Code::MissingField, "privateKey")),
        ),
        (
            "{mode: MUTUAL, clientCertificate: \"\", privateKey: /k.pem}",
            Some((Code::MissingField, "clientCertificate")),
        ),
        ("{mode: MUTUAL, credentialName: s}", None),
        // A secret excludes files and a CRL, in SIMPLE and MUTUAL only.
        (
            "{mode: SIMPLE, credentialName: s, caCrl: /crl.pem}",
            Some((Code::ExclusiveFields, "credentialName")),
        ),
        (
            "{mode: MUTUAL, credentialName: s, clientCertificate: /c.pem}",
            Some((Code::ExclusiveFields, "credentialName")),
        ),
        (
            "{mode: SIMPLE, credentialName: s, caCertificates: \"\"}",
            None,
        ),
        (
            "{mode: DISABLE, credentialName: s, caCertificates: /ca.pem}",
            None,
        ),
        (
            "{mode: ISTIO_MUTUAL, credentialName: s, clientCertificate: /c.pem}",
            None,
        ),
        // insecureSkipVerify excludes what it would skip.
        ("{mode: SIMPLE, insecureSkipVerify: true}", None),
        (
            "{mode: SIMPLE, insecureSkipVerify: true, credentialName: s}",
            Some((Code::ExclusiveFields, "insecureSkipVerify")),
        ),
        (
            "{mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}",
            Some((Code::ExclusiveFields, "insecureSkipVerify")),
        ),
        (
            "{mode: SIMPLE, insecureSkipVerify: false, caCertificates: /ca.pem}",
            None,
        ),
        (
            "{mode: MUTUAL, insecureSkipVerify: true, credentialName: s}",
            None,
        ),
        (
            "{mode: MUTUAL, insecureSkipVerify: true, credentialName: s, subjectAltNames: [a]}",
            Some((Code::ExclusiveFields, "insecureSkipVerify")),
        ),
        (
            "{mode: MUTUAL, insecureSkipVerify: true, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}",
            Some((Code::ExclusiveFields, "insecureSkipVerify")),
        ),
        // A config map credential: `configmap://<own namespace>/<name>`.
        (
            "{mode: SIMPLE, credentialName: \"configmap://default/ca\"}",
            None,
        ),
        (
            "{mode: SIMPLE, credentialName: \"configmap://other/ca\"}",
            Some((Code::InvalidValue, "credentialName")),
        ),
        (
            "{mode: SIMPLE, credentialName: \"configmap://ca\"}",
            Some((Code::InvalidValue, "credentialName")),
        ),
        (
            "{mode: SIMPLE, credentialName: \"configmap:///ca\"}",
            Some((Code::InvalidValue, "credentialName")),
        ),
        (
            "{mode: SIMPLE, credentialName: \"configmap://default/\"}",
            Some((Code::InvalidValue, "credentialName")),
        ),
    ];
    let mut failures = Vec::new();
    for (tls, want) in cases {
        let c = check(&dr_tls(tls));
        let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
        let ok = match want {
            None => errors.is_empty(),
            Some((code, field)) => {
                let path = format!("spec.trafficPolicy.tls.{field}");
                errors.len() == 1 && errors[0].code == *code && path_of(errors[0]) == path
            }
        };
        if !ok {
            failures.push(format!("{tls}: expected {want:?}\n{}", show(&c)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn peer_authentication_audit_and_trust_domain_aliases_are_enforced() {
    let c = check(
        "apiVersion: mesh.rs/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec: {trustDomain: example.org, trustDomainAliases: [old.example.org]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: DISABLE}, 9090: {mode: UNSET}, 7070: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: AUDIT
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
",
    );
    assert!(!c.has_errors(), "{}", show(&c));
    // Nothing but the analysis of the selectors (no such workload in this configuration).
    assert!(
        c.diagnostics
            .iter()
            .all(|d| d.code == Code::NoMatchingWorkloadsFound),
        "{}",
        show(&c)
    );
}

#[test]
fn custom_policies_and_jwt_are_enforced_without_warnings() {
    let c = check(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
",
    );
    assert!(!c.has_errors(), "{}", show(&c));
    assert!(
        find(&c, Code::NotEnforced, "spec.provider").is_none(),
        "{}",
        show(&c)
    );
    let c = check(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  jwtRules: [{issuer: issuer.example.com, jwksUri: https://issuer.example.com/jwks}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  rules:
  - from: [{source: {requestPrincipals: [\"*\"]}}]
    when: [{key: \"request.auth.claims[groups]\", values: [group1]}]
",
    );
    assert!(!c.has_errors(), "{}", show(&c));
    assert!(
        c.diagnostics.iter().all(|d| d.code != Code::NotEnforced),
        "{}",
        show(&c)
    );
}

/// Istio's `ValidatePeerAuthentication`: per-port modes only with selector labels, ports
/// 1-65535, `portLevelMtls` not written empty; a selector without labels is a warning.
#[test]
fn peer_authentication_rules_follow_istio() {
    let pa = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {spec}\n"
        )
    };
    let cases: &[(&str, Option<(Code, &str)>)] = &[
        ("{}", None),
        ("{mtls: {mode: UNSET}}", None),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: UNSET}}}",
            None,
        ),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: null}",
            None,
        ),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {}}",
            Some((Code::InvalidValue, "spec.portLevelMtls")),
        ),
        (
            "{portLevelMtls: {8080: {mode: STRICT}}}",
            Some((Code::MissingField, "spec.selector")),
        ),
        (
            "{selector: {}, portLevelMtls: {8080: {mode: STRICT}}}",
            Some((Code::MissingField, "spec.selector")),
        ),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}}",
            Some((Code::InvalidPort, "spec.portLevelMtls.0")),
        ),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {65536: {mode: STRICT}}}",
            Some((Code::InvalidPort, "spec.portLevelMtls.65536")),
        ),
        (
            "{selector: {matchLabels: {app: \"*\"}}}",
            Some((Code::InvalidLabel, "spec.selector.matchLabels.app")),
        ),
    ];
    let mut failures = Vec::new();
    for (spec, want) in cases {
        let c = check(&pa(spec));
        let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
        let ok = match want {
            None => errors.is_empty(),
            Some((code, path)) => {
                errors.len() == 1 && errors[0].code == *code && path_of(errors[0]) == *path
            }
        };
        if !ok {
            failures.push(format!("{spec}: expected {want:?}\n{}", show(&c)));
        }
        if c.diagnostics.iter().any(|d| d.code == Code::NotEnforced) {
            failures.push(format!("{spec}: a MESH0120 warning\n{}", show(&c)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A selector without labels: Istio's warning, for every kind that has a selector.
    let c = check(&pa("{selector: {}, mtls: {mode: STRICT}}"));
    assert!(!c.has_errors(), "{}", show(&c));
    let d = find(&c, Code::InvalidValue, "spec.selector").unwrap();
    assert_eq!(d.severity, Severity::Warning);
    assert!(
        d.message
            .starts_with("workload selector specified without labels"),
        "{}",
        d.message
    );
}

/// A DestinationRule for `reviews` with `policy` (a flow mapping) as its traffic policy
/// and `annotations` (a flow mapping) as its annotations.
fn dr_policy(policy: &str, annotations: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, annotations: {annotations}}}\nspec:\n  host: reviews\n  trafficPolicy: {policy}\n"
    )
}

#[test]
fn connection_pool_limits_and_retry_budgets_are_enforced() {
    // Enforced: no warning.
    let c = check(&dr_policy(
        "{connectionPool: {tcp: {maxConnections: 1, connectTimeout: 1s, idleTimeout: 5s, maxConnectionDuration: 1h}, http: {http1MaxPendingRequests: 1, http2MaxRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 1s, maxConcurrentStreams: 10}}, retryBudget: {percent: 25, minRetryConcurrency: 2}}",
        "{mesh.rs/retry-budget: 'retryRatio=0.2,minRetriesPerSecond=10,ttl=10s'}",
    ));
    assert!(c.snapshot.is_some(), "{}", show(&c));
    assert_eq!(not_enforced(&c), Vec::<String>::new(), "{}", show(&c));
    // Still not enforced: keepalives and the budget's interval.
    let c = check(&dr_policy(
        "{connectionPool: {tcp: {tcpKeepalive: {time: 10s}}, http: {http2KeepAlive: {interval: 10s}}}, retryBudget: {budgetInterval: 10s}}",
        "{}",
    ));
    assert_eq!(
        not_enforced(&c),
        vec![
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive",
            "spec.trafficPolicy.retryBudget.budgetInterval",
        ],
        "{}",
        show(&c)
    );
    // A retry budget annotation that does not read is an error at its place.
    let c = check(&dr_policy(
        "{}",
        "{mesh.rs/retry-budget: 'retryRatio=2000'}",
    ));
    assert!(c.snapshot.is_none());
    let d = find(
        &c,
        Code::InvalidValue,
        "metadata.annotations[\"mesh.rs/retry-budget\"]",
    )
    .unwrap_or_else(|| panic!("{}", show(&c)));
    assert_eq!(d.severity, Severity::Error);
    assert!(d.message.contains("retryRatio `2000`"), "{}", d.message);
    let at = d.location.as_ref().map(|l| l.display()).unwrap_or_default();
    assert!(at.starts_with("case.yaml:3:"), "{at}");
}

#[test]
fn local_origin_failures_need_split_errors_as_istio_requires() {
    for (od, error) in [
        ("{consecutiveLocalOriginFailures: 3}", true),
        (
            "{consecutiveLocalOriginFailures: 3, splitExternalLocalOriginErrors: false}",
            true,
        ),
        (
            "{consecutiveLocalOriginFailures: 3, splitExternalLocalOriginErrors: true}",
            false,
        ),
        ("{consecutiveLocalOriginFailures: 0}", false),
    ] {
        let c = check(&dr_policy(&format!("{{outlierDetection: {od}}}"), "{}"));
        let d = find(
            &c,
            Code::InvalidValue,
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        );
        assert_eq!(d.is_some(), error, "{od}: {}", show(&c));
        if let Some(d) = d {
            assert!(d.message.contains("split external local origin errors"));
        }
    }
}
