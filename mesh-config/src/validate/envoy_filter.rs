//! EnvoyFilter, Istio's webhook rules (`ValidateEnvoyFilter` and the CRD's): a selector
//! or target references, not both; every patch has an `applyTo`, a `patch` with an
//! operation, and a `value` unless it removes; the match is of the kind `applyTo` patches
//! (a listener for filters, a route configuration for virtual hosts and routes, a
//! cluster for clusters, a waypoint only in the WAYPOINT context); a filter match names
//! its filter, a sub-filter match is for HTTP filters in the HTTP connection manager;
//! `proxyVersion` is an RE2 regular expression. Then the patches the mesh acts on are
//! read into typed Envoy configuration ([`interpret`]): Envoy's own rejections (a
//! token bucket without a fill interval, a denominator Envoy does not have) are errors at
//! their field, and everything the mesh reads without acting on is `MESH0120`.

use super::Ctx;
use crate::diag::Code;
use crate::model::envoy_filter::{
    ApplyTo, EnvoyConfigObjectPatch, FindingKind, HTTP_CONNECTION_MANAGER, Operation, PatchContext,
    interpret_spec,
};
use crate::model::*;
use crate::path::FieldPath;

/// Filter names Istio warns about, with their canonical names.
const DEPRECATED_FILTER_NAMES: &[(&str, &str)] = &[
    (
        "envoy.http_connection_manager",
        "envoy.filters.network.http_connection_manager",
    ),
    ("envoy.router", "envoy.filters.http.router"),
    ("envoy.ratelimit", "envoy.filters.http.ratelimit"),
    ("envoy.cors", "envoy.filters.http.cors"),
    ("envoy.fault", "envoy.filters.http.fault"),
    ("envoy.lua", "envoy.filters.http.lua"),
    ("envoy.ext_authz", "envoy.filters.http.ext_authz"),
    ("envoy.tcp_proxy", "envoy.filters.network.tcp_proxy"),
];

pub(super) fn envoy_filter(ctx: &mut Ctx<'_>, spec: &FieldPath, ef: &EnvoyFilter) {
    if let Some(sel) = &ef.workload_selector {
        let p = spec.key("workloadSelector");
        ctx.labels(&p.key("labels"), &sel.labels);
        for (k, v) in &sel.labels {
            if v.contains('*') {
                ctx.report(
                    Code::InvalidLabel,
                    &p.key("labels").key(k.as_str()),
                    "wildcard is not supported in selector",
                );
            }
        }
        if sel.labels.is_empty() {
            ctx.warn(
                Code::InvalidValue,
                &p,
                "workload selector specified without labels: the EnvoyFilter applies to every workload of the namespace",
            );
        }
    }
    if !ef.target_refs.is_empty() {
        let p = spec.key("targetRefs");
        if ef.workload_selector.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &p,
                "only one of targetRefs or workloadSelector can be set",
            );
        }
        if ef.target_refs.len() > 16 {
            ctx.report(Code::InvalidValue, &p, "at most 16 targetRefs may be given");
        }
        for (i, t) in ef.target_refs.iter().enumerate() {
            let tp = p.index(i);
            if t.kind.is_empty() {
                ctx.report(Code::MissingField, &tp.key("kind"), "kind is required");
            }
            if t.name.is_empty() {
                ctx.report(Code::MissingField, &tp.key("name"), "name is required");
            }
            if !t.namespace.is_empty() {
                ctx.report(
                    Code::InvalidValue,
                    &tp.key("namespace"),
                    "cross namespace referencing is not currently supported",
                );
            }
        }
        ctx.warn(
            Code::NotEnforced,
            &p,
            "targetRefs (Gateway API resources) are not enforced: the patches apply to no workload",
        );
    }
    for (i, cp) in ef.config_patches.iter().enumerate() {
        patch(ctx, &spec.key("configPatches").index(i), cp);
    }
    if !ef.target_refs.is_empty() {
        return;
    }
    let interpretation = interpret_spec(ef);
    for f in interpretation.findings {
        match f.kind {
            FindingKind::Invalid => ctx.report(f.code, &f.path, f.message),
            FindingKind::NotEnforced => ctx.warn(f.code, &f.path, f.message),
        }
    }
}

/// The first `@type` in a patch value that names a type of Envoy's v2 API (packages
/// `envoy.api.v2`, `envoy.config.filter.*` and the like, versioned `v2` or `v2alpha`),
/// which Envoy no longer has: Istio refuses those.
fn v2_type(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("@type", serde_json::Value::String(t)) => {
                let name = t.rsplit('/').next().unwrap_or(t);
                let v2 = name.starts_with("envoy.")
                    && name
                        .split('.')
                        .any(|part| part == "v2" || part == "v2alpha");
                v2.then_some(t.as_str())
            }
            _ => v2_type(v),
        }),
        serde_json::Value::Array(a) => a.iter().find_map(v2_type),
        _ => None,
    }
}

fn patch(ctx: &mut Ctx<'_>, p: &FieldPath, cp: &EnvoyConfigObjectPatch) {
    // Istio's webhook does not check waypoint patches (its CRD rules still apply).
    let waypoint = cp
        .match_
        .as_ref()
        .is_some_and(|m| m.context == PatchContext::Waypoint);
    if cp.apply_to == ApplyTo::Invalid {
        ctx.report(
            Code::MissingField,
            &p.key("applyTo"),
            "Envoy filter: missing applyTo",
        );
    }
    match &cp.patch {
        None => ctx.report(
            Code::MissingField,
            &p.key("patch"),
            "Envoy filter: missing patch",
        ),
        Some(patch) => {
            if patch.operation == Operation::Invalid {
                ctx.report(
                    Code::MissingField,
                    &p.key("patch").key("operation"),
                    "Envoy filter: missing patch operation",
                );
            } else if patch.operation != Operation::Remove && patch.value.is_none() {
                ctx.report(
                    Code::MissingField,
                    &p.key("patch").key("value"),
                    "Envoy filter: missing patch value for non-remove operation",
                );
            } else if let Some(v) = &patch.value
                && !v.is_object()
            {
                ctx.report(
                    Code::TypeMismatch,
                    &p.key("patch").key("value"),
                    "Envoy filter: the patch value must be a mapping (Envoy configuration)",
                );
            } else if let Some(v) = &patch.value
                && !waypoint
                && let Some(t) = v2_type(v)
            {
                ctx.report(
                    Code::InvalidValue,
                    &p.key("patch").key("value"),
                    format!("Envoy filter: referenced type unknown (hint: try using the v3 XDS API): `{t}` is a type of Envoy's removed v2 API"),
                );
            }
        }
    }
    let Some(m) = &cp.match_ else { return };
    let mp = p.key("match");
    let kinds = [
        ("listener", m.listener.is_some()),
        ("routeConfiguration", m.route_configuration.is_some()),
        ("cluster", m.cluster.is_some()),
        ("waypoint", m.waypoint.is_some()),
    ];
    let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    if set.len() > 1 {
        ctx.report(
            Code::ExclusiveFields,
            &mp,
            format!(
                "a match takes one of `listener`, `routeConfiguration`, `cluster` and `waypoint`, found {}",
                set.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        );
    }
    if m.waypoint.is_some() && m.context != PatchContext::Waypoint {
        ctx.report(
            Code::InvalidValue,
            &mp.key("waypoint"),
            "only support waypointMatch when context is WAYPOINT",
        );
    }
    if let Some(proxy) = &m.proxy
        && !proxy.proxy_version.is_empty()
    {
        let vp = mp.key("proxy").key("proxyVersion");
        if proxy.proxy_version.len() > 1024 {
            ctx.warn(
                Code::InvalidValue,
                &vp,
                "Envoy filter: proxyVersion match exceeds 1024 characters and will be ignored",
            );
        } else if let Err(e) = crate::re2::compile(&proxy.proxy_version) {
            ctx.report(
                Code::InvalidRegex,
                &vp,
                format!("Envoy filter: invalid regex for proxy version, [{e}]"),
            );
        }
    }
    if m.context == PatchContext::Waypoint {
        return;
    }
    match cp.apply_to {
        ApplyTo::Listener
        | ApplyTo::FilterChain
        | ApplyTo::NetworkFilter
        | ApplyTo::HttpFilter
        | ApplyTo::ListenerFilter => {
            if set.first().is_some_and(|k| *k != "listener") {
                ctx.report(
                    Code::InvalidValue,
                    &mp,
                    "Envoy filter: applyTo for listener class objects cannot have non listener match",
                );
                return;
            }
            let Some(filter) = m
                .listener
                .as_ref()
                .and_then(|l| l.filter_chain.as_ref())
                .and_then(|fc| fc.filter.as_ref())
            else {
                return;
            };
            let fp = mp.key("listener").key("filterChain").key("filter");
            if matches!(cp.apply_to, ApplyTo::Listener | ApplyTo::FilterChain) {
                ctx.warn(
                    Code::InvalidValue,
                    &fp,
                    format!(
                        "Envoy filter: filter match has no effect when used with {}",
                        cp.apply_to.as_str()
                    ),
                );
            }
            if filter.name.is_empty() {
                ctx.report(
                    Code::MissingField,
                    &fp.key("name"),
                    "Envoy filter: filter match has no name to match on",
                );
                return;
            }
            deprecated_name(ctx, &fp.key("name"), &filter.name);
            if let Some(sub) = &filter.sub_filter {
                let sp = fp.key("subFilter");
                if cp.apply_to != ApplyTo::HttpFilter {
                    ctx.report(
                        Code::InvalidValue,
                        &sp,
                        "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
                    );
                } else if !HTTP_CONNECTION_MANAGER.contains(&filter.name.as_str()) {
                    ctx.report(
                        Code::InvalidValue,
                        &sp,
                        "Envoy filter: subfilter match requires filter match with envoy.filters.network.http_connection_manager",
                    );
                } else if sub.name.is_empty() {
                    ctx.report(
                        Code::MissingField,
                        &sp.key("name"),
                        "Envoy filter: subfilter match has no name to match on",
                    );
                } else {
                    deprecated_name(ctx, &sp.key("name"), &sub.name);
                }
            }
        }
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
            if set.first().is_some_and(|k| *k != "routeConfiguration") {
                ctx.report(
                    Code::InvalidValue,
                    &mp,
                    "Envoy filter: applyTo for http route class objects cannot have non route configuration match",
                );
            }
        }
        ApplyTo::Cluster => {
            if set.first().is_some_and(|k| *k != "cluster") {
                ctx.report(
                    Code::InvalidValue,
                    &mp,
                    "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
                );
            }
        }
        ApplyTo::ExtensionConfig | ApplyTo::Bootstrap | ApplyTo::Invalid => {}
    }
}

fn deprecated_name(ctx: &mut Ctx<'_>, path: &FieldPath, name: &str) {
    if let Some((_, new)) = DEPRECATED_FILTER_NAMES.iter().find(|(old, _)| *old == name) {
        ctx.deprecated(
            path,
            format!("using deprecated filter name {name:?}; use {new:?} instead"),
        );
    }
}
