//! AuthorizationPolicy, decided as Istio's sidecar decides it.
//!
//! Istio compiles each policy rule into Envoy RBAC: a rule matches when one of its
//! `from` sources and one of its `to` operations match, and all of its `when`
//! conditions (each `when` is added to every source or operation, by the attribute's
//! side). Within a source or operation every field given must match: one of `values`,
//! none of `notValues`. The filters run in order CUSTOM (an external authorizer) → DENY
//! → ALLOW; AUDIT only marks; a policy annotated `istio.io/dry-run: "true"` is evaluated
//! but enforces nothing. With no ALLOW policy a request is allowed; with some, one must
//! match. A policy without rules matches nothing (so `spec: {}` allows nothing).
//!
//! Which policies apply to a workload: those of the root namespace (all workloads, or
//! those their selector picks in any namespace) and those of its own namespace (all, or
//! the selected ones). Policies with `targetRef(s)` attach to gateways and services of
//! the Gateway API and do not apply to workloads by selector.
//!
//! Where Istio cannot translate a value (an IP block that does not parse, a port out of
//! range, an unsupported attribute), it fails closed: an ALLOW rule with such a value
//! is dropped (it can only allow less), while in a DENY or AUDIT rule only that value is
//! dropped (the rule can only deny more). The same holds here, and the compiled policy
//! keeps what was dropped and why, for the debug log and `meshctl`.

mod index;
mod pattern;
mod trust;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use mesh_config::model::common::Labels;
use mesh_config::model::security::{AuthorizationAction, AuthorizationPolicy, Operation, Source};
use mesh_config::model::{Origin, Resource};

use index::PolicySet;
use pattern::{IpBlock, PathPattern, Re, StrPattern, normalize_path};
pub use trust::TrustDomains;

/// The annotation that makes a policy dry-run.
pub use mesh_config::model::security::DRY_RUN_ANNOTATION;

/// What a policy does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allows them (and, once any ALLOW policy applies, only them).
    Allow,
    /// Denies them.
    Deny,
    /// Marks them for audit; no effect on the decision.
    Audit,
    /// Asks an external authorizer.
    Custom,
}

impl Action {
    /// Istio's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

impl From<AuthorizationAction> for Action {
    fn from(a: AuthorizationAction) -> Self {
        match a {
            AuthorizationAction::Allow => Action::Allow,
            AuthorizationAction::Deny => Action::Deny,
            AuthorizationAction::Audit => Action::Audit,
            AuthorizationAction::Custom => Action::Custom,
        }
    }
}

/// A JWT claim value, as far as authorization reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A string.
    Str(String),
    /// A list (its string elements are matched).
    List(Vec<Claim>),
    /// A nested object.
    Object(BTreeMap<String, Claim>),
    /// A number, boolean or null: never matches a string value.
    Other,
}

/// What RequestAuthentication established from a valid JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAuth {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// Every claim of the token (`aud`, `azp`, `groups`, ...).
    pub claims: BTreeMap<String, Claim>,
}

impl RequestAuth {
    fn claim(&self, path: &[String]) -> Option<&Claim> {
        let (first, rest) = path.split_first()?;
        let mut cur = self.claims.get(first)?;
        for key in rest {
            match cur {
                Claim::Object(m) => cur = m.get(key)?,
                _ => return None,
            }
        }
        Some(cur)
    }
}

/// What authorization knows of one request arriving at a workload.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The peer's verified identity from mutual TLS (`spiffe://td/ns/NS/sa/SA`); `None`
    /// in plaintext.
    pub peer: Option<&'a str>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The original client's address (from `X-Forwarded-For` at a gateway); the peer's
    /// when `None`.
    pub remote_ip: Option<IpAddr>,
    /// The address the request arrived at.
    pub destination_ip: IpAddr,
    /// The port it arrived at.
    pub destination_port: u16,
    /// The TLS server name, when TLS carried it.
    pub sni: Option<&'a str>,
    /// The method.
    pub method: &'a str,
    /// The `:authority` (or `Host`).
    pub host: &'a str,
    /// The request target as received: the path and the query. Paths are matched
    /// normalized as Envoy normalizes them (the query cut off, dot segments resolved);
    /// `request.headers[:path]` sees it as received.
    pub path: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The JWT's identity and claims, when a RequestAuthentication validated one.
    pub auth: Option<&'a RequestAuth>,
}

/// One condition: the attribute, the values of which one must match and those of which
/// none may.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    attr: Attr,
    values: Vec<Value>,
    not_values: Vec<Value>,
}

/// An attribute of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourceTrustDomain,
    SourceServiceAccount,
    SourcePrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    RequestClaim(Vec<String>),
    RequestHeader(HeaderKey),
    Host,
    Method,
    Path,
    DestinationIp,
    DestinationPort,
    Sni,
    /// Envoy filter metadata (`experimental.envoy.filters.*`): never present in-process.
    Absent,
}

/// One compiled value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(StrPattern),
    Ip(IpBlock),
    Path(PathPattern),
    Port(u16),
    /// An exact namespace, as `/ns/NAME/` somewhere in the peer's identity (Istio's
    /// `.*/ns/NAME/.*`).
    Namespace(String),
    /// A namespace with `*`: Istio's regular expression `.*/ns/A.*B/.*` on the identity
    /// (a `*` may run across `/`).
    NamespaceRe(Re),
    /// A trust domain: any (`*`), or a glob within the domain.
    TrustDomain(String),
    /// Istio's `spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?`.
    ServiceAccount(Re),
    /// `iss/sub` patterns.
    RequestPrincipal(StrPattern, StrPattern),
    /// Never matches.
    Never,
}

/// A compiled rule: one of `principals` (sources) and one of `permissions` (operations)
/// must match, each an AND of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    /// Its index in the policy's `rules`.
    index: usize,
    principals: Vec<Vec<Check>>,
    permissions: Vec<Vec<Check>>,
}

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    namespace: String,
    name: String,
    action: Action,
    provider: Option<String>,
    dry_run: bool,
    selector: Option<Labels>,
    attached: bool,
    rules: Vec<CompiledRule>,
    dropped: Vec<String>,
    origin: Option<Origin>,
}

impl Policy {
    /// Compiles one policy in a mesh whose trust domain is `cluster.local`, without
    /// aliases.
    pub fn compile(resource: &Resource<AuthorizationPolicy>) -> Self {
        Self::compile_in(resource, &TrustDomains::default())
    }

    /// Compiles one policy in a mesh of trust domains `trust`.
    pub fn compile_in(resource: &Resource<AuthorizationPolicy>, trust: &TrustDomains) -> Self {
        let spec = &resource.spec;
        let namespace = resource.namespace().to_string();
        let action: Action = spec.action.unwrap_or_default().into();
        let mut dropped = Vec::new();
        // Go's strconv.ParseBool, as Istio reads it; anything else is an error and the
        // policy is enforced.
        let annotation = resource.meta.annotations.get(DRY_RUN_ANNOTATION);
        let dry_run = match annotation.map(|v| (v, mesh_config::model::security::parse_go_bool(v)))
        {
            None => false,
            Some((_, Some(b))) => b,
            Some((other, None)) => {
                dropped.push(format!(
                    "annotation {DRY_RUN_ANNOTATION}: {other:?} is not a boolean; the policy is enforced"
                ));
                false
            }
        };
        let mut rules = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let mut cx = Compiler {
                action,
                namespace: &namespace,
                trust,
                errors: Vec::new(),
            };
            let compiled = cx.rule(rule).map(|mut r| {
                r.index = i;
                r
            });
            for e in cx.errors.drain(..) {
                dropped.push(format!("rules[{i}]: {e}"));
            }
            match compiled {
                Some(r) => rules.push(r),
                None => dropped.push(format!(
                    "rules[{i}]: the rule is dropped (it matches no request)"
                )),
            }
        }
        Policy {
            name: resource.name().to_string(),
            namespace,
            action,
            provider: spec.provider.as_ref().map(|p| p.name.clone()),
            dry_run,
            selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
            attached: spec.target_ref.is_some() || !spec.target_refs.is_empty(),
            rules,
            dropped,
            origin: Some(resource.origin.clone()),
        }
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The external authorizer of a CUSTOM policy.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// True when it is annotated dry-run.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Where it was written.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// What was dropped when compiling it, and why (fail-closed translation).
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    /// True when it applies to a workload with `labels` in `namespace`, the mesh's root
    /// namespace being `root`.
    pub fn applies_to(&self, root: &str, namespace: &str, labels: &Labels) -> bool {
        if self.attached || (self.namespace != root && self.namespace != namespace) {
            return false;
        }
        match &self.selector {
            None => true,
            Some(sel) => mesh_config::registry::selects(sel, labels),
        }
    }

    /// True when one of its rules matches `req`.
    pub fn matches(&self, req: &AuthzRequest<'_>) -> bool {
        self.matching_rule(req).is_some()
    }

    /// The index (in `rules`) of its first rule that matches `req`.
    pub fn matching_rule(&self, req: &AuthzRequest<'_>) -> Option<usize> {
        self.matching_rule_in(&Ctx::new(req))
    }

    fn matching_rule_in(&self, cx: &Ctx<'_, '_>) -> Option<usize> {
        self.rules.iter().find(|r| r.matches(cx)).map(|r| r.index)
    }
}

struct Compiler<'a> {
    action: Action,
    namespace: &'a str,
    trust: &'a TrustDomains,
    errors: Vec<String>,
}

impl Compiler<'_> {
    /// Compiles a rule, or `None` when an ALLOW rule must be dropped.
    fn rule(&mut self, rule: &mesh_config::model::security::Rule) -> Option<CompiledRule> {
        let mut base_principal = Vec::new();
        let mut base_permission = Vec::new();
        for (i, c) in rule.when.iter().enumerate() {
            let (attr, side) = match when_attr(&c.key) {
                Ok(x) => x,
                Err(e) => {
                    // Istio drops a rule with an unknown attribute whatever the action.
                    self.errors.push(format!("when[{i}]: {e}"));
                    return None;
                }
            };
            let check = self.check(attr, &c.values, &c.not_values)?;
            match side {
                Side::Principal => base_principal.extend(check),
                Side::Permission => base_permission.extend(check),
            }
        }
        let mut principals = Vec::new();
        for from in &rule.from {
            let mut merged = self.source(&from.source)?;
            merged.extend(base_principal.iter().cloned());
            principals.push(merged);
        }
        if rule.from.is_empty() {
            principals.push(base_principal);
        }
        let mut permissions = Vec::new();
        for to in &rule.to {
            let mut merged = self.operation(&to.operation)?;
            merged.extend(base_permission.iter().cloned());
            permissions.push(merged);
        }
        if rule.to.is_empty() {
            permissions.push(base_permission);
        }
        Some(CompiledRule {
            index: 0,
            principals,
            permissions,
        })
    }

    fn source(&mut self, s: &Source) -> Option<Vec<Check>> {
        let fields: [(Attr, &[String], &[String]); 7] = [
            (Attr::SourcePrincipal, &s.principals, &s.not_principals),
            (
                Attr::RequestPrincipal,
                &s.request_principals,
                &s.not_request_principals,
            ),
            (
                Attr::SourceServiceAccount,
                &s.service_accounts,
                &s.not_service_accounts,
            ),
            (
                Attr::SourceTrustDomain,
                &s.trust_domains,
                &s.not_trust_domains,
            ),
            (Attr::SourceNamespace, &s.namespaces, &s.not_namespaces),
            (Attr::RemoteIp, &s.remote_ip_blocks, &s.not_remote_ip_blocks),
            (Attr::SourceIp, &s.ip_blocks, &s.not_ip_blocks),
        ];
        self.checks(fields)
    }

    fn operation(&mut self, o: &Operation) -> Option<Vec<Check>> {
        let fields: [(Attr, &[String], &[String]); 4] = [
            (Attr::Host, &o.hosts, &o.not_hosts),
            (Attr::Method, &o.methods, &o.not_methods),
            (Attr::Path, &o.paths, &o.not_paths),
            (Attr::DestinationPort, &o.ports, &o.not_ports),
        ];
        self.checks(fields)
    }

    fn checks<const N: usize>(
        &mut self,
        fields: [(Attr, &[String], &[String]); N],
    ) -> Option<Vec<Check>> {
        let mut out = Vec::new();
        for (attr, values, not_values) in fields {
            out.extend(self.check(attr, values, not_values)?);
        }
        Some(out)
    }

    /// Compiles one attribute's values; `Some(None)` when nothing is left to check.
    fn check(
        &mut self,
        attr: Attr,
        values: &[String],
        not_values: &[String],
    ) -> Option<Option<Check>> {
        if values.is_empty() && not_values.is_empty() {
            return Some(None);
        }
        if attr == Attr::Absent {
            // Envoy matches metadata that is never there: values never hold, notValues
            // always do.
            return Some(Some(Check {
                attr,
                values: values.iter().map(|_| Value::Never).collect(),
                not_values: not_values.iter().map(|_| Value::Never).collect(),
            }));
        }
        let (values, not_values) = match attr {
            Attr::SourcePrincipal => (
                self.trust.principals(values),
                self.trust.principals(not_values),
            ),
            Attr::SourceTrustDomain => (
                self.trust.trust_domains(values),
                self.trust.trust_domains(not_values),
            ),
            _ => (values.to_vec(), not_values.to_vec()),
        };
        let mut compile = |vs: &[String]| -> Option<Vec<Value>> {
            let mut out = Vec::with_capacity(vs.len());
            for v in vs {
                match value(&attr, v, self.namespace) {
                    Ok(x) => out.push(x),
                    Err(e) => {
                        self.errors.push(e);
                        if self.action == Action::Allow {
                            return None;
                        }
                    }
                }
            }
            Some(out)
        };
        let vals = compile(&values)?;
        let nots = compile(&not_values)?;
        if vals.is_empty() && nots.is_empty() {
            // Every value was dropped (DENY, AUDIT): no condition left.
            return Some(None);
        }
        Some(Some(Check {
            attr,
            values: vals,
            not_values: nots,
        }))
    }
}

#[derive(Clone, Copy)]
enum Side {
    Principal,
    Permission,
}

/// The attribute of a `when` key, and the side of the RBAC policy Istio puts it on.
fn when_attr(key: &str) -> Result<(Attr, Side), String> {
    let bracketed = |prefix: &str| -> Result<Vec<String>, String> {
        let rest = &key[prefix.len()..];
        let mut names = Vec::new();
        let mut s = rest;
        while !s.is_empty() {
            let inner = s
                .strip_prefix('[')
                .and_then(|t| t.split_once(']'))
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| format!("{key:?}: expected {prefix}[name]"))?;
            names.push(inner.0.to_string());
            s = inner.1;
        }
        if names.is_empty() {
            return Err(format!("{key:?}: expected {prefix}[name]"));
        }
        Ok(names)
    };
    Ok(match key {
        "source.ip" => (Attr::SourceIp, Side::Principal),
        "remote.ip" => (Attr::RemoteIp, Side::Principal),
        "source.namespace" => (Attr::SourceNamespace, Side::Principal),
        "source.trustDomain" => (Attr::SourceTrustDomain, Side::Principal),
        "source.serviceAccount" => (Attr::SourceServiceAccount, Side::Principal),
        "source.principal" => (Attr::SourcePrincipal, Side::Principal),
        "request.auth.principal" => (Attr::RequestPrincipal, Side::Principal),
        "request.auth.audiences" => (Attr::RequestAudiences, Side::Principal),
        "request.auth.presenter" => (Attr::RequestPresenter, Side::Principal),
        "destination.ip" => (Attr::DestinationIp, Side::Permission),
        "destination.port" => (Attr::DestinationPort, Side::Permission),
        "connection.sni" => (Attr::Sni, Side::Permission),
        k if k.starts_with("request.headers") => {
            let names = bracketed("request.headers")?;
            if names.len() != 1 {
                return Err(format!("{key:?}: expected request.headers[name]"));
            }
            let key = match names[0].to_ascii_lowercase().as_str() {
                ":authority" => HeaderKey::Authority,
                ":method" => HeaderKey::Method,
                ":path" => HeaderKey::Path,
                other => http::HeaderName::from_bytes(other.as_bytes())
                    .map_or(HeaderKey::Absent, HeaderKey::Name),
            };
            (Attr::RequestHeader(key), Side::Principal)
        }
        k if k.starts_with("request.auth.claims") => (
            Attr::RequestClaim(bracketed("request.auth.claims")?),
            Side::Principal,
        ),
        // Well-formed (`a.b[c]`): Envoy filter metadata, never present in-process.
        k if k.starts_with("experimental.envoy.filters.")
            && k.contains('[')
            && k.ends_with(']') =>
        {
            (Attr::Absent, Side::Permission)
        }
        _ => return Err(format!("unknown attribute {key:?}")),
    })
}

/// Compiles one value of `attr` (`namespace`: the policy's, for short service accounts).
fn value(attr: &Attr, v: &str, namespace: &str) -> Result<Value, String> {
    Ok(match attr {
        Attr::SourceIp | Attr::RemoteIp | Attr::DestinationIp => Value::Ip(IpBlock::parse(v)?),
        Attr::DestinationPort => Value::Port(
            v.parse::<u16>()
                .map_err(|_| format!("port {v:?} is not a number in [0, 65535]"))?,
        ),
        Attr::Path => Value::Path(PathPattern::parse(v)?),
        Attr::Host => Value::Str(StrPattern::parse(v, true)),
        Attr::SourceNamespace if v.contains('*') => {
            let parts: Vec<String> = v.split('*').map(regex::escape).collect();
            Value::NamespaceRe(Re::new(&format!("^.*/ns/{}/.*$", parts.join(".*")))?)
        }
        Attr::SourceNamespace => Value::Namespace(format!("/ns/{v}/")),
        Attr::SourceTrustDomain => Value::TrustDomain(v.to_string()),
        Attr::SourceServiceAccount => {
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v));
            Value::ServiceAccount(Re::new(&format!(
                "^spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?$",
                regex::escape(ns),
                regex::escape(sa)
            ))?)
        }
        Attr::RequestPrincipal => {
            let (iss, sub) = request_principal(v);
            Value::RequestPrincipal(iss, sub)
        }
        Attr::Absent => Value::Never,
        Attr::SourcePrincipal
        | Attr::RequestAudiences
        | Attr::RequestPresenter
        | Attr::RequestClaim(_)
        | Attr::RequestHeader(_)
        | Attr::Method
        | Attr::Sni => Value::Str(StrPattern::parse(v, false)),
    })
}

/// Istio's split of a request principal pattern into issuer and subject patterns
/// (split at the last `/`; `*` alone, a leading `*` or a trailing `*` as Istio reads
/// them).
fn request_principal(v: &str) -> (StrPattern, StrPattern) {
    let split = v.rfind('/').map(|i| (&v[..i], &v[i + 1..]));
    let exact = |s: &str| StrPattern::Exact(s.to_string());
    if v == "*" {
        return (StrPattern::Present, StrPattern::Present);
    }
    if let Some(rest) = v.strip_prefix('*') {
        return match split {
            Some((iss, sub)) => {
                let iss = if iss == "*" {
                    StrPattern::Present
                } else {
                    StrPattern::Suffix(iss[1..].to_string())
                };
                (iss, exact(sub))
            }
            None => (StrPattern::Present, StrPattern::Suffix(rest.to_string())),
        };
    }
    if let Some(rest) = v.strip_suffix('*') {
        return match split {
            Some((iss, sub)) => {
                let sub = if sub == "*" {
                    StrPattern::Present
                } else {
                    StrPattern::Prefix(sub.trim_end_matches('*').to_string())
                };
                (exact(iss), sub)
            }
            None => (StrPattern::Prefix(rest.to_string()), StrPattern::Present),
        };
    }
    match split {
        Some((iss, sub)) => (exact(iss), exact(sub)),
        None => (exact(v), exact("")),
    }
}

impl CompiledRule {
    fn matches(&self, cx: &Ctx<'_, '_>) -> bool {
        let all = |checks: &Vec<Check>| checks.iter().all(|c| c.matches(cx));
        // Operations first: methods and paths are cheap and tell most rules apart.
        self.permissions.iter().any(all) && self.principals.iter().any(all)
    }
}

impl Check {
    fn matches(&self, cx: &Ctx<'_, '_>) -> bool {
        (self.values.is_empty() || self.values.iter().any(|v| matches(&self.attr, v, cx)))
            && !self.not_values.iter().any(|v| matches(&self.attr, v, cx))
    }
}

/// The trust domain of a SPIFFE ID `spiffe://TD/...`.
fn trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(td, _)| td))
}

/// `*` anywhere in `pattern` stands for any characters.
fn glob(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn header_value<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Option<std::borrow::Cow<'a, str>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?.to_str().ok()?;
    let mut joined: Option<String> = None;
    for v in all {
        let j = joined.get_or_insert_with(|| first.to_string());
        j.push(',');
        j.push_str(v.to_str().ok()?);
    }
    Some(match joined {
        Some(j) => std::borrow::Cow::Owned(j),
        None => std::borrow::Cow::Borrowed(first),
    })
}

/// The header a `request.headers[...]` condition reads, resolved when compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderKey {
    /// `:authority`, read from the request's host.
    Authority,
    /// `:method`.
    Method,
    /// `:path`, the request target as received.
    Path,
    /// A header of the request.
    Name(http::HeaderName),
    /// A name no request header can have (`:scheme`, invalid characters): absent.
    Absent,
}

/// A header's value; the pseudo-headers Envoy's header map holds are read from the
/// request.
fn pseudo_or_header<'a>(
    req: &AuthzRequest<'a>,
    key: &HeaderKey,
) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    match key {
        HeaderKey::Authority => Some(Cow::Borrowed(req.host)),
        HeaderKey::Method => Some(Cow::Borrowed(req.method)),
        HeaderKey::Path => Some(Cow::Borrowed(req.path)),
        HeaderKey::Name(name) => header_value(req.headers, name),
        HeaderKey::Absent => None,
    }
}

fn claim_matches(claim: Option<&Claim>, p: &StrPattern) -> bool {
    match claim {
        Some(Claim::Str(s)) => p.matches(s),
        Some(Claim::List(items)) => items
            .iter()
            .any(|c| matches!(c, Claim::Str(s) if p.matches(s))),
        _ => false,
    }
}

/// Istio's trust domain matchers: `*` is any SPIFFE ID, a name the prefix
/// `spiffe://NAME/`, a pattern with `*` the expression `spiffe://A[^/]*B/.*`.
fn trust_domain_matches(td: &str, peer: Option<&str>) -> bool {
    let Some(id) = peer else {
        return false;
    };
    if td == "*" {
        return id.starts_with("spiffe://");
    }
    let Some(domain) = trust_domain(id) else {
        return false;
    };
    // The prefix needs the `/` after the domain.
    let has_path = id.len() > "spiffe://".len() + domain.len();
    has_path && glob(td, domain)
}

/// A request being decided, with its path normalized once.
pub(crate) struct Ctx<'r, 'a> {
    req: &'r AuthzRequest<'a>,
    path: std::borrow::Cow<'a, str>,
}

impl<'r, 'a> Ctx<'r, 'a> {
    pub(crate) fn new(req: &'r AuthzRequest<'a>) -> Self {
        Ctx {
            req,
            path: normalize_path(req.path),
        }
    }
}

fn matches(attr: &Attr, value: &Value, cx: &Ctx<'_, '_>) -> bool {
    let req = cx.req;
    match (attr, value) {
        (Attr::SourceIp, Value::Ip(b)) => b.contains(req.source_ip),
        (Attr::RemoteIp, Value::Ip(b)) => b.contains(req.remote_ip.unwrap_or(req.source_ip)),
        (Attr::DestinationIp, Value::Ip(b)) => b.contains(req.destination_ip),
        (Attr::DestinationPort, Value::Port(p)) => req.destination_port == *p,
        // Istio matches `spiffe://` + the value (`*`: any non-empty principal).
        (Attr::SourcePrincipal, Value::Str(p)) => {
            req.peer
                .is_some_and(|id| match id.strip_prefix("spiffe://") {
                    Some(rest) => p.matches(rest),
                    None => *p == StrPattern::Present && !id.is_empty(),
                })
        }
        (Attr::SourceNamespace, Value::Namespace(n)) => {
            req.peer.is_some_and(|id| id.contains(n.as_str()))
        }
        (Attr::SourceNamespace, Value::NamespaceRe(re)) => {
            req.peer.is_some_and(|id| re.0.is_match(id))
        }
        (Attr::SourceTrustDomain, Value::TrustDomain(td)) => trust_domain_matches(td, req.peer),
        (Attr::SourceServiceAccount, Value::ServiceAccount(re)) => {
            req.peer.is_some_and(|id| re.0.is_match(id))
        }
        // A token without `sub` has no request principal (Istio builds it as
        // `iss/sub` only when both are there).
        (Attr::RequestPrincipal, Value::RequestPrincipal(iss, sub)) => req.auth.is_some_and(|a| {
            !a.issuer.is_empty()
                && !a.subject.is_empty()
                && iss.matches(&a.issuer)
                && sub.matches(&a.subject)
        }),
        (Attr::RequestAudiences, Value::Str(p)) => req
            .auth
            .is_some_and(|a| claim_matches(a.claims.get("aud"), p)),
        (Attr::RequestPresenter, Value::Str(p)) => req
            .auth
            .is_some_and(|a| claim_matches(a.claims.get("azp"), p)),
        (Attr::RequestClaim(path), Value::Str(p)) => {
            req.auth.is_some_and(|a| claim_matches(a.claim(path), p))
        }
        (Attr::RequestHeader(name), Value::Str(p)) => match pseudo_or_header(req, name) {
            // Envoy's present match: the header is there, whatever its value.
            Some(v) => *p == StrPattern::Present || p.matches(&v),
            None => false,
        },
        (Attr::Host, Value::Str(p)) => !req.host.is_empty() && p.matches_ignore_case(req.host),
        (Attr::Method, Value::Str(p)) => p.matches(req.method),
        (Attr::Path, Value::Path(p)) => p.matches(&cx.path),
        (Attr::Sni, Value::Str(p)) => req.sni.is_some_and(|s| p.matches(s)),
        _ => false,
    }
}

/// The outcome of authorization.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    /// True when the request may proceed.
    pub allowed: bool,
    /// The policy whose rule decided: the DENY policy that matched, or the ALLOW policy
    /// that matched; `None` when allowed because no ALLOW policy applies, or denied
    /// because none of the ALLOW policies matched.
    pub policy: Option<&'a Policy>,
    /// The index of the deciding policy's rule that matched.
    pub rule: Option<usize>,
}

impl Verdict<'_> {
    /// The deciding policy's action.
    pub fn action(&self) -> Option<Action> {
        self.policy.map(Policy::action)
    }
}

/// The AuthorizationPolicies that apply to one workload, by action (each set indexed by
/// the callers its policies name, see `index.rs`).
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    custom: PolicySet,
    deny: PolicySet,
    allow: PolicySet,
    audit: PolicySet,
    dry_deny: PolicySet,
    dry_allow: PolicySet,
    /// CUSTOM policies of more than one provider select the workload: as Istio does by
    /// default, their rules deny instead of asking any provider.
    custom_conflict: bool,
}

impl Authorizer {
    /// The policies of `all` that apply to a workload with `labels` in `namespace`.
    pub fn for_workload(all: &[Arc<Policy>], root: &str, namespace: &str, labels: &Labels) -> Self {
        let mut a = Authorizer::default();
        for p in all.iter().filter(|p| p.applies_to(root, namespace, labels)) {
            let set = match (p.dry_run, p.action) {
                // A dry-run CUSTOM or AUDIT policy has nothing to report.
                (true, Action::Custom | Action::Audit) => continue,
                (true, Action::Deny) => &mut a.dry_deny,
                (true, Action::Allow) => &mut a.dry_allow,
                (false, Action::Custom) => &mut a.custom,
                (false, Action::Deny) => &mut a.deny,
                (false, Action::Allow) => &mut a.allow,
                (false, Action::Audit) => &mut a.audit,
            };
            set.push(p.clone());
        }
        let mut providers: Vec<&str> = all
            .iter()
            .filter(|p| p.action == Action::Custom && !p.dry_run)
            .filter(|p| p.applies_to(root, namespace, labels))
            .filter_map(|p| p.provider())
            .collect();
        providers.sort_unstable();
        providers.dedup();
        a.custom_conflict = providers.len() > 1;
        a
    }

    /// True when no policy applies (every request is allowed, nothing to evaluate).
    pub fn is_empty(&self) -> bool {
        [
            &self.custom,
            &self.deny,
            &self.allow,
            &self.audit,
            &self.dry_deny,
            &self.dry_allow,
        ]
        .iter()
        .all(|s| s.is_empty())
    }

    /// True when CUSTOM policies of one provider select the workload: requests their
    /// rules match must be put to the provider before anything else is decided.
    pub fn has_custom(&self) -> bool {
        !self.custom.is_empty() && !self.custom_conflict
    }

    /// The CUSTOM policy whose rule matches `req`: its provider must be asked first,
    /// and its answer stands (a denial ends the request). `None` also when CUSTOM
    /// policies of several providers select the workload (their rules deny, see
    /// [`Authorizer::decide`]).
    pub fn custom(&self, req: &AuthzRequest<'_>) -> Option<&Policy> {
        if self.custom_conflict {
            return None;
        }
        self.custom.first_match(req).map(|(p, _)| p)
    }

    /// DENY, then ALLOW (after CUSTOM, see [`Authorizer::custom`]). When CUSTOM
    /// policies of more than one provider select the workload, a request their rules
    /// match is denied by the CUSTOM policy (Istio's behaviour unless multiple providers
    /// are enabled).
    pub fn decide(&self, req: &AuthzRequest<'_>) -> Verdict<'_> {
        if self.custom_conflict
            && let Some((p, i)) = self.custom.first_match(req)
        {
            return Verdict {
                allowed: false,
                policy: Some(p),
                rule: Some(i),
            };
        }
        decide(&self.deny, &self.allow, req)
    }

    /// The AUDIT policy that matches `req`, if any.
    pub fn audit(&self, req: &AuthzRequest<'_>) -> Option<&Policy> {
        self.audit.first_match(req).map(|(p, _)| p)
    }

    /// What the dry-run policies would decide, when there are any: Istio's shadow
    /// result, for the log only.
    pub fn dry_run(&self, req: &AuthzRequest<'_>) -> Option<Verdict<'_>> {
        if self.dry_deny.is_empty() && self.dry_allow.is_empty() {
            return None;
        }
        Some(decide(&self.dry_deny, &self.dry_allow, req))
    }
}

fn decide<'a>(deny: &'a PolicySet, allow: &'a PolicySet, req: &AuthzRequest<'_>) -> Verdict<'a> {
    if let Some((p, i)) = deny.first_match(req) {
        return Verdict {
            allowed: false,
            policy: Some(p),
            rule: Some(i),
        };
    }
    if allow.is_empty() {
        return Verdict {
            allowed: true,
            policy: None,
            rule: None,
        };
    }
    match allow.first_match(req) {
        Some((p, i)) => Verdict {
            allowed: true,
            policy: Some(p),
            rule: Some(i),
        },
        None => Verdict {
            allowed: false,
            policy: None,
            rule: None,
        },
    }
}

#[cfg(test)]
mod tests;
