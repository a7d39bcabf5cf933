//! Per-resource validation: what Istio's validation webhook rejects, one resource at a time.
//!
//! Types and unknown fields were checked while loading; this module checks values and
//! combinations: weights that do not sum to 100, invalid regular expressions (RE2 syntax,
//! checked with the `regex` crate, which follows RE2), durations below Istio's 1 ms floor,
//! percentages outside 0–100, HTTP statuses out of range, duplicate subsets, mutually
//! exclusive fields, invalid label keys, invalid hosts and ports. Cross-resource checks
//! live in [`crate::analyze`].

use std::collections::{BTreeMap, HashSet};

use crate::diag::{Code, Diagnostic, ResourceRef, Severity};
use crate::duration::Duration;
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

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP",
];

/// Collects the diagnostics of one resource.
pub(crate) struct Ctx<'a> {
    origin: &'a Origin,
    reference: ResourceRef,
    out: &'a mut Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(r: &'a AnyResource, out: &'a mut Vec<Diagnostic>) -> Self {
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

    fn regex(&mut self, path: &FieldPath, re: &str) {
        if let Err(e) = crate::re2::compile(re) {
            self.report(
                Code::InvalidRegex,
                path,
                format!("`{re}` is not a valid RE2 regular expression: {e}"),
            );
        }
    }

    fn string_match(&mut self, path: &FieldPath, m: &StringMatch, presence_ok: bool) {
        match m.set_count() {
            0 if presence_ok => {}
            0 => self.report(
                Code::InvalidStringMatch,
                path,
                "a string match needs one of `exact`, `prefix` or `regex`",
            ),
            1 => {}
            _ => self.report(
                Code::InvalidStringMatch,
                path,
                "only one of `exact`, `prefix` and `regex` may be set",
            ),
        }
        if let Some(re) = &m.regex {
            self.regex(&path.key("regex"), re);
        }
    }

    /// Istio's floor for durations: at least 1 ms, in whole milliseconds.
    fn duration_ms(&mut self, path: &FieldPath, d: Option<Duration>) {
        let Some(d) = d else { return };
        let nanos = d.get().as_nanos();
        if nanos < 1_000_000 {
            self.report(
                Code::InvalidDuration,
                path,
                format!("duration `{d}` must be at least 1ms"),
            );
        } else if nanos % 1_000_000 != 0 {
            self.report(
                Code::InvalidDuration,
                path,
                format!("duration `{d}` must be a whole number of milliseconds"),
            );
        }
    }

    fn percent(&mut self, path: &FieldPath, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.report(
                Code::PercentageRange,
                path,
                format!("percentage {value} is outside 0-100"),
            );
        }
    }

    fn port(&mut self, path: &FieldPath, n: u32) {
        if n == 0 || n > 65535 {
            self.report(
                Code::InvalidPort,
                path,
                format!("port {n} is outside 1-65535"),
            );
        }
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

    fn host(&mut self, path: &FieldPath, h: &str) {
        if let Err(e) = host::check_wildcard_domain(h) {
            self.report(Code::InvalidHost, path, format!("invalid host: {e}"));
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

    /// Checks `exportTo`; `none_ok` where `~` is allowed (ServiceEntry only).
    fn export_to(&mut self, path: &FieldPath, list: &[String], none_ok: bool) {
        let mut seen = HashSet::new();
        for (i, ns) in list.iter().enumerate() {
            let p = path.index(i);
            if !seen.insert(ns.as_str()) {
                self.report(
                    Code::DuplicateEntry,
                    &p,
                    format!("`{ns}` appears twice in exportTo"),
                );
            }
            match ns.as_str() {
                "." | "*" => continue,
                "~" if none_ok => continue,
                "~" => {
                    self.report(
                        Code::InvalidValue,
                        &p,
                        "`~` (export to no namespace) is only allowed for ServiceEntries",
                    );
                    continue;
                }
                _ => {}
            }
            if let Err(e) = host::check_dns1123_label(ns) {
                self.report(
                    Code::InvalidValue,
                    &p,
                    format!("exportTo entries are `.`, `*`, `~` or a namespace name: {e}"),
                );
            }
        }
        if list.len() > 1 && list.iter().any(|n| n == "~") {
            self.report(
                Code::ExclusiveFields,
                path,
                "`~` (export to no namespace) cannot be combined with other entries",
            );
        }
        if list.len() > 1 && list.iter().any(|n| n == "*") {
            self.report(
                Code::ExclusiveFields,
                path,
                "`*` (export to every namespace) cannot be combined with other entries",
            );
        }
    }

    fn selector(&mut self, path: &FieldPath, s: &Option<WorkloadSelector>) {
        if let Some(s) = s {
            self.labels(&path.key("matchLabels"), &s.match_labels);
        }
    }

    fn deprecated(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warn(Code::Deprecated, path, message);
    }
}

/// A check of one value of a list.
type Check = dyn Fn(&str) -> Result<(), String>;

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
    let spec = FieldPath::root().key("spec");
    match r {
        AnyResource::VirtualService(vs) => virtual_service(&mut ctx, &spec, &vs.spec),
        AnyResource::DestinationRule(dr) => destination_rule(&mut ctx, &spec, &dr.spec),
        AnyResource::Gateway(gw) => gateway(&mut ctx, &spec, &gw.spec),
        AnyResource::ServiceEntry(se) => service_entry(&mut ctx, &spec, &se.spec),
        AnyResource::WorkloadEntry(we) => workload_entry(&mut ctx, &spec, &we.spec, None),
        AnyResource::PeerAuthentication(pa) => peer_authentication(&mut ctx, &spec, &pa.spec),
        AnyResource::AuthorizationPolicy(ap) => authorization_policy(&mut ctx, &spec, &ap.spec),
        AnyResource::RequestAuthentication(ra) => request_authentication(&mut ctx, &spec, &ra.spec),
        AnyResource::MeshConfig(mc) => mesh_config(&mut ctx, &spec, &mc.spec),
    }
    crate::support::not_enforced(r.kind(), r.origin(), r.origin().node(), out);
}

// ---------------------------------------------------------------------------------------
// VirtualService

fn virtual_service(ctx: &mut Ctx<'_>, spec: &FieldPath, vs: &VirtualService) {
    let delegate = vs.hosts.is_empty();
    let bound_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    if delegate && !vs.gateways.is_empty() {
        ctx.report(
            Code::MissingField,
            &spec.key("hosts"),
            "`hosts` is required (only a delegate VirtualService has no hosts, and a delegate cannot have gateways)",
        );
    }
    let mut seen = HashSet::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        let p = spec.key("hosts").index(i);
        ctx.host(&p, h);
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
                            "JWT claim based routing is parsed but not enforced: JWT authentication is not implemented, so this match never matches",
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

fn gateway_ref(ctx: &mut Ctx<'_>, path: &FieldPath, g: &str) {
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
fn weights(ctx: &mut Ctx<'_>, path: &FieldPath, weights: &[Option<i32>]) {
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

fn destination(ctx: &mut Ctx<'_>, path: &FieldPath, d: &Destination) {
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
        && let Err(e) = host::check_dns1123_label(s)
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

fn http_route(ctx: &mut Ctx<'_>, path: &FieldPath, r: &HttpRoute, in_delegate: bool) {
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
            &path.key("mirrorPercent"),
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
        if let Some(code) = rd.redirect_code
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
        if rd.uri.is_none()
            && rd.authority.is_none()
            && rd.port.is_none()
            && rd.scheme.is_none()
            && rd.derive_port.is_none()
        {
            ctx.report(
                Code::MissingField,
                &p,
                "a redirect needs at least one of `uri`, `authority`, `port`, `derivePort` or `scheme`",
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
        ctx.deprecated(
            &path.key("mirrorPercent"),
            "`mirrorPercent` is deprecated: use `mirrorPercentage.value`",
        );
        ctx.percent(&path.key("mirrorPercent"), f64::from(pc));
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
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";

fn http_match(ctx: &mut Ctx<'_>, path: &FieldPath, m: &HttpMatchRequest) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            ctx.string_match(&path.key(name), sm, false);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
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
            ctx.string_match(&p, sm, true);
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
        if sm.prefix.is_some() {
            ctx.report(
                Code::InvalidStringMatch,
                &p.key("prefix"),
                "query parameters can be matched with `exact` or `regex`, not `prefix`",
            );
        } else {
            ctx.string_match(&p, sm, true);
        }
    }
    if let Some(port) = m.port {
        ctx.port(&path.key("port"), port);
    }
    ctx.labels(&path.key("sourceLabels"), &m.source_labels);
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_ref(ctx, &path.key("gateways").index(i), g);
    }
    if let Some(ns) = &m.source_namespace
        && let Err(e) = host::check_dns1123_label(ns)
    {
        ctx.report(
            Code::InvalidName,
            &path.key("sourceNamespace"),
            format!("invalid namespace: {e}"),
        );
    }
}

fn retries(ctx: &mut Ctx<'_>, path: &FieldPath, r: &HttpRetry) {
    if r.attempts < 0 {
        ctx.report(
            Code::InvalidValue,
            &path.key("attempts"),
            format!("attempts {} is negative", r.attempts),
        );
    }
    if r.attempts == 0 && (r.per_try_timeout.is_some() || r.retry_on.is_some()) {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("attempts"),
            "a retry policy (`retryOn`, `perTryTimeout`) is configured while `attempts` is 0, which disables retries",
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
        fault_percent(ctx, &p, d.percentage, d.percent);
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
        fault_percent(ctx, &p, a.percentage, a.percent);
    }
}

fn fault_percent(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    percentage: Option<Percent>,
    percent: Option<i32>,
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
            "`percent` is deprecated: use `percentage.value`",
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
        ctx.string_match(&path.key("allowOrigins").index(i), o, false);
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
            for name in map.keys() {
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

// ---------------------------------------------------------------------------------------
// DestinationRule

fn destination_rule(ctx: &mut Ctx<'_>, spec: &FieldPath, dr: &DestinationRule) {
    if ctx.required_str(&spec.key("host"), &dr.host, "`host`") {
        ctx.host(&spec.key("host"), &dr.host);
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(ctx, &spec.key("trafficPolicy"), tp);
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = spec.key("subsets").index(i);
        if ctx.required_str(&p.key("name"), &s.name, "subset `name`") {
            if let Err(e) = host::check_dns1123_label(&s.name) {
                ctx.report(
                    Code::InvalidValue,
                    &p.key("name"),
                    format!("invalid subset name: {e}"),
                );
            }
            if let Some(first) = names.insert(&s.name, i) {
                ctx.report(
                    Code::DuplicateSubset,
                    &p.key("name"),
                    format!(
                        "subset `{}` is defined twice (first as subsets[{first}])",
                        s.name
                    ),
                );
            }
        }
        ctx.labels(&p.key("labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(ctx, &p.key("trafficPolicy"), tp);
        }
    }
    ctx.export_to(&spec.key("exportTo"), &dr.export_to, false);
    ctx.selector(&spec.key("workloadSelector"), &dr.workload_selector);
}

fn traffic_policy(ctx: &mut Ctx<'_>, path: &FieldPath, tp: &TrafficPolicy) {
    policy_parts(
        ctx,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeMap::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = path.key("portLevelSettings").index(i);
        match pl.port {
            None => ctx.report(
                Code::MissingField,
                &p.key("port"),
                "port-level settings need a `port`",
            ),
            Some(port) => {
                ctx.port(&p.key("port").key("number"), port.number);
                if let Some(first) = ports.insert(port.number, i) {
                    ctx.report(
                        Code::DuplicateEntry,
                        &p.key("port").key("number"),
                        format!(
                            "port {} has settings twice (first in portLevelSettings[{first}])",
                            port.number
                        ),
                    );
                }
            }
        }
        policy_parts(
            ctx,
            &p,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(pc) = rb.percent
    {
        ctx.percent(&path.key("retryBudget").key("percent"), pc);
    }
}

fn policy_parts(
    ctx: &mut Ctx<'_>,
    path: &FieldPath,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(ctx, &path.key("loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(ctx, &path.key("connectionPool"), pool);
    }
    if let Some(od) = od {
        outlier_detection(ctx, &path.key("outlierDetection"), od);
    }
    if let Some(tls) = tls {
        client_tls(ctx, &path.key("tls"), tls);
    }
}

fn load_balancer(ctx: &mut Ctx<'_>, path: &FieldPath, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("consistentHash"),
            "`simple` and `consistentHash` cannot both be set",
        );
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        ctx.deprecated(
            &path.key("simple"),
            "`LEAST_CONN` is deprecated: use `LEAST_REQUEST`",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = path.key("consistentHash");
        let keys = [
            ("httpHeaderName", ch.http_header_name.is_some()),
            ("httpCookie", ch.http_cookie.is_some()),
            ("useSourceIp", ch.use_source_ip == Some(true)),
            (
                "httpQueryParameterName",
                ch.http_query_parameter_name.is_some(),
            ),
        ];
        let set: Vec<&str> = keys.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        match set.as_slice() {
            [] => ctx.report(
                Code::MissingField,
                &p,
                "consistent hashing needs one of `httpHeaderName`, `httpCookie`, `useSourceIp` or `httpQueryParameterName`",
            ),
            [_] => {}
            [a, b, ..] => ctx.report(
                Code::ExclusiveFields,
                &p.key(*b),
                format!("`{a}` and `{b}` cannot both be set"),
            ),
        }
        if let Some(h) = &ch.http_header_name {
            ctx.header_name(&p.key("httpHeaderName"), h, false);
        }
        if let Some(c) = &ch.http_cookie {
            ctx.required_str(&p.key("httpCookie").key("name"), &c.name, "cookie `name`");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &p.key("maglev"),
                "`ringHash` and `maglev` cannot both be set",
            );
        }
        if ch.minimum_ring_size.is_some() {
            ctx.deprecated(
                &p.key("minimumRingSize"),
                "`minimumRingSize` is deprecated: use `ringHash.minimumRingSize`",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                ctx.report(
                    Code::ExclusiveFields,
                    &p.key("minimumRingSize"),
                    "`minimumRingSize` cannot be used with `ringHash` or `maglev`",
                );
            }
        }
        if let Some(size) = ch.maglev.and_then(|m| m.table_size)
            && (size > MAX_MAGLEV_TABLE || !is_prime(size))
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("maglev").key("tableSize"),
                format!("maglev `tableSize` {size} must be a prime number no larger than {MAX_MAGLEV_TABLE} (e.g. 65537)"),
            );
        }
    }
    if let Some(w) = &lb.warmup {
        if w.duration.is_none() {
            ctx.report(
                Code::MissingField,
                &path.key("warmup").key("duration"),
                "`warmup` needs a `duration`",
            );
        }
        if lb.warmup_duration_secs.is_some() {
            ctx.report(
                Code::ExclusiveFields,
                &path.key("warmup"),
                "`warmupDurationSecs` and `warmup` cannot both be set",
            );
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("zoneAwareLbSetting"),
            "`localityLbSetting` and `zoneAwareLbSetting` cannot both be set",
        );
    }
    if lb.backend_utilization.is_some() && (lb.simple.is_some() || lb.consistent_hash.is_some()) {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("backendUtilization"),
            "`backendUtilization` cannot be combined with `simple` or `consistentHash`",
        );
    }
    if let Some(l) = &lb.locality_lb_setting
        && !l.distribute.is_empty()
        && !l.failover.is_empty()
    {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("localityLbSetting").key("failover"),
            "`distribute` and `failover` cannot both be set",
        );
    }
}

/// Envoy's largest Maglev table.
const MAX_MAGLEV_TABLE: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

fn connection_pool(ctx: &mut Ctx<'_>, path: &FieldPath, pool: &ConnectionPoolSettings) {
    if let Some(tcp) = &pool.tcp {
        let p = path.key("tcp");
        non_negative(ctx, &p.key("maxConnections"), tcp.max_connections);
        ctx.duration_ms(&p.key("connectTimeout"), tcp.connect_timeout);
        ctx.duration_ms(&p.key("maxConnectionDuration"), tcp.max_connection_duration);
        ctx.duration_ms(&p.key("idleTimeout"), tcp.idle_timeout);
    }
    if let Some(http) = &pool.http {
        let p = path.key("http");
        for (name, v) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            non_negative(ctx, &p.key(name), v);
        }
        ctx.duration_ms(&p.key("idleTimeout"), http.idle_timeout);
    }
}

fn non_negative(ctx: &mut Ctx<'_>, path: &FieldPath, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        ctx.report(Code::InvalidValue, path, format!("{v} is negative"));
    }
}

fn outlier_detection(ctx: &mut Ctx<'_>, path: &FieldPath, od: &OutlierDetection) {
    if od.consecutive_errors.is_some() {
        ctx.deprecated(
            &path.key("consecutiveErrors"),
            "`consecutiveErrors` is deprecated: use `consecutive5xxErrors` or `consecutiveGatewayErrors`",
        );
    }
    non_negative(ctx, &path.key("consecutiveErrors"), od.consecutive_errors);
    ctx.duration_ms(&path.key("interval"), od.interval);
    ctx.duration_ms(&path.key("baseEjectionTime"), od.base_ejection_time);
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v {
            ctx.percent(&path.key(name), f64::from(v));
        }
    }
    if let Some(v) = od.failure_percentage_threshold {
        ctx.percent(&path.key("failurePercentageThreshold"), f64::from(v));
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            ctx.report(
                Code::HttpStatusRange,
                &path.key("outlierDetectionHttpErrorCodes").index(i),
                format!("HTTP status {code} is outside 100-599"),
            );
        }
    }
}

/// Istio's `validateTLS`: MUTUAL needs a client certificate and key (unless a credential
/// name provides them); a credential name and file paths do not mix.
fn client_tls(ctx: &mut Ctx<'_>, path: &FieldPath, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or_default();
    if tls.credential_name.is_some()
        && (tls.client_certificate.is_some()
            || tls.private_key.is_some()
            || tls.ca_certificates.is_some())
    {
        ctx.report(
            Code::ExclusiveFields,
            &path.key("credentialName"),
            "`credentialName` cannot be combined with `clientCertificate`, `privateKey` or `caCertificates`",
        );
    }
    if mode == ClientTlsMode::Mutual && tls.credential_name.is_none() {
        if tls.client_certificate.is_none() {
            ctx.report(
                Code::MissingField,
                &path.key("clientCertificate"),
                "MUTUAL TLS needs `clientCertificate` (or `credentialName`)",
            );
        }
        if tls.private_key.is_none() {
            ctx.report(
                Code::MissingField,
                &path.key("privateKey"),
                "MUTUAL TLS needs `privateKey` (or `credentialName`)",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

fn gateway(ctx: &mut Ctx<'_>, spec: &FieldPath, gw: &Gateway) {
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

// ---------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

fn service_entry(ctx: &mut Ctx<'_>, spec: &FieldPath, se: &ServiceEntry) {
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

fn workload_entry(ctx: &mut Ctx<'_>, path: &FieldPath, we: &WorkloadEntry, ports: Option<&[&str]>) {
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

// ---------------------------------------------------------------------------------------
// Security

fn peer_authentication(ctx: &mut Ctx<'_>, spec: &FieldPath, pa: &PeerAuthentication) {
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
    for port in pa.port_level_mtls.keys() {
        ctx.port(&spec.key("portLevelMtls").key(port.to_string()), *port);
    }
}

fn authorization_policy(ctx: &mut Ctx<'_>, spec: &FieldPath, ap: &AuthorizationPolicy) {
    ctx.selector(&spec.key("selector"), &ap.selector);
    let targeted = ap.target_ref.is_some() || !ap.target_refs.is_empty();
    if ap.selector.is_some() && targeted {
        ctx.report(
            Code::ExclusiveFields,
            &spec.key("selector"),
            "`selector` cannot be used with `targetRef` or `targetRefs`",
        );
    }
    let action = ap.action.unwrap_or_default();
    match action {
        AuthorizationAction::Custom if ap.provider.is_none() => ctx.report(
            Code::MissingField,
            &spec.key("provider"),
            "the CUSTOM action needs a `provider`",
        ),
        AuthorizationAction::Audit => ctx.warn(
            Code::NotEnforced,
            &spec.key("action"),
            "the AUDIT action is parsed but not enforced: audit logging is not implemented",
        ),
        _ => {}
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

fn wildcard_value(v: &str) -> Result<(), String> {
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        return Err(format!(
            "`{v}`: `*` is only allowed at the start or the end"
        ));
    }
    Ok(())
}

/// Istio's path templates: `{*}` matches one segment, `{**}` any number (last segment
/// only); each is a whole segment; no other `*` with them.
fn path_template(v: &str) -> Result<(), String> {
    let segments: Vec<&str> = v.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "{*}" => {}
            "{**}" if i + 1 == segments.len() => {}
            "{**}" => return Err(format!("`{v}`: `{{**}}` must be the last segment")),
            s if s.contains('{') || s.contains('}') || s.contains('*') => {
                return Err(format!(
                    "`{v}`: a path template segment must be exactly `{{*}}` or `{{**}}`, and no other `*` is allowed"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn ip_block(v: &str) -> Result<(), String> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("`{v}` is not an IP address or CIDR block"))?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("`{v}`: prefix length must be 0-{max}")),
        }
    }
    Ok(())
}

fn port_value(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(format!("`{v}` is not a port number (1-65535)")),
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
        ("principals", &s.principals, &wildcard_value),
        ("notPrincipals", &s.not_principals, &wildcard_value),
        ("requestPrincipals", &s.request_principals, &wildcard_value),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            &wildcard_value,
        ),
        ("namespaces", &s.namespaces, &wildcard_value),
        ("notNamespaces", &s.not_namespaces, &wildcard_value),
        ("ipBlocks", &s.ip_blocks, &ip_block),
        ("notIpBlocks", &s.not_ip_blocks, &ip_block),
        ("remoteIpBlocks", &s.remote_ip_blocks, &ip_block),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks, &ip_block),
        ("serviceAccounts", &s.service_accounts, &wildcard_value),
        (
            "notServiceAccounts",
            &s.not_service_accounts,
            &wildcard_value,
        ),
        ("trustDomains", &s.trust_domains, &wildcard_value),
        ("notTrustDomains", &s.not_trust_domains, &wildcard_value),
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
}

fn operation(ctx: &mut Ctx<'_>, path: &FieldPath, o: &Operation) {
    let path_value = |v: &str| -> Result<(), String> {
        if v.contains('{') || v.contains('}') {
            path_template(v)?;
        } else {
            wildcard_value(v)?;
        }
        if v.starts_with('/') || v.starts_with('*') {
            Ok(())
        } else {
            Err(format!("path `{v}` must start with `/` (or `*`)"))
        }
    };
    let lists: [(&str, &Vec<String>, &Check); 8] = [
        ("hosts", &o.hosts, &wildcard_value),
        ("notHosts", &o.not_hosts, &wildcard_value),
        ("ports", &o.ports, &port_value),
        ("notPorts", &o.not_ports, &port_value),
        ("methods", &o.methods, &wildcard_value),
        ("notMethods", &o.not_methods, &wildcard_value),
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
}

/// Condition keys Istio supports in `when` (prefixes end with `[`).
const CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
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
                c.key.starts_with(k)
            } else {
                c.key == *k
            }
        });
        if known && c.key.starts_with("request.auth.") {
            ctx.warn(
                Code::NotEnforced,
                &path.key("key"),
                format!("`{}` is parsed but not enforced: JWT authentication is not implemented, so the condition never holds", c.key),
            );
        }
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
        _ => &|_: &str| Ok(()),
    };
    values(ctx, &path.key("values"), &c.values, check);
    values(ctx, &path.key("notValues"), &c.not_values, check);
}

fn request_authentication(ctx: &mut Ctx<'_>, spec: &FieldPath, ra: &RequestAuthentication) {
    ctx.selector(&spec.key("selector"), &ra.selector);
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
            && !(uri.starts_with("http://") || uri.starts_with("https://"))
        {
            ctx.report(
                Code::InvalidValue,
                &p.key("jwksUri"),
                format!("`{uri}` is not an http(s) URL"),
            );
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            let hp = p.key("fromHeaders").index(j).key("name");
            if ctx.required_str(&hp, &h.name, "header `name`") {
                ctx.header_name(&hp, &h.name, false);
            }
        }
        ctx.duration_ms(&p.key("timeout"), rule.timeout);
    }
}

fn mesh_config(ctx: &mut Ctx<'_>, spec: &FieldPath, mc: &MeshConfigSpec) {
    if let Some(td) = &mc.trust_domain
        && let Err(e) = host::check_wildcard_domain(td)
    {
        ctx.report(
            Code::InvalidValue,
            &spec.key("trustDomain"),
            format!("invalid trust domain: {e}"),
        );
    }
    if let Some(ns) = &mc.root_namespace
        && let Err(e) = host::check_dns1123_label(ns)
    {
        ctx.report(
            Code::InvalidName,
            &spec.key("rootNamespace"),
            format!("invalid namespace: {e}"),
        );
    }
    if let Some(r) = &mc.default_http_retry_policy {
        retries(ctx, &spec.key("defaultHttpRetryPolicy"), r);
    }
    ctx.export_to(
        &spec.key("defaultServiceExportTo"),
        &mc.default_service_export_to,
        true,
    );
    ctx.export_to(
        &spec.key("defaultVirtualServiceExportTo"),
        &mc.default_virtual_service_export_to,
        false,
    );
    ctx.export_to(
        &spec.key("defaultDestinationRuleExportTo"),
        &mc.default_destination_rule_export_to,
        false,
    );
}

fn is_base64(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - t.len() <= 2
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
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
