//! EnvoyFilter (`networking.istio.io/v1alpha3`): patches to the Envoy configuration Istio
//! generates, with the field names of Istio's API reference.
//!
//! The mesh has no Envoy configuration to patch: it reads the patches whose effect it
//! reproduces — the HTTP local rate limit filter (`envoy.filters.http.local_ratelimit`)
//! inserted into the inbound or gateway chain, its per-route configuration and route rate
//! limit actions merged into virtual hosts and routes, and the global rate limit filter
//! (`envoy.filters.http.ratelimit`) — as typed configuration ([`interpret`]). Every other
//! patch is read, kept, and reported as parsed but not enforced, at its line.
//!
//! `patch.value` is free-form Envoy configuration (a `google.protobuf.Struct`); it is kept
//! as JSON here, and read into typed Envoy messages by [`interpret`], which names the
//! field path of everything it cannot use.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Resource;
use super::common::{LabelSelector, PolicyTargetReference};
use super::envoy_ratelimit::{self, EnvoyRead, GlobalRateLimitFilter, LocalRateLimit, RateLimit};
use crate::diag::Code;
use crate::path::FieldPath;

/// The spec of an EnvoyFilter.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyFilter {
    /// Workloads the patches apply to (every workload of the namespace when absent; of
    /// every namespace for an EnvoyFilter in the root namespace).
    pub workload_selector: Option<LabelSelector>,
    /// Gateway API resources the patches apply to (instead of a selector).
    pub target_refs: Vec<PolicyTargetReference>,
    /// The patches, with their match conditions.
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    /// Order among the EnvoyFilters of one workload: lower first (Istio's default 0).
    pub priority: i32,
}

/// Where in the Envoy configuration a patch applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum ApplyTo {
    #[default]
    Invalid,
    Listener,
    FilterChain,
    NetworkFilter,
    HttpFilter,
    RouteConfiguration,
    VirtualHost,
    HttpRoute,
    Cluster,
    ExtensionConfig,
    Bootstrap,
    ListenerFilter,
}

impl ApplyTo {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Invalid => "INVALID",
            ApplyTo::Listener => "LISTENER",
            ApplyTo::FilterChain => "FILTER_CHAIN",
            ApplyTo::NetworkFilter => "NETWORK_FILTER",
            ApplyTo::HttpFilter => "HTTP_FILTER",
            ApplyTo::RouteConfiguration => "ROUTE_CONFIGURATION",
            ApplyTo::VirtualHost => "VIRTUAL_HOST",
            ApplyTo::HttpRoute => "HTTP_ROUTE",
            ApplyTo::Cluster => "CLUSTER",
            ApplyTo::ExtensionConfig => "EXTENSION_CONFIG",
            ApplyTo::Bootstrap => "BOOTSTRAP",
            ApplyTo::ListenerFilter => "LISTENER_FILTER",
        }
    }
}

/// The traffic a patch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    /// Sidecars (both directions) and gateways.
    #[default]
    Any,
    /// Requests arriving at a workload.
    SidecarInbound,
    /// Requests a workload sends.
    SidecarOutbound,
    /// Requests arriving at a gateway.
    Gateway,
    /// Waypoint proxies (ambient mode).
    Waypoint,
}

impl PatchContext {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchContext::Any => "ANY",
            PatchContext::SidecarInbound => "SIDECAR_INBOUND",
            PatchContext::SidecarOutbound => "SIDECAR_OUTBOUND",
            PatchContext::Gateway => "GATEWAY",
            PatchContext::Waypoint => "WAYPOINT",
        }
    }
}

/// One patch and where it applies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyConfigObjectPatch {
    /// The kind of object patched.
    pub apply_to: ApplyTo,
    /// Which objects (all of the kind when absent).
    #[serde(rename = "match")]
    pub match_: Option<EnvoyConfigObjectMatch>,
    /// The change.
    pub patch: Option<Patch>,
}

/// Match conditions of a patch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyConfigObjectMatch {
    /// The traffic (ANY when absent).
    pub context: PatchContext,
    /// Properties of the proxy.
    pub proxy: Option<ProxyMatch>,
    /// A listener, filter chain or filter.
    pub listener: Option<ListenerMatch>,
    /// A route configuration, virtual host or route.
    pub route_configuration: Option<RouteConfigurationMatch>,
    /// A cluster.
    pub cluster: Option<ClusterMatch>,
    /// A waypoint's filter or route.
    pub waypoint: Option<WaypointMatch>,
}

/// Properties of the proxy a patch applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyMatch {
    /// RE2 regular expression on the Istio version of the proxy.
    pub proxy_version: String,
    /// Node metadata the proxy must have.
    pub metadata: BTreeMap<String, String>,
}

/// A listener, and in it a filter chain or a filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerMatch {
    /// The service or gateway port (0: any).
    pub port_number: u32,
    /// A port name (not implemented by Istio).
    pub port_name: String,
    /// A filter chain of the listener.
    pub filter_chain: Option<FilterChainMatch>,
    /// The listener's name.
    pub name: String,
    /// A listener filter.
    pub listener_filter: String,
}

/// A filter chain of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterChainMatch {
    /// The filter chain's name.
    pub name: String,
    /// The SNI of its match.
    pub sni: String,
    /// `raw_buffer` or `tls`.
    pub transport_protocol: String,
    /// Comma-separated application protocols.
    pub application_protocols: String,
    /// A network filter of the chain (and in it an HTTP filter).
    pub filter: Option<FilterMatch>,
    /// The destination port of the chain's match.
    pub destination_port: u32,
    /// The transport socket's name.
    pub transport_socket: String,
}

/// A network filter, and in it an HTTP filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterMatch {
    /// The filter's name (`envoy.filters.network.http_connection_manager`).
    pub name: String,
    /// An HTTP filter of the connection manager.
    pub sub_filter: Option<SubFilterMatch>,
}

/// An HTTP filter of the HTTP connection manager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SubFilterMatch {
    /// The HTTP filter's name (`envoy.filters.http.router`).
    pub name: String,
}

/// A route configuration, and in it a virtual host or a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfigurationMatch {
    /// The service or gateway server port (0: any).
    pub port_number: u32,
    /// The gateway server's port name.
    pub port_name: String,
    /// The Gateway (`namespace/name`) the route configuration was made for.
    pub gateway: String,
    /// A virtual host.
    pub vhost: Option<VirtualHostMatch>,
    /// The route configuration's name.
    pub name: String,
}

/// A virtual host, and in it a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualHostMatch {
    /// The virtual host's name: `host:port` (gateways, outbound), `inbound|http|port`
    /// (inbound); empty: any.
    pub name: String,
    /// A domain of the virtual host.
    pub domain_name: String,
    /// A route of the virtual host.
    pub route: Option<RouteMatch>,
}

/// A route of a virtual host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// The route's name: a VirtualService HTTP route's `name` (`default` for the route
    /// Istio generates without one); empty: any.
    pub name: String,
    /// What the route does.
    pub action: RouteAction,
}

/// The action of a route a patch applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    /// Any route.
    #[default]
    Any,
    /// Routes forwarding to a cluster.
    Route,
    /// Redirects.
    Redirect,
    /// Direct responses.
    DirectResponse,
}

/// A cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterMatch {
    /// The service port (0: any).
    pub port_number: u32,
    /// The service's fully qualified name.
    pub service: String,
    /// A subset.
    pub subset: String,
    /// The cluster's name.
    pub name: String,
}

/// A waypoint's filter or route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WaypointMatch {
    /// A filter.
    pub filter: Option<FilterMatch>,
    /// A route.
    pub route: Option<WaypointRouteMatch>,
    /// A port.
    pub port_number: u32,
}

/// A waypoint's route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WaypointRouteMatch {
    /// The route's name.
    pub name: String,
}

/// How a patch changes the object it applies to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Patch {
    /// The operation.
    pub operation: Operation,
    /// The Envoy configuration (free-form, a `google.protobuf.Struct`).
    pub value: Option<serde_json::Value>,
    /// Where an added filter goes relative to Istio's own.
    pub filter_class: FilterClass,
}

/// A patch operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Operation {
    #[default]
    Invalid,
    Merge,
    Add,
    Remove,
    InsertBefore,
    InsertAfter,
    InsertFirst,
    Replace,
    MergeAndReplaceList,
}

impl Operation {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Invalid => "INVALID",
            Operation::Merge => "MERGE",
            Operation::Add => "ADD",
            Operation::Remove => "REMOVE",
            Operation::InsertBefore => "INSERT_BEFORE",
            Operation::InsertAfter => "INSERT_AFTER",
            Operation::InsertFirst => "INSERT_FIRST",
            Operation::Replace => "REPLACE",
            Operation::MergeAndReplaceList => "MERGE_AND_REPLACE_LIST",
        }
    }
}

/// Where an added HTTP filter goes relative to the filters Istio inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    /// Istio decides.
    #[default]
    Unspecified,
    /// After authentication.
    Authn,
    /// After authorization.
    Authz,
    /// Before statistics.
    Stats,
}

/// The HTTP connection manager's names (Istio accepts the deprecated one).
pub const HTTP_CONNECTION_MANAGER: &[&str] = &[
    "envoy.filters.network.http_connection_manager",
    "envoy.http_connection_manager",
];
/// The local rate limit HTTP filter.
pub const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// The global rate limit HTTP filter (and its deprecated name).
pub const RATELIMIT_FILTER: &[&str] = &["envoy.filters.http.ratelimit", "envoy.ratelimit"];

/// What the mesh makes of one patch of an EnvoyFilter (see [`interpret`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Interpreted {
    /// An HTTP_FILTER patch adding the local rate limit filter.
    LocalRateLimitFilter {
        /// Where the filter goes.
        at: FilterAt,
        /// Its configuration.
        config: LocalRateLimit,
    },
    /// An HTTP_FILTER patch adding the global rate limit filter.
    GlobalRateLimitFilter {
        /// Where the filter goes.
        at: FilterAt,
        /// Its configuration.
        config: GlobalRateLimitFilter,
    },
    /// A VIRTUAL_HOST or HTTP_ROUTE MERGE patch with rate limit settings.
    RouteSettings {
        /// Where the settings go.
        at: RouteAt,
        /// `typed_per_filter_config` of the local rate limit filter.
        local: Option<LocalRateLimit>,
        /// `rate_limits` (the route's, or the virtual host's).
        rate_limits: Vec<RateLimit>,
    },
}

/// Where an HTTP filter patch applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterAt {
    /// Index of the patch in `configPatches`.
    pub patch: usize,
    /// The traffic.
    pub context: PatchContext,
    /// The listener port (0: any).
    pub port: u32,
    /// The operation (INSERT_BEFORE, INSERT_FIRST, INSERT_AFTER, ADD).
    pub operation: Operation,
    /// Where the patch puts the filter in Istio's chain: before its authentication and
    /// authorization filters (`jwt_authn`, `ext_authz`, `rbac`) or after them.
    pub before_authz: bool,
}

/// HTTP filters Istio's chains place after authentication and authorization.
const AFTER_AUTHZ: &[&str] = &[
    "envoy.filters.http.router",
    "envoy.router",
    "istio.stats",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.fault",
    "envoy.filters.http.cors",
];

/// Istio's authentication and authorization HTTP filters.
const AUTHZ: &[&str] = &[
    "envoy.filters.http.jwt_authn",
    "istio_authn",
    "istio.authn",
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.rbac",
];

/// Whether an HTTP filter inserted by `operation` relative to `sub_filter` runs before
/// Istio's authentication and authorization filters: Istio inserts at the front for
/// INSERT_FIRST and for INSERT_BEFORE without a sub-filter, and at the end (after them)
/// for ADD and for INSERT_AFTER without one.
fn runs_before_authz(operation: Operation, sub_filter: Option<&str>) -> bool {
    match (operation, sub_filter) {
        (Operation::InsertFirst, _) | (Operation::InsertBefore, None) => true,
        (Operation::InsertBefore, Some(s)) => !AFTER_AUTHZ.contains(&s),
        (Operation::InsertAfter, Some(s)) => !AFTER_AUTHZ.contains(&s) && !AUTHZ.contains(&s),
        _ => false,
    }
}

/// Where a route configuration patch applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAt {
    /// Index of the patch in `configPatches`.
    pub patch: usize,
    /// The traffic.
    pub context: PatchContext,
    /// VIRTUAL_HOST or HTTP_ROUTE.
    pub apply_to: ApplyTo,
    /// The route configuration match (all fields empty: any).
    pub route_configuration: RouteConfigurationMatch,
}

/// A finding of [`interpret`]: a field path (relative to the resource) and what is wrong
/// with it, or why it is not enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The field.
    pub path: FieldPath,
    /// Kind of finding.
    pub kind: FindingKind,
    /// The diagnostic code it is reported with.
    pub code: Code,
    /// The message.
    pub message: String,
}

/// Kinds of [`Finding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The configuration cannot be used (an error).
    Invalid,
    /// Read, but the mesh does not act on it (`MESH0120`).
    NotEnforced,
}

/// The patches of an EnvoyFilter the mesh acts on, and what it found on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interpretation {
    /// The patches the mesh acts on, in order.
    pub patches: Vec<Interpreted>,
    /// Errors and fields not enforced.
    pub findings: Vec<Finding>,
}

impl Interpretation {
    /// True when a finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.kind == FindingKind::Invalid)
    }
}

/// Reads the patches of `filter` the mesh acts on into typed Envoy configuration (see
/// the module documentation); everything else becomes a [`Finding`].
pub fn interpret(filter: &Resource<EnvoyFilter>) -> Interpretation {
    interpret_spec(&filter.spec)
}

/// [`interpret`] on a spec.
pub fn interpret_spec(spec: &EnvoyFilter) -> Interpretation {
    let mut out = Interpretation::default();
    let base = FieldPath::root().key("spec").key("configPatches");
    for (i, cp) in spec.config_patches.iter().enumerate() {
        let path = base.index(i);
        let mut r = EnvoyRead::new(&mut out.findings);
        if let Some(p) = interpret_patch(&mut r, i, cp, &path) {
            out.patches.push(p);
        }
    }
    out
}

fn not_enforced(r: &mut EnvoyRead<'_>, path: &FieldPath, message: String) {
    r.not_enforced(path, message);
}

fn interpret_patch(
    r: &mut EnvoyRead<'_>,
    index: usize,
    cp: &EnvoyConfigObjectPatch,
    path: &FieldPath,
) -> Option<Interpreted> {
    let default_match = EnvoyConfigObjectMatch::default();
    let m = cp.match_.as_ref().unwrap_or(&default_match);
    let Some(patch) = &cp.patch else {
        // Validation reports the missing patch.
        return None;
    };
    let what = format!(
        "{} {} patch",
        cp.apply_to.as_str(),
        patch.operation.as_str()
    );
    match m.context {
        PatchContext::Any | PatchContext::SidecarInbound | PatchContext::Gateway => {}
        ctx => {
            not_enforced(
                r,
                path,
                format!(
                    "{what} in context {}: the mesh applies EnvoyFilter patches to inbound (SIDECAR_INBOUND) and gateway (GATEWAY) traffic only",
                    ctx.as_str()
                ),
            );
            return None;
        }
    }
    if m.proxy.is_some() {
        not_enforced(
            r,
            &path.key("match").key("proxy"),
            "proxy version and metadata matches are not evaluated: the patch applies to every proxy".into(),
        );
    }
    let value_path = path.key("patch").key("value");
    match (cp.apply_to, patch.operation) {
        (
            ApplyTo::HttpFilter,
            Operation::InsertBefore
            | Operation::InsertFirst
            | Operation::InsertAfter
            | Operation::Add,
        ) => {
            let Some(value) = &patch.value else {
                return None;
            };
            let port = listener_port(r, m, path)?;
            let sub_filter = m
                .listener
                .as_ref()
                .and_then(|l| l.filter_chain.as_ref())
                .and_then(|c| c.filter.as_ref())
                .and_then(|f| f.sub_filter.as_ref())
                .map(|s| s.name.as_str());
            let at = FilterAt {
                patch: index,
                context: m.context,
                port,
                operation: patch.operation,
                before_authz: runs_before_authz(patch.operation, sub_filter),
            };
            if patch.filter_class != FilterClass::Unspecified {
                not_enforced(
                    r,
                    &path.key("patch").key("filterClass"),
                    "filterClass is not used: the local rate limit filter runs before authentication and authorization, the global one after them".into(),
                );
            }
            http_filter(r, at, value, &value_path, &what, path)
        }
        (ApplyTo::VirtualHost | ApplyTo::HttpRoute, Operation::Merge) => {
            let Some(value) = &patch.value else {
                return None;
            };
            if m.listener.is_some() || m.cluster.is_some() || m.waypoint.is_some() {
                // Validation reports a match of the wrong kind.
                return None;
            }
            let rc = m.route_configuration.clone().unwrap_or_default();
            let rp = path.key("match").key("routeConfiguration");
            for (field, set) in [
                ("name", !rc.name.is_empty()),
                ("portName", !rc.port_name.is_empty()),
            ] {
                if set {
                    not_enforced(
                        r,
                        &rp.key(field),
                        format!(
                            "route configuration `{field}` matches are not evaluated: the patch applies to every route configuration of its context"
                        ),
                    );
                }
            }
            if rc.vhost.as_ref().is_some_and(|v| !v.domain_name.is_empty()) {
                not_enforced(
                    r,
                    &rp.key("vhost").key("domainName"),
                    "virtual host `domainName` matches are not evaluated: match the virtual host by `name`".to_string(),
                );
            }
            let at = RouteAt {
                patch: index,
                context: m.context,
                apply_to: cp.apply_to,
                route_configuration: rc,
            };
            route_settings(r, at, value, &value_path, &what, path)
        }
        _ => {
            not_enforced(
                r,
                path,
                format!(
                    "{what}: the mesh enforces only the local and global rate limit filters (HTTP_FILTER) and their virtual host and route settings (VIRTUAL_HOST and HTTP_ROUTE MERGE)"
                ),
            );
            None
        }
    }
}

/// The listener port an HTTP_FILTER patch matches (0: any), or `None` when its listener
/// match cannot be honoured (reported).
fn listener_port(
    r: &mut EnvoyRead<'_>,
    m: &EnvoyConfigObjectMatch,
    path: &FieldPath,
) -> Option<u32> {
    let Some(l) = &m.listener else {
        if m.route_configuration.is_some() || m.cluster.is_some() || m.waypoint.is_some() {
            // Validation reports a match of the wrong kind.
            return None;
        }
        return Some(0);
    };
    let lp = path.key("match").key("listener");
    if !l.name.is_empty() || !l.listener_filter.is_empty() || !l.port_name.is_empty() {
        let field = if !l.name.is_empty() {
            "name"
        } else if !l.listener_filter.is_empty() {
            "listenerFilter"
        } else {
            "portName"
        };
        not_enforced(
            r,
            &lp.key(field),
            format!(
                "listener `{field}` matches are not evaluated: the patch applies to every listener of its context"
            ),
        );
    }
    if let Some(fc) = &l.filter_chain {
        let fcp = lp.key("filterChain");
        for (field, set) in [
            ("name", !fc.name.is_empty()),
            ("sni", !fc.sni.is_empty()),
            ("transportProtocol", !fc.transport_protocol.is_empty()),
            ("applicationProtocols", !fc.application_protocols.is_empty()),
            ("destinationPort", fc.destination_port != 0),
            ("transportSocket", !fc.transport_socket.is_empty()),
        ] {
            if set {
                not_enforced(
                    r,
                    &fcp.key(field),
                    format!(
                        "filter chain `{field}` matches are not evaluated: the patch applies to every filter chain"
                    ),
                );
            }
        }
        if let Some(f) = &fc.filter
            && !f.name.is_empty()
            && !HTTP_CONNECTION_MANAGER.contains(&f.name.as_str())
        {
            // An HTTP filter lives in the HTTP connection manager: a patch matching another
            // network filter applies to nothing.
            not_enforced(
                r,
                &fcp.key("filter").key("name"),
                format!(
                    "the HTTP filter is patched into `{}`, which is not the HTTP connection manager: the patch applies to nothing",
                    f.name
                ),
            );
            return None;
        }
    }
    Some(l.port_number)
}

fn http_filter(
    r: &mut EnvoyRead<'_>,
    at: FilterAt,
    value: &serde_json::Value,
    value_path: &FieldPath,
    what: &str,
    path: &FieldPath,
) -> Option<Interpreted> {
    let name = value.get("name").and_then(|n| n.as_str()).unwrap_or("");
    let operation = path.key("patch").key("operation");
    if name == LOCAL_RATELIMIT_FILTER {
        let config = envoy_ratelimit::read_local_filter(r, value, value_path)?;
        if !at.before_authz {
            not_enforced(
                r,
                &operation,
                format!(
                    "{what} puts `{name}` after authentication and authorization: the mesh runs it before them, where Istio's task inserts it (first in the chain), so requests they refuse are counted too"
                ),
            );
        }
        return Some(Interpreted::LocalRateLimitFilter { at, config });
    }
    if RATELIMIT_FILTER.contains(&name) {
        let config = envoy_ratelimit::read_global_filter(r, value, value_path)?;
        if at.before_authz {
            not_enforced(
                r,
                &operation,
                format!(
                    "{what} puts `{name}` before authentication and authorization: the mesh runs it after them, where Istio's task inserts it (before the router), so requests they refuse are not counted"
                ),
            );
        }
        return Some(Interpreted::GlobalRateLimitFilter { at, config });
    }
    let shown = if name.is_empty() { "<unnamed>" } else { name };
    not_enforced(
        r,
        path,
        format!(
            "{what} adding HTTP filter `{shown}`: the mesh enforces only `{LOCAL_RATELIMIT_FILTER}` and `envoy.filters.http.ratelimit`"
        ),
    );
    None
}

fn route_settings(
    r: &mut EnvoyRead<'_>,
    at: RouteAt,
    value: &serde_json::Value,
    value_path: &FieldPath,
    what: &str,
    path: &FieldPath,
) -> Option<Interpreted> {
    let settings = envoy_ratelimit::read_route_settings(r, at.apply_to, value, value_path)?;
    if settings.local.is_none() && settings.rate_limits.is_empty() {
        not_enforced(
            r,
            path,
            format!("{what}: nothing in it is a rate limit setting the mesh enforces"),
        );
        return None;
    }
    Some(Interpreted::RouteSettings {
        at,
        local: settings.local,
        rate_limits: settings.rate_limits,
    })
}
