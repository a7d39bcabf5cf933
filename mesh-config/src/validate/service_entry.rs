//! ServiceEntry and WorkloadEntry checks, Istio's webhook and CRD rules (the endpoints of a
//! ServiceEntry are WorkloadEntries): hosts (no `*`, no wildcard resolved by DNS without
//! endpoints, a partial wildcard and a short name warned), addresses (IPs or CIDR blocks,
//! blocks only with NONE or STATIC), port numbers and names used once, what each
//! resolution allows (NONE takes no endpoints, STATIC needs IP addresses, DNS_ROUND_ROBIN
//! one endpoint, DYNAMIC_DNS wildcard hosts and HTTP or TLS ports only), Istio's warnings
//! (TCP ports without an address, selectors with NONE), and endpoint addresses (unix
//! sockets included), ports, labels, service accounts and localities.

use std::collections::BTreeMap;

use super::{Ctx, PROTOCOLS};
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn service_entry(
    ctx: &mut Ctx<'_>,
    spec: &FieldPath,
    se: &ServiceEntry,
    meta_autoallocate: bool,
) {
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
        if host::check_wildcard_domain(h).is_err() && host::check_partial_wildcard(h).is_ok() {
            // Istio accepts a partial wildcard in a ServiceEntry, with a warning unless the
            // resolution is DYNAMIC_DNS.
            if resolution == Resolution::DynamicDns {
                continue;
            }
            ctx.warn(
                Code::InvalidHost,
                &p,
                format!(
                    "partial wildcard `{h}`: Istio accepts it with a warning; it matches any host ending in `{}`",
                    &h[1..]
                ),
            );
        } else {
            ctx.host(&p, h);
        }
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
    // Istio's webhook: addresses are IPs or CIDR blocks; a block only with NONE or STATIC
    // resolution (the caller's address picks the entry, which DNS resolution cannot keep).
    for (i, a) in se.addresses.iter().enumerate() {
        let p = spec.key("addresses").index(i);
        if let Err(e) = super::security::ip_block(a) {
            ctx.report(Code::InvalidValue, &p, e);
        } else if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            ctx.report(
                Code::InvalidValue,
                &p,
                format!("CIDR block `{a}`: CIDR addresses are allowed only with resolution NONE or STATIC"),
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
        // An empty protocol is Istio's "sniff it", as an unset one.
        if let Some(proto) = &port.protocol
            && !proto.is_empty()
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
    if resolution == Resolution::DynamicDns {
        dynamic_dns(ctx, spec, se);
    }
    let port_names: Vec<&str> = se.ports.iter().map(|p| p.name.as_str()).collect();
    for (i, ep) in se.endpoints.iter().enumerate() {
        let p = spec.key("endpoints").index(i);
        workload_entry(ctx, &p, ep, Some(&port_names));
        // Istio: DNS resolution needs a name or an address to resolve (an endpoint without
        // one is only warned about under STATIC).
        if ep.address.is_empty()
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
        {
            ctx.report(
                Code::MissingField,
                &p.key("address"),
                "an endpoint of a ServiceEntry resolved by DNS needs an `address` (a host name or an IP address)",
            );
        }
        if ep.address.starts_with("unix://") {
            match resolution {
                Resolution::Dns | Resolution::DnsRoundRobin => ctx.report(
                    Code::InvalidValue,
                    &p.key("address"),
                    format!(
                        "endpoint address `{}` is not an IP address or a host name, as {} resolution needs",
                        ep.address,
                        if resolution == Resolution::Dns { "DNS" } else { "DNS_ROUND_ROBIN" }
                    ),
                ),
                // Istio checks this under STATIC only (elsewhere endpoints are refused
                // or resolved).
                Resolution::Static if se.ports.len() != 1 => ctx.report(
                    Code::InvalidValue,
                    &p.key("address"),
                    format!(
                        "unix endpoint `{}`: a ServiceEntry with unix endpoints needs exactly one port ({} here)",
                        ep.address,
                        se.ports.len()
                    ),
                ),
                _ => {}
            }
        }
        if resolution == Resolution::Static
            && !ep.address.is_empty()
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
        if sel.labels.is_empty() {
            ctx.warn(
                Code::InvalidValue,
                &spec.key("workloadSelector"),
                "a `workloadSelector` without labels selects every workload of the namespace",
            );
        }
        if resolution == Resolution::None {
            ctx.warn(
                Code::InvalidValue,
                &spec.key("workloadSelector"),
                "`workloadSelector` should not be set when resolution is NONE (the caller's address is used, not the selected workloads')",
            );
        }
    }
    istio_port_warnings(ctx, spec, se, resolution, meta_autoallocate);
    ctx.export_to(&spec.key("exportTo"), &se.export_to, true);
}

pub(super) fn workload_entry(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    we: &WorkloadEntry,
    ports: Option<&[&str]>,
) {
    let addr = path.key("address");
    if we.address.is_empty() {
        match we.network.as_deref().filter(|n| !n.is_empty()) {
            // Istio warns, and reaches the endpoint through that network's gateway (the
            // `network` field's own note says the mesh skips it).
            Some(net) => ctx.warn(
                Code::InvalidValue,
                &path.key("network"),
                format!("`address` is unset with network `{net}`"),
            ),
            None => {
                ctx.required_str(&addr, &we.address, "`address`");
            }
        }
    } else if let Some(socket) = we.address.strip_prefix("unix://") {
        if let Err(e) = unix_address(socket) {
            ctx.report(Code::InvalidValue, &addr, e);
        }
        if !we.ports.is_empty() {
            ctx.report(
                Code::InvalidValue,
                &path.key("ports"),
                format!("unix endpoint `{}` must not include ports", we.address),
            );
        }
    } else if we.address.parse::<std::net::IpAddr>().is_err() {
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
        // Istio's `ValidatePortName` (`IsDNS1123Label`, either case).
        if let Err(e) = host::check_dns_label(name) {
            ctx.report_key(
                Code::InvalidName,
                &p,
                format!("invalid port name `{name}`: {e}"),
            );
        }
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

/// Istio's check of a unix domain socket address (what follows `unix://`): an abstract
/// socket (`@name`), or an absolute path to a file (not a directory).
pub(super) fn unix_address(socket: &str) -> Result<(), String> {
    if socket.is_empty() {
        return Err("a unix:// address needs a socket path".into());
    }
    if socket.starts_with('@') {
        return Ok(());
    }
    if !socket.starts_with('/') || socket.ends_with('/') {
        return Err(format!(
            "unix socket `{socket}` must be an absolute path to a file (`/path/to/socket`) or an abstract socket (`@name`)"
        ));
    }
    Ok(())
}

/// Istio's rules for DYNAMIC_DNS resolution (Envoy's dynamic forward proxy): wildcard
/// hosts only, no addresses, no endpoints, HTTP, HTTP2, GRPC or TLS ports.
fn dynamic_dns(ctx: &mut Ctx<'_>, spec: &FieldPath, se: &ServiceEntry) {
    for (i, h) in se.hosts.iter().enumerate() {
        if !host::is_wildcard(h) {
            ctx.report(
                Code::InvalidHost,
                &spec.key("hosts").index(i),
                format!("`{h}`: DYNAMIC_DNS resolution needs wildcard hosts (`*.example.com`)"),
            );
        }
    }
    if !se.addresses.is_empty() {
        ctx.report(
            Code::InvalidValue,
            &spec.key("addresses"),
            "DYNAMIC_DNS resolution takes no addresses: the route domains come from the hosts",
        );
    }
    if !se.endpoints.is_empty() {
        ctx.report(
            Code::InvalidValue,
            &spec.key("endpoints"),
            "DYNAMIC_DNS resolution takes no endpoints: the destination is resolved from the request's host",
        );
    }
    for (i, port) in se.ports.iter().enumerate() {
        let proto = port.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
        if !matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC" | "TLS") {
            ctx.report(
                Code::InvalidValue,
                &spec.key("ports").index(i).key("protocol"),
                format!(
                    "DYNAMIC_DNS resolution supports only HTTP, HTTP2, GRPC and TLS ports, not `{}`",
                    if proto.is_empty() { "(unset)" } else { proto.as_str() }
                ),
            );
        }
    }
}

/// Istio: a MESH_INTERNAL ServiceEntry with DYNAMIC_DNS resolution cannot use a waypoint
/// (the `istio.io/use-waypoint` label).
pub(super) fn dynamic_dns_waypoint(
    ctx: &mut Ctx<'_>,
    spec: &FieldPath,
    se: &ServiceEntry,
    meta: &ObjectMeta,
) {
    if se.resolution == Some(Resolution::DynamicDns)
        && se.location == Some(ServiceLocation::MeshInternal)
        && meta
            .labels
            .get("istio.io/use-waypoint")
            .is_some_and(|w| !w.is_empty() && !w.eq_ignore_ascii_case("none"))
    {
        ctx.report(
            Code::InvalidValue,
            &spec.key("location"),
            "MESH_INTERNAL with DYNAMIC_DNS resolution is not supported when the ServiceEntry uses a waypoint (`istio.io/use-waypoint`)",
        );
    }
}

/// Istio's webhook warnings about a ServiceEntry's ports: a TCP (or unset) port needs an
/// address when Istio will not allocate one (resolution NONE, or allocation turned off by
/// the `networking.istio.io/enable-autoallocate-ip: "false"` label); with DNS resolution,
/// addresses, several hosts and a TCP-based port cannot tell the hosts apart.
fn istio_port_warnings(
    ctx: &mut Ctx<'_>,
    spec: &FieldPath,
    se: &ServiceEntry,
    resolution: Resolution,
    autoallocate_label: bool,
) {
    let autoallocated = autoallocate_label && resolution != Resolution::None;
    if se.addresses.is_empty() && !autoallocated {
        for (i, port) in se.ports.iter().enumerate() {
            if matches!(port.protocol.as_deref(), None | Some("") | Some("TCP")) {
                ctx.warn(
                    Code::InvalidValue,
                    &spec.key("ports").index(i),
                    "addresses are required for ports serving TCP (or unset) protocol when Istio does not allocate an address",
                );
            }
        }
    }
    if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
        && !se.addresses.is_empty()
        && se.hosts.len() > 1
        && let Some(i) = se.ports.iter().position(|p| {
            // Istio parses an unset protocol as unsupported, not TCP.
            matches!(
                p.protocol
                    .as_deref()
                    .unwrap_or("")
                    .to_ascii_uppercase()
                    .as_str(),
                "TCP" | "HTTPS" | "TLS" | "MONGO" | "REDIS" | "MYSQL"
            )
        })
    {
        ctx.warn(
            Code::InvalidValue,
            &spec.key("ports").index(i),
            "a ServiceEntry cannot have more than one host together with addresses and a TCP-based port",
        );
    }
}

/// A WorkloadGroup, as Istio's `ValidateWorkloadGroup`: a template is required, the
/// metadata's labels must be valid, and the probe has non-negative numbers and exactly
/// one valid method. Like Istio, the template is not checked as a WorkloadEntry (an
/// instance's registration is checked when it is written: one that is not valid is left
/// out with a warning).
pub(super) fn workload_group(ctx: &mut Ctx<'_>, path: &FieldPath, wg: &WorkloadGroup) {
    if wg.template.is_none() {
        ctx.report(
            Code::MissingField,
            &path.key("template"),
            "`template` is required",
        );
    }
    if let Some(meta) = &wg.metadata {
        ctx.labels(&path.key("metadata").key("labels"), &meta.labels);
    }
    let Some(probe) = &wg.probe else {
        return;
    };
    let p = path.key("probe");
    for (field, value) in [
        ("periodSeconds", probe.period_seconds),
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if value < 0 {
            ctx.report(
                Code::InvalidValue,
                &p.key(field),
                format!("`{field}` must be non-negative"),
            );
        }
    }
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
    ];
    match methods.iter().filter(|m| **m).count() {
        0 => ctx.report(
            Code::MissingField,
            &p,
            "a probe needs one of `httpGet`, `tcpSocket` or `exec`",
        ),
        1 => {}
        _ => ctx.report(
            Code::InvalidValue,
            &p,
            "only one of `httpGet`, `tcpSocket` and `exec` may be set",
        ),
    }
    if let Some(h) = &probe.http_get {
        let hp = p.key("httpGet");
        ctx.port(&hp.key("port"), h.port);
        if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
            ctx.report(
                Code::InvalidValue,
                &hp.key("scheme"),
                format!("`scheme` must be HTTP or HTTPS, not `{}`", h.scheme),
            );
        }
        // Istio's `ValidateProbeHeaderName`: letters, digits and `-` only.
        for (i, header) in h.http_headers.iter().enumerate() {
            let ok = !header.name.is_empty()
                && header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                ctx.report(
                    Code::InvalidValue,
                    &hp.key("httpHeaders").index(i).key("name"),
                    format!(
                        "invalid probe header name `{}`: letters, digits and `-` only",
                        header.name
                    ),
                );
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        ctx.port(&p.key("tcpSocket").key("port"), t.port);
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        ctx.report(
            Code::MissingField,
            &p.key("exec").key("command"),
            "`exec.command` is required",
        );
    }
}
