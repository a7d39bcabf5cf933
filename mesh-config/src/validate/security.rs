//! Security resources, Istio's webhook rules: PeerAuthentication (per-port modes need a
//! selector with labels, ports 1-65535, and `portLevelMtls` is not written empty),
//! AuthorizationPolicy (one of a selector, a target reference or target references; CUSTOM
//! needs a named provider; the values of `from`, `to` and `when`: `*` only at either end,
//! Istio's path templates, IP blocks, ports, the condition keys Istio supports; Istio's
//! warning for DENY rules with only HTTP attributes) and RequestAuthentication (the same
//! targets; JWT rules: an issuer, `jwks` that parses (private keys warned) or an http(s)
//! `jwksUri`, no empty audience, parameter, cookie or claim name, header names).

use super::Ctx;
use crate::diag::Code;
use crate::model::*;
use crate::path::FieldPath;
use crate::yaml::Value;

/// A check of one value of a list.
type Check = dyn Fn(&str) -> Result<(), String>;

pub(super) fn peer_authentication(ctx: &mut Ctx<'_>, spec: &FieldPath, pa: &PeerAuthentication) {
    ctx.selector(&spec.key("selector"), &pa.selector);
    if !pa.port_level_mtls.is_empty()
        && pa
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    {
        ctx.report(
            Code::MissingField,
            &spec.key("selector"),
            "`portLevelMtls` needs a `selector` with labels: per-port modes apply to selected workloads",
        );
    }
    // Written as `{}` (not absent, not null): Istio reads an empty map, which it refuses.
    let written_empty = ctx.origin.with_node(|node| {
        node.get("spec")
            .and_then(|s| s.get("portLevelMtls"))
            .is_some_and(|n| matches!(&n.value, Value::Map(entries) if entries.is_empty()))
    });
    if written_empty {
        ctx.report(
            Code::InvalidValue,
            &spec.key("portLevelMtls"),
            "`portLevelMtls`, if written, needs at least one port (remove it or add a port)",
        );
    }
    for port in pa.port_level_mtls.keys() {
        ctx.port(&spec.key("portLevelMtls").key(port.to_string()), *port);
    }
}

pub(super) fn authorization_policy(ctx: &mut Ctx<'_>, spec: &FieldPath, ap: &AuthorizationPolicy) {
    ctx.policy_targets(spec, &ap.selector, &ap.target_ref, &ap.target_refs);
    let action = ap.action.unwrap_or_default();
    if action == AuthorizationAction::Custom
        && let Some(provider) = &ap.provider
        && provider.name.is_empty()
    {
        ctx.report(
            Code::MissingField,
            &spec.key("provider").key("name"),
            "the CUSTOM action's `provider` needs a `name`",
        );
    }
    if action == AuthorizationAction::Custom && ap.provider.is_none() {
        ctx.report(
            Code::MissingField,
            &spec.key("provider"),
            "the CUSTOM action needs a `provider`",
        );
    }
    if ap.rules.is_empty()
        && matches!(
            action,
            AuthorizationAction::Deny | AuthorizationAction::Custom
        )
    {
        ctx.report(
            Code::MissingField,
            &spec.key("action"),
            "a DENY or CUSTOM policy needs `rules`: without them it would never be triggered (add an empty rule `{}` to apply it to every request)",
        );
    }
    if action == AuthorizationAction::Custom {
        custom_restrictions(ctx, spec, ap);
    }
    if ap.provider.is_some() && action != AuthorizationAction::Custom {
        ctx.report(
            Code::ExclusiveFields,
            &spec.key("provider"),
            "`provider` is only used with the CUSTOM action",
        );
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let p = spec.key("rules").index(i);
        if action == AuthorizationAction::Deny && http_only_deny(rule) {
            ctx.warn(
                Code::InvalidValue,
                &p,
                "a DENY rule with only HTTP attributes denies all traffic to the TCP ports under its scope in Istio (the mesh serves HTTP only); name the port (`to.operation.ports`) to keep TCP open",
            );
        }
        for (j, from) in rule.from.iter().enumerate() {
            source(ctx, &p.key("from").index(j).key("source"), &from.source);
        }
        for (j, to) in rule.to.iter().enumerate() {
            operation(ctx, &p.key("to").index(j).key("operation"), &to.operation);
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(ctx, &p.key("when").index(j), cond);
        }
    }
}

/// Istio's CUSTOM restrictions: the external authorizer decides before the peer's
/// identity and the JWT are known to it, so sources by identity and conditions on them
/// are refused.
fn custom_restrictions(ctx: &mut Ctx<'_>, spec: &FieldPath, ap: &AuthorizationPolicy) {
    for (i, rule) in ap.rules.iter().enumerate() {
        let p = spec.key("rules").index(i);
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let fields: [(&str, &Vec<String>); 10] = [
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ];
            for (name, list) in fields {
                if !list.is_empty() {
                    ctx.report(
                        Code::InvalidValue,
                        &p.key("from").index(j).key("source").key(name),
                        format!("`{name}` is not supported with the CUSTOM action"),
                    );
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let k = cond.key.as_str();
            if matches!(
                k,
                "source.namespace"
                    | "source.serviceAccount"
                    | "source.trustDomain"
                    | "source.principal"
            ) || k.starts_with("request.auth.")
            {
                ctx.report(
                    Code::InvalidValue,
                    &p.key("when").index(j).key("key"),
                    format!("`{k}` is not supported with the CUSTOM action"),
                );
            }
        }
    }
}

fn values(ctx: &mut Ctx<'_>, path: &FieldPath, list: &[String], check: &Check) {
    for (i, v) in list.iter().enumerate() {
        if v.is_empty() {
            ctx.report(
                Code::InvalidValue,
                &path.index(i),
                "values must not be empty",
            );
        } else if let Err(e) = check(v) {
            ctx.report(Code::InvalidValue, &path.index(i), e);
        }
    }
}

/// Istio's `CheckEmptyValues`: any non-empty value (the emptiness is checked by
/// `values`); a `*` elsewhere than at an end is matched literally.
fn any_value(_: &str) -> Result<(), String> {
    Ok(())
}

/// Istio's `CheckTrustDomainValues`: one `*` at most, at an end; no `/`.
fn trust_domain_value(v: &str) -> Result<(), String> {
    trust_domain_condition(v)?;
    if v.contains('/') {
        return Err(format!("trust domain `{v}` must not contain `/`"));
    }
    Ok(())
}

/// Istio's `CheckWildcardValues`, which checks `source.trustDomain` conditions: one `*`
/// at most, at an end.
fn trust_domain_condition(v: &str) -> Result<(), String> {
    if v.matches('*').count() > 1 {
        return Err(format!("`{v}`: at most one `*` is allowed"));
    }
    wildcard_value(v)
}

/// Istio's `CheckServiceAccount`: `serviceAccount` or `namespace/serviceAccount`, no
/// `*`, at most 320 characters.
fn service_account_value(v: &str) -> Result<(), String> {
    if v.contains('*') {
        return Err(format!(
            "`{v}`: wildcards are not allowed in service accounts"
        ));
    }
    if v.len() > 320 {
        return Err(format!(
            "`{v}`: a service account cannot exceed 320 characters"
        ));
    }
    match v.split_once('/') {
        None => Ok(()),
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok(()),
        Some(_) => Err(format!(
            "`{v}`: expected `serviceAccount` or `namespace/serviceAccount`"
        )),
    }
}

pub(super) fn wildcard_value(v: &str) -> Result<(), String> {
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        return Err(format!(
            "`{v}`: `*` is only allowed at the start or the end"
        ));
    }
    Ok(())
}

/// Istio's path templates (`CheckValidPathTemplate`): `{*}` matches one segment, `{**}`
/// any number; each is a whole segment, and no operator follows `{**}` (literal segments
/// may); no other `{`, `}` or `*`.
fn path_template(v: &str) -> Result<(), String> {
    let mut any_seen = false;
    for seg in v.trim_matches('/').split('/') {
        match seg {
            "{*}" | "{**}" if any_seen => {
                return Err(format!("`{v}`: `{{**}}` must be the last operator"));
            }
            "{*}" => {}
            "{**}" => any_seen = true,
            s if s.contains('{') || s.contains('}') || s.contains('*') => {
                return Err(format!(
                    "`{v}`: a path template segment must be exactly `{{*}}` or `{{**}}`, and no other `*` is allowed"
                ));
            }
            // Envoy's URI template: other segments are RFC 3986 path characters.
            s if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)) =>
            {
                return Err(format!(
                    "`{v}`: the segment `{s}` of a path template may only hold letters, digits and `-._~%!$&'()+,;:@=`"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn ip_block(v: &str) -> Result<(), String> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("`{v}` is not an IP address or CIDR block"))?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        // As Go's `netip.ParsePrefix`: decimal digits, no sign, no leading zero.
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        match p.parse::<u8>() {
            Ok(n) if n <= max && digits && (p == "0" || !p.starts_with('0')) => {}
            _ => return Err(format!("`{v}`: prefix length must be 0-{max}")),
        }
    }
    Ok(())
}

/// Istio's `ValidatePorts`: a decimal number up to 65535 (digits only).
fn port_value(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if n <= 65535 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("`{v}` is not a port number (0-65535)")),
    }
}

fn source(ctx: &mut Ctx<'_>, path: &FieldPath, s: &Source) {
    if (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
        && (!s.principals.is_empty()
            || !s.not_principals.is_empty()
            || !s.namespaces.is_empty()
            || !s.not_namespaces.is_empty())
    {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("serviceAccounts"),
            "`serviceAccounts` cannot be combined with `principals` or `namespaces`",
        );
    }
    let lists: [(&str, &Vec<String>, &Check); 14] = [
        ("principals", &s.principals, &any_value),
        ("notPrincipals", &s.not_principals, &any_value),
        ("requestPrincipals", &s.request_principals, &any_value),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            &any_value,
        ),
        ("namespaces", &s.namespaces, &any_value),
        ("notNamespaces", &s.not_namespaces, &any_value),
        ("ipBlocks", &s.ip_blocks, &ip_block),
        ("notIpBlocks", &s.not_ip_blocks, &ip_block),
        ("remoteIpBlocks", &s.remote_ip_blocks, &ip_block),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks, &ip_block),
        (
            "serviceAccounts",
            &s.service_accounts,
            &service_account_value,
        ),
        (
            "notServiceAccounts",
            &s.not_service_accounts,
            &service_account_value,
        ),
        ("trustDomains", &s.trust_domains, &trust_domain_value),
        ("notTrustDomains", &s.not_trust_domains, &trust_domain_value),
    ];
    if lists.iter().all(|(_, l, _)| l.is_empty()) {
        ctx.report(
            Code::MissingField,
            path,
            "a `source` must set at least one field",
        );
    }
    for (name, list, check) in lists {
        values(ctx, &path.key(name), list, check);
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if list.len() > 16 {
            ctx.report(
                Code::InvalidValue,
                &path.key(name),
                format!("`{name}` may not have more than 16 values"),
            );
        }
    }
}

fn operation(ctx: &mut Ctx<'_>, path: &FieldPath, o: &Operation) {
    // Istio checks only templates; any other non-empty path is accepted (one not
    // starting with `/` or `*` can never match, and is warned about below).
    let path_value = |v: &str| -> Result<(), String> {
        if v.contains('{') || v.contains('}') {
            path_template(v)?;
        }
        Ok(())
    };
    let lists: [(&str, &Vec<String>, &Check); 8] = [
        ("hosts", &o.hosts, &any_value),
        ("notHosts", &o.not_hosts, &any_value),
        ("ports", &o.ports, &port_value),
        ("notPorts", &o.not_ports, &port_value),
        ("methods", &o.methods, &any_value),
        ("notMethods", &o.not_methods, &any_value),
        ("paths", &o.paths, &path_value),
        ("notPaths", &o.not_paths, &path_value),
    ];
    if lists.iter().all(|(_, l, _)| l.is_empty()) {
        ctx.report(
            Code::MissingField,
            path,
            "an `operation` must set at least one field",
        );
    }
    for (name, list, check) in lists {
        values(ctx, &path.key(name), list, check);
    }
    for (name, list) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        for (i, v) in list.iter().enumerate() {
            if !v.is_empty() && !v.starts_with('/') && !v.starts_with('*') {
                ctx.warn(
                    Code::InvalidValue,
                    &path.key(name).index(i),
                    format!(
                        "path `{v}` does not start with `/` or `*`: no request path can match it"
                    ),
                );
            }
        }
    }
}

/// Condition keys Istio supports in `when` (prefixes end with `[`).
const CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "experimental.envoy.filters.",
];

fn condition(ctx: &mut Ctx<'_>, path: &FieldPath, c: &Condition) {
    if ctx.required_str(&path.key("key"), &c.key, "condition `key`") {
        let known = CONDITION_KEYS.iter().any(|k| {
            if k.ends_with('[') {
                c.key.starts_with(k) && c.key.ends_with(']') && c.key.len() > k.len() + 1
            } else if k.ends_with('.') {
                // Istio's `validateMapKey`: `experimental.envoy.filters.a.b[c]`.
                c.key.starts_with(k)
                    && c.key.ends_with(']')
                    && c.key
                        .find('[')
                        .is_some_and(|open| open > 0 && open + 2 < c.key.len())
            } else {
                c.key == *k
            }
        });
        if !known {
            ctx.report(
                Code::InvalidValue,
                &path.key("key"),
                format!("`{}` is not a supported condition key (e.g. `request.headers[x-user]`, `source.ip`, `source.namespace`, `request.auth.claims[iss]`)", c.key),
            );
        }
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        ctx.report(
            Code::MissingField,
            &path.key("values"),
            "a condition needs `values` or `notValues`",
        );
    }
    let check: &Check = match c.key.as_str() {
        "source.ip" | "remote.ip" | "destination.ip" => &ip_block,
        "destination.port" => &port_value,
        "source.serviceAccount" => &service_account_value,
        "source.trustDomain" => &trust_domain_condition,
        _ => &|_: &str| Ok(()),
    };
    values(ctx, &path.key("values"), &c.values, check);
    values(ctx, &path.key("notValues"), &c.not_values, check);
    if c.key == "source.serviceAccount" {
        for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
            if list.len() > 16 {
                ctx.report(
                    Code::InvalidValue,
                    &path.key(field),
                    "`source.serviceAccount` may not have more than 16 values",
                );
            }
        }
    }
}

pub(super) fn request_authentication(
    ctx: &mut Ctx<'_>,
    spec: &FieldPath,
    ra: &RequestAuthentication,
) {
    ctx.policy_targets(spec, &ra.selector, &ra.target_ref, &ra.target_refs);
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let p = spec.key("jwtRules").index(i);
        ctx.required_str(&p.key("issuer"), &rule.issuer, "`issuer`");
        if rule.jwks.is_some() && rule.jwks_uri.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &p.key("jwks"),
                "`jwks` and `jwksUri` cannot both be set",
            );
        }
        if let Some(uri) = &rule.jwks_uri
            && let Err(e) = jwks_uri(uri)
        {
            ctx.report(
                Code::InvalidValue,
                &ctx.spelled(&p, "jwksUri", "jwks_uri"),
                e,
            );
        }
        if let Some(jwks) = &rule.jwks {
            match jwks_keys(jwks) {
                Err(e) => ctx.report(
                    Code::InvalidValue,
                    &p.key("jwks"),
                    format!("`jwks` is not a JSON Web Key Set: {e}"),
                ),
                Ok(private) => {
                    for k in private {
                        ctx.warn(
                            Code::InvalidValue,
                            &p.key("jwks"),
                            format!("jwks key at index {k} contains private key material; only public keys are used for verification"),
                        );
                    }
                }
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            let hp = p.key("fromHeaders").index(j).key("name");
            if ctx.required_str(&hp, &h.name, "header `name`") {
                ctx.header_name(&hp, &h.name, false);
            }
        }
        // Istio's webhook and CRD: no empty audience, query parameter, cookie or claim name.
        for (field, list) in [
            ("audiences", &rule.audiences),
            ("fromParams", &rule.from_params),
            ("fromCookies", &rule.from_cookies),
            ("spaceDelimitedClaims", &rule.space_delimited_claims),
        ] {
            for (j, v) in list.iter().enumerate() {
                if v.is_empty() {
                    ctx.report(
                        Code::InvalidValue,
                        &p.key(field).index(j),
                        format!("an entry of `{field}` cannot be empty"),
                    );
                }
            }
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cp = p.key("outputClaimToHeaders").index(j);
            ctx.required_str(&cp.key("claim"), &c.claim, "`claim`");
            if ctx.required_str(&cp.key("header"), &c.header, "`header`")
                && !is_token_header(&c.header)
            {
                ctx.report(
                    Code::InvalidValue,
                    &cp.key("header"),
                    format!("`{}` is not a header a claim can be copied to: letters, digits, `-` and `_` only", c.header),
                );
            }
        }
        ctx.duration_ms(&p.key("timeout"), rule.timeout);
    }
}

/// A header name the CRD lets a claim be copied to (`^[-_A-Za-z0-9]+$`).
fn is_token_header(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Istio's `ParseJwksURI`: an http or https URL (either case) whose port, if written, is
/// a number.
fn jwks_uri(uri: &str) -> Result<(), String> {
    let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let Some(rest) = uri
        .split_once("://")
        .filter(|_| matches!(scheme.as_deref(), Some("http" | "https")))
        .map(|(_, rest)| rest)
    else {
        return Err(format!("`{uri}` is not an http(s) URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let port = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(v6) => match v6.split_once(']') {
            Some((_, tail)) => tail.strip_prefix(':'),
            None => return Err(format!("`{uri}`: unclosed `[` in the host")),
        },
        None => host_port.split_once(':').map(|(_, p)| p),
    };
    // Go's `strconv.Atoi` on a written port.
    if let Some(p) = port.filter(|p| !p.is_empty())
        && !p.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("`{uri}`: port `{p}` is not a number"));
    }
    Ok(())
}

/// Reads an inline JWKS as Istio's `jwk.Parse` does: a JSON object with a `keys` array of
/// objects each naming its `kty`, or one such key alone. Returns the indexes of the keys
/// that hold private material (`d`, or any symmetric `oct` key).
fn jwks_keys(jwks: &str) -> Result<Vec<usize>, String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON ({e})"))?;
    let keys: Vec<&serde_json::Value> = match v.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("`keys` is not an array".into()),
        None if v.get("kty").is_some() => vec![&v],
        None => return Err("no `keys` array".into()),
    };
    let mut private = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let kty = k
            .get("kty")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("key {i} has no `kty`"))?;
        let secret = match kty {
            // A symmetric key is a secret whatever it holds.
            "oct" => true,
            "RSA" | "EC" | "OKP" => k.get("d").is_some(),
            other => return Err(format!("key {i}: unknown key type `{other}`")),
        };
        if secret {
            private.push(i);
        }
    }
    Ok(private)
}

/// Istio's warning condition for a DENY rule: it has sources but no operation and no
/// TCP-level source (principals, namespaces, IP blocks, service accounts), or operations
/// without ports.
fn http_only_deny(rule: &Rule) -> bool {
    let tcp_from = rule.from.iter().any(|f| {
        let s = &f.source;
        [
            &s.principals,
            &s.not_principals,
            &s.ip_blocks,
            &s.not_ip_blocks,
            &s.namespaces,
            &s.not_namespaces,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            &s.service_accounts,
            &s.not_service_accounts,
        ]
        .iter()
        .any(|v| !v.is_empty())
    });
    let tcp_to = rule
        .to
        .iter()
        .any(|t| !t.operation.ports.is_empty() || !t.operation.not_ports.is_empty());
    let from = !rule.from.is_empty();
    let to = !rule.to.is_empty();
    (from && !to && !tcp_from) || (to && !tcp_to)
}
