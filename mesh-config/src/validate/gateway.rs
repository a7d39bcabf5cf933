//! Gateway checks, Istio's webhook rules: at least one server, each with a port (valid
//! number, a name used once, a known protocol), hosts written `[namespace/]host`, and TLS
//! settings that fit the protocol: HTTPS and TLS servers need them, a plaintext server may
//! only redirect to HTTPS, and terminating modes need a certificate and a key (or a
//! credential name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::service_entry::unix_address;
use super::{Ctx, PROTOCOLS, written};
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
                let unix = s.bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
                // A server bound to a unix socket has port 0.
                if port.number > 0 || !unix {
                    ctx.port(&pp.key("number"), port.number);
                }
                if let Some(t) = port.target_port
                    && t > 0
                {
                    ctx.report(
                        Code::InvalidValue,
                        &pp.key("targetPort"),
                        "`targetPort` has no effect on a Gateway's port (Istio refuses it)",
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
            server_host(ctx, &p.key("hosts").index(j), h);
        }
        if let Some(bind) = s.bind.as_deref() {
            server_bind(ctx, &p, bind, s.port.as_ref().map(|p| p.number));
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

/// A server's host, Istio's `ValidateNamespaceSlashWildcardHostname` for gateways:
/// `[namespace/]host`, the namespace `*`, `.` or a namespace name; the host `*`, a fully
/// qualified name (short names are refused), a `*.` wildcard domain, or an IP address.
fn server_host(ctx: &mut Ctx<'_>, path: &FieldPath, h: &str) {
    let (ns, name) = match h.split_once('/') {
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                ctx.report(
                    Code::InvalidHost,
                    path,
                    format!("`{h}`: neither the namespace nor the host can be empty"),
                );
            }
            (ns, name)
        }
        None => ("*", h),
    };
    if !ns.is_empty() && ns != "*" && ns != "." && host::check_dns_label(ns).is_err() {
        ctx.report(
            Code::InvalidHost,
            path,
            format!("`{h}`: the namespace part must be `*`, `.` or a namespace name"),
        );
    }
    if name.is_empty() {
        return;
    }
    if name != "*" && !name.contains('.') {
        ctx.report(
            Code::InvalidHost,
            path,
            format!(
                "`{h}`: short names are not allowed in a Gateway: write the fully qualified name"
            ),
        );
    }
    if name.parse::<IpAddr>().is_err() {
        if host::check_partial_wildcard(name).is_ok() {
            ctx.report(
                Code::InvalidHost,
                path,
                format!("`{h}`: a Gateway host cannot have a partial wildcard (`*.example.com` is a wildcard, `*x.example.com` is not)"),
            );
        } else {
            ctx.host(path, name);
        }
    }
}

/// A server's `bind`: `unix://` and a socket (then the port is 0), or an IP address.
fn server_bind(ctx: &mut Ctx<'_>, server: &FieldPath, bind: &str, port: Option<u32>) {
    let path = server.key("bind");
    if let Some(socket) = bind.strip_prefix("unix://") {
        if let Err(e) = unix_address(socket) {
            ctx.report(Code::InvalidValue, &path, e);
        }
        if let Some(n) = port
            && n != 0
        {
            ctx.report(
                Code::InvalidPort,
                &server.key("port").key("number"),
                format!("a server bound to a unix domain socket has port number 0, not {n}"),
            );
        }
    } else if !bind.is_empty() && bind.parse::<IpAddr>().is_err() {
        ctx.report(
            Code::InvalidValue,
            &path,
            format!("`bind` `{bind}` must be an IP address or `unix://` and a socket"),
        );
    }
}

/// Cipher suites Istio's gateways accept (`security.ValidCipherSuites`).
const CIPHER_SUITES: [&str; 15] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// Istio's `IsValidCipherSuite`: a known suite, `ALL`, or an expression starting with an
/// operator (`-`, `+`, `!`, `[`) that is not parsed.
fn valid_cipher_suite(cs: &str) -> bool {
    cs.is_empty()
        || cs == "ALL"
        || !cs.starts_with(|c: char| c.is_alphanumeric())
        || CIPHER_SUITES.contains(&cs)
}

/// Istio's `validateTLSOptions`, whatever the server's protocol.
fn tls_options(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        ctx.warn(
            Code::InvalidValue,
            &path.key("minProtocolVersion"),
            "TLS versions below 1.2 need `cipherSuites` that support them: the default suites no longer do",
        );
    }
    let (mut seen, mut invalid, mut twice) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for cs in &tls.cipher_suites {
        if !valid_cipher_suite(cs) {
            invalid.insert(cs.as_str());
        } else if !seen.insert(cs.as_str()) {
            twice.insert(cs.as_str());
        }
    }
    for (set, what) in [(invalid, "invalid"), (twice, "duplicate")] {
        if !set.is_empty() {
            ctx.warn(
                Code::InvalidValue,
                &path.key("cipherSuites"),
                format!("ignoring {what} cipher suites: {set:?}"),
            );
        }
    }
    if mode == ServerTlsMode::IstioMutual {
        for (field, written) in [
            ("serverCertificate", written(&tls.server_certificate)),
            ("privateKey", written(&tls.private_key)),
            ("caCertificates", written(&tls.ca_certificates)),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", written(&tls.credential_name)),
            ("credentialNames", !tls.credential_names.is_empty()),
        ] {
            if written {
                ctx.report(
                    Code::ExclusiveFields,
                    &path.key(field),
                    format!("ISTIO_MUTUAL uses the mesh's certificates: `{field}` cannot be set"),
                );
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && (written(&tls.ca_crl)
        || written(&tls.server_certificate)
        || written(&tls.private_key)
        || written(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || written(&tls.credential_name)
        || !tls.credential_names.is_empty())
    {
        ctx.warn(
            Code::InvalidValue,
            path,
            format!(
                "{} does not terminate TLS: its certificates are ignored",
                mode_name(mode)
            ),
        );
    }
    let sources = [
        written(&tls.server_certificate) && written(&tls.private_key),
        written(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        ctx.report(
            Code::ExclusiveFields,
            path,
            "only one of `credentialName`, `credentialNames`, `serverCertificate`/`privateKey` and `tlsCertificates` can be set",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (written(&tls.credential_name) || !tls.credential_names.is_empty()) {
        // The credential holds the certificates, the CA and the CRL.
        return;
    }
    if terminating {
        let what = if mode == ServerTlsMode::Simple {
            "SIMPLE"
        } else {
            "MUTUAL"
        };
        if mode != ServerTlsMode::Simple && !written(&tls.ca_certificates) {
            ctx.report(
                Code::MissingField,
                &path.key("caCertificates"),
                format!(
                    "{what} TLS needs `caCertificates` to verify clients (or `credentialName`)"
                ),
            );
        }
        if tls.tls_certificates.len() > 2 {
            ctx.warn(
                Code::InvalidValue,
                &path.key("tlsCertificates"),
                format!("{what} TLS serves at most 2 certificates (one RSA, one ECDSA)"),
            );
        }
        let mut pairs: Vec<(FieldPath, &Option<String>, &Option<String>)> = tls
            .tls_certificates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    path.key("tlsCertificates").index(i),
                    &c.server_certificate,
                    &c.private_key,
                )
            })
            .collect();
        if pairs.is_empty() {
            pairs.push((path.clone(), &tls.server_certificate, &tls.private_key));
        }
        for (p, cert, key) in pairs {
            if !written(cert) {
                ctx.report(
                    Code::MissingField,
                    &p.key("serverCertificate"),
                    format!("{what} TLS needs `serverCertificate` (or `credentialName`)"),
                );
            }
            if !written(key) {
                ctx.report(
                    Code::MissingField,
                    &p.key("privateKey"),
                    format!("{what} TLS needs `privateKey` (or `credentialName`)"),
                );
            }
        }
    }
    if written(&tls.ca_crl) {
        if written(&tls.credential_name) {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("caCrl"),
                "`caCrl` cannot be used with `credentialName`: the credential holds the CRL",
            );
        }
        if mode == ServerTlsMode::Simple {
            ctx.report(
                Code::InvalidValue,
                &path.key("caCrl"),
                "`caCrl` is for MUTUAL TLS: SIMPLE TLS verifies no client certificate",
            );
        }
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

fn server_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &ServerTlsSettings, protocol: &str) {
    tls_options(ctx, path, tls);
    let http = matches!(protocol, "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB");
    if tls.https_redirect && !http {
        ctx.warn(
            Code::InvalidValue,
            &path.key("httpsRedirect"),
            format!("`tls.httpsRedirect` should only be used with HTTP servers, not {protocol}"),
        );
    }
    if !matches!(protocol, "HTTPS" | "TLS") {
        let mode = tls.mode.unwrap_or_default();
        if http {
            // Only a redirect to HTTPS (a passthrough mode without certificates).
            if !matches!(
                mode,
                ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            ) || written(&tls.ca_certificates)
                || written(&tls.private_key)
                || written(&tls.server_certificate)
            {
                ctx.report(
                    Code::ExclusiveFields,
                    path,
                    format!("a plaintext {protocol} server can only set `tls.httpsRedirect`"),
                );
            }
        } else if !protocol.is_empty() {
            ctx.report(
                Code::ExclusiveFields,
                path,
                format!(
                    "a {protocol} server cannot have `tls` settings: only HTTPS and TLS servers can"
                ),
            );
        }
        return;
    }
    let mode = tls.mode.unwrap_or_default();
    match mode {
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
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
