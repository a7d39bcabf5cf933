//! Fields the mesh parses but does not act on.
//!
//! Istio's API is larger than what an in-process HTTP mesh does. Rather than dropping a
//! field silently (the user would believe it works) or rejecting valid Istio YAML, such a
//! field is read and reported with a `MESH0120` "parsed, not enforced" warning. This table
//! is the one place that lists the fields that are never enforced; it shrinks as the mesh
//! grows. A field whose effect depends on another's value (a DestinationRule's
//! `credentialName` and `caCrl`, which only SIMPLE and MUTUAL use) is warned about by its
//! validation instead (`validate::destination_rule`).

use crate::diag::{Code, Diagnostic};
use crate::model::{Kind, Origin};
use crate::path::FieldPath;
use crate::yaml::{Node, Value};

/// A field pattern and why it is not enforced.
///
/// A pattern is a generic path (`spec.http[].fault.abort.http2Error`). A leading `*.`
/// matches at any depth (`*.loadBalancer.warmup` matches the host-level, subset-level and
/// port-level traffic policies).
pub const NOT_ENFORCED: &[(Kind, &str, &str)] = &[
    (
        Kind::RequestAuthentication,
        "spec.jwtRules[].presence",
        "a token's required presence is not acted on (nor by Istio's control plane yet): a request without a token passes the rule, as with OPTIONAL; require one with an AuthorizationPolicy on `requestPrincipals`",
    ),
    (
        Kind::VirtualService,
        "spec.tls",
        "the mesh routes HTTP; TLS (SNI) routes are ignored",
    ),
    (
        Kind::VirtualService,
        "spec.tcp",
        "the mesh routes HTTP; TCP routes are ignored",
    ),
    (
        Kind::VirtualService,
        "spec.http[].match[].statPrefix",
        "per-match statistics prefixes are not implemented",
    ),
    (
        Kind::VirtualService,
        "spec.http[].retries.retryRemoteLocalities",
        "locality-aware retries are not implemented",
    ),
    (
        Kind::VirtualService,
        "spec.http[].fault.delay.exponentialDelay",
        "exponential delays are not implemented (nor by Istio)",
    ),
    (
        Kind::VirtualService,
        "spec.http[].fault.abort.http2Error",
        "HTTP/2 stream resets as faults are not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.loadBalancer.localityLbSetting",
        "locality-aware load balancing is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.loadBalancer.zoneAwareLbSetting",
        "zone-aware load balancing is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.loadBalancer.backendUtilization",
        "utilization-driven load balancing (ORCA) is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.loadBalancer.warmupDurationSecs",
        "slow start is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.loadBalancer.warmup",
        "slow start is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.connectionPool.tcp.tcpKeepalive",
        "TCP keepalive settings are not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.connectionPool.http.http2KeepAlive",
        "HTTP/2 keepalive pings are not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.retryBudget.budgetInterval",
        "the retry budget counts requests in flight; a budget interval is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.tunnel",
        "tunnelling is not implemented",
    ),
    (
        Kind::DestinationRule,
        "*.proxyProtocol",
        "the PROXY protocol is not implemented",
    ),
    (
        Kind::DestinationRule,
        "spec.workloadSelector",
        "DestinationRules scoped to some workloads are not implemented",
    ),
    (
        Kind::Gateway,
        "spec.servers[].bind",
        "bind addresses are not used (listeners are mapped to local addresses)",
    ),
    (
        Kind::Gateway,
        "spec.servers[].defaultEndpoint",
        "default endpoints are not implemented",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.credentialName",
        "Kubernetes secrets are not read (there is no cluster; use certificate files)",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.credentialNames",
        "Kubernetes secrets are not read (there is no cluster; use certificate files)",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.caCertCredentialName",
        "Kubernetes secrets are not read (there is no cluster; use certificate files)",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.subjectAltNames",
        "client certificate name checks are not implemented: a MUTUAL server that sets them is not served",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.tlsCertificates",
        "several certificates per server are not implemented: use serverCertificate and privateKey",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.verifyCertificateSpki",
        "client certificate pinning is not implemented",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.verifyCertificateHash",
        "client certificate pinning is not implemented",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.ecdhCurves",
        "ECDH curve selection is not implemented",
    ),
    (
        Kind::Gateway,
        "spec.servers[].tls.cipherSuites",
        "cipher suite selection is not implemented (rustls chooses safe suites)",
    ),
    (
        Kind::ServiceEntry,
        "spec.addresses",
        "virtual IPs are not used (the mesh routes by host name)",
    ),
    (
        Kind::ServiceEntry,
        "spec.subjectAltNames",
        "endpoint identity pinning is not implemented",
    ),
    (
        Kind::ServiceEntry,
        "spec.endpoints[].network",
        "multi-network meshes are not implemented: an endpoint is reached at its address, and one without an address (which Istio reaches through its network's gateway) is skipped",
    ),
    (
        Kind::WorkloadEntry,
        "spec.network",
        "multi-network meshes are not implemented: an endpoint is reached at its address, and one without an address (which Istio reaches through its network's gateway) is skipped",
    ),
    (
        Kind::AuthorizationPolicy,
        "spec.targetRef",
        "Gateway API attachment is not implemented",
    ),
    (
        Kind::AuthorizationPolicy,
        "spec.targetRefs",
        "Gateway API attachment is not implemented",
    ),
    (
        Kind::RequestAuthentication,
        "spec.targetRef",
        "Gateway API attachment is not implemented",
    ),
    (
        Kind::RequestAuthentication,
        "spec.targetRefs",
        "Gateway API attachment is not implemented",
    ),
    (
        Kind::WorkloadGroup,
        "spec.probe",
        "readiness probes are not run: an instance is in the mesh while it is registered",
    ),
    (
        Kind::Telemetry,
        "*.formatter",
        "span tags from access log formatters are not applied",
    ),
    (
        Kind::Telemetry,
        "spec.targetRef",
        "Gateway API attachment is not implemented",
    ),
    (
        Kind::Telemetry,
        "spec.targetRefs",
        "Gateway API attachment is not implemented",
    ),
];

fn pattern_matches(pattern: &str, generic: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => generic == suffix || generic.ends_with(&format!(".{suffix}")),
        None => pattern == generic,
    }
}

/// Warns about every field of a resource that is written but not enforced.
pub fn not_enforced(kind: Kind, origin: &Origin, root: &Node, out: &mut Vec<Diagnostic>) {
    let patterns: Vec<_> = NOT_ENFORCED.iter().filter(|(k, _, _)| *k == kind).collect();
    if patterns.is_empty() {
        return;
    }
    walk(root, &mut FieldPath::root(), &mut |path, node| {
        if node.is_null() {
            return;
        }
        let generic = path.generic();
        if let Some((_, _, why)) = patterns
            .iter()
            .find(|(_, p, _)| pattern_matches(p, &generic))
        {
            out.push(
                Diagnostic::new(
                    Code::NotEnforced,
                    format!("`{path}` is parsed but not enforced: {why}"),
                )
                .at(origin.locate(path))
                .path(path.clone()),
            );
        }
    });
}

fn walk(node: &Node, path: &mut FieldPath, f: &mut dyn FnMut(&FieldPath, &Node)) {
    match &node.value {
        Value::Map(entries) => {
            for e in entries {
                let p = path.key(e.key.as_str());
                f(&p, &e.value);
                let mut p = p;
                walk(&e.value, &mut p, f);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = path.index(i);
                walk(item, &mut p, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches(
            "*.loadBalancer.warmup",
            "spec.subsets[].trafficPolicy.loadBalancer.warmup"
        ));
        assert!(pattern_matches(
            "*.loadBalancer.warmup",
            "spec.trafficPolicy.loadBalancer.warmup"
        ));
        assert!(!pattern_matches(
            "*.loadBalancer.warmup",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs"
        ));
        assert!(pattern_matches("spec.tcp", "spec.tcp"));
        assert!(!pattern_matches("spec.tcp", "spec.tcp[].route"));
    }

    /// What the runtime enforces has no row: PeerAuthentication, a DestinationRule's TLS
    /// (warned about by mode in its validation), trust domain aliases, AUDIT, CUSTOM
    /// providers, JWT.
    #[test]
    fn enforced_fields_have_no_row() {
        for (kind, pattern, _) in NOT_ENFORCED {
            assert_ne!(*kind, Kind::PeerAuthentication, "{pattern}");
            assert!(
                !(*kind == Kind::DestinationRule && pattern.starts_with("*.tls.")),
                "{pattern}"
            );
            assert_ne!(*pattern, "spec.trustDomainAliases");
            assert_ne!(*pattern, "spec.action");
        }
        // CUSTOM providers (registered tower services), JWT (RequestAuthentication) and
        // request principals are enforced too.
        for pattern in [
            "spec.provider",
            "spec.jwtRules",
            "spec.rules[].from[].source.requestPrincipals",
            "spec.rules[].from[].source.notRequestPrincipals",
        ] {
            assert!(
                !NOT_ENFORCED.iter().any(|(_, p, _)| *p == pattern),
                "{pattern}"
            );
        }
    }
}
