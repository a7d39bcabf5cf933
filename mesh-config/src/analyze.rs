//! Cross-resource analysis, like `istioctl analyze`.
//!
//! One resource can be valid on its own and still be wrong in its configuration: a
//! VirtualService routing to a subset no DestinationRule defines, to a host the registry
//! does not know, through a gateway that does not exist; two VirtualServices claiming one
//! host; a rule after a catch-all rule that can never match. These checks use Istio's
//! message codes (IST0101, IST0109, IST0130, ...) so that a user who knows `istioctl
//! analyze` recognises them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::diag::{Code, Diagnostic, ResourceRef};
use crate::host::GatewayRef;
use crate::host::{self, qualify};
use crate::model::envoy_filter::{ApplyTo, Operation};
use crate::model::*;
use crate::path::FieldPath;
use crate::registry::{Registry, selects};

/// Everything the analysis looks at.
pub struct Input<'a> {
    /// VirtualServices.
    pub virtual_services: &'a [Arc<Resource<VirtualService>>],
    /// DestinationRules.
    pub destination_rules: &'a [Arc<Resource<DestinationRule>>],
    /// Gateways.
    pub gateways: &'a [Arc<Resource<Gateway>>],
    /// ServiceEntries.
    pub service_entries: &'a [Arc<Resource<ServiceEntry>>],
    /// WorkloadEntries.
    pub workload_entries: &'a [Arc<Resource<WorkloadEntry>>],
    /// PeerAuthentications.
    pub peer_authentications: &'a [Arc<Resource<PeerAuthentication>>],
    /// AuthorizationPolicies.
    pub authorization_policies: &'a [Arc<Resource<AuthorizationPolicy>>],
    /// RequestAuthentications.
    pub request_authentications: &'a [Arc<Resource<RequestAuthentication>>],
    /// Telemetries.
    pub telemetries: &'a [Arc<Resource<Telemetry>>],
    /// EnvoyFilters.
    pub envoy_filters: &'a [Arc<Resource<EnvoyFilter>>],
    /// The registry built from the ServiceEntries and WorkloadEntries.
    pub registry: &'a Registry,
    /// Mesh-wide settings.
    pub mesh: &'a MeshSettings,
}

fn reference<S>(r: &Resource<S>, kind: Kind) -> ResourceRef {
    ResourceRef {
        kind: kind.as_str().to_string(),
        namespace: r.namespace().to_string(),
        name: r.name().to_string(),
    }
}

fn diag<S>(r: &Resource<S>, kind: Kind, code: Code, path: FieldPath, msg: String) -> Diagnostic {
    Diagnostic::new(code, msg)
        .at(r.origin.locate(&path))
        .resource(reference(r, kind))
        .path(path)
}

/// Runs every analysis.
pub fn analyze(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    let rules = crate::snapshot::DestinationRuleIndex::new(input.destination_rules);
    for vs in input.virtual_services {
        virtual_service(input, &rules, vs, out);
    }
    conflicting_mesh_hosts(input, out);
    service_entry_addresses(input, out);
    conflicting_gateways(input, out);
    envoy_filter_patches(input, out);
    conflicting_service_entry_protocols(input, out);
    crate::validate::analyze_telemetries(input, out);
    for dr in input.destination_rules {
        destination_rule(input, dr, out);
    }
    conflicting_destination_rules(input, out);
    for m in input.registry.merges().iter().filter(|m| m.differs) {
        let Some(se) = input
            .service_entries
            .iter()
            .find(|se| se.namespace() == m.other.namespace && se.name() == m.other.name)
        else {
            continue;
        };
        out.push(diag(
            se,
            Kind::ServiceEntry,
            Code::MergedServiceEntries,
            FieldPath::root().key("spec").key("hosts"),
            format!(
                "host {} is also defined by ServiceEntry {}/{} with other ports or resolution: the endpoints are combined and that ServiceEntry's ports and resolution are used",
                m.host, m.first.namespace, m.first.name
            ),
        ));
    }
    for se in input.service_entries {
        if let Some(sel) = &se.spec.workload_selector {
            let found = input
                .registry
                .workloads()
                .selected(se.namespace(), &sel.labels)
                .next()
                .is_some();
            if !found && !sel.labels.is_empty() {
                out.push(diag(
                    se,
                    Kind::ServiceEntry,
                    Code::NoMatchingWorkloadsFound,
                    FieldPath::root()
                        .key("spec")
                        .key("workloadSelector")
                        .key("labels"),
                    format!(
                        "No matching workloads for this resource with the following labels: {}",
                        show_labels(&sel.labels)
                    ),
                ));
            }
        }
    }
    let selector_check = |sel: &Option<WorkloadSelector>, ns: &str| -> Option<String> {
        let sel = sel.as_ref()?;
        if sel.match_labels.is_empty() {
            return None;
        }
        let mesh_wide = ns == input.mesh.root_namespace;
        let found = input.registry.services().iter().any(|s| {
            s.endpoints
                .iter()
                .any(|e| (mesh_wide || e.namespace == ns) && selects(&sel.match_labels, &e.labels))
        }) || input.workload_entries.iter().any(|we| {
            (mesh_wide || we.namespace() == ns) && selects(&sel.match_labels, &we.spec.labels)
        });
        (!found).then(|| show_labels(&sel.match_labels))
    };
    let sel_path = FieldPath::root()
        .key("spec")
        .key("selector")
        .key("matchLabels");
    let msg = |l: String| {
        format!("No matching workloads for this resource with the following labels: {l}")
    };
    for r in input.authorization_policies {
        if let Some(l) = selector_check(&r.spec.selector, r.namespace()) {
            out.push(diag(
                r,
                Kind::AuthorizationPolicy,
                Code::NoMatchingWorkloadsFound,
                sel_path.clone(),
                msg(l),
            ));
        }
    }
    for r in input.peer_authentications {
        if let Some(l) = selector_check(&r.spec.selector, r.namespace()) {
            out.push(diag(
                r,
                Kind::PeerAuthentication,
                Code::NoMatchingWorkloadsFound,
                sel_path.clone(),
                msg(l),
            ));
        }
    }
    for r in input.request_authentications {
        if let Some(l) = selector_check(&r.spec.selector, r.namespace()) {
            out.push(diag(
                r,
                Kind::RequestAuthentication,
                Code::NoMatchingWorkloadsFound,
                sel_path.clone(),
                msg(l),
            ));
        }
    }
}

fn show_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn find_gateway<'a>(
    input: &'a Input<'_>,
    reference: &str,
    ns: &str,
) -> Option<&'a Arc<Resource<Gateway>>> {
    match GatewayRef::parse(reference, ns) {
        GatewayRef::Mesh => None,
        GatewayRef::Named {
            namespace, name, ..
        } => input
            .gateways
            .iter()
            .find(|g| g.namespace() == namespace && g.name() == name),
    }
}

/// A destination written in a VirtualService, with the path of its `destination` field.
struct DestRef<'a> {
    dest: &'a Destination,
    path: FieldPath,
    /// A mirror's destination (a copy: it needs no port when the service has several,
    /// and Istio names it `mirror+subset` when its subset is missing).
    mirror: bool,
}

fn destinations(vs: &VirtualService) -> Vec<DestRef<'_>> {
    let spec = FieldPath::root().key("spec");
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        let p = spec.key("http").index(i);
        for (j, d) in r.route.iter().enumerate() {
            out.push(DestRef {
                dest: &d.destination,
                path: p.key("route").index(j).key("destination"),
                mirror: false,
            });
        }
        if let Some(m) = &r.mirror {
            out.push(DestRef {
                dest: m,
                path: p.key("mirror"),
                mirror: true,
            });
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            out.push(DestRef {
                dest: &m.destination,
                path: p.key("mirrors").index(j).key("destination"),
                mirror: true,
            });
        }
    }
    for (field, routes) in [
        ("tls", vs.tls.iter().map(|r| &r.route).collect::<Vec<_>>()),
        ("tcp", vs.tcp.iter().map(|r| &r.route).collect::<Vec<_>>()),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                out.push(DestRef {
                    dest: &d.destination,
                    path: spec
                        .key(field)
                        .index(i)
                        .key("route")
                        .index(j)
                        .key("destination"),
                    mirror: false,
                });
            }
        }
    }
    out
}

fn virtual_service(
    input: &Input<'_>,
    rules: &crate::snapshot::DestinationRuleIndex,
    vs: &Arc<Resource<VirtualService>>,
    out: &mut Vec<Diagnostic>,
) {
    let ns = vs.namespace();
    let spec = FieldPath::root().key("spec");
    let k = Kind::VirtualService;
    // gateways
    let mut gw_refs: Vec<(FieldPath, &str)> = vs
        .spec
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (spec.key("gateways").index(i), g.as_str()))
        .collect();
    for (i, r) in vs.spec.http.iter().enumerate() {
        for (j, m) in r.match_.iter().enumerate() {
            for (l, g) in m.gateways.iter().enumerate() {
                gw_refs.push((
                    spec.key("http")
                        .index(i)
                        .key("match")
                        .index(j)
                        .key("gateways")
                        .index(l),
                    g.as_str(),
                ));
            }
        }
    }
    for (path, g) in &gw_refs {
        if *g == "mesh" {
            continue;
        }
        // Istio's `IsInternalGatewayReference`: a gateway it generates for a Kubernetes
        // Gateway, never written by hand (IST0165 below, for the VirtualService's own
        // gateways).
        if is_internal_gateway(g) {
            continue;
        }
        if find_gateway(input, g, ns).is_none() {
            out.push(diag(
                vs,
                k,
                Code::ReferencedResourceNotFound,
                path.clone(),
                format!("Referenced gateway not found: {g:?}"),
            ));
        }
    }
    // hosts served by the gateways
    for (i, g) in vs.spec.gateways.iter().enumerate() {
        if g == "mesh" {
            continue;
        }
        if is_internal_gateway(g) {
            out.push(diag(
                vs,
                k,
                Code::ReferencedInternalGateway,
                spec.key("gateways").index(i),
                format!(
                    "Gateway reference in VirtualService {ns}/{} is to an implementation-generated internal Gateway: {g}.",
                    vs.name()
                ),
            ));
            continue;
        }
        // A missing gateway (IST0101 above) serves none of the hosts either, as Istio
        // reports it.
        let Some(gw) = find_gateway(input, g, ns) else {
            if !vs.spec.hosts.is_empty() {
                let canonical = GatewayRef::parse(g, ns).canonical();
                out.push(diag(
                    vs,
                    k,
                    Code::VirtualServiceHostNotFoundInGateway,
                    spec.key("gateways").index(i),
                    format!(
                        "one or more host {:?} defined in VirtualService {ns}/{} not found in Gateway {canonical}",
                        vs.spec.hosts,
                        vs.name()
                    ),
                ));
            }
            continue;
        };
        // istioctl warns when none of the VirtualService's hosts is served by the gateway
        // (hosts meant for other gateways or for the mesh are normal).
        let missing: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .filter(|h| {
                let qh = qualify(h, ns);
                !gw.spec
                    .servers
                    .iter()
                    .flat_map(|s| s.hosts.iter())
                    .any(|sh| {
                        let (sns, shost) = host::split_namespaced(sh);
                        let ns_ok = sns == "*" || (sns == "." && gw.namespace() == ns) || sns == ns;
                        ns_ok && (host::overlaps(shost, &qh) || host::overlaps(shost, h))
                    })
            })
            .cloned()
            .collect();
        if !missing.is_empty() && missing.len() == vs.spec.hosts.len() {
            out.push(diag(
                vs,
                k,
                Code::VirtualServiceHostNotFoundInGateway,
                spec.key("gateways").index(i),
                format!(
                    "one or more host {missing:?} defined in VirtualService {ns}/{} not found in Gateway {}/{}",
                    vs.name(),
                    gw.namespace(),
                    gw.name()
                ),
            ));
        }
    }
    // destinations, ports and subsets
    for d in destinations(&vs.spec) {
        if d.dest.host.is_empty() || host::is_wildcard(&d.dest.host) {
            continue; // reported by validation
        }
        let qhost = qualify(&d.dest.host, ns);
        let found_svc = input.registry.lookup(&qhost, ns);
        // Istio's DestinationRuleAnalyzer checks the subset whether or not the host is
        // known (a service of the host's namespace, else the VirtualService's).
        let svc_ns = found_svc.map_or(ns, |s| s.namespace.as_str());
        if let Some(subset) = &d.dest.subset {
            // The DestinationRule that applies (Istio's precedence) must define it.
            let applies = rules.rule_for(input.mesh, &qhost, ns, svc_ns);
            let found = applies.is_some_and(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
            if !found {
                out.push(
                    diag(
                        vs,
                        k,
                        Code::ReferencedResourceNotFound,
                        d.path.key("subset"),
                        format!(
                            "Referenced {}+subset in destinationrule not found: \"{}+{}\"",
                            if d.mirror { "mirror" } else { "host" },
                            d.dest.host,
                            subset
                        ),
                    )
                    .help(format!(
                        "define subset `{subset}` in a DestinationRule for host `{qhost}`"
                    )),
                );
            }
        }
        let Some(svc) = found_svc else {
            out.push(
                diag(
                    vs,
                    k,
                    Code::ReferencedResourceNotFound,
                    d.path.key("host"),
                    format!("Referenced host not found: {:?}", d.dest.host),
                )
                .help(format!(
                    "no ServiceEntry visible from namespace `{ns}` has host `{qhost}`"
                )),
            );
            continue;
        };
        match d.dest.port {
            Some(p) if svc.port(p.number).is_none() => out.push(diag(
                vs,
                k,
                Code::ReferencedResourceNotFound,
                d.path.key("port").key("number"),
                format!(
                    "Referenced host:port not found: \"{}:{}\" (its ports are {})",
                    d.dest.host,
                    p.number,
                    svc.ports.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(", ")
                ),
            )),
            None if !d.mirror && svc.ports.len() > 1 => out.push(diag(
                vs,
                k,
                Code::VirtualServiceDestinationPortSelectorRequired,
                d.path.clone(),
                format!(
                    "This VirtualService routes to a service {:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate.",
                    d.dest.host,
                    svc.ports.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(" ")
                ),
            )),
            _ => {}
        }
    }
    // delegates
    for (i, r) in vs.spec.http.iter().enumerate() {
        if let Some(dl) = &r.delegate {
            let dns = dl.namespace.as_deref().unwrap_or(ns);
            let found = input
                .virtual_services
                .iter()
                .any(|o| o.namespace() == dns && o.name() == dl.name);
            if !found {
                out.push(diag(
                    vs,
                    k,
                    Code::ReferencedResourceNotFound,
                    spec.key("http").index(i).key("delegate").key("name"),
                    format!(
                        "Referenced delegate VirtualService not found: \"{dns}/{}\"",
                        dl.name
                    ),
                ));
            }
        }
    }
    unreachable_rules(vs, out);
}

/// How Istio names an HTTP rule or match in its messages: its name, quoted, else `#index`.
fn name_or_index(name: &Option<String>, i: usize) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{n:?}"),
        _ => format!("#{i}"),
    }
}

/// A match on a URI prefix, as Istio's webhook compares two of them for IST0131
/// (`genMatchHTTPRoutes`, `coveredValidation`): each string match reduced to `exact:…` or
/// `prefix:…` (a regex to nothing), an unset method taken as `exact:GET`.
struct PrefixMatch {
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query_params: BTreeMap<String, String>,
    without_headers: BTreeMap<String, String>,
}

impl PrefixMatch {
    fn of(m: &HttpMatchRequest) -> Option<Self> {
        let prefix = m.uri.as_ref()?.prefix.clone().filter(|p| !p.is_empty())?;
        let reduce = |s: &StringMatch| match (&s.exact, &s.prefix) {
            (Some(e), _) if !e.is_empty() => format!("exact:{e}"),
            (_, Some(p)) if !p.is_empty() => format!("prefix:{p}"),
            _ => String::new(),
        };
        let map = |m: &BTreeMap<String, StringMatch>| {
            m.iter().map(|(k, v)| (k.clone(), reduce(v))).collect()
        };
        let method = m.method.as_ref().map(reduce).unwrap_or_default();
        Some(PrefixMatch {
            prefix,
            port: m.port.unwrap_or(0),
            method: if method.is_empty() {
                "exact:GET".into()
            } else {
                method
            },
            authority: m.authority.as_ref().map(reduce).unwrap_or_default(),
            headers: map(&m.headers),
            query_params: map(&m.query_params),
            without_headers: map(&m.without_headers),
        })
    }

    /// Whether this earlier match covers `b`, by Istio's rule: `b`'s prefix extends this
    /// one's, on the same port, every other value equal or (as Istio compares them) this
    /// one's starting with `b`'s.
    fn covers(&self, b: &PrefixMatch) -> bool {
        let value = |a: &str, b: &str| a == b || a.starts_with(b);
        let maps = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|bv| value(v, bv)))
        };
        b.prefix.starts_with(&self.prefix)
            && self.port == b.port
            && value(&self.method, &b.method)
            && value(&self.authority, &b.authority)
            && maps(&self.headers, &b.headers)
            && maps(&self.query_params, &b.query_params)
            && maps(&self.without_headers, &b.without_headers)
    }
}

/// Istio's `IsInternalGatewayReference`: the name (after any `namespace/`) of a gateway
/// Istio generates for a Kubernetes Gateway holds `~istio-autogenerated-k8s-gateway~`.
fn is_internal_gateway(reference: &str) -> bool {
    let name = reference.split_once('/').map_or(reference, |(_, n)| n);
    name.contains("~istio-autogenerated-k8s-gateway~")
}

/// IST0130 (a rule after a catch-all rule) and IST0131 (a match that repeats an earlier one,
/// or whose URI prefix an earlier match's covers).
fn unreachable_rules(vs: &Arc<Resource<VirtualService>>, out: &mut Vec<Diagnostic>) {
    let spec = FieldPath::root().key("spec");
    let http: Vec<(String, Vec<HttpMatchRequest>)> = vs
        .spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // A match's name is not part of what it matches.
            let matches = r
                .match_
                .iter()
                .map(|m| HttpMatchRequest {
                    name: None,
                    ..m.clone()
                })
                .collect();
            (name_or_index(&r.name, i), matches)
        })
        .collect();
    let http_names: Vec<Vec<String>> = vs
        .spec
        .http
        .iter()
        .map(|r| {
            r.match_
                .iter()
                .enumerate()
                .map(|(j, m)| name_or_index(&m.name, j))
                .collect()
        })
        .collect();
    let kept = unreachable(vs, &spec.key("http"), &http, Some(&http_names), out);
    // Istio's second pass over HTTP rules: a URI prefix match that an earlier one covers.
    let prefixes: Vec<(usize, usize, PrefixMatch)> = kept
        .into_iter()
        .filter_map(|(i, j)| Some((i, j, PrefixMatch::of(&vs.spec.http[i].match_[j])?)))
        .collect();
    for (a, (ai, aj, first)) in prefixes.iter().enumerate() {
        for (bi, bj, later) in &prefixes[a + 1..] {
            if later.prefix != first.prefix && first.covers(later) {
                out.push(diag(
                    vs,
                    Kind::VirtualService,
                    Code::VirtualServiceIneffectiveMatch,
                    spec.key("http").index(*bi).key("match").index(*bj),
                    format!(
                        "VirtualService rule {} match {} of prefix {} is not used (duplicate/overlapping match in rule {} of prefix {} on {}).",
                        name_or_index(&vs.spec.http[*bi].name, *bi),
                        http_names[*bi][*bj],
                        later.prefix,
                        http_names[*ai][*aj],
                        first.prefix,
                        name_or_index(&vs.spec.http[*ai].name, *ai),
                    ),
                ));
            }
        }
    }
    let tcp: Vec<(String, Vec<L4MatchAttributes>)> = vs
        .spec
        .tcp
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("#{i}"), r.match_.clone()))
        .collect();
    unreachable(vs, &spec.key("tcp"), &tcp, None, out);
    let tls: Vec<(String, Vec<TlsMatchAttributes>)> = vs
        .spec
        .tls
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("#{i}"), r.match_.clone()))
        .collect();
    unreachable(vs, &spec.key("tls"), &tls, None, out);
}

/// Istio's `analyzeUnreachable{HTTP,TCP,TLS}Rules` over one kind of rules (each its name
/// and matches; `match_names` for HTTP's named matches): IST0130 for a rule after a rule
/// without matches (once per match), a second rule without matches, or a rule whose every
/// match an earlier rule already has; IST0131 for each such repeated match. Returns the
/// matches that were neither (rule, match), for the HTTP prefix pass.
fn unreachable<M: PartialEq>(
    vs: &Arc<Resource<VirtualService>>,
    path: &FieldPath,
    rules: &[(String, Vec<M>)],
    match_names: Option<&Vec<Vec<String>>>,
    out: &mut Vec<Diagnostic>,
) -> Vec<(usize, usize)> {
    let k = Kind::VirtualService;
    let unused = |i: usize, reason: &str| {
        diag(
            vs,
            k,
            Code::VirtualServiceUnreachableRule,
            path.index(i),
            format!("VirtualService rule {} not used ({reason}).", rules[i].0),
        )
        .help("rules are tried in order and the first match wins: put the catch-all rule last, or merge the rules (a fault and a route belong in one rule)")
    };
    let mut seen: Vec<(&M, usize)> = Vec::new();
    let mut empty_before = false;
    let mut kept = Vec::new();
    for (i, (_, matches)) in rules.iter().enumerate() {
        if matches.is_empty() {
            if empty_before {
                out.push(unused(i, "only the last rule can have no matches"));
            }
            empty_before = true;
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in matches.iter().enumerate() {
            if empty_before {
                out.push(unused(i, "route without matches defined before"));
                continue;
            }
            if let Some(&(_, first)) = seen.iter().find(|(e, _)| *e == m) {
                let name = match_names.map_or_else(|| format!("#{j}"), |n| n[i][j].clone());
                out.push(diag(
                    vs,
                    k,
                    Code::VirtualServiceIneffectiveMatch,
                    path.index(i).key("match").index(j),
                    format!(
                        "VirtualService rule {} match {name} is not used (duplicate/overlapping match in rule {}).",
                        rules[i].0, rules[first].0
                    ),
                ));
                duplicates += 1;
                continue;
            }
            seen.push((m, i));
            kept.push((i, j));
        }
        if duplicates == matches.len() {
            out.push(unused(i, "all matches used by prior rules"));
        }
    }
    kept
}

/// IST0109: several VirtualServices bound to the mesh define one host.
/// The scopes a resource is exported to, as Istio's analyzers key them: `*` for all
/// namespaces (also when `exportTo` is empty), else each namespace (`.` being its own).
fn export_scopes(export_to: &[String], namespace: &str) -> BTreeSet<String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return BTreeSet::from(["*".to_string()]);
    }
    export_to
        .iter()
        .map(|e| {
            if e == "." {
                namespace.to_string()
            } else {
                e.clone()
            }
        })
        .collect()
}

/// IST0151–IST0155 (Istio's EnvoyPatchAnalyzer): ADD and REMOVE where Envoy ignores them
/// (route configurations and routes), REPLACE outside HTTP and network filters and virtual
/// hosts, and a relative operation (REMOVE, REPLACE, INSERT_BEFORE, INSERT_AFTER) in an
/// EnvoyFilter without a priority — IST0155 when an EnvoyFilter before it (in name order)
/// patches the same filter for a proxy version.
fn envoy_filter_patches(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    let mut filters: Vec<&Arc<Resource<EnvoyFilter>>> = input.envoy_filters.iter().collect();
    filters.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    // Filter names patched with a proxy version so far.
    let mut versioned: Vec<String> = Vec::new();
    for ef in filters {
        for (i, cp) in ef.spec.config_patches.iter().enumerate() {
            let Some(patch) = &cp.patch else {
                break;
            };
            // The patched filter: the value's `name`, else the listener filter matched.
            let name = match patch.value.as_ref().and_then(|v| v.get("name")) {
                Some(n) => n.to_string(),
                None if patch.value.as_ref().is_some_and(|v| v.is_object()) => cp
                    .match_
                    .as_ref()
                    .and_then(|m| m.listener.as_ref())
                    .and_then(|l| l.filter_chain.as_ref())
                    .and_then(|fc| fc.filter.as_ref())
                    .map(|f| f.name.clone())
                    .unwrap_or_default(),
                None => String::new(),
            };
            let path = FieldPath::root().key("spec").key("configPatches").index(i);
            let route = matches!(
                cp.apply_to,
                ApplyTo::RouteConfiguration | ApplyTo::HttpRoute
            );
            let report =
                |code: Code, msg: &str| diag(ef, Kind::EnvoyFilter, code, path.clone(), msg.into());
            let relative = match patch.operation {
                Operation::Add if route => {
                    out.push(report(Code::EnvoyFilterUsesAddOperationIncorrectly, "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE."));
                    false
                }
                Operation::Remove if route => {
                    out.push(report(Code::EnvoyFilterUsesRemoveOperationIncorrectly, "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE."));
                    false
                }
                Operation::Replace
                    if !matches!(
                        cp.apply_to,
                        ApplyTo::NetworkFilter | ApplyTo::HttpFilter | ApplyTo::VirtualHost
                    ) =>
                {
                    out.push(report(
                        Code::EnvoyFilterUsesReplaceOperationIncorrectly,
                        "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.",
                    ));
                    false
                }
                Operation::Remove
                | Operation::Replace
                | Operation::InsertBefore
                | Operation::InsertAfter => true,
                _ => false,
            };
            if relative && ef.spec.priority == 0 {
                out.push(if versioned.contains(&name) {
                    report(Code::EnvoyFilterUsesRelativeOperationWithProxyVersion, "This EnvoyFilter does not have a priority and has a relative patch operation (INSERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.")
                } else {
                    report(Code::EnvoyFilterUsesRelativeOperation, "This EnvoyFilter does not have a priority and has a relative patch operation set which can cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.")
                });
            }
            if cp
                .match_
                .as_ref()
                .and_then(|m| m.proxy.as_ref())
                .is_some_and(|p| !p.proxy_version.is_empty())
            {
                versioned.push(name);
            }
        }
    }
}

/// IST0145 (Istio's ConflictingGatewayAnalyzer): a server of a Gateway whose workload
/// selector and port another Gateway has, serving a host that one also serves with the
/// same `bind`. Istio also matches selectors that differ through the Pods both select;
/// the mesh has no Pods, so only equal selectors are compared.
fn conflicting_gateways(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    let selector = |gw: &Resource<Gateway>| {
        gw.spec
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let port = |s: &Server| s.port.as_ref().map_or(0, |p| p.number);
    for (g, gw) in input.gateways.iter().enumerate() {
        let sel = selector(gw);
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let mut others: Vec<String> = input
                .gateways
                .iter()
                .enumerate()
                .filter(|&(o, other)| o != g && selector(other) == sel)
                .filter(|(_, other)| {
                    other.spec.servers.iter().any(|os| {
                        port(os) == port(server)
                            && os.bind == server.bind
                            && server.hosts.iter().any(|h| os.hosts.contains(h))
                    })
                })
                .map(|(_, other)| format!("{}/{}", other.namespace(), other.name()))
                .collect();
            if others.is_empty() {
                continue;
            }
            others.sort();
            out.push(diag(
                gw,
                Kind::Gateway,
                Code::ConflictingGateways,
                FieldPath::root().key("spec").key("servers").index(i),
                format!(
                    "Conflict with gateways {} (workload selector {sel}, port {}, hosts {}).",
                    others.join(","),
                    port(server),
                    server.hosts.join(",")
                ),
            ));
        }
    }
}

/// IST0134 (Istio's ProtocolAddressesAnalyzer): a ServiceEntry without addresses, each of
/// whose ports serving TCP or an unset protocol needs one (the mesh reads no proxy
/// metadata that would have DNS allocate addresses).
fn service_entry_addresses(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    for se in input.service_entries {
        if !se.spec.addresses.is_empty() {
            continue;
        }
        for (i, port) in se.spec.ports.iter().enumerate() {
            let proto = port.protocol.as_deref().unwrap_or("");
            if proto.is_empty() || proto.eq_ignore_ascii_case("TCP") {
                out.push(diag(
                    se,
                    Kind::ServiceEntry,
                    Code::ServiceEntryAddressesRequired,
                    FieldPath::root().key("spec").key("ports").index(i),
                    "ServiceEntry addresses are required for this protocol.".into(),
                ));
            }
        }
    }
}

/// IST0177 (Istio's ConflictingServiceEntryProtocolAnalyzer): ServiceEntries that give one
/// host and port, in one export scope (or with one exported everywhere), different
/// protocols. Each ServiceEntry is reported once.
fn conflicting_service_entry_protocols(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    // (scope, host, port) -> (protocol, ServiceEntry index)
    let mut index: BTreeMap<(String, String, u32), Vec<(String, usize)>> = BTreeMap::new();
    for (s, se) in input.service_entries.iter().enumerate() {
        for scope in export_scopes(&se.spec.export_to, se.namespace()) {
            for h in &se.spec.hosts {
                for p in &se.spec.ports {
                    let proto = p.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
                    index
                        .entry((scope.clone(), h.clone(), p.number))
                        .or_default()
                        .push((proto, s));
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, h, port), entries) in &index {
        let mut entries = entries.clone();
        if scope != "*"
            && let Some(all) = index.get(&("*".to_string(), h.clone(), *port))
        {
            entries.extend(all.iter().cloned());
        }
        let protocols: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = entries
            .iter()
            .map(|&(_, s)| {
                let se = &input.service_entries[s];
                format!("{}/{}", se.namespace(), se.name())
            })
            .collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        let protocols = protocols.into_iter().collect::<Vec<_>>().join(", ");
        for &(_, s) in &entries {
            if !reported.insert(s) {
                continue;
            }
            let se = &input.service_entries[s];
            out.push(diag(
                se,
                Kind::ServiceEntry,
                Code::ConflictingServiceEntryProtocol,
                FieldPath::root().key("metadata").key("name"),
                format!(
                    "Multiple ServiceEntries ({names}) define the same host {h:?} and port {port} with conflicting protocols ({protocols})."
                ),
            ));
        }
    }
}

fn conflicting_mesh_hosts(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    // Istio's ConflictingMeshGatewayHostsAnalyzer: each mesh-bound VirtualService's hosts
    // keyed by the scope they are exported to (`*` for all namespaces, else each
    // namespace) and the host (short names qualified); a namespace-scoped host also
    // collides with every all-namespace host it overlaps. Each VirtualService is reported
    // once.
    let mut hosts: BTreeMap<(String, String), Vec<(usize, usize)>> = BTreeMap::new();
    for (v, vs) in input.virtual_services.iter().enumerate() {
        let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !mesh {
            continue;
        }
        let scopes = export_scopes(&vs.spec.export_to, vs.namespace());
        for scope in &scopes {
            for (h, name) in vs.spec.hosts.iter().enumerate() {
                let fqdn = if name.starts_with('*') || name.contains('.') {
                    name.clone()
                } else {
                    qualify(name, vs.namespace())
                };
                hosts.entry((scope.clone(), fqdn)).or_default().push((v, h));
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, fqdn), users) in &hosts {
        let mut users = users.clone();
        if scope != "*" {
            for ((other_scope, other), more) in &hosts {
                if other_scope == "*" && host::overlaps(fqdn, other) {
                    users.extend(more);
                }
            }
        }
        if users.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = users
            .iter()
            .map(|&(v, _)| {
                let r = &input.virtual_services[v];
                format!("{}/{}", r.namespace(), r.name())
            })
            .collect();
        names.sort();
        for &(v, h) in &users {
            if !reported.insert(v) {
                continue;
            }
            let vs = &input.virtual_services[v];
            let mut d = diag(
                vs,
                Kind::VirtualService,
                Code::ConflictingMeshGatewayVirtualServiceHosts,
                FieldPath::root().key("spec").key("hosts").index(h),
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {scope}/{fqdn} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            );
            for &(o, _) in users.iter().filter(|(o, _)| *o != v) {
                let other = &input.virtual_services[o];
                d = d.related(
                    other
                        .origin
                        .locate(&FieldPath::root().key("spec").key("hosts")),
                    format!(
                        "VirtualService {}/{} is here",
                        other.namespace(),
                        other.name()
                    ),
                );
            }
            out.push(d);
        }
    }
}

fn destination_rule(
    input: &Input<'_>,
    dr: &Arc<Resource<DestinationRule>>,
    out: &mut Vec<Diagnostic>,
) {
    let ns = dr.namespace();
    let spec = FieldPath::root().key("spec");
    let k = Kind::DestinationRule;
    if dr.spec.host.is_empty() {
        return;
    }
    let qhost = qualify(&dr.spec.host, ns);
    let services: Vec<_> = if host::is_wildcard(&qhost) {
        input.registry.matching(&qhost, ns).collect()
    } else {
        input.registry.lookup(&qhost, ns).into_iter().collect()
    };
    if services.is_empty() {
        out.push(
            diag(
                dr,
                k,
                Code::UnknownDestinationRuleHost,
                spec.key("host"),
                format!("The host {} defined in the DestinationRule does not match any services in the mesh.", dr.spec.host),
            )
            .help(format!("no ServiceEntry visible from namespace `{ns}` has host `{qhost}`")),
        );
    } else {
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            let selected = services
                .iter()
                .any(|svc| svc.endpoints_selected_by(&s.labels).next().is_some());
            if !selected {
                out.push(diag(
                    dr,
                    k,
                    Code::DestinationRuleSubsetNotSelectPods,
                    spec.key("subsets").index(i).key("name"),
                    format!(
                        "The Subset {} defined in the DestinationRule does not select any endpoint (labels {}). Requests routed to it fail with 503 no healthy upstream.",
                        s.name,
                        show_labels(&s.labels)
                    ),
                ));
            }
        }
    }
    // (path of the tls settings, port for port-level settings): as Istio's
    // CaCertificateAnalyzer, the host-level policy and its port-level settings.
    let mut tls_paths: Vec<(FieldPath, &ClientTlsSettings, Option<u32>)> = Vec::new();
    tls_settings(
        dr.spec.traffic_policy.as_ref(),
        spec.key("trafficPolicy"),
        &mut tls_paths,
    );
    for (path, tls, port) in tls_paths {
        let mode = match tls.mode.unwrap_or_default() {
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            _ => continue,
        };
        // Istio: a `credentialName` holds the CA only for a DestinationRule with a
        // workload selector (a gateway's); anything else needs `caCertificates`.
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        if set(&tls.ca_certificates)
            || (set(&tls.credential_name) && dr.spec.workload_selector.is_some())
        {
            continue;
        }
        let name = dr.name();
        let h = &dr.spec.host;
        let (code, msg) = match port {
            None => (
                Code::NoServerCertificateVerificationDestinationLevel,
                format!(
                    "DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {h}"
                ),
            ),
            Some(p) => (
                Code::NoServerCertificateVerificationPortLevel,
                format!(
                    "DestinationRule {name} in namespace {ns} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {h} at port {p}"
                ),
            ),
        };
        out.push(diag(dr, k, code, path.key("mode"), msg));
    }
}

/// The TLS settings of a traffic policy and of its port-level settings.
fn tls_settings<'a>(
    tp: Option<&'a TrafficPolicy>,
    path: FieldPath,
    out: &mut Vec<(FieldPath, &'a ClientTlsSettings, Option<u32>)>,
) {
    let Some(tp) = tp else { return };
    if let Some(tls) = &tp.tls {
        out.push((path.key("tls"), tls, None));
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        if let Some(tls) = &pl.tls {
            let port = pl.port.map(|p| p.number);
            out.push((path.key("portLevelSettings").index(i).key("tls"), tls, port));
        }
    }
}

/// Several DestinationRules for one host, visible from one namespace.
fn conflicting_destination_rules(input: &Input<'_>, out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<(String, String), &Arc<Resource<DestinationRule>>> = BTreeMap::new();
    for dr in input.destination_rules {
        if dr.spec.host.is_empty() || dr.spec.workload_selector.is_some() {
            continue;
        }
        let key = (
            qualify(&dr.spec.host, dr.namespace()),
            dr.namespace().to_string(),
        );
        if let Some(first) = seen.get(&key) {
            out.push(
                diag(
                    dr,
                    Kind::DestinationRule,
                    Code::ConflictingDestinationRules,
                    FieldPath::root().key("spec").key("host"),
                    format!(
                        "DestinationRules {}/{} and {}/{} both apply to host {}: Istio merges them only when they do not overlap, the first one's trafficPolicy wins",
                        first.namespace(),
                        first.name(),
                        dr.namespace(),
                        dr.name(),
                        key.0
                    ),
                )
                .related(
                    first.origin.locate(&FieldPath::root().key("spec").key("host")),
                    "the first DestinationRule for the host",
                ),
            );
        } else {
            seen.insert(key, dr);
        }
    }
}
