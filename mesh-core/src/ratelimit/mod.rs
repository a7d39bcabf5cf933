//! Rate limits: what limits the requests arriving at one workload, compiled when the
//! configuration is swapped in.
//!
//! Two resources configure them. Istio's EnvoyFilter shapes (see
//! [`mesh_config::model::envoy_filter`]): an HTTP_FILTER patch inserting Envoy's local
//! rate limit filter (or its global one) into a workload's inbound chain or a gateway's,
//! and VIRTUAL_HOST / HTTP_ROUTE patches merging the filter's per-route configuration and
//! the route's `rate_limits` actions. And the mesh's own `LocalRateLimitPolicy` (a total,
//! per-identity and per-caller limit). [`Sources`] interprets them once per
//! configuration ([`CompiledMesh`](crate::CompiledMesh)); [`RateLimits::for_workload`] picks what applies to
//! one workload — a root-namespace resource applies to the workloads of every namespace,
//! another to those of its own; a selector must match the workload's labels;
//! SIDECAR_INBOUND patches apply to application workloads, GATEWAY ones to gateway
//! workloads, ANY to both — and resolves inbound virtual host names
//! (`inbound|http|<service port>`) to the ports the workload listens on.
//!
//! mesh-core stays free of runtime state: the token buckets live in mesh-tower, which
//! attaches them to a compiled configuration on its first request through a
//! [`StateSlot`], keyed by the configuration's stable [`LocalConfigInstance::key`] so
//! that a reload that leaves a limit unchanged keeps its buckets. Per request, the
//! configuration in force is resolved from the route ([`RouteContext`]: Envoy's most
//! specific per-route configuration — a route's, else its virtual host's, else the
//! filter's), and the descriptors a request matches are computed only when the
//! configuration has descriptors.

mod descriptor;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use foldhash::HashMap;
use http::{HeaderName, HeaderValue, StatusCode};
use mesh_config::Snapshot;
use mesh_config::model::envoy_filter::{
    self, ApplyTo, Interpreted, PatchContext, RouteAction, RouteConfigurationMatch,
};
use mesh_config::model::envoy_ratelimit::{
    AppendAction, GlobalRateLimitFilter, HeaderValueOption, LocalRateLimit, TokenBucket,
    VhRateLimits, XRateLimitHeaders,
};
use mesh_config::model::{
    EnvoyFilter, Labels, LocalRateLimitPolicy, MeshSettings, RateLimitSpec, Resource,
};
use mesh_config::registry::{Registry, selects};

pub use descriptor::{CompiledRateLimit, Descriptor, DescriptorRequest, HeaderMatcher};

use crate::workload::{Role, Workload};

/// Runtime state a layer attaches to a compiled value on first use (a token bucket
/// table, say): set once, read with one atomic load afterwards.
#[derive(Default)]
pub struct StateSlot(OnceLock<Arc<dyn Any + Send + Sync>>);

impl StateSlot {
    /// The state of type `T`, made by `init` on first use; `None` if the slot holds a
    /// state of another type.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> Arc<T>) -> Option<&T> {
        self.0
            .get_or_init(|| init() as Arc<dyn Any + Send + Sync>)
            .downcast_ref::<T>()
    }
}

impl fmt::Debug for StateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "StateSlot(set)"
        } else {
            "StateSlot(empty)"
        })
    }
}

/// A token bucket as Envoy's local rate limit filter keeps it.
pub type BucketSpec = TokenBucket;

/// A header to add, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAdd {
    /// Name.
    pub name: HeaderName,
    /// Value.
    pub value: HeaderValue,
    /// How.
    pub append: AppendAction,
}

impl HeaderAdd {
    fn compile(h: &HeaderValueOption) -> Option<Self> {
        Some(HeaderAdd {
            name: HeaderName::from_bytes(h.key.as_bytes()).ok()?,
            value: HeaderValue::from_str(&h.value).ok()?,
            append: h.append,
        })
    }

    /// Adds the header to `headers` as `append` says.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        match self.append {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(self.name.clone(), self.value.clone());
            }
            AppendAction::AddIfAbsent => {
                if !headers.contains_key(&self.name) {
                    headers.insert(self.name.clone(), self.value.clone());
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(self.name.clone(), self.value.clone());
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&self.name) {
                    headers.insert(self.name.clone(), self.value.clone());
                }
            }
        }
    }
}

/// A descriptor of a local rate limit configuration and its bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDescriptor {
    /// Its entries.
    pub entries: Vec<(Box<str>, Box<str>)>,
    /// Its bucket.
    pub bucket: BucketSpec,
}

impl LocalDescriptor {
    fn matches(&self, d: &Descriptor) -> bool {
        self.entries.len() == d.len()
            && self
                .entries
                .iter()
                .zip(d)
                .all(|((k, v), (rk, rv))| **k == **rk && **v == **rv)
    }

    /// Envoy consumes the matched descriptors with the smallest fill rate first.
    fn fill_rate(&self) -> f64 {
        f64::from(self.bucket.tokens_per_fill) / self.bucket.fill_interval.as_secs_f64().max(1e-9)
    }
}

/// A local rate limit filter's configuration (Envoy's `LocalRateLimit`), compiled.
#[derive(Debug)]
pub struct LocalConfig {
    /// The default bucket; `None`: only descriptors limit.
    pub token_bucket: Option<BucketSpec>,
    /// The share of requests checked, in millionths (0: the filter is off).
    pub enabled_per_million: u32,
    /// The share of limited requests refused, in millionths (0: counted only).
    pub enforced_per_million: u32,
    /// The status of a refusal.
    pub status: StatusCode,
    /// Headers added to a refusal.
    pub response_headers: Vec<HeaderAdd>,
    /// Headers added to a limited request let through (not enforced).
    pub request_headers_when_not_enforced: Vec<HeaderAdd>,
    /// Descriptors and their buckets.
    pub descriptors: Vec<LocalDescriptor>,
    /// A request matching a descriptor also takes a default token.
    pub always_consume_default_token_bucket: bool,
    /// Send `x-ratelimit-limit`, `-remaining` and `-reset`.
    pub x_ratelimit_headers: bool,
    /// gRPC callers get RESOURCE_EXHAUSTED (else UNAVAILABLE, from the 429).
    pub rate_limited_as_resource_exhausted: bool,
    stage: u32,
    vh_rate_limits: VhRateLimits,
    embedded: Vec<CompiledRateLimit>,
}

impl LocalConfig {
    /// Compiles a `LocalRateLimit`; an error names what could not be compiled (a
    /// regular expression validation let through).
    pub fn compile(c: &LocalRateLimit) -> Result<Self, String> {
        let per_million = |f: &Option<mesh_config::model::envoy_ratelimit::RuntimeFraction>| {
            f.as_ref().map_or(0, |f| f.default_value.per_million())
        };
        // Envoy answers 429 unless the configured status is an error (400 and above).
        let status = c
            .status
            .filter(|s| *s >= 400)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        Ok(LocalConfig {
            token_bucket: c.token_bucket,
            enabled_per_million: per_million(&c.filter_enabled),
            enforced_per_million: per_million(&c.filter_enforced),
            status,
            response_headers: c
                .response_headers_to_add
                .iter()
                .filter_map(HeaderAdd::compile)
                .collect(),
            request_headers_when_not_enforced: c
                .request_headers_to_add_when_not_enforced
                .iter()
                .filter_map(HeaderAdd::compile)
                .collect(),
            descriptors: c
                .descriptors
                .iter()
                .map(|d| LocalDescriptor {
                    entries: d
                        .entries
                        .iter()
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                        .collect(),
                    bucket: d.token_bucket,
                })
                .collect(),
            always_consume_default_token_bucket: c.always_consume_default_token_bucket,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03,
            rate_limited_as_resource_exhausted: c.rate_limited_as_resource_exhausted,
            stage: c.stage,
            vh_rate_limits: c.vh_rate_limits,
            embedded: c
                .rate_limits
                .iter()
                .map(CompiledRateLimit::compile)
                .collect::<Result<_, _>>()?,
        })
    }

    /// True when a request drawn at `draw` (in `[0, 1 000 000)`) is checked.
    pub fn enabled(&self, draw: u32) -> bool {
        draw < self.enabled_per_million
    }

    /// True when a limited request drawn at `draw` is refused.
    pub fn enforced(&self, draw: u32) -> bool {
        draw < self.enforced_per_million
    }

    /// True when requests are matched against descriptors.
    pub fn has_descriptors(&self) -> bool {
        !self.descriptors.is_empty()
    }
}

/// A compiled configuration as one workload has it: its buckets are the workload's own.
#[derive(Debug)]
pub struct LocalConfigInstance {
    /// The configuration.
    pub config: Arc<LocalConfig>,
    /// A stable id: the workload, the resource and where in it the configuration is.
    pub key: Arc<str>,
    /// The runtime state (the buckets).
    pub state: StateSlot,
}

/// The route a request took, as rate limits scope their per-route settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteContext<'a> {
    /// Inbound: the port the request arrived on; at a gateway: the server's port.
    pub port: u16,
    /// A route matched the request. Without one (a gateway's 404), no per-route
    /// setting applies: the filter's own configuration does, and no route rate limit.
    pub routed: bool,
    /// At a gateway: the domain of the virtual host (`*`, `bookinfo.com`); `None`
    /// inbound (`inbound|http|<port>`).
    pub vhost_domain: Option<&'a str>,
    /// At a gateway: the Gateway (`namespace/name`) of the server.
    pub gateway: Option<&'a str>,
    /// The route's name (a VirtualService HTTP route's `name`; `default` inbound).
    pub route_name: &'a str,
    /// What the route does.
    pub action: RouteAction,
}

impl<'a> RouteContext<'a> {
    /// A request at a gateway's server `port` that no route matched.
    pub fn unrouted(port: u16) -> RouteContext<'static> {
        RouteContext {
            port,
            routed: false,
            vhost_domain: None,
            gateway: None,
            route_name: "",
            action: RouteAction::Any,
        }
    }

    /// A request at a gateway's server `port`, routed by virtual host `vhost_domain` and
    /// the rule named `route_name` of Gateway `gateway`, whose action is `action`.
    pub fn gateway(
        port: u16,
        vhost_domain: &'a str,
        gateway: Option<&'a str>,
        route_name: &'a str,
        action: RouteAction,
    ) -> Self {
        RouteContext {
            port,
            routed: true,
            vhost_domain: Some(vhost_domain),
            gateway,
            route_name,
            action,
        }
    }

    /// The inbound route of a request arriving on `port` (Istio's one route `default`
    /// of virtual host `inbound|http|<port>`).
    pub fn inbound(port: u16) -> RouteContext<'static> {
        RouteContext {
            port,
            routed: true,
            vhost_domain: None,
            gateway: None,
            route_name: "default",
            action: RouteAction::Route,
        }
    }
}

/// Which virtual host a scoped setting is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VhostScope {
    Any,
    /// `inbound|http|P`: the ports of the workload it means.
    Inbound(Vec<u16>),
    /// `domain:port` of a gateway.
    Gateway(Box<str>, u16),
    /// A name matching no virtual host the mesh builds.
    Never,
}

/// Where a VIRTUAL_HOST or HTTP_ROUTE patch applies, compiled for one workload.
#[derive(Debug, Clone)]
struct Scope {
    /// Route-level (HTTP_ROUTE) rather than virtual-host-level.
    route_level: bool,
    /// `routeConfiguration.portNumber`: the ports it means (empty: any).
    ports: Vec<u16>,
    gateway: Option<Box<str>>,
    vhost: VhostScope,
    route_name: Option<Box<str>>,
    action: RouteAction,
}

impl Scope {
    fn compile(
        m: &RouteConfigurationMatch,
        route_level: bool,
        role: Role,
        inbound: &InboundPorts,
    ) -> Self {
        let ports = match (m.port_number, role) {
            (0, _) => Vec::new(),
            (p, Role::Sidecar) => inbound.ports_of(p),
            (p, Role::Gateway) => vec![u16::try_from(p).unwrap_or(0)],
        };
        let vhost = m.vhost.as_ref();
        let vhost_scope = match vhost.map(|v| v.name.as_str()).unwrap_or("") {
            "" => VhostScope::Any,
            name => match (role, name.strip_prefix("inbound|http|")) {
                (Role::Sidecar, Some(p)) => match p.parse::<u32>() {
                    Ok(p) => VhostScope::Inbound(inbound.ports_of(p)),
                    Err(_) => VhostScope::Never,
                },
                (Role::Gateway, None) => {
                    match name.rsplit_once(':').map(|(d, p)| (d, p.parse::<u16>())) {
                        Some((d, Ok(p))) => VhostScope::Gateway(d.to_ascii_lowercase().into(), p),
                        _ => VhostScope::Never,
                    }
                }
                _ => VhostScope::Never,
            },
        };
        let route = vhost.and_then(|v| v.route.as_ref());
        Scope {
            route_level,
            ports,
            gateway: (!m.gateway.is_empty()).then(|| m.gateway.as_str().into()),
            vhost: vhost_scope,
            route_name: route.and_then(|r| (!r.name.is_empty()).then(|| r.name.as_str().into())),
            action: route.map_or(RouteAction::Any, |r| r.action),
        }
    }

    fn matches(&self, r: &RouteContext<'_>) -> bool {
        if !r.routed {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.contains(&r.port) {
            return false;
        }
        if let Some(g) = &self.gateway
            && r.gateway != Some(&**g)
        {
            return false;
        }
        let vhost_ok = match &self.vhost {
            VhostScope::Any => true,
            VhostScope::Inbound(ports) => r.vhost_domain.is_none() && ports.contains(&r.port),
            VhostScope::Gateway(domain, port) => {
                r.vhost_domain
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
                    && *port == r.port
            }
            VhostScope::Never => false,
        };
        if !vhost_ok {
            return false;
        }
        if !self.route_level {
            return true;
        }
        if let Some(name) = &self.route_name
            && **name != *r.route_name
        {
            return false;
        }
        self.action == RouteAction::Any || self.action == r.action
    }
}

/// A setting scoped to virtual hosts or routes.
#[derive(Debug)]
struct Scoped<T> {
    scope: Scope,
    value: T,
}

/// The route settings of a workload's route configurations: per-route local rate limit
/// configurations and `rate_limits`.
#[derive(Debug, Default)]
pub struct RouteLimits {
    configs: Vec<Scoped<Arc<LocalConfigInstance>>>,
    rate_limits: Vec<Scoped<Vec<CompiledRateLimit>>>,
}

impl RouteLimits {
    /// The most specific per-route configuration for `route`: the last route-level one
    /// that matches, else the last virtual-host-level one (a later MERGE replaces an
    /// earlier entry of `typed_per_filter_config`).
    fn config(&self, route: &RouteContext<'_>) -> Option<&Arc<LocalConfigInstance>> {
        let last = |route_level: bool| {
            self.configs
                .iter()
                .rev()
                .find(|s| s.scope.route_level == route_level && s.scope.matches(route))
                .map(|s| &s.value)
        };
        last(true).or_else(|| last(false))
    }

    /// The descriptors `req` makes with the rate limits of `route` for a filter at
    /// `stage` with virtual host option `vh` (Envoy: a route's rate limits, and its
    /// virtual host's when the route has none, or always with INCLUDE, never with
    /// IGNORE); `skip_disabled` leaves out entries with a `disable_key`, as the local
    /// filter does.
    fn descriptors(
        &self,
        route: &RouteContext<'_>,
        req: &DescriptorRequest<'_>,
        stage: u32,
        vh: VhRateLimits,
        skip_disabled: bool,
        out: &mut Vec<Descriptor>,
    ) {
        let applicable = |route_level: bool| {
            self.rate_limits
                .iter()
                .filter(move |s| s.scope.route_level == route_level && s.scope.matches(route))
                .flat_map(|s| s.value.iter())
                .filter(move |rl| rl.stage == stage && !(skip_disabled && rl.has_disable_key))
        };
        let route_has = applicable(true).next().is_some();
        for rl in applicable(true) {
            out.extend(rl.descriptor(req));
        }
        let vhost = match vh {
            VhRateLimits::Override => !route_has,
            VhRateLimits::Include => true,
            VhRateLimits::Ignore => false,
        };
        if vhost {
            for rl in applicable(false) {
                out.extend(rl.descriptor(req));
            }
        }
    }

    /// True when no route settings apply anywhere.
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty() && self.rate_limits.is_empty()
    }
}

/// The local rate limit filter inserted by an EnvoyFilter, for one workload.
#[derive(Debug)]
pub struct EnvoyLocalFilter {
    base: Arc<LocalConfigInstance>,
    routes: Arc<RouteLimits>,
    /// The ports of its listener match (empty: every port).
    ports: Vec<u16>,
}

impl EnvoyLocalFilter {
    /// The configuration in force for a request on `route`: the most specific per-route
    /// configuration, else the filter's own; `None` when the filter's listener match
    /// leaves the route's port out.
    pub fn resolve(&self, route: &RouteContext<'_>) -> Option<&Arc<LocalConfigInstance>> {
        if !self.ports.is_empty() && !self.ports.contains(&route.port) {
            return None;
        }
        Some(self.routes.config(route).unwrap_or(&self.base))
    }

    /// The filter's own configuration.
    pub fn base(&self) -> &Arc<LocalConfigInstance> {
        &self.base
    }

    /// True when no per-route setting can change what [`resolve`](Self::resolve) or
    /// [`matched_descriptors`](Self::matched_descriptors) give: the route need not be
    /// known.
    pub fn route_independent(&self) -> bool {
        self.routes.is_empty()
    }

    /// The indices of the descriptors of `config` a request matches, in the order Envoy
    /// consumes them (the smallest fill rate first). Empty without descriptors; the
    /// descriptors are built only when `config` has some.
    pub fn matched_descriptors(
        &self,
        config: &LocalConfig,
        route: &RouteContext<'_>,
        req: &DescriptorRequest<'_>,
    ) -> Vec<usize> {
        if !config.has_descriptors() {
            return Vec::new();
        }
        let mut built = Vec::new();
        if config.embedded.is_empty() {
            self.routes.descriptors(
                route,
                req,
                config.stage,
                config.vh_rate_limits,
                true,
                &mut built,
            );
        } else {
            for rl in config.embedded.iter().filter(|rl| rl.stage == config.stage) {
                built.extend(rl.descriptor(req));
            }
        }
        let mut matched: Vec<usize> = Vec::new();
        for d in &built {
            if let Some(i) = config.descriptors.iter().position(|c| c.matches(d))
                && !matched.contains(&i)
            {
                matched.push(i);
            }
        }
        matched.sort_by(|a, b| {
            config.descriptors[*a]
                .fill_rate()
                .total_cmp(&config.descriptors[*b].fill_rate())
        });
        matched
    }
}

/// A `LocalRateLimitPolicy`, for one workload.
#[derive(Debug)]
pub struct PolicyLimit {
    /// A stable id: the workload and the policy.
    pub key: Arc<str>,
    /// The limit of all requests.
    pub total: Option<BucketSpec>,
    /// The limit of each caller identity.
    pub identity: Option<BucketSpec>,
    /// The overrides' limits.
    pub overrides: Vec<BucketSpec>,
    /// SPIFFE ID → override.
    callers: HashMap<Box<str>, usize>,
    /// The runtime state (the buckets).
    pub state: StateSlot,
}

/// Which limit of a [`PolicyLimit`] a caller has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerLimit {
    /// Override `i`, shared by its callers.
    Override(usize),
    /// Its own identity bucket.
    Identity,
    /// No per-caller limit.
    None,
}

/// The bucket of a caller without a verified identity (every such caller shares it).
pub const UNAUTHENTICATED: &str = "";

impl PolicyLimit {
    /// A policy `key` with its buckets and the overrides' callers (SPIFFE IDs).
    pub fn new(
        key: impl Into<Arc<str>>,
        total: Option<BucketSpec>,
        identity: Option<BucketSpec>,
        overrides: Vec<(BucketSpec, Vec<String>)>,
    ) -> Self {
        let mut callers = HashMap::default();
        for (i, (_, ids)) in overrides.iter().enumerate() {
            for id in ids {
                callers.entry(id.as_str().into()).or_insert(i);
            }
        }
        PolicyLimit {
            key: key.into(),
            total,
            identity,
            overrides: overrides.into_iter().map(|(b, _)| b).collect(),
            callers,
            state: StateSlot::default(),
        }
    }

    /// The limit of the caller whose verified SPIFFE ID is `peer` (`None`: no identity).
    pub fn caller_limit(&self, peer: Option<&str>) -> CallerLimit {
        if let Some(p) = peer
            && let Some(&i) = self.callers.get(p)
        {
            return CallerLimit::Override(i);
        }
        if self.identity.is_some() {
            CallerLimit::Identity
        } else {
            CallerLimit::None
        }
    }
}

/// Envoy's global rate limit filter, for one workload: the settings the limiter needs
/// and the descriptors of a request.
#[derive(Debug)]
pub struct GlobalRateLimit {
    /// A stable id: the workload, the EnvoyFilter and the patch.
    pub key: Arc<str>,
    /// The rate limit domain.
    pub domain: Arc<str>,
    /// The filter's stage.
    pub stage: u32,
    /// How long to wait for the limiter.
    pub timeout: Duration,
    /// Refuse requests when the limiter fails (else let them through).
    pub failure_mode_deny: bool,
    /// The status of a limited request.
    pub rate_limited_status: StatusCode,
    /// The status when the limiter fails and `failure_mode_deny` is set.
    pub status_on_error: StatusCode,
    /// Send `x-ratelimit-*` headers.
    pub x_ratelimit_headers: bool,
    /// Leave out `x-envoy-ratelimited` on refusals.
    pub disable_x_envoy_ratelimited_header: bool,
    /// gRPC callers get RESOURCE_EXHAUSTED rather than UNAVAILABLE.
    pub rate_limited_as_resource_exhausted: bool,
    /// Headers added to a refusal.
    pub response_headers: Vec<HeaderAdd>,
    embedded: Vec<CompiledRateLimit>,
    routes: Arc<RouteLimits>,
    /// The ports of its listener match (empty: every port).
    ports: Vec<u16>,
    /// The runtime state the limiter attaches.
    pub state: StateSlot,
}

impl GlobalRateLimit {
    fn compile(
        c: &GlobalRateLimitFilter,
        key: Arc<str>,
        routes: Arc<RouteLimits>,
        ports: Vec<u16>,
    ) -> Result<Self, String> {
        let status = |s: Option<u16>, default: StatusCode| {
            s.and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(default)
        };
        Ok(GlobalRateLimit {
            key,
            domain: c.domain.as_str().into(),
            stage: c.stage,
            timeout: c.timeout,
            failure_mode_deny: c.failure_mode_deny,
            rate_limited_status: status(c.rate_limited_status, StatusCode::TOO_MANY_REQUESTS),
            status_on_error: status(c.status_on_error, StatusCode::INTERNAL_SERVER_ERROR),
            x_ratelimit_headers: c.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03,
            disable_x_envoy_ratelimited_header: c.disable_x_envoy_ratelimited_header,
            rate_limited_as_resource_exhausted: c.rate_limited_as_resource_exhausted,
            response_headers: c
                .response_headers_to_add
                .iter()
                .filter_map(HeaderAdd::compile)
                .collect(),
            embedded: c
                .rate_limits
                .iter()
                .map(CompiledRateLimit::compile)
                .collect::<Result<_, _>>()?,
            routes,
            ports,
            state: StateSlot::default(),
        })
    }

    /// The descriptors of a request on `route`, as Envoy's rate limit filter sends
    /// them: from the filter's own `rate_limits` when it has some, else from the route's
    /// (and its virtual host's when the route has none), those of the filter's stage.
    /// No descriptor: the limiter is not asked.
    pub fn descriptors(
        &self,
        route: &RouteContext<'_>,
        req: &DescriptorRequest<'_>,
    ) -> Vec<Descriptor> {
        let mut out = Vec::new();
        if !self.ports.is_empty() && !self.ports.contains(&route.port) {
            return out;
        }
        if self.embedded.is_empty() {
            self.routes.descriptors(
                route,
                req,
                self.stage,
                VhRateLimits::Override,
                false,
                &mut out,
            );
        } else {
            for rl in self.embedded.iter().filter(|rl| rl.stage == self.stage) {
                out.extend(rl.descriptor(req));
            }
        }
        out
    }
}

/// One local rate limit filter of a workload's chain.
#[derive(Debug)]
pub enum LocalFilter {
    /// Envoy's filter, inserted by an EnvoyFilter.
    Envoy(EnvoyLocalFilter),
    /// A `LocalRateLimitPolicy`.
    Policy(PolicyLimit),
}

/// What rate limits the requests arriving at one workload (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct RateLimits {
    local: Vec<LocalFilter>,
    global: Vec<GlobalRateLimit>,
    source_cluster: Box<str>,
    route_dependent: bool,
}

impl RateLimits {
    /// The local filters, in the order they run.
    pub fn local(&self) -> &[LocalFilter] {
        &self.local
    }

    /// The global rate limit filters, in the order they run.
    pub fn global(&self) -> &[GlobalRateLimit] {
        &self.global
    }

    /// True when no rate limit applies.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }

    /// True when what applies to a request depends on its route (a listener port, a
    /// per-route setting, descriptors that may name its cluster): otherwise a
    /// [`RouteContext`] of any port will do.
    pub fn route_dependent(&self) -> bool {
        self.route_dependent
    }

    /// The workload's service cluster (`source_cluster` descriptors):
    /// `<canonical service>.<namespace>`.
    pub fn source_cluster(&self) -> &str {
        &self.source_cluster
    }

    /// Picks and compiles what applies to `workload` in `role` (see the module
    /// documentation).
    pub fn for_workload(
        sources: &Sources,
        registry: &Registry,
        workload: &Workload,
        role: Role,
    ) -> Self {
        if sources.is_empty() {
            return RateLimits {
                source_cluster: source_cluster(workload).into(),
                ..RateLimits::default()
            };
        }
        let inbound = InboundPorts::of(registry, workload);
        let wid = format!("{}.{}", workload.name, workload.namespace);
        let applies = |ns: &str, selector: Option<&Labels>| {
            (ns == workload.namespace || ns == sources.root_namespace)
                && selector.is_none_or(|s| selects(s, &workload.labels))
        };
        let in_context = |ctx: PatchContext| match ctx {
            PatchContext::Any => true,
            PatchContext::SidecarInbound => role == Role::Sidecar,
            PatchContext::Gateway => role == Role::Gateway,
            PatchContext::SidecarOutbound | PatchContext::Waypoint => false,
        };
        let selected: Vec<&InterpretedFilter> = sources
            .envoy_filters
            .iter()
            .filter(|f| applies(&f.namespace, f.selector.as_ref()))
            .collect();
        let instance = |config: &Arc<LocalConfig>, key: String| {
            Arc::new(LocalConfigInstance {
                config: config.clone(),
                key: key.into(),
                state: StateSlot::default(),
            })
        };
        // Route settings first: every filter of the chain resolves them.
        let mut routes = RouteLimits::default();
        for f in &selected {
            for p in &f.patches {
                if let SourcePatch::Route {
                    index,
                    context,
                    apply_to,
                    m,
                    local,
                    rate_limits,
                } = p
                {
                    if !in_context(*context) {
                        continue;
                    }
                    let scope = Scope::compile(m, *apply_to == ApplyTo::HttpRoute, role, &inbound);
                    if let Some(c) = local {
                        // Where the configuration applies is part of its identity: a
                        // patch moved to another route gets new buckets.
                        let at = fingerprint(&(apply_to.as_str(), m));
                        routes.configs.push(Scoped {
                            scope: scope.clone(),
                            value: instance(
                                c,
                                format!("{wid}|{}|configPatches[{index}]|{at:016x}", f.id),
                            ),
                        });
                    }
                    if !rate_limits.is_empty() {
                        routes.rate_limits.push(Scoped {
                            scope,
                            value: rate_limits.clone(),
                        });
                    }
                }
            }
        }
        let routes = Arc::new(routes);
        let mut first = Vec::new();
        let mut rest = Vec::new();
        let mut global = Vec::new();
        for f in &selected {
            for p in &f.patches {
                match p {
                    SourcePatch::Local {
                        index,
                        context,
                        port,
                        first: at_front,
                        config,
                    } if in_context(*context) => {
                        let filter = LocalFilter::Envoy(EnvoyLocalFilter {
                            base: instance(
                                config,
                                format!(
                                    "{wid}|{}|configPatches[{index}]|{}",
                                    f.id,
                                    port.unwrap_or(0)
                                ),
                            ),
                            routes: routes.clone(),
                            ports: listener_ports(*port, role, &inbound),
                        });
                        if *at_front {
                            first.push(filter);
                        } else {
                            rest.push(filter);
                        }
                    }
                    SourcePatch::Global {
                        index,
                        context,
                        port,
                        config,
                    } if in_context(*context) => {
                        if let Ok(g) = GlobalRateLimit::compile(
                            config,
                            format!("{wid}|{}|configPatches[{index}]", f.id).into(),
                            routes.clone(),
                            listener_ports(*port, role, &inbound),
                        ) {
                            global.push(g);
                        }
                    }
                    _ => {}
                }
            }
        }
        // INSERT_FIRST filters run before the others, the last inserted first.
        first.reverse();
        let mut local = first;
        local.extend(rest);
        // LocalRateLimitPolicies limit what arrives at the workload, a gateway too.
        for p in &sources.policies {
            if applies(&p.namespace, p.selector.as_ref()) {
                local.push(LocalFilter::Policy(PolicyLimit {
                    key: format!("{wid}|{}", p.id).into(),
                    total: p.total,
                    identity: p.identity,
                    overrides: p.overrides.clone(),
                    callers: p.callers.clone(),
                    state: StateSlot::default(),
                }));
            }
        }
        let route_dependent = !routes.is_empty()
            || global.iter().any(|g| !g.ports.is_empty())
            || local.iter().any(|f| match f {
                LocalFilter::Envoy(e) => !e.ports.is_empty() || e.base.config.has_descriptors(),
                LocalFilter::Policy(_) => false,
            });
        RateLimits {
            local,
            global,
            source_cluster: source_cluster(workload).into(),
            route_dependent,
        }
    }
}

/// A hash of `v` that is the same in every process (SipHash with fixed keys).
fn fingerprint<T: std::hash::Hash>(v: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(v)
}

/// The ports a listener match on `port` means for a workload in `role` (empty: any):
/// inbound, the service port's target ports; at a gateway, the server port.
fn listener_ports(port: Option<u16>, role: Role, inbound: &InboundPorts) -> Vec<u16> {
    match (port, role) {
        (None, _) => Vec::new(),
        (Some(p), Role::Sidecar) => inbound.ports_of(u32::from(p)),
        (Some(p), Role::Gateway) => vec![p],
    }
}

/// Envoy's service cluster of an Istio workload: its canonical service and namespace.
fn source_cluster(w: &Workload) -> String {
    let app = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| w.labels.get(*k))
    .map_or(w.name.as_str(), String::as_str);
    format!("{app}.{}", w.namespace)
}

/// The ports a workload listens on for each service port (from the registry's
/// endpoints that are the workload's WorkloadEntry).
#[derive(Debug, Default)]
struct InboundPorts {
    /// (service port, target port).
    map: Vec<(u32, u16)>,
}

impl InboundPorts {
    fn of(registry: &Registry, w: &Workload) -> Self {
        let mut map = Vec::new();
        for s in registry.services_of_workload(&w.namespace, &w.name) {
            for e in s.endpoints.iter() {
                let own = e
                    .workload
                    .as_ref()
                    .is_some_and(|k| k.name == w.name && k.namespace == w.namespace);
                if !own {
                    continue;
                }
                for p in &s.ports {
                    if let Ok(t) = u16::try_from(e.port_for(p))
                        && !map.contains(&(p.number, t))
                    {
                        map.push((p.number, t));
                    }
                }
            }
        }
        InboundPorts { map }
    }

    /// The ports `port` (a service port or a port of the workload) means.
    fn ports_of(&self, port: u32) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .map
            .iter()
            .filter(|(s, _)| *s == port)
            .map(|(_, t)| *t)
            .collect();
        if let Ok(p) = u16::try_from(port)
            && !out.contains(&p)
        {
            out.push(p);
        }
        out
    }
}

/// A patch of an EnvoyFilter, compiled (see [`Sources`]).
#[derive(Debug)]
enum SourcePatch {
    Local {
        index: usize,
        context: PatchContext,
        port: Option<u16>,
        first: bool,
        config: Arc<LocalConfig>,
    },
    Global {
        index: usize,
        context: PatchContext,
        port: Option<u16>,
        config: GlobalRateLimitFilter,
    },
    Route {
        index: usize,
        context: PatchContext,
        apply_to: ApplyTo,
        m: RouteConfigurationMatch,
        local: Option<Arc<LocalConfig>>,
        rate_limits: Vec<CompiledRateLimit>,
    },
}

#[derive(Debug)]
struct InterpretedFilter {
    id: String,
    namespace: String,
    selector: Option<Labels>,
    patches: Vec<SourcePatch>,
}

#[derive(Debug)]
struct CompiledPolicy {
    id: String,
    namespace: String,
    selector: Option<Labels>,
    total: Option<BucketSpec>,
    identity: Option<BucketSpec>,
    overrides: Vec<BucketSpec>,
    callers: HashMap<Box<str>, usize>,
}

/// The rate limit resources of a configuration, interpreted once (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct Sources {
    root_namespace: String,
    envoy_filters: Vec<InterpretedFilter>,
    policies: Vec<CompiledPolicy>,
    /// Problems found while compiling (what could not be compiled is left out).
    pub errors: Vec<String>,
}

/// The bucket of a rate: its count of tokens per unit, `burst` at most.
pub fn bucket_of(rate: &RateLimitSpec) -> BucketSpec {
    let (n, unit) = rate.rate().unwrap_or((0, Duration::from_secs(1)));
    TokenBucket {
        max_tokens: rate.burst(),
        tokens_per_fill: n.max(1),
        fill_interval: unit,
    }
}

impl Sources {
    /// Interprets the EnvoyFilters and LocalRateLimitPolicies of `snapshot`.
    pub fn compile(snapshot: &Snapshot) -> Self {
        let mesh = snapshot.mesh();
        let mut errors = Vec::new();
        let mut filters: Vec<(i32, bool, usize, InterpretedFilter)> = Vec::new();
        for (order, ef) in snapshot.envoy_filters().iter().enumerate() {
            if let Some(f) = Self::envoy_filter(ef, &mut errors) {
                filters.push((
                    ef.spec.priority,
                    ef.namespace() != mesh.root_namespace,
                    order,
                    f,
                ));
            }
        }
        // Istio orders a workload's EnvoyFilters by priority, then root namespace first,
        // then creation (here: load order).
        filters.sort_by_key(|a| (a.0, a.1, a.2));
        let policies = snapshot
            .local_rate_limit_policies()
            .iter()
            .map(|p| Self::policy(p, mesh))
            .collect();
        Sources {
            root_namespace: mesh.root_namespace.clone(),
            envoy_filters: filters.into_iter().map(|(_, _, _, f)| f).collect(),
            policies,
            errors,
        }
    }

    fn envoy_filter(
        ef: &Resource<EnvoyFilter>,
        errors: &mut Vec<String>,
    ) -> Option<InterpretedFilter> {
        if !ef.spec.target_refs.is_empty() {
            return None;
        }
        let id = format!("EnvoyFilter {}/{}", ef.namespace(), ef.name());
        let interpreted = envoy_filter::interpret(ef);
        let mut patches = Vec::new();
        for p in interpreted.patches {
            let compiled = match p {
                Interpreted::LocalRateLimitFilter { at, config } => LocalConfig::compile(&config)
                    .map(|c| SourcePatch::Local {
                        index: at.patch,
                        context: at.context,
                        port: (at.port != 0).then(|| u16::try_from(at.port).unwrap_or(0)),
                        first: at.operation == envoy_filter::Operation::InsertFirst,
                        config: Arc::new(c),
                    }),
                Interpreted::GlobalRateLimitFilter { at, config } => Ok(SourcePatch::Global {
                    index: at.patch,
                    context: at.context,
                    port: (at.port != 0).then(|| u16::try_from(at.port).unwrap_or(0)),
                    config,
                }),
                Interpreted::RouteSettings {
                    at,
                    local,
                    rate_limits,
                } => (|| {
                    Ok(SourcePatch::Route {
                        index: at.patch,
                        context: at.context,
                        apply_to: at.apply_to,
                        m: at.route_configuration,
                        local: match local {
                            Some(l) => Some(Arc::new(LocalConfig::compile(&l)?)),
                            None => None,
                        },
                        rate_limits: rate_limits
                            .iter()
                            .map(CompiledRateLimit::compile)
                            .collect::<Result<_, String>>()?,
                    })
                })(),
            };
            match compiled {
                Ok(p) => patches.push(p),
                Err(e) => errors.push(format!("{id}: {e}")),
            }
        }
        Some(InterpretedFilter {
            id,
            namespace: ef.namespace().to_string(),
            selector: ef.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            patches,
        })
    }

    fn policy(p: &Resource<LocalRateLimitPolicy>, mesh: &MeshSettings) -> CompiledPolicy {
        let mut callers = HashMap::default();
        let domains: Vec<&str> = std::iter::once(mesh.trust_domain.as_str())
            .chain(mesh.trust_domain_aliases.iter().map(String::as_str))
            .collect();
        for (i, o) in p.spec.overrides.iter().enumerate() {
            for c in &o.client_refs {
                let ns = c.namespace.as_deref().unwrap_or(p.namespace());
                for td in &domains {
                    callers
                        .entry(format!("spiffe://{td}/ns/{ns}/sa/{}", c.name).into_boxed_str())
                        .or_insert(i);
                }
            }
        }
        CompiledPolicy {
            id: format!("LocalRateLimitPolicy {}/{}", p.namespace(), p.name()),
            namespace: p.namespace().to_string(),
            selector: p.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
            total: p.spec.total.as_ref().map(bucket_of),
            identity: p.spec.identity.as_ref().map(bucket_of),
            overrides: p
                .spec
                .overrides
                .iter()
                .map(|o| bucket_of(&o.spec()))
                .collect(),
            callers,
        }
    }

    /// True when no rate limit resource is configured.
    pub fn is_empty(&self) -> bool {
        self.envoy_filters.is_empty() && self.policies.is_empty()
    }
}
