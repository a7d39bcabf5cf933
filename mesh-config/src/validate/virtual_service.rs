//! VirtualService checks, Istio's webhook rules: hosts (valid, listed once and not
//! covering one another, no `*` when bound to the mesh; none only for a delegate, which
//! has no gateways; Envoy's generated SNI names with SNI matches), SNI hosts, gateway
//! references, at least one of `http`, `tls` or `tcp`, JWT claim routes (gateways only),
//! TLS and TCP routes, destinations, and the weights of several destinations (relative
//! shares: none negative, not all 0). One HTTP rule is checked in `http_route`.

use std::collections::HashSet;
use std::net::IpAddr;

use super::Ctx;
use super::http_route::{JWT_CLAIM_PREFIX, http_route};
use crate::diag::{Code, Diagnostic};
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn virtual_service(ctx: &mut Ctx<'_>, spec: &FieldPath, vs: &VirtualService) {
    let delegate = vs.hosts.is_empty();
    let bound_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    if delegate && !vs.gateways.is_empty() {
        ctx.report(
            Code::MissingField,
            &spec.key("hosts"),
            "`hosts` is required (only a delegate VirtualService has no hosts, and a delegate cannot have gateways)",
        );
    }
    if delegate {
        for (field, empty) in [("tls", vs.tls.is_empty()), ("tcp", vs.tcp.is_empty())] {
            if !empty {
                ctx.report(
                    Code::InvalidValue,
                    &spec.key(field),
                    format!("a delegate VirtualService (no `hosts`) routes HTTP only: it cannot have `{field}` routes"),
                );
            }
        }
    }
    let mut seen = HashSet::new();
    // Istio: the hosts of a gateway's VirtualService with SNI matches may be Envoy's
    // generated SNI names (`outbound_.<port>_._.<host>`).
    let sni = vs
        .tls
        .iter()
        .any(|r| r.match_.iter().any(|m| !m.sni_hosts.is_empty()));
    for (i, h) in vs.hosts.iter().enumerate() {
        let p = spec.key("hosts").index(i);
        // Istio accepts an IP address as a VirtualService host.
        if !(sni && !bound_to_mesh && is_generated_sni(h)) && h.parse::<IpAddr>().is_err() {
            ctx.host(&p, h);
        }
        if h == "*" && bound_to_mesh {
            ctx.report(
                Code::InvalidHost,
                &p,
                "wildcard host `*` is not allowed for VirtualServices bound to the mesh gateway",
            );
        }
        if !seen.insert(h.to_ascii_lowercase()) {
            ctx.report(
                Code::DuplicateEntry,
                &p,
                format!("host `{h}` is listed twice"),
            );
        } else if let Some(first) = vs.hosts[..i]
            .iter()
            .find(|earlier| crate::host::overlaps(earlier, h))
        {
            // Istio: a wildcard host that covers another is a duplicate (`*.bar` and
            // `*.foo.bar`).
            ctx.report(
                Code::DuplicateEntry,
                &p,
                format!("hosts `{first}` and `{h}` overlap: duplicate hosts in one VirtualService"),
            );
        }
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        gateway_ref(ctx, &spec.key("gateways").index(i), g);
    }
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        ctx.report(
            Code::MissingField,
            &spec.key("http"),
            "a VirtualService needs at least one of `http`, `tls` or `tcp`",
        );
    }
    for (i, rule) in vs.http.iter().enumerate() {
        let p = spec.key("http").index(i);
        http_route(ctx, &p, rule, delegate);
        for (j, m) in rule.match_.iter().enumerate() {
            for (field, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
            ] {
                for name in map.keys().filter(|n| n.starts_with(JWT_CLAIM_PREFIX)) {
                    let hp = p.key("match").index(j).key(field).key(name.as_str());
                    if bound_to_mesh {
                        ctx.report_key(
                            Code::InvalidValue,
                            &hp,
                            "JWT claim based routing is only supported for gateways, not for the mesh",
                        );
                    } else {
                        ctx.warn(
                            Code::NotEnforced,
                            &hp,
                            "JWT claim based routing is parsed but not enforced: routes do not see the request's JWT claims yet, so this match never matches",
                        );
                    }
                }
            }
        }
    }
    for (i, rule) in vs.tls.iter().enumerate() {
        let p = spec.key("tls").index(i);
        if rule.match_.is_empty() {
            ctx.report(
                Code::MissingField,
                &p.key("match"),
                "a TLS rule needs a `match` with `sniHosts`",
            );
        }
        for (j, m) in rule.match_.iter().enumerate() {
            if m.sni_hosts.is_empty() {
                ctx.report(
                    Code::MissingField,
                    &p.key("match").index(j).key("sniHosts"),
                    "a TLS match needs `sniHosts`",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                sni_host(
                    ctx,
                    &p.key("match").index(j).key("sniHosts").index(k),
                    sni,
                    vs,
                );
            }
        }
        l4_routes(
            ctx,
            &p.key("route"),
            rule.route.iter().map(|r| (&r.destination, r.weight)),
        );
    }
    for (i, rule) in vs.tcp.iter().enumerate() {
        let p = spec.key("tcp").index(i);
        l4_routes(
            ctx,
            &p.key("route"),
            rule.route.iter().map(|r| (&r.destination, r.weight)),
        );
    }
    ctx.export_to(&spec.key("exportTo"), &vs.export_to, false);
}

pub(super) fn gateway_ref(ctx: &mut Ctx<'_>, path: &FieldPath, g: &str) {
    match host::GatewayRef::parse(g, &ctx.reference.namespace) {
        host::GatewayRef::Mesh => {}
        host::GatewayRef::Named {
            namespace,
            name,
            legacy,
        } => {
            if host::check_dns1123_label(&namespace).is_err()
                || host::check_dns1123_subdomain(&name).is_err()
            {
                ctx.report(
                    Code::InvalidValue,
                    path,
                    format!("`{g}` is not a gateway reference: expected `mesh`, `<name>` or `<namespace>/<name>`"),
                );
            } else if legacy {
                ctx.deprecated(
                    path,
                    format!(
                        "the gateway reference form `{g}` is deprecated: write `{namespace}/{name}`"
                    ),
                );
            }
        }
    }
}

fn l4_routes<'a>(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    routes: impl Iterator<Item = (&'a Destination, Option<i32>)>,
) {
    let routes: Vec<_> = routes.collect();
    if routes.is_empty() {
        ctx.report(
            Code::MissingField,
            path,
            "a TLS or TCP rule needs a `route`",
        );
    }
    for (i, (d, _)) in routes.iter().enumerate() {
        destination(ctx, &path.index(i).key("destination"), d);
    }
    weights(
        ctx,
        path,
        &routes.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
    );
}

/// Istio's rules for the weights of several destinations: none negative, and not all 0.
/// Weights are relative shares (`weight / sum`); a sum other than 100 is legal and only
/// noted, as older Istio versions required 100.
pub(super) fn weights(ctx: &mut Ctx<'_>, path: &FieldPath, weights: &[Option<i32>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w
            && *w < 0
        {
            ctx.report(
                Code::InvalidValue,
                &path.index(i).key("weight"),
                format!("weight {w} is negative"),
            );
            return;
        }
    }
    if weights.len() < 2 {
        return;
    }
    let total: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
    let shown = weights
        .iter()
        .map(|w| w.map_or("unset".to_string(), |w| w.to_string()))
        .collect::<Vec<_>>()
        .join(" + ");
    // Point at the last weight written (or the route when none is).
    let at = (0..weights.len())
        .rev()
        .find(|i| weights[*i].is_some())
        .map(|i| path.index(i).key("weight"))
        .unwrap_or_else(|| path.clone());
    if total == 0 {
        ctx.report(
            Code::WeightSum,
            &at,
            format!("total destination weight is 0 ({shown}): no destination would get traffic"),
        );
    } else if total != 100 {
        ctx.out.push(
            Diagnostic::new(
                Code::WeightsNotHundred,
                format!(
                    "route weights add up to {total} ({shown}); they are relative shares of {total}"
                ),
            )
            .at(ctx.origin.locate(&at))
            .resource(ctx.reference.clone())
            .path(at),
        );
    }
}

pub(super) fn destination(ctx: &mut Ctx<'_>, path: &FieldPath, d: &Destination) {
    if ctx.required_str(&path.key("host"), &d.host, "`destination.host`") {
        ctx.host(&path.key("host"), &d.host);
        if d.host == "*" {
            ctx.report(
                Code::InvalidHost,
                &path.key("host"),
                "destination host `*` is not allowed",
            );
        }
    }
    if let Some(s) = &d.subset
        && let Err(e) = host::check_dns_label(s)
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("subset"),
            format!("invalid subset name: {e}"),
        );
    }
    if let Some(p) = d.port {
        ctx.port(&path.key("port").key("number"), p.number);
    }
}

/// Envoy's generated SNI name of a service port, `outbound_.<port>_._.<host>`, which
/// Istio lets a VirtualService with SNI matches name.
fn is_generated_sni(h: &str) -> bool {
    let mut parts = h.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound_"), Some(port), Some("_"), Some(rest)) => {
            port.strip_suffix('_')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && rest.bytes().any(|b| b.is_ascii_alphabetic())
                && host::check_wildcard_domain(rest).is_ok()
        }
        _ => false,
    }
}

/// Istio's `validateSniHost`: a host name (a wildcard only as the whole first label, or,
/// bound to a gateway, Envoy's generated SNI name), within one of the VirtualService's
/// hosts; an IP address is accepted with a warning (SNI does not carry addresses).
fn sni_host(ctx: &mut Ctx<'_>, path: &FieldPath, sni: &str, vs: &VirtualService) {
    let gateway_bound = !vs.gateways.iter().any(|g| g == "mesh");
    // Istio's DNS names never end in an all-numeric label (so an IPv4 address is not one).
    let numeric_tld = sni
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()));
    let valid = (host::check_wildcard_domain(sni).is_ok() && !numeric_tld)
        || (gateway_bound && is_generated_sni(sni));
    if !valid {
        if sni.parse::<std::net::IpAddr>().is_ok() {
            ctx.warn(
                Code::InvalidHost,
                path,
                format!("using an IP address (`{sni}`) goes against the SNI specification and most clients do not support it"),
            );
        } else {
            ctx.report(
                Code::InvalidHost,
                path,
                format!("`{sni}` is not a valid SNI host: a DNS name, with a wildcard only as the whole first label"),
            );
        }
        return;
    }
    if !vs.hosts.iter().any(|h| host::matches(h, sni)) {
        ctx.report(
            Code::InvalidHost,
            path,
            format!(
                "SNI host `{sni}` is not within any of the VirtualService's hosts ({})",
                vs.hosts.join(", ")
            ),
        );
    }
}
