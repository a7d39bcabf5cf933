//! Gateway checks, Istio's webhook rules: at least one server, each with a port (valid
//! number, a name used once, a known protocol), hosts written `[namespace/]host`, and TLS
//! settings that fit the protocol: HTTPS and TLS servers need them, a plaintext server may
//! only redirect to HTTPS, and terminating modes need a certificate and a key (or a
//! credential name).

use std::collections::BTreeMap;

use super::{Ctx, PROTOCOLS};
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

pub(super) fn gateway(ctx: &mut Ctx<'_>, spec: &FieldPath, gw: &Gateway) {
    if gw.servers.is_empty() {
        ctx.report(
            Code::MissingField,
            &spec.key("servers"),
            "a Gateway needs at least one server",
        );
    }
    ctx.labels(&spec.key("selector"), &gw.selector);
    let mut names = BTreeMap::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let p = spec.key("servers").index(i);
        let protocol = match &s.port {
            None => {
                ctx.report(
                    Code::MissingField,
                    &p.key("port"),
                    "a server needs a `port`",
                );
                String::new()
            }
            Some(port) => {
                let pp = p.key("port");
                ctx.port(&pp.key("number"), port.number);
                if let Some(t) = port.target_port {
                    ctx.port(&pp.key("targetPort"), t);
                    ctx.deprecated(
                        &pp.key("targetPort"),
                        "`targetPort` of a Gateway port is deprecated",
                    );
                }
                ctx.required_str(&pp.key("name"), &port.name, "port `name`");
                let proto = port.protocol.to_ascii_uppercase();
                if ctx.required_str(&pp.key("protocol"), &port.protocol, "port `protocol`")
                    && !PROTOCOLS.contains(&proto.as_str())
                {
                    ctx.report(
                        Code::InvalidValue,
                        &pp.key("protocol"),
                        format!(
                            "`{}` is not a protocol: expected one of {}",
                            port.protocol,
                            PROTOCOLS.join(", ")
                        ),
                    );
                }
                if !port.name.is_empty()
                    && let Some(first) = names.insert(port.name.clone(), i)
                {
                    ctx.report(
                        Code::DuplicateEntry,
                        &pp.key("name"),
                        format!(
                            "port name `{}` is used twice (first by servers[{first}])",
                            port.name
                        ),
                    );
                }
                proto
            }
        };
        if s.hosts.is_empty() {
            ctx.report(
                Code::MissingField,
                &p.key("hosts"),
                "a server needs at least one host",
            );
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let hp = p.key("hosts").index(j);
            let (ns, name) = host::split_namespaced(h);
            if ns != "*" && ns != "." && host::check_dns1123_label(ns).is_err() {
                ctx.report(
                    Code::InvalidHost,
                    &hp,
                    format!("`{h}`: the namespace part must be `*`, `.` or a namespace name"),
                );
            }
            ctx.host(&hp, name);
        }
        let tls_protocol = matches!(protocol.as_str(), "HTTPS" | "TLS");
        match &s.tls {
            None if tls_protocol => ctx.report(
                Code::MissingField,
                &p.key("tls"),
                format!("{protocol} servers need `tls` settings"),
            ),
            None => {}
            Some(tls) => server_tls(ctx, &p.key("tls"), tls, &protocol),
        }
    }
}

fn server_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &ServerTlsSettings, protocol: &str) {
    let plain = matches!(protocol, "HTTP" | "HTTP2" | "GRPC");
    if plain {
        if !tls.https_redirect || tls.mode.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                path,
                format!("a plaintext {protocol} server can only set `tls.httpsRedirect`"),
            );
        }
        return;
    }
    if tls.https_redirect {
        ctx.warn(
            Code::InvalidValue,
            &path.key("httpsRedirect"),
            format!("`tls.httpsRedirect` should only be used with HTTP servers, not {protocol}"),
        );
    }
    let mode = tls.mode.unwrap_or_default();
    let has_cred = tls.credential_name.is_some()
        || !tls.credential_names.is_empty()
        || !tls.tls_certificates.is_empty();
    match mode {
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if !has_cred {
                if tls.server_certificate.is_none() {
                    ctx.report(
                        Code::MissingField,
                        &path.key("serverCertificate"),
                        "TLS termination needs `serverCertificate` (or `credentialName`)",
                    );
                }
                if tls.private_key.is_none() {
                    ctx.report(
                        Code::MissingField,
                        &path.key("privateKey"),
                        "TLS termination needs `privateKey` (or `credentialName`)",
                    );
                }
                if mode != ServerTlsMode::Simple && tls.ca_certificates.is_none() {
                    ctx.report(
                        Code::MissingField,
                        &path.key("caCertificates"),
                        "MUTUAL TLS needs `caCertificates` to verify clients (or `credentialName`)",
                    );
                }
            }
            if mode == ServerTlsMode::OptionalMutual {
                ctx.warn(
                    Code::NotEnforced,
                    &path.key("mode"),
                    "TLS mode OPTIONAL_MUTUAL is parsed but not enforced: use SIMPLE or MUTUAL",
                );
            }
        }
        other => ctx.warn(
            Code::NotEnforced,
            &path.key("mode"),
            format!("TLS mode {other:?} is parsed but not enforced: the ingress terminates TLS (SIMPLE or MUTUAL)"),
        ),
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min as u8 > max as u8
        && max != TlsProtocol::TlsAuto
    {
        ctx.report(
            Code::InvalidValue,
            &path.key("minProtocolVersion"),
            "`minProtocolVersion` is above `maxProtocolVersion`",
        );
    }
}
