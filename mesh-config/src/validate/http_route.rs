//! Checks of one HTTP rule of a VirtualService, Istio's webhook rules for `HTTPRoute`:
//! exactly one action (`route`, `redirect`, `directResponse` or `delegate`), fields that
//! exclude each other, matches (header names, query parameters, JWT claim
//! pseudo-headers), redirects, direct responses, rewrites, retries (Envoy's `retryOn`
//! conditions), faults, mirrors, CORS and header operations (the authority is rewritten
//! in one place at most). The retry checks also serve the mesh's default retry policy.

use super::common::MatchField;
use super::virtual_service::{destination, gateway_ref, weights};
use super::{Ctx, written};
use crate::diag::Code;
use crate::host;
use crate::model::*;
use crate::path::FieldPath;

/// Envoy's `x-envoy-retry-on` conditions (HTTP and gRPC) that Istio accepts in `retryOn`.
pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted by `fault.abort.grpcStatus`.
pub const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(super) fn http_route(ctx: &mut Ctx<'_>, path: &FieldPath, r: &HttpRoute, in_delegate: bool) {
    let actions = [
        ("route", !r.route.is_empty()),
        ("redirect", r.redirect.is_some()),
        ("directResponse", r.direct_response.is_some()),
        ("delegate", r.delegate.is_some()),
    ];
    let set: Vec<&str> = actions
        .iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect();
    match set.as_slice() {
        [] => ctx.report(
            Code::MissingField,
            path,
            "an HTTP rule needs one of `route`, `redirect`, `directResponse` or `delegate`",
        ),
        [_] => {}
        [a, b, ..] => ctx.report(
            Code::ExclusiveFields,
            &path.key(*b),
            format!("`{a}` and `{b}` cannot be used in the same HTTP rule"),
        ),
    }
    if in_delegate && r.delegate.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("delegate"),
            "a delegate VirtualService (one without hosts) cannot delegate again",
        );
    }
    if r.redirect.is_some() && r.rewrite.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("rewrite"),
            "`rewrite` cannot be used with `redirect`",
        );
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("mirrors"),
            "`mirror` and `mirrors` cannot both be set",
        );
    }
    if r.mirror_percent.is_some() && r.mirror_percentage.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &ctx.spelled(path, "mirrorPercent", "mirror_percent"),
            "`mirrorPercent` and `mirrorPercentage` cannot both be set",
        );
    }
    for (i, m) in r.match_.iter().enumerate() {
        http_match(ctx, &path.key("match").index(i), m);
    }
    for (i, d) in r.route.iter().enumerate() {
        let p = path.key("route").index(i);
        destination(ctx, &p.key("destination"), &d.destination);
        if let Some(h) = &d.headers {
            headers(ctx, &p.key("headers"), h);
        }
    }
    weights(
        ctx,
        &path.key("route"),
        &r.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
    );
    if let Some(rd) = &r.redirect {
        let p = path.key("redirect");
        // 0 is no code: 301.
        if let Some(code) = rd.redirect_code
            && code != 0
            && !(300..=399).contains(&code)
        {
            ctx.report(
                Code::HttpStatusRange,
                &p.key("redirectCode"),
                format!("{code} is not a redirect code: it must be 3xx"),
            );
        }
        if let Some(port) = rd.port {
            ctx.port(&p.key("port"), port);
            if rd.derive_port.is_some() {
                ctx.report(
                    Code::ExclusiveFields,
                    &p.key("derivePort"),
                    "`port` and `derivePort` cannot both be set",
                );
            }
        }
        if let Some(s) = &rd.scheme
            && s != "http"
            && s != "https"
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("scheme"),
                format!("redirect scheme `{s}` must be `http` or `https`"),
            );
        }
        if let Some(prefix) = rd.prefix_rewrite.as_ref().filter(|p| !p.is_empty()) {
            if written(&rd.uri) {
                ctx.report(
                    Code::ExclusiveFields,
                    &p.key("prefixRewrite"),
                    "`uri` and `prefixRewrite` cannot both be set",
                );
            } else if let Some(i) = r
                .match_
                .iter()
                .position(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
            {
                ctx.report(
                    Code::InvalidValue,
                    &p.key("prefixRewrite"),
                    format!(
                        "`prefixRewrite` ({prefix:?}) replaces the prefix a uri match matched: every uri match of the rule must be a `prefix` match, and match {i}'s is not"
                    ),
                );
            }
        }
        // Istio reads an empty string as unset.
        if !written(&rd.uri)
            && !written(&rd.prefix_rewrite)
            && !written(&rd.authority)
            && rd.port.is_none()
            && !written(&rd.scheme)
            && rd.derive_port.is_none()
        {
            ctx.report(
                Code::MissingField,
                &p,
                "a redirect needs at least one of `uri`, `prefixRewrite`, `authority`, `port`, `derivePort` or `scheme`",
            );
        }
    }
    if let Some(dr) = &r.direct_response {
        let p = path.key("directResponse");
        if !(200..=599).contains(&dr.status) {
            ctx.report(
                Code::HttpStatusRange,
                &p.key("status"),
                format!("HTTP status {} is outside 200-599", dr.status),
            );
        }
        if let Some(b) = &dr.body {
            let bp = p.key("body");
            // Istio: the body is sent in the configuration of every proxy.
            let size = match (&b.string, &b.bytes) {
                (Some(s), _) => s.len(),
                (None, Some(b)) => b.trim_end_matches('=').len() * 3 / 4,
                (None, None) => 0,
            };
            if size > 1024 * 1024 {
                ctx.report(
                    Code::InvalidValue,
                    &bp,
                    format!("a direct response body of {size} bytes is too large: at most 1 MiB"),
                );
            } else if size > 100 * 1024 {
                ctx.warn(
                    Code::InvalidValue,
                    &bp,
                    format!("a direct response body of {size} bytes is large: Istio warns above 100 KiB, as it weighs on every proxy's configuration"),
                );
            }
            match (&b.string, &b.bytes) {
                (Some(_), Some(_)) => ctx.report(
                    Code::ExclusiveFields,
                    &bp.key("bytes"),
                    "`string` and `bytes` cannot both be set",
                ),
                (None, None) => ctx.report(
                    Code::MissingField,
                    &bp,
                    "a body needs one of `string` or `bytes`",
                ),
                (None, Some(bytes)) if !is_base64(bytes) => ctx.report(
                    Code::InvalidValue,
                    &bp.key("bytes"),
                    "`bytes` must be base64",
                ),
                _ => {}
            }
        }
    }
    if let Some(d) = &r.delegate {
        let p = path.key("delegate");
        if ctx.required_str(&p.key("name"), &d.name, "`delegate.name`")
            && let Err(e) = host::check_dns1123_subdomain(&d.name)
        {
            ctx.report(
                Code::InvalidName,
                &p.key("name"),
                format!("invalid name: {e}"),
            );
        }
        if let Some(ns) = &d.namespace
            && let Err(e) = host::check_dns1123_label(ns)
        {
            ctx.report(
                Code::InvalidName,
                &p.key("namespace"),
                format!("invalid namespace: {e}"),
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        let p = path.key("rewrite");
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &p.key("uriRegexRewrite"),
                "`uri` and `uriRegexRewrite` cannot both be set",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            let rp = p.key("uriRegexRewrite");
            if ctx.required_str(&rp.key("match"), &rr.match_, "`uriRegexRewrite.match`") {
                ctx.regex(&rp.key("match"), &rr.match_);
            }
            ctx.required_str(&rp.key("rewrite"), &rr.rewrite, "`uriRegexRewrite.rewrite`");
        }
        if rw.uri.is_none() && rw.authority.is_none() && rw.uri_regex_rewrite.is_none() {
            ctx.report(
                Code::MissingField,
                &p,
                "a rewrite needs one of `uri`, `uriRegexRewrite` or `authority`",
            );
        }
    }
    ctx.duration_ms(&path.key("timeout"), r.timeout);
    if let Some(rt) = &r.retries {
        retries(ctx, &path.key("retries"), rt);
    }
    if let Some(f) = &r.fault {
        fault(ctx, &path.key("fault"), f);
    }
    if let Some(m) = &r.mirror {
        destination(ctx, &path.key("mirror"), m);
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let p = path.key("mirrors").index(i);
        destination(ctx, &p.key("destination"), &m.destination);
        if let Some(pc) = m.percentage {
            ctx.percent(&p.key("percentage").key("value"), pc.value);
        }
    }
    if let Some(pc) = r.mirror_percent {
        let p = ctx.spelled(path, "mirrorPercent", "mirror_percent");
        ctx.deprecated(
            &p,
            "`mirrorPercent` is deprecated: use `mirrorPercentage.value`",
        );
        ctx.percent(&p, f64::from(pc));
    }
    if let Some(pc) = r.mirror_percentage {
        ctx.percent(&path.key("mirrorPercentage").key("value"), pc.value);
    }
    if let Some(c) = &r.cors_policy {
        cors(ctx, &path.key("corsPolicy"), c);
    }
    if let Some(h) = &r.headers {
        headers(ctx, &path.key("headers"), h);
    }
    // The authority may be rewritten in one place only.
    let rule_level = r.rewrite.as_ref().is_some_and(|rw| rw.authority.is_some())
        || sets_authority(r.headers.as_ref());
    let rule_twice = r.rewrite.as_ref().is_some_and(|rw| rw.authority.is_some())
        && sets_authority(r.headers.as_ref());
    if rule_twice {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("headers"),
            "the authority is rewritten twice: by `rewrite.authority` and by a `host` header",
        );
    }
    for (i, d) in r.route.iter().enumerate() {
        if rule_level && sets_authority(d.headers.as_ref()) {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("route").index(i).key("headers"),
                "the authority is rewritten by the rule and again by this destination",
            );
        }
    }
}

/// The prefix of Istio's JWT claim routing pseudo-headers.
pub(super) const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";

fn http_match(ctx: &mut Ctx<'_>, path: &FieldPath, m: &HttpMatchRequest) {
    for (name, sm, field) in [
        ("uri", &m.uri, MatchField::Uri),
        ("scheme", &m.scheme, MatchField::Field),
        ("method", &m.method, MatchField::Field),
        ("authority", &m.authority, MatchField::Field),
    ] {
        if let Some(sm) = sm {
            ctx.string_match(&path.key(name), sm, field);
        }
    }
    for (field, map, at) in [
        ("headers", &m.headers, MatchField::Header),
        (
            "withoutHeaders",
            &m.without_headers,
            MatchField::WithoutHeader,
        ),
    ] {
        for (name, sm) in map {
            let p = path.key(field).key(name.as_str());
            if let Some(claim) = name.strip_prefix(JWT_CLAIM_PREFIX) {
                if claim.is_empty() {
                    ctx.report_key(
                        Code::InvalidValue,
                        &p,
                        "a JWT claim route needs a claim name",
                    );
                }
            } else {
                ctx.header_name(&p, name, true);
            }
            ctx.string_match(&p, sm, at);
        }
    }
    for (name, sm) in &m.query_params {
        let p = path.key("queryParams").key(name.as_str());
        if name.is_empty() {
            ctx.report_key(
                Code::InvalidValue,
                &p,
                "query parameter name must not be empty",
            );
        }
        ctx.string_match(&p, sm, MatchField::QueryParam);
    }
    if let Some(port) = m.port {
        ctx.port(&path.key("port"), port);
    }
    ctx.labels(&path.key("sourceLabels"), &m.source_labels);
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_ref(ctx, &path.key("gateways").index(i), g);
    }
    if let Some(ns) = &m.source_namespace
        && let Err(e) = host::check_dns_label(ns)
    {
        ctx.report(
            Code::InvalidName,
            &path.key("sourceNamespace"),
            format!("invalid namespace: {e}"),
        );
    }
}

pub(super) fn retries(ctx: &mut Ctx<'_>, path: &FieldPath, r: &HttpRetry) {
    if r.attempts < 0 {
        ctx.report(
            Code::InvalidValue,
            &path.key("attempts"),
            format!("attempts {} is negative", r.attempts),
        );
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.as_deref().is_some_and(|o| !o.is_empty())
            || r.retry_remote_localities.is_some())
    {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("attempts"),
            "a retry policy (`retryOn`, `perTryTimeout`, `retryRemoteLocalities`) is configured while `attempts` is 0, which disables retries",
        );
    }
    ctx.duration_ms(&path.key("perTryTimeout"), r.per_try_timeout);
    ctx.duration_ms(&path.key("backoff"), r.backoff);
    if let Some(on) = &r.retry_on {
        for cond in on.split(',').map(str::trim) {
            if cond.is_empty() {
                continue;
            }
            let status_ok = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !status_ok && !RETRY_ON_CONDITIONS.contains(&cond) {
                let mut msg = format!(
                    "`{cond}` is not a retry condition: expected one of {} or an HTTP status code",
                    RETRY_ON_CONDITIONS.join(", ")
                );
                if let Some(s) = crate::de::suggest(cond, RETRY_ON_CONDITIONS) {
                    msg = format!("`{cond}` is not a retry condition (did you mean `{s}`?)");
                }
                ctx.report(Code::InvalidValue, &path.key("retryOn"), msg);
            }
        }
    }
}

fn fault(ctx: &mut Ctx<'_>, path: &FieldPath, f: &HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        ctx.report(
            Code::MissingField,
            path,
            "a fault needs at least one of `delay` or `abort`",
        );
    }
    if let Some(d) = &f.delay {
        let p = path.key("delay");
        match (d.fixed_delay, d.exponential_delay) {
            (None, None) => ctx.report(
                Code::MissingField,
                &p.key("fixedDelay"),
                "a delay needs `fixedDelay`",
            ),
            (Some(_), Some(_)) => ctx.report(
                Code::ExclusiveFields,
                &p.key("exponentialDelay"),
                "`fixedDelay` and `exponentialDelay` cannot both be set",
            ),
            _ => {}
        }
        ctx.duration_ms(&p.key("fixedDelay"), d.fixed_delay);
        fault_percent(ctx, &p, d.percentage, d.percent, "");
    }
    if let Some(a) = &f.abort {
        let p = path.key("abort");
        let kinds = [
            ("httpStatus", a.http_status.is_some()),
            ("grpcStatus", a.grpc_status.is_some()),
            ("http2Error", a.http2_error.is_some()),
        ];
        let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        match set.as_slice() {
            [] => ctx.report(
                Code::MissingField,
                &p,
                "an abort needs one of `httpStatus`, `grpcStatus` or `http2Error`",
            ),
            [_] => {}
            [a, b, ..] => ctx.report(
                Code::ExclusiveFields,
                &p.key(*b),
                format!("`{a}` and `{b}` cannot both be set"),
            ),
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            ctx.report(
                Code::HttpStatusRange,
                &p.key("httpStatus"),
                format!("HTTP status {s} is outside 200-599"),
            );
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_STATUS.contains(&g.as_str())
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("grpcStatus"),
                format!(
                    "`{g}` is not a gRPC status: expected one of {}",
                    GRPC_STATUS.join(", ")
                ),
            );
        }
        fault_percent(
            ctx,
            &p,
            a.percentage,
            a.percent,
            " (Istio's current API no longer has it for aborts: Istio refuses it)",
        );
    }
}

fn fault_percent(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    percentage: Option<Percent>,
    percent: Option<i32>,
    note: &str,
) {
    if percentage.is_none() && percent.is_none() {
        ctx.warn(
            Code::FaultWithoutPercentage,
            path,
            "this fault has no `percentage`: Istio injects it into no request (write `percentage: {value: 100}` for every request)",
        );
    }
    if let Some(pc) = percentage {
        ctx.percent(&path.key("percentage").key("value"), pc.value);
    }
    if let Some(pc) = percent {
        ctx.deprecated(
            &path.key("percent"),
            format!("`percent` is deprecated{note}: use `percentage.value`"),
        );
        ctx.percent(&path.key("percent"), f64::from(pc));
        if percentage.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("percent"),
                "`percent` and `percentage` cannot both be set",
            );
        }
    }
}

fn cors(ctx: &mut Ctx<'_>, path: &FieldPath, c: &CorsPolicy) {
    if !c.allow_origin.is_empty() {
        ctx.deprecated(
            &path.key("allowOrigin"),
            "`allowOrigin` is deprecated: use `allowOrigins` with `exact`",
        );
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        let p = path.key("allowOrigins").index(i);
        // Istio: an origin match must say something (no empty exact, prefix or regex).
        let value = o.exact.as_ref().or(o.prefix.as_ref()).or(o.regex.as_ref());
        if o.set_count() > 1 {
            ctx.report(
                Code::InvalidStringMatch,
                &p,
                "only one of `exact`, `prefix` and `regex` may be set",
            );
        } else if value.is_none_or(|v| v.is_empty()) {
            ctx.report(
                Code::InvalidStringMatch,
                &p,
                "an allowed origin needs a non-empty `exact`, `prefix` or `regex`",
            );
        }
        if let Some(re) = o.regex.as_deref().filter(|r| !r.is_empty()) {
            ctx.regex(&p.key("regex"), re);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if m != "*" && !HTTP_METHODS.contains(&m.as_str()) {
            ctx.report(
                Code::InvalidValue,
                &path.key("allowMethods").index(i),
                format!(
                    "`{m}` is not an HTTP method: expected one of {}",
                    HTTP_METHODS.join(", ")
                ),
            );
        }
    }
    for field in ["allowHeaders", "exposeHeaders"] {
        let list = if field == "allowHeaders" {
            &c.allow_headers
        } else {
            &c.expose_headers
        };
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                ctx.header_name(&path.key(field).index(i), h, false);
            }
        }
    }
    if let Some(age) = c.max_age
        && age.get().subsec_nanos() != 0
    {
        ctx.report(
            Code::InvalidDuration,
            &path.key("maxAge"),
            format!("`maxAge` {age} must be a whole number of seconds"),
        );
    }
}

/// Header operations. Istio lets a request `set`/`add` rewrite the authority (`host` or
/// `:authority`); other pseudo-headers, and removing the authority, are refused.
fn headers(ctx: &mut Ctx<'_>, path: &FieldPath, h: &Headers) {
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = path.key(dir);
        for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                if let Err(e) = header_value(value) {
                    ctx.report(
                        Code::InvalidValue,
                        &p.key(field).key(name.as_str()),
                        format!("header value `{value}`: {e}"),
                    );
                }
                let authority_ok = dir == "request";
                header_op_name(
                    ctx,
                    &p.key(field).key(name.as_str()),
                    name,
                    true,
                    authority_ok,
                );
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            header_op_name(ctx, &p.key("remove").index(i), name, false, false);
        }
    }
}

/// Istio's `ValidateHTTPHeaderValue`: no control characters but tab, and Envoy's
/// header formatter syntax (`header_parser.cc`): a literal `%` is written `%%`, and a
/// `%VARIABLE%` or `%VARIABLE(["arg", ...])%` expression is closed.
fn header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{7f}')
    {
        return Err("control characters are not allowed".into());
    }
    #[derive(PartialEq)]
    enum State {
        Literal,
        Name,
        ExpectArray,
        ExpectString,
        InString,
        ExpectDelimiterOrEnd,
        ExpectArgsEnd,
        ExpectVariableEnd,
    }
    let b = value.as_bytes();
    let (mut i, mut state) = (0, State::Literal);
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match state {
            State::Literal if c == b'%' => match next {
                None => return Err("a `%` is not escaped (write `%%`)".into()),
                Some(b'%') => i += 1,
                Some(_) => state = State::Name,
            },
            State::Literal => {}
            State::Name if c == b'%' => state = State::Literal,
            State::Name if c == b'(' => state = State::ExpectArray,
            State::Name => {}
            State::ExpectArray if c == b'[' => state = State::ExpectString,
            State::ExpectArray if c != b' ' => state = State::InString,
            State::ExpectArray => {}
            State::ExpectDelimiterOrEnd => match c {
                b',' => state = State::ExpectString,
                b']' => state = State::ExpectArgsEnd,
                b' ' => {}
                _ => {
                    return Err(
                        "expected `,`, `]` or a space in a `%VAR([...])%` expression".into(),
                    );
                }
            },
            State::ExpectString => match c {
                b'"' => state = State::InString,
                b' ' => {}
                _ => return Err("expected `\"` in a `%VAR([...])%` expression".into()),
            },
            State::InString => match c {
                b'\\' if next.is_none() => {
                    return Err("a backslash ends a `%VAR([...])%` string".into());
                }
                b'\\' => i += 1,
                b')' => state = State::ExpectVariableEnd,
                b'"' => state = State::ExpectDelimiterOrEnd,
                _ => {}
            },
            State::ExpectArgsEnd => match c {
                b')' => state = State::ExpectVariableEnd,
                b' ' => {}
                _ => return Err("expected `)` in a `%VAR(...)%` expression".into()),
            },
            State::ExpectVariableEnd => match c {
                b'%' => state = State::Literal,
                b' ' => {}
                _ => return Err("expected `%` closing a `%VAR(...)%` expression".into()),
            },
        }
        i += 1;
    }
    if state != State::Literal {
        return Err(
            "a `%VARIABLE%` expression is not closed (a literal `%` is written `%%`)".into(),
        );
    }
    Ok(())
}

/// True when header operations `h` rewrite the request's authority.
fn sets_authority(h: Option<&Headers>) -> bool {
    h.and_then(|h| h.request.as_ref()).is_some_and(|ops| {
        ops.set
            .keys()
            .chain(ops.add.keys())
            .any(|k| is_authority_header(k))
    })
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

fn header_op_name(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    name: &str,
    is_key: bool,
    authority_ok: bool,
) {
    ctx.header_name(path, name, is_key);
    if is_authority_header(name) {
        if !authority_ok {
            ctx.report_key(
                Code::InvalidValue,
                path,
                format!("`{name}` cannot be removed or set on a response"),
            );
        }
    } else if name.starts_with(':') {
        ctx.report_key(
            Code::InvalidValue,
            path,
            format!("pseudo-header `{name}` cannot be changed with header operations"),
        );
    }
}

pub(super) fn is_base64(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - t.len() <= 2
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::header_value;
    use crate::{Code, ConfigSet, Severity};

    /// Envoy's header formatter syntax, as Istio ports it (`header_value_validator.go`).
    #[test]
    fn header_values_follow_envoys_formatter_syntax() {
        for ok in [
            "",
            "plain",
            "100%%",
            "%START_TIME%",
            "%DOWNSTREAM_REMOTE_ADDRESS%:%UPSTREAM_REMOTE_ADDRESS%",
            "%REQ(x-user)%",
            "%PER_REQUEST_STATE([\"a\", \"b\"])%",
            "%START_TIME(%s)%",
            "tab\there",
        ] {
            assert!(header_value(ok).is_ok(), "{ok}: {:?}", header_value(ok));
        }
        for bad in [
            "%",
            "abc%123",
            "%START_TIME%%",
            "abcd%oijasodifj",
            "%VAR([\"a\" x])%",
            "%VAR([x])%",
            "%VAR([\"a\"] x)%",
            "%VAR(x) y%",
            "line\nbreak",
            "del\u{7f}",
        ] {
            assert!(header_value(bad).is_err(), "{bad}");
        }
    }

    /// Istio: a direct response body above 100 KiB is warned about, above 1 MiB refused
    /// (the body travels in every proxy's configuration).
    #[test]
    fn direct_response_bodies_are_bounded_as_istio_bounds_them() {
        let check = |body: &str| {
            let mut set = ConfigSet::new();
            set.add_str(
                "vs.yaml",
                &format!(
                    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: big}}\nspec:\n  hosts: [foo.bar]\n  http:\n  - directResponse: {{status: 200, body: {body}}}\n"
                ),
            );
            set.check()
                .diagnostics
                .into_iter()
                .filter(|d| d.code == Code::InvalidValue)
                .map(|d| d.severity)
                .collect::<Vec<_>>()
        };
        let text = |n: usize| format!("{{string: \"{}\"}}", "x".repeat(n));
        // Base64 of n bytes: 4 characters per 3 bytes.
        let bytes = |n: usize| format!("{{bytes: \"{}\"}}", "QUJD".repeat(n / 3));
        assert_eq!(check(&text(100 * 1024)), []);
        assert_eq!(check(&text(100 * 1024 + 1)), [Severity::Warning]);
        assert_eq!(check(&text(1024 * 1024)), [Severity::Warning]);
        assert_eq!(check(&text(1024 * 1024 + 1)), [Severity::Error]);
        assert_eq!(check(&bytes(99 * 1024)), []);
        assert_eq!(check(&bytes(1024 * 1024 + 3)), [Severity::Error]);
    }
}
