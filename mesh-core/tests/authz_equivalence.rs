//! The compiled authorization engine agrees with a direct reading of the YAML.
//!
//! `mesh_core::authz` compiles each AuthorizationPolicy into checks (as Istio compiles it
//! into Envoy RBAC) and decides from those. This test compares it with an evaluator
//! written here, straight from Istio's documented semantics and over the deserialized
//! mesh-config structs (`AuthorizationPolicy`, `Rule`, `Source`, `Operation`,
//! `Condition`), sharing no code with the engine:
//!
//! - which policies apply: those of the root namespace (`istio-system`) and of the
//!   workload's own namespace, all workloads or those the selector picks; a policy with
//!   `targetRef` never applies to a workload;
//! - a rule matches when (no `from`, or one source matches) and (no `to`, or one
//!   operation matches) and every `when` condition holds; in a source, an operation or
//!   a condition every non-empty list needs a matching value, and no `not` value may
//!   match; a policy without rules matches nothing;
//! - values in Istio's forms: `*` (any non-empty), `*suffix`, `prefix*`, exact; hosts
//!   ignore case; a header's `*` only asks for the header; principals are the peer's
//!   SPIFFE ID without `spiffe://`, namespaces and service accounts its `ns`/`sa`
//!   segments; IP blocks are CIDRs or addresses; request principals `iss/sub`;
//! - the decision: a matching DENY denies; otherwise, with no ALLOW policy the request
//!   is allowed, with some one must match; AUDIT changes nothing (CUSTOM is not
//!   generated: its answer comes from an external authorizer).
//!
//! Random sets of 0–4 policies (random action, scope, 0–3 rules of random `from`, `to`
//! and `when` with `not` forms and wildcards) are written as YAML, loaded and validated
//! through `ConfigSet` (only valid policies are generated), and random requests (small
//! alphabets, so that values match often) must get the same decision from
//! `Authorizer::decide`, the same `Authorizer::audit` result, and the same
//! `Policy::matches` for every policy. Fixed seed, 512 cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_config::ConfigSet;
use mesh_config::model::Labels;
use mesh_config::model::Resource;
use mesh_config::model::security::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, Rule, Source,
};
use mesh_core::authz::{Authorizer, AuthzRequest, Policy, RequestAuth};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngSeed, TestRunner};

const ROOT: &str = "istio-system";

// ---------------------------------------------------------------------------------------
// Alphabets
// ---------------------------------------------------------------------------------------

/// Peer identities (`None`: plaintext).
const PEERS: &[Option<&str>] = &[
    None,
    Some("spiffe://cluster.local/ns/foo/sa/sleep"),
    Some("spiffe://cluster.local/ns/bar/sa/client"),
    Some("spiffe://cluster.local/ns/bar/sa/sleep"),
    Some("spiffe://cluster.local/ns/istio-system/sa/ingress"),
    Some("spiffe://other.domain/ns/foo/sa/sleep"),
];
const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "cluster.local/ns/bar/sa/client",
    "cluster.local/ns/istio-system/sa/ingress",
    "other.domain/ns/foo/sa/sleep",
    "*",
    "*/sa/sleep",
    "cluster.local/ns/bar/*",
    "cluster.local/*",
];
// Suffix forms ending in `a` or `s` are left out: Istio's regex `.*/ns/<v>/.*` lets a
// leading `*` run across segments (`*a` matches `/ns/foo/sa/...` through `foo/sa`),
// while the documented meaning (and the engine) is the `ns` segment. Finding: namespace
// suffix patterns cross segments in Istio; left out until it is decided.
const NAMESPACE_VALUES: &[&str] = &[
    "foo",
    "bar",
    "istio-system",
    "*",
    "f*",
    "*o",
    "istio-*",
    "*system",
];
const SERVICE_ACCOUNTS: &[&str] = &["foo/sleep", "bar/client", "bar/sleep", "sleep", "client"];
// Issuers with `/` make Istio split `iss/sub` at the last `/`; for these values that
// agrees with matching the string `iss/sub` as a whole.
const REQUEST_PRINCIPALS: &[&str] = &[
    "https://a.example/alice",
    "https://b.example/bob",
    "*",
    "*/alice",
    "https://a.example/*",
    "*bob",
    "https://b.example/al*",
];
const JWTS: &[Option<(&str, &str)>] = &[
    None,
    Some(("https://a.example", "alice")),
    Some(("https://a.example", "bob")),
    Some(("https://b.example", "bob")),
    Some(("https://b.example", "alice")),
];
const IP_BLOCKS: &[&str] = &[
    "10.0.0.0/24",
    "10.0.0.5",
    "10.0.0.4/30",
    "10.0.0.7/31",
    "192.168.0.0/24",
    "192.168.0.9",
    "0.0.0.0/0",
];
const SOURCE_IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.5",
    "10.0.0.6",
    "10.0.0.7",
    "192.168.0.9",
    "192.168.0.200",
];
const DESTINATION_BLOCKS: &[&str] = &["10.0.1.0/24", "10.0.0.1"];
const DESTINATION_IPS: &[&str] = &["10.0.0.1", "10.0.1.1"];
const HOSTS: &[&str] = &[
    "a.example.com",
    "B.example.com",
    "*.example.com",
    "*.EXAMPLE.COM",
    "a.*",
    "*",
];
const REQUEST_HOSTS: &[&str] = &[
    "a.example.com",
    "A.Example.COM",
    "b.example.com",
    "c.other.org",
];
const METHODS: &[&str] = &["GET", "POST", "*", "G*", "*T", "get"];
const REQUEST_METHODS: &[&str] = &["GET", "POST", "PUT"];
const PATHS: &[&str] = &[
    "/a", "/a/b", "/b", "/admin", "/a*", "*b", "*", "/a/{*}", "/{*}",
];
const REQUEST_PATHS: &[&str] = &["/a", "/a/b", "/b", "/admin", "/a/"];
const PORTS: &[&str] = &["80", "8080"];
const REQUEST_PORTS: &[u16] = &[80, 8080, 9090];
const SNI_VALUES: &[&str] = &["a.example.com", "*.example.com", "*"];
const REQUEST_SNIS: &[Option<&str>] = &[None, Some("a.example.com"), Some("b.example.com")];
const USERS: &[&str] = &["alice", "bob", "*", "al*", "*ce"];
const REQUEST_USERS: &[Option<&str>] = &[None, Some("alice"), Some("bob"), Some(""), Some("Alice")];
const ENVS: &[&str] = &["prod", "dev*", "*"];
const REQUEST_ENVS: &[Option<&str>] = &[None, Some("prod"), Some("dev1")];

/// The workloads requests arrive at: namespace and labels.
const WORKLOADS: &[(&str, &[(&str, &str)])] = &[
    ("foo", &[("app", "httpbin"), ("version", "v1")]),
    ("foo", &[("app", "other")]),
    ("bar", &[("app", "httpbin")]),
    ("istio-system", &[("app", "httpbin"), ("version", "v1")]),
];
/// A policy's scope, as written in its spec.
const SCOPES: &[&str] = &[
    "",
    "",
    "selector: {matchLabels: {app: httpbin}}",
    "selector: {matchLabels: {app: other}}",
    "selector: {matchLabels: {app: httpbin, version: v1}}",
    "selector: {}",
    "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}",
];
/// `""`: no `action` (ALLOW).
const ACTIONS: &[&str] = &["", "ALLOW", "ALLOW", "DENY", "DENY", "AUDIT"];

type Alphabet = &'static [&'static str];

const SOURCE_FIELDS: &[(&str, Alphabet)] = &[
    ("principals", PRINCIPALS),
    ("notPrincipals", PRINCIPALS),
    ("requestPrincipals", REQUEST_PRINCIPALS),
    ("notRequestPrincipals", REQUEST_PRINCIPALS),
    ("namespaces", NAMESPACE_VALUES),
    ("notNamespaces", NAMESPACE_VALUES),
    ("ipBlocks", IP_BLOCKS),
    ("notIpBlocks", IP_BLOCKS),
    ("remoteIpBlocks", IP_BLOCKS),
    ("notRemoteIpBlocks", IP_BLOCKS),
    ("serviceAccounts", SERVICE_ACCOUNTS),
    ("notServiceAccounts", SERVICE_ACCOUNTS),
];
const OPERATION_FIELDS: &[(&str, Alphabet)] = &[
    ("hosts", HOSTS),
    ("notHosts", HOSTS),
    ("ports", PORTS),
    ("notPorts", PORTS),
    ("methods", METHODS),
    ("notMethods", METHODS),
    ("paths", PATHS),
    ("notPaths", PATHS),
];
const CONDITION_KEYS: &[(&str, Alphabet)] = &[
    ("request.headers[x-user]", USERS),
    ("request.headers[X-Env]", ENVS),
    ("source.ip", IP_BLOCKS),
    ("remote.ip", IP_BLOCKS),
    ("source.namespace", NAMESPACE_VALUES),
    ("source.principal", PRINCIPALS),
    ("request.auth.principal", REQUEST_PRINCIPALS),
    ("destination.ip", DESTINATION_BLOCKS),
    ("destination.port", PORTS),
    ("connection.sni", SNI_VALUES),
];

// ---------------------------------------------------------------------------------------
// Generated policies and requests
// ---------------------------------------------------------------------------------------

/// A source or an operation: its non-empty lists.
type Fields = Vec<(&'static str, Vec<&'static str>)>;

#[derive(Debug, Clone)]
struct GenCondition {
    key: &'static str,
    values: Vec<&'static str>,
    not_values: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct GenRule {
    from: Vec<Fields>,
    to: Vec<Fields>,
    when: Vec<GenCondition>,
}

#[derive(Debug, Clone)]
struct GenPolicy {
    namespace: &'static str,
    action: &'static str,
    scope: &'static str,
    rules: Vec<GenRule>,
}

#[derive(Debug, Clone)]
struct Req {
    workload: (&'static str, &'static [(&'static str, &'static str)]),
    peer: Option<&'static str>,
    source_ip: &'static str,
    remote_ip: Option<&'static str>,
    destination_ip: &'static str,
    port: u16,
    sni: Option<&'static str>,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    user: Option<&'static str>,
    env: Option<&'static str>,
    jwt: Option<(&'static str, &'static str)>,
}

/// Each field of `spec` with probability `p`, with one or two values.
fn fields(spec: &'static [(&'static str, Alphabet)], p: f64) -> impl Strategy<Value = Fields> {
    let each: Vec<_> = spec
        .iter()
        .map(|&(key, alphabet)| {
            prop::option::weighted(
                p,
                prop::collection::vec(prop::sample::select(alphabet), 1..=2),
            )
            .prop_map(move |vs| vs.map(|vs| (key, vs)))
        })
        .collect();
    each.prop_map(|v| v.into_iter().flatten().collect::<Fields>())
}

fn source() -> impl Strategy<Value = Fields> {
    fields(SOURCE_FIELDS, 0.15)
        .prop_map(|mut f| {
            // `serviceAccounts` cannot be combined with `principals` or `namespaces`.
            let peer_fields = ["principals", "notPrincipals", "namespaces", "notNamespaces"];
            if f.iter().any(|(k, _)| peer_fields.contains(k)) {
                f.retain(|(k, _)| !k.ends_with("erviceAccounts"));
            }
            f
        })
        .prop_filter("a source sets a field", |f| !f.is_empty())
}

fn operation() -> impl Strategy<Value = Fields> {
    fields(OPERATION_FIELDS, 0.2).prop_filter("an operation sets a field", |f| !f.is_empty())
}

fn condition() -> impl Strategy<Value = GenCondition> {
    prop::sample::select(CONDITION_KEYS)
        .prop_flat_map(|(key, alphabet)| {
            let values = || prop::collection::vec(prop::sample::select(alphabet), 0..=2);
            (Just(key), values(), values())
        })
        .prop_filter("a condition has values", |(_, v, n)| {
            !v.is_empty() || !n.is_empty()
        })
        .prop_map(|(key, values, not_values)| GenCondition {
            key,
            values,
            not_values,
        })
}

fn rule() -> impl Strategy<Value = GenRule> {
    (
        prop::collection::vec(source(), 0..=2),
        prop::collection::vec(operation(), 0..=2),
        prop::collection::vec(condition(), 0..=2),
    )
        .prop_map(|(from, to, when)| GenRule { from, to, when })
}

fn policy() -> impl Strategy<Value = GenPolicy> {
    (
        prop::sample::select(&["foo", "bar", ROOT][..]),
        prop::sample::select(ACTIONS),
        prop::sample::select(SCOPES),
        prop::collection::vec(rule(), 0..=3),
    )
        // Istio refuses a DENY policy without rules (it could never be triggered).
        .prop_filter("DENY needs a rule", |(_, action, _, rules)| {
            *action != "DENY" || !rules.is_empty()
        })
        .prop_map(|(namespace, action, scope, rules)| GenPolicy {
            namespace,
            action,
            scope,
            rules,
        })
}

fn request() -> impl Strategy<Value = Req> {
    use prop::sample::select;
    (
        (
            select(WORKLOADS),
            select(PEERS),
            select(SOURCE_IPS),
            prop::option::of(select(SOURCE_IPS)),
            select(DESTINATION_IPS),
            select(REQUEST_PORTS),
            select(REQUEST_SNIS),
        ),
        (
            select(REQUEST_METHODS),
            select(REQUEST_HOSTS),
            select(REQUEST_PATHS),
            select(REQUEST_USERS),
            select(REQUEST_ENVS),
            select(JWTS),
        ),
    )
        .prop_map(
            |(
                (workload, peer, source_ip, remote_ip, destination_ip, port, sni),
                (method, host, path, user, env, jwt),
            )| Req {
                workload,
                peer,
                source_ip,
                remote_ip,
                destination_ip,
                port,
                sni,
                method,
                host,
                path,
                user,
                env,
                jwt,
            },
        )
}

// ---------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------

fn yaml_list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn yaml_fields(fields: &Fields) -> String {
    let entries: Vec<String> = fields
        .iter()
        .map(|(k, vs)| format!("{k}: {}", yaml_list(vs)))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

fn yaml_rule(rule: &GenRule) -> String {
    let mut parts = Vec::new();
    if !rule.from.is_empty() {
        let from: Vec<String> = rule
            .from
            .iter()
            .map(|s| format!("{{source: {}}}", yaml_fields(s)))
            .collect();
        parts.push(format!("from: [{}]", from.join(", ")));
    }
    if !rule.to.is_empty() {
        let to: Vec<String> = rule
            .to
            .iter()
            .map(|o| format!("{{operation: {}}}", yaml_fields(o)))
            .collect();
        parts.push(format!("to: [{}]", to.join(", ")));
    }
    if !rule.when.is_empty() {
        let when: Vec<String> = rule
            .when
            .iter()
            .map(|c| {
                format!(
                    "{{key: \"{}\", values: {}, notValues: {}}}",
                    c.key,
                    yaml_list(&c.values),
                    yaml_list(&c.not_values)
                )
            })
            .collect();
        parts.push(format!("when: [{}]", when.join(", ")));
    }
    format!("{{{}}}", parts.join(", "))
}

fn yaml(policies: &[GenPolicy]) -> String {
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p{i}, namespace: {}}}\nspec:\n",
            p.namespace
        ));
        if !p.action.is_empty() {
            out.push_str(&format!("  action: {}\n", p.action));
        }
        if !p.scope.is_empty() {
            out.push_str(&format!("  {}\n", p.scope));
        }
        out.push_str("  rules:");
        if p.rules.is_empty() {
            out.push_str(" []");
        }
        out.push('\n');
        for r in &p.rules {
            out.push_str(&format!("  - {}\n", yaml_rule(r)));
        }
    }
    out
}

/// The policies of `yaml`, loaded and validated as the mesh loads them.
fn load(yaml: &str) -> Vec<Arc<Resource<AuthorizationPolicy>>> {
    let mut set = ConfigSet::new();
    set.add_str("authz.yaml", yaml);
    let checked = set.check();
    let snapshot = checked
        .snapshot
        .clone()
        .unwrap_or_else(|| panic!("{yaml}\n{}", checked.summary()));
    snapshot.authorization_policies().to_vec()
}

// ---------------------------------------------------------------------------------------
// The direct evaluator (Istio's documented semantics, over the YAML structs)
// ---------------------------------------------------------------------------------------

/// Istio's string forms: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact.
fn string_form(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        value == pattern
    }
}

/// One list and its `not` list: a value must match (if any is given), none of the
/// `not` values may.
fn list(values: &[String], not_values: &[String], m: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| m(v))) && !not_values.iter().any(|v| m(v))
}

/// The value of `key` (`ns`, `sa`) in the peer's SPIFFE ID `spiffe://td/ns/NS/sa/SA`.
fn peer_segment(r: &Req, key: &str) -> Option<&'static str> {
    let path = r.peer?.strip_prefix("spiffe://")?;
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    segments
        .chunks(2)
        .find(|pair| pair.len() == 2 && pair[0] == key)
        .map(|pair| pair[1])
}

fn ipv4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A CIDR block or a single address.
fn in_block(block: &str, ip: &str) -> bool {
    let (addr, bits) = match block.split_once('/') {
        Some((a, b)) => (a, b.parse::<u32>().unwrap()),
        None => (block, 32),
    };
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ipv4(addr)) & mask == u32::from(ipv4(ip)) & mask
}

fn principal(v: &str, r: &Req) -> bool {
    r.peer
        .and_then(|id| id.strip_prefix("spiffe://"))
        .is_some_and(|id| string_form(v, id))
}

fn namespace(v: &str, r: &Req) -> bool {
    peer_segment(r, "ns").is_some_and(|ns| string_form(v, ns))
}

/// `ns/sa`, or `sa` in the policy's namespace.
fn service_account(v: &str, policy_ns: &str, r: &Req) -> bool {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    peer_segment(r, "ns") == Some(ns) && peer_segment(r, "sa") == Some(sa)
}

fn request_principal(v: &str, r: &Req) -> bool {
    r.jwt
        .is_some_and(|(iss, sub)| string_form(v, &format!("{iss}/{sub}")))
}

fn remote_ip(r: &Req) -> &'static str {
    r.remote_ip.unwrap_or(r.source_ip)
}

fn host(v: &str, r: &Req) -> bool {
    string_form(&v.to_ascii_lowercase(), &r.host.to_ascii_lowercase())
}

/// Istio's path forms, and `{*}` templates (one non-empty segment).
fn path(v: &str, r: &Req) -> bool {
    if !v.contains("{*}") {
        return string_form(v, r.path);
    }
    let want: Vec<&str> = v.split('/').collect();
    let got: Vec<&str> = r.path.split('/').collect();
    want.len() == got.len()
        && want
            .iter()
            .zip(&got)
            .all(|(w, g)| if *w == "{*}" { !g.is_empty() } else { w == g })
}

fn port(v: &str, r: &Req) -> bool {
    v.parse::<u16>() == Ok(r.port)
}

/// `request.headers[name]`: `*` asks for the header only.
fn header(name: &str, v: &str, r: &Req) -> bool {
    let value = match name.to_ascii_lowercase().as_str() {
        "x-user" => r.user,
        "x-env" => r.env,
        other => panic!("header {other} is not generated"),
    };
    match value {
        None => false,
        Some(_) if v == "*" => true,
        Some(value) => string_form(v, value),
    }
}

fn source_matches(s: &Source, policy_ns: &str, r: &Req) -> bool {
    assert!(
        s.trust_domains.is_empty() && s.not_trust_domains.is_empty(),
        "trust domains are not generated"
    );
    list(&s.principals, &s.not_principals, |v| principal(v, r))
        && list(&s.request_principals, &s.not_request_principals, |v| {
            request_principal(v, r)
        })
        && list(&s.namespaces, &s.not_namespaces, |v| namespace(v, r))
        && list(&s.service_accounts, &s.not_service_accounts, |v| {
            service_account(v, policy_ns, r)
        })
        && list(&s.ip_blocks, &s.not_ip_blocks, |v| in_block(v, r.source_ip))
        && list(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |v| {
            in_block(v, remote_ip(r))
        })
}

fn operation_matches(o: &Operation, r: &Req) -> bool {
    list(&o.hosts, &o.not_hosts, |v| host(v, r))
        && list(&o.ports, &o.not_ports, |v| port(v, r))
        && list(&o.methods, &o.not_methods, |v| string_form(v, r.method))
        && list(&o.paths, &o.not_paths, |v| path(v, r))
}

fn condition_holds(c: &Condition, r: &Req) -> bool {
    let attribute = |v: &str| match c.key.as_str() {
        "source.ip" => in_block(v, r.source_ip),
        "remote.ip" => in_block(v, remote_ip(r)),
        "source.namespace" => namespace(v, r),
        "source.principal" => principal(v, r),
        "request.auth.principal" => request_principal(v, r),
        "destination.ip" => in_block(v, r.destination_ip),
        "destination.port" => port(v, r),
        "connection.sni" => r.sni.is_some_and(|sni| string_form(v, sni)),
        key => {
            let name = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
                .unwrap_or_else(|| panic!("condition key {key} is not generated"));
            header(name, v, r)
        }
    };
    list(&c.values, &c.not_values, attribute)
}

fn rule_matches(rule: &Rule, policy_ns: &str, r: &Req) -> bool {
    (rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|f| source_matches(&f.source, policy_ns, r)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation_matches(&t.operation, r)))
        && rule.when.iter().all(|c| condition_holds(c, r))
}

/// A policy matches when one of its rules does (so a policy without rules never does).
fn policy_matches(p: &Resource<AuthorizationPolicy>, r: &Req) -> bool {
    p.spec
        .rules
        .iter()
        .any(|rule| rule_matches(rule, p.namespace(), r))
}

fn applies(p: &Resource<AuthorizationPolicy>, r: &Req) -> bool {
    let (ns, labels) = r.workload;
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        return false;
    }
    let selected = p.spec.selector.as_ref().is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| labels.contains(&(k.as_str(), v.as_str())))
    });
    (p.namespace() == ROOT || p.namespace() == ns) && selected
}

fn action(p: &Resource<AuthorizationPolicy>) -> AuthorizationAction {
    p.spec.action.unwrap_or(AuthorizationAction::Allow)
}

/// Istio's decision (after CUSTOM): DENY, then ALLOW.
fn direct_decision(all: &[Arc<Resource<AuthorizationPolicy>>], r: &Req) -> bool {
    let applying: Vec<_> = all.iter().filter(|p| applies(p, r)).collect();
    let with = |a| applying.iter().filter(move |p| action(p) == a);
    if with(AuthorizationAction::Deny).any(|p| policy_matches(p, r)) {
        return false;
    }
    with(AuthorizationAction::Allow).next().is_none()
        || with(AuthorizationAction::Allow).any(|p| policy_matches(p, r))
}

fn direct_audit(all: &[Arc<Resource<AuthorizationPolicy>>], r: &Req) -> bool {
    all.iter()
        .any(|p| applies(p, r) && action(p) == AuthorizationAction::Audit && policy_matches(p, r))
}

// ---------------------------------------------------------------------------------------
// The engine's view of a request
// ---------------------------------------------------------------------------------------

/// Runs `f` with the engine's request for `r`, and the workload's labels.
fn with_engine_request<T>(r: &Req, f: impl FnOnce(&AuthzRequest<'_>, &Labels) -> T) -> T {
    let mut headers = HeaderMap::new();
    for (name, value) in [("x-user", r.user), ("x-env", r.env)] {
        if let Some(v) = value {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
        }
    }
    let auth = r.jwt.map(|(iss, sub)| RequestAuth {
        issuer: iss.into(),
        subject: sub.into(),
        claims: Default::default(),
    });
    let ip = |s: &str| IpAddr::V4(ipv4(s));
    let req = AuthzRequest {
        peer: r.peer,
        source_ip: ip(r.source_ip),
        remote_ip: r.remote_ip.map(ip),
        destination_ip: ip(r.destination_ip),
        destination_port: r.port,
        sni: r.sni,
        method: r.method,
        host: r.host,
        path: r.path,
        headers: &headers,
        auth: auth.as_ref(),
    };
    let labels: Labels = r
        .workload
        .1
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    f(&req, &labels)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        rng_seed: RngSeed::Fixed(0xa27),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compiled_policies_agree_with_the_yaml(
        policies in prop::collection::vec(policy(), 0..=4),
        requests in prop::collection::vec(request(), 1..=8),
    ) {
        let yaml = yaml(&policies);
        let resources = load(&yaml);
        let compiled: Vec<Arc<Policy>> =
            resources.iter().map(|r| Arc::new(Policy::compile(r))).collect();
        for r in &requests {
            with_engine_request(r, |req, labels| {
                for (resource, policy) in resources.iter().zip(&compiled) {
                    prop_assert_eq!(
                        policy.matches(req),
                        policy_matches(resource, r),
                        "Policy::matches of {}/{}\n{}\n{:#?}",
                        resource.namespace(), resource.name(), yaml, r
                    );
                }
                let authz = Authorizer::for_workload(&compiled, ROOT, r.workload.0, labels);
                prop_assert_eq!(
                    authz.decide(req).allowed,
                    direct_decision(&resources, r),
                    "decision\n{}\n{:#?}", yaml, r
                );
                prop_assert_eq!(
                    authz.audit(req).is_some(),
                    direct_audit(&resources, r),
                    "audit\n{}\n{:#?}", yaml, r
                );
                Ok(())
            })?;
        }
    }
}

/// The property is not vacuous: with the generators above, policies match and requests
/// are both allowed and denied in good proportion.
#[test]
fn generated_cases_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = (
        prop::collection::vec(policy(), 0..=4),
        prop::collection::vec(request(), 1..=8),
    );
    let (mut requests, mut denied, mut matched, mut policies) = (0, 0, 0, 0);
    for _ in 0..200 {
        let (gen_policies, gen_requests) = strategy.new_tree(&mut runner).unwrap().current();
        let resources = load(&yaml(&gen_policies));
        for r in &gen_requests {
            requests += 1;
            denied += usize::from(!direct_decision(&resources, r));
            for p in &resources {
                policies += 1;
                matched += usize::from(policy_matches(p, r));
            }
        }
    }
    let share = |n: usize, of: usize| n as f64 / of as f64;
    println!("denied {denied}/{requests}, policy matches {matched}/{policies}");
    assert!(
        (0.15..0.85).contains(&share(denied, requests)),
        "denied {denied}/{requests}"
    );
    assert!(
        share(matched, policies) > 0.1,
        "matched {matched}/{policies}"
    );
}
