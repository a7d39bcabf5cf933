//! ServiceEntry and WorkloadEntry checks, Istio's webhook rules (the endpoints of a
//! ServiceEntry are WorkloadEntries): hosts (no `*`, no wildcard resolved by DNS without
//! endpoints, a warning for short names), port numbers and names used once, what each
//! resolution allows (NONE takes no endpoints, STATIC needs IP addresses, DNS_ROUND_ROBIN
//! one endpoint), and endpoint addresses, ports, labels, service accounts and localities.

use std::collections::BTreeMap;

use super::{Ctx, PROTOCOLS};
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn service_entry(ctx: &mut Ctx<'_>, spec: &FieldPath, se: &ServiceEntry) {
    let resolution = se.resolution.unwrap_or_default();
    if se.hosts.is_empty() {
        ctx.report(
            Code::MissingField,
            &spec.key("hosts"),
            "a ServiceEntry needs at least one host",
        );
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let p = spec.key("hosts").index(i);
        if h == "*" {
            ctx.report(Code::InvalidHost, &p, "a ServiceEntry host cannot be `*`");
            continue;
        }
        ctx.host(&p, h);
        if host::is_wildcard(h)
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && se.endpoints.is_empty()
        {
            ctx.report(
                Code::InvalidHost,
                &p,
                format!("wildcard host `{h}` cannot be resolved with DNS without endpoints"),
            );
        }
        if !h.contains('.') && !host::is_wildcard(h) {
            ctx.warn(
                Code::ShortServiceEntryHost,
                &p,
                format!(
                    "ServiceEntry hosts are taken as written, but `{h}` in a VirtualService or DestinationRule means `{}`: write the fully qualified name",
                    host::qualify(h, ctx.reference.namespace.as_str())
                ),
            );
        }
    }
    // Istio: several hosts share the ports; for a non-HTTP, non-TLS port they could not
    // be told apart unless the caller's address is kept (resolution NONE).
    if se.hosts.len() > 1 && resolution != Resolution::None {
        for (i, port) in se.ports.iter().enumerate() {
            let proto = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_uppercase();
            if !matches!(
                proto.as_str(),
                "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB" | "TLS"
            ) {
                ctx.report(
                    Code::InvalidValue,
                    &spec.key("ports").index(i).key("protocol"),
                    format!("multiple hosts provided with a non-HTTP, non-TLS port ({proto}): use one ServiceEntry per host, or resolution NONE"),
                );
            }
        }
    }
    let mut numbers = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = spec.key("ports").index(i);
        ctx.port(&p.key("number"), port.number);
        if let Some(t) = port.target_port {
            ctx.port(&p.key("targetPort"), t);
        }
        if let Some(first) = numbers.insert(port.number, i) {
            ctx.report(
                Code::DuplicateEntry,
                &p.key("number"),
                format!(
                    "port {} is listed twice (first as ports[{first}])",
                    port.number
                ),
            );
        }
        if ctx.required_str(&p.key("name"), &port.name, "port `name`")
            && let Some(first) = names.insert(port.name.as_str(), i)
        {
            ctx.report(
                Code::DuplicateEntry,
                &p.key("name"),
                format!(
                    "port name `{}` is used twice (first by ports[{first}])",
                    port.name
                ),
            );
        }
        if let Some(proto) = &port.protocol
            && !PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("protocol"),
                format!(
                    "`{proto}` is not a protocol: expected one of {}",
                    PROTOCOLS.join(", ")
                ),
            );
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &spec.key("workloadSelector"),
            "`endpoints` and `workloadSelector` cannot both be set",
        );
    }
    match resolution {
        Resolution::None if !se.endpoints.is_empty() => ctx.report(
            Code::ExclusiveFields,
            &spec.key("endpoints"),
            "resolution NONE takes no endpoints (it forwards to the address the caller asked for)",
        ),
        Resolution::DnsRoundRobin if se.endpoints.len() > 1 => ctx.report(
            Code::InvalidValue,
            &spec.key("endpoints"),
            "DNS_ROUND_ROBIN resolution takes at most one endpoint",
        ),
        _ => {}
    }
    let port_names: Vec<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    for (i, ep) in se.endpoints.iter().enumerate() {
        let p = spec.key("endpoints").index(i);
        workload_entry(ctx, &p, ep, Some(&port_names));
        if resolution == Resolution::Static
            && ep.address.parse::<std::net::IpAddr>().is_err()
            && !ep.address.starts_with("unix://")
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("address"),
                format!(
                    "STATIC resolution needs IP addresses, not `{}` (use DNS resolution for names)",
                    ep.address
                ),
            );
        }
    }
    if let Some(sel) = &se.workload_selector {
        ctx.labels(&spec.key("workloadSelector").key("labels"), &sel.labels);
    }
    ctx.export_to(&spec.key("exportTo"), &se.export_to, true);
}

pub(super) fn workload_entry(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    we: &WorkloadEntry,
    ports: Option<&[&str]>,
) {
    if ctx.required_str(&path.key("address"), &we.address, "`address`")
        && we.address.parse::<std::net::IpAddr>().is_err()
        && !we.address.starts_with("unix://")
    {
        if let Err(e) = host::check_wildcard_domain(&we.address) {
            ctx.report(
                Code::InvalidValue,
                &path.key("address"),
                format!("`address` must be an IP address, a host name or a unix:// socket: {e}"),
            );
        } else if host::is_wildcard(&we.address) {
            ctx.report(
                Code::InvalidValue,
                &path.key("address"),
                "`address` cannot be a wildcard",
            );
        }
    }
    for (name, port) in &we.ports {
        let p = path.key("ports").key(name.as_str());
        ctx.port(&p, *port);
        if let Some(names) = ports
            && !names.contains(&name.as_str())
        {
            ctx.report_key(
                Code::InvalidValue,
                &p,
                format!(
                    "endpoint port `{name}` is not a port of the ServiceEntry (its ports are {})",
                    names.join(", ")
                ),
            );
        }
    }
    ctx.labels(&path.key("labels"), &we.labels);
    if let Some(sa) = &we.service_account
        && let Err(e) = host::check_dns1123_subdomain(sa)
    {
        ctx.report(
            Code::InvalidName,
            &path.key("serviceAccount"),
            format!("invalid service account: {e}"),
        );
    }
    if let Some(loc) = &we.locality
        && (loc.split('/').count() > 3 || loc.split('/').any(str::is_empty))
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("locality"),
            format!("locality `{loc}` must be `region[/zone[/subzone]]`"),
        );
    }
}
