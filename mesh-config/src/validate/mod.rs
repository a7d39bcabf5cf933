//! Per-resource validation: what Istio's validation webhook rejects, one resource at a time.
//!
//! Types and unknown fields were checked while loading; this module checks values and
//! combinations: weights that do not sum to 100, invalid regular expressions (RE2 syntax,
//! checked with the `regex` crate, which follows RE2), durations below Istio's 1 ms floor,
//! percentages outside 0–100, HTTP statuses out of range, duplicate subsets, mutually
//! exclusive fields, invalid label keys, invalid hosts and ports. Cross-resource checks
//! live in [`crate::analyze`].
//!
//! The checks are laid out as [`crate::model`] is, one file per resource:
//! `virtual_service` (with `http_route` for one HTTP rule), `destination_rule`, `gateway`,
//! `service_entry` (ServiceEntry and WorkloadEntry), `security` (PeerAuthentication,
//! AuthorizationPolicy, RequestAuthentication), `telemetry` (Telemetry) and `mesh` (the
//! mesh settings); `common` checks the values several resources share. This file holds the
//! entry point [`validate`], the context `Ctx` that collects the diagnostics of one
//! resource, and the label and header-name checks that every kind uses.

mod common;
mod destination_rule;
mod envoy_filter;
mod gateway;
mod http_route;
mod mesh;
mod ratelimit;
mod security;
mod service_entry;
mod telemetry;
mod virtual_service;

pub use http_route::{GRPC_STATUS, RETRY_ON_CONDITIONS};
pub(crate) use telemetry::analyze as analyze_telemetries;

use crate::diag::{Code, Diagnostic, ResourceRef, Severity};
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

use destination_rule::{destination_rule, retry_budget_annotation};
use envoy_filter::envoy_filter;
use gateway::gateway;
use mesh::mesh_config;
use ratelimit::local_rate_limit_policy;
use security::{authorization_policy, peer_authentication, request_authentication};
use service_entry::{dynamic_dns_waypoint, service_entry, workload_entry, workload_group};
use telemetry::telemetry;
use virtual_service::virtual_service;

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP",
];

/// Istio reads an empty string as an unset field (proto3): true when `v` holds text.
fn written(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

/// Collects the diagnostics of one resource.
struct Ctx<'a> {
    origin: &'a Origin,
    reference: ResourceRef,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    fn new(r: &'a AnyResource, out: &'a mut Vec<Diagnostic>) -> Self {
        Ctx {
            origin: r.origin(),
            reference: r.reference(),
            out,
        }
    }

    fn report(&mut self, code: Code, path: &FieldPath, message: impl Into<String>) {
        self.out.push(
            Diagnostic::new(code, message)
                .at(self.origin.locate(path))
                .resource(self.reference.clone())
                .path(path.clone()),
        );
    }

    /// Like `report`, for a problem with a mapping key itself (located at the key).
    fn report_key(&mut self, code: Code, path: &FieldPath, message: impl Into<String>) {
        self.out.push(
            Diagnostic::new(code, message)
                .at(self.origin.locate_key(path))
                .resource(self.reference.clone())
                .path(path.clone()),
        );
    }

    fn warn(&mut self, code: Code, path: &FieldPath, message: impl Into<String>) {
        self.out.push(
            Diagnostic::new(code, message)
                .severity(Severity::Warning)
                .at(self.origin.locate(path))
                .resource(self.reference.clone())
                .path(path.clone()),
        );
    }

    fn labels(&mut self, path: &FieldPath, labels: &Labels) {
        for (k, v) in labels {
            if let Err(e) = check_label_key(k) {
                self.report_key(Code::InvalidLabel, &path.key(k.as_str()), e);
            }
            if let Err(e) = check_label_value(v) {
                self.report(Code::InvalidLabel, &path.key(k.as_str()), e);
            }
        }
    }

    /// The path of a field that has two spellings (`mirrorPercent`, `mirror_percent`):
    /// the one written in the file, so that diagnostics point at it.
    fn spelled(&self, parent: &FieldPath, camel: &str, snake: &str) -> FieldPath {
        let snake_path = parent.key(snake);
        if self.origin.has(&snake_path) {
            snake_path
        } else {
            parent.key(camel)
        }
    }

    fn required_str(&mut self, path: &FieldPath, value: &str, what: &str) -> bool {
        if value.is_empty() {
            self.report(Code::MissingField, path, format!("{what} is required"));
            return false;
        }
        true
    }

    /// Checks a header name; `is_key` when the name is a mapping key (`headers: {name: ..}`).
    fn header_name(&mut self, path: &FieldPath, name: &str, is_key: bool) {
        if !is_header_name(name) {
            let msg = format!("`{name}` is not a valid HTTP header name");
            if is_key {
                self.report_key(Code::InvalidValue, path, msg);
            } else {
                self.report(Code::InvalidValue, path, msg);
            }
        }
    }

    fn deprecated(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warn(Code::Deprecated, path, message);
    }
}

/// An HTTP header name (a token), or a pseudo-header (`:authority`, `:method`, `:path`,
/// `:scheme`), as Istio's `ValidateHTTPHeaderName` accepts.
fn is_header_name(name: &str) -> bool {
    let token = name.strip_prefix(':').unwrap_or(name);
    !token.is_empty() && token.bytes().all(is_token_byte)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a Kubernetes label key: `[prefix/]name`, the name 1-63 characters of letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit; the prefix a
/// DNS subdomain.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || host::check_dns1123_subdomain(p).is_err())
    {
        return Err(format!(
            "label key `{key}`: the prefix `{p}` must be a lower-case DNS subdomain"
        ));
    }
    check_label_name(name).map_err(|e| format!("label key `{key}`: {e}"))
}

/// Checks a Kubernetes label value: empty, or like a label name.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|e| format!("label value `{value}`: {e}"))
}

fn check_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    if name.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if !name.chars().all(ok_char) {
        return Err("only letters, digits, `-`, `_` and `.` are allowed".into());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Istio's `checkDryRunAnnotation`: `istio.io/dry-run` belongs to AuthorizationPolicies
/// only, to ALLOW and DENY ones, and holds a boolean as Go's `strconv.ParseBool` reads it.
fn dry_run_annotation(ctx: &mut Ctx<'_>, meta: &FieldPath, r: &AnyResource) {
    use crate::model::security::{DRY_RUN_ANNOTATION as DRY_RUN, parse_go_bool};
    let Some(value) = r.meta().annotations.get(DRY_RUN) else {
        return;
    };
    let path = meta.key("annotations").key(DRY_RUN);
    let AnyResource::AuthorizationPolicy(ap) = r else {
        ctx.report(
            Code::InvalidValue,
            &path,
            format!(
                "the annotation `{DRY_RUN}` is only supported on AuthorizationPolicies: remove it"
            ),
        );
        return;
    };
    let action = ap.spec.action.unwrap_or_default();
    if !matches!(
        action,
        AuthorizationAction::Allow | AuthorizationAction::Deny
    ) {
        ctx.report(
            Code::InvalidValue,
            &path,
            format!("the annotation `{DRY_RUN}` is only supported with the ALLOW and DENY actions, not {action:?}"),
        );
    } else if parse_go_bool(value).is_none() {
        ctx.report(
            Code::InvalidValue,
            &path,
            format!(
                "the annotation `{DRY_RUN}` must be a boolean (`true` or `false`), not `{value}`"
            ),
        );
    }
}

/// Validates one resource (metadata and spec) and warns about fields not enforced.
pub fn validate(r: &AnyResource, out: &mut Vec<Diagnostic>) {
    let mut ctx = Ctx::new(r, out);
    let meta = FieldPath::root().key("metadata");
    if let Err(e) = host::check_dns1123_subdomain(r.name()) {
        ctx.report(
            Code::InvalidName,
            &meta.key("name"),
            format!("invalid name: {e}"),
        );
    }
    if let Err(e) = host::check_dns1123_label(r.namespace()) {
        ctx.report(
            Code::InvalidName,
            &meta.key("namespace"),
            format!("invalid namespace: {e}"),
        );
    }
    ctx.labels(&meta.key("labels"), &r.meta().labels);
    dry_run_annotation(&mut ctx, &meta, r);
    let spec = FieldPath::root().key("spec");
    match r {
        AnyResource::VirtualService(vs) => virtual_service(&mut ctx, &spec, &vs.spec),
        AnyResource::DestinationRule(dr) => {
            destination_rule(&mut ctx, &spec, &dr.spec);
            retry_budget_annotation(&mut ctx, &meta, &dr.meta);
        }
        AnyResource::Gateway(gw) => gateway(&mut ctx, &spec, &gw.spec),
        AnyResource::ServiceEntry(se) => {
            // Istio allocates an address unless this label turns it off.
            let autoallocate = se
                .meta
                .labels
                .get("networking.istio.io/enable-autoallocate-ip")
                .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
            service_entry(&mut ctx, &spec, &se.spec, autoallocate);
            dynamic_dns_waypoint(&mut ctx, &spec, &se.spec, &se.meta);
        }
        AnyResource::WorkloadEntry(we) => workload_entry(&mut ctx, &spec, &we.spec, None),
        AnyResource::WorkloadGroup(wg) => workload_group(&mut ctx, &spec, &wg.spec),
        AnyResource::PeerAuthentication(pa) => peer_authentication(&mut ctx, &spec, &pa.spec),
        AnyResource::AuthorizationPolicy(ap) => authorization_policy(&mut ctx, &spec, &ap.spec),
        AnyResource::RequestAuthentication(ra) => request_authentication(&mut ctx, &spec, &ra.spec),
        AnyResource::MeshConfig(mc) => mesh_config(&mut ctx, &spec, &mc.spec),
        AnyResource::EnvoyFilter(ef) => envoy_filter(&mut ctx, &spec, &ef.spec),
        AnyResource::LocalRateLimitPolicy(p) => {
            local_rate_limit_policy(&mut ctx, &spec, p.namespace(), &p.spec)
        }
        AnyResource::Telemetry(t) => telemetry(&mut ctx, &spec, &t.spec),
    }
    r.origin()
        .with_node(|node| crate::support::not_enforced(r.kind(), r.origin(), node, out));
}

#[cfg(test)]
mod tests {
    use super::destination_rule::is_prime;
    use super::http_route::is_base64;
    use super::security::{ip_block, wildcard_value};
    use super::*;

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "version", "app.kubernetes.io/name", "a_b-c.d", "x/y"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "Foo/x",
            "/x",
            "a/",
            &"x".repeat(64),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1").is_ok());
        assert!(check_label_value("v1!").is_err());
    }

    #[test]
    fn primes_and_base64() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("hello!"));
        assert!(ip_block("10.0.0.0/8").is_ok());
        assert!(ip_block("10.0.0.0/33").is_err());
        assert!(ip_block("::1").is_ok());
        assert!(wildcard_value("*.example.com").is_ok());
        assert!(wildcard_value("a*b").is_err());
    }
}
