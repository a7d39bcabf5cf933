//! What Istio's standard metrics say of the two ends of a request, computed once per
//! configuration: the labels of a workload ([`PeerLabels`]: its workload name, canonical
//! service and revision, namespace, `app`, `version`, cluster) and of a service
//! ([`ServiceLabels`]: its host, name and namespace), with Istio's rules and fallbacks
//! (`unknown`, `latest`), and the peer metadata a client sends so that the server can
//! name it: Istio's baggage (`k8s.deployment.name=…,k8s.namespace.name=…`).
//!
//! Every label value comes from configuration, never from a request: a server names its
//! caller only when the caller's workload is known ([`PeerIndex`]), so the number of
//! series stays bounded by the configuration.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use mesh_config::model::Labels;
use mesh_config::model::telemetry::scope::{
    DefaultProviders, EffectiveTelemetry, MetricsConfig, TagChange,
};
use mesh_config::model::telemetry::{IstioMetric, WorkloadMode};

/// Istio's value for a label it cannot fill.
pub const UNKNOWN: &str = "unknown";

/// The cluster a workload runs in when none is configured (Istio's default cluster ID).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The label naming a workload (Istio's `service.istio.io/workload-name`).
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// One end of a request as Istio's metrics label it (the principal aside: it depends on
/// the connection, see the reporter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLabels {
    /// `source_workload` / `destination_workload`: the workload's name.
    pub workload: Box<str>,
    /// `*_canonical_service`: `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload's name.
    pub canonical_service: Box<str>,
    /// `*_canonical_revision`: `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub canonical_revision: Box<str>,
    /// `*_workload_namespace`.
    pub namespace: Box<str>,
    /// `*_app`: the `app` label, else `app.kubernetes.io/name`, else `unknown`.
    pub app: Box<str>,
    /// `*_version`: the `version` label, else `app.kubernetes.io/version`, else `unknown`.
    pub version: Box<str>,
    /// `*_cluster`.
    pub cluster: Box<str>,
    /// The workload's SPIFFE ID (`*_principal` when the connection is mutual TLS).
    pub principal: Box<str>,
    /// A digest of the fields above, for the metrics' series maps.
    digest: u64,
}

impl Hash for PeerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// The first of `keys` set in `labels`.
fn first<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A digest of `parts` (stable within the process).
fn digest(parts: &[&str]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x6d65_7368).build_hasher();
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl PeerLabels {
    /// The labels of a workload named `name` (`None`: not known) in `namespace`, with
    /// `labels` and SPIFFE ID `principal`, in `cluster`.
    pub fn new(
        name: Option<&str>,
        namespace: &str,
        labels: &Labels,
        principal: &str,
        cluster: &str,
    ) -> Self {
        let workload = first(labels, &[WORKLOAD_NAME_LABEL])
            .or(name.filter(|n| !n.is_empty()))
            .unwrap_or(UNKNOWN);
        let canonical_service = first(
            labels,
            &[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ],
        )
        .unwrap_or(workload);
        let canonical_revision = first(
            labels,
            &[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ],
        )
        .unwrap_or("latest");
        let app = first(labels, &["app", "app.kubernetes.io/name"]).unwrap_or(UNKNOWN);
        let version = first(labels, &["version", "app.kubernetes.io/version"]).unwrap_or(UNKNOWN);
        let namespace = if namespace.is_empty() {
            UNKNOWN
        } else {
            namespace
        };
        PeerLabels::from_parts([
            workload,
            canonical_service,
            canonical_revision,
            namespace,
            app,
            version,
            cluster,
            principal,
        ])
    }

    /// The labels of a caller nothing is known of but its verified `principal`.
    pub fn unknown_with_principal(principal: &str) -> Self {
        let mut p = [UNKNOWN; 8];
        p[7] = principal;
        PeerLabels::from_parts(p)
    }

    fn from_parts(p: [&str; 8]) -> Self {
        PeerLabels {
            digest: digest(&p),
            workload: p[0].into(),
            canonical_service: p[1].into(),
            canonical_revision: p[2].into(),
            namespace: p[3].into(),
            app: p[4].into(),
            version: p[5].into(),
            cluster: p[6].into(),
            principal: p[7].into(),
        }
    }

    /// A peer nothing is known of: every label `unknown`.
    pub fn unknown() -> Self {
        PeerLabels::from_parts([UNKNOWN; 8])
    }

    /// The labels of `workload`, whose SPIFFE ID in `trust_domain` is its principal.
    pub fn of_workload(workload: &crate::Workload, trust_domain: &str) -> Self {
        PeerLabels::new(
            Some(&workload.name),
            &workload.namespace,
            &workload.labels,
            &workload.spiffe_id(trust_domain),
            DEFAULT_CLUSTER_ID,
        )
    }

    /// The labels of a registry endpoint: a WorkloadEntry's are its name's, an inline
    /// endpoint has no workload name.
    pub fn of_endpoint(e: &mesh_config::registry::Endpoint, trust_domain: &str) -> Self {
        PeerLabels::new(
            e.workload.as_ref().map(|k| k.name.as_str()),
            &e.namespace,
            &e.labels,
            &e.spiffe_id(trust_domain),
            DEFAULT_CLUSTER_ID,
        )
    }

    /// The peer metadata a client sends, in Istio's baggage format: the keys Istio's
    /// peer metadata filter writes.
    pub fn baggage(&self) -> String {
        format!(
            "k8s.deployment.name={},k8s.namespace.name={},service.name={},service.version={},app.name={},app.version={},k8s.cluster.name={}",
            self.workload,
            self.namespace,
            self.canonical_service,
            self.canonical_revision,
            self.app,
            self.version,
            self.cluster
        )
    }
}

/// The workload a request's baggage names: `(name, namespace)` from Istio's keys
/// `k8s.deployment.name` and `k8s.namespace.name` (the last of each wins, as the mesh
/// appends its own members to an application's); `None` without both.
pub fn baggage_peer(value: &str) -> Option<(&str, &str)> {
    let mut name = None;
    let mut namespace = None;
    for member in value.split(',') {
        // A member is `key=value` optionally followed by `;properties`, with optional
        // ASCII whitespace around each part.
        let member = member
            .find(';')
            .map_or(member, |i| member.get(..i).unwrap_or(""));
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        match k.trim_ascii() {
            "k8s.deployment.name" => name = Some(v.trim_ascii()),
            "k8s.namespace.name" => namespace = Some(v.trim_ascii()),
            _ => {}
        }
    }
    match (name, namespace) {
        (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => Some((n, ns)),
        _ => None,
    }
}

/// The service a request is for, as Istio's metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLabels {
    /// `destination_service`: the host (`reviews.default.svc.cluster.local`).
    pub host: Box<str>,
    /// `destination_service_name`: the Kubernetes service's name for a
    /// `NAME.NAMESPACE.svc.…` host, else the host.
    pub name: Box<str>,
    /// `destination_service_namespace`: the namespace of such a host, else the
    /// ServiceEntry's.
    pub namespace: Box<str>,
    digest: u64,
}

impl Hash for ServiceLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

impl ServiceLabels {
    /// The labels of `host`, declared in `namespace` (a ServiceEntry's).
    pub fn new(host: &str, namespace: &str) -> Self {
        let mut parts = host.splitn(4, '.');
        let (name, ns) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(ns), Some("svc")) if !n.is_empty() && !ns.is_empty() => (n, ns),
            _ => (host, namespace),
        };
        let ns = if ns.is_empty() { UNKNOWN } else { ns };
        ServiceLabels::of_parts(host, name, ns)
    }

    /// A service nothing is known of.
    pub fn unknown() -> Self {
        ServiceLabels::of_parts(UNKNOWN, UNKNOWN, UNKNOWN)
    }

    /// A host outside the registry, forwarded as it is: Istio's `PassthroughCluster` as
    /// the service's name (the host is not a label: any request could make a new one).
    pub fn passthrough() -> Self {
        ServiceLabels::of_parts(UNKNOWN, "PassthroughCluster", UNKNOWN)
    }

    fn of_parts(host: &str, name: &str, namespace: &str) -> Self {
        ServiceLabels {
            digest: digest(&[host, name, namespace]),
            host: host.into(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// The workloads of one name, by namespace.
type ByNamespace = Vec<(Box<str>, Arc<PeerLabels>)>;

/// A persistent hash map (hashed with foldhash): copied in O(1), changed in O(log n).
type Persistent<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// The workloads of the configuration (its WorkloadEntries), by name and namespace: the
/// callers a server can name from their baggage. Its maps are persistent, so that an
/// endpoint change ([`PeerIndex::with_services`]) copies only what it changes.
#[derive(Debug, Default, Clone)]
pub struct PeerIndex {
    /// By the exact baggage the mesh's clients send (the common case: one lookup).
    by_baggage: Persistent<Box<[u8]>, Arc<PeerLabels>>,
    /// By name, then namespace.
    by_name: Persistent<Box<str>, ByNamespace>,
    len: usize,
}

impl PeerIndex {
    /// The index of the WorkloadEntries behind `registry`'s services.
    pub fn build(registry: &mesh_config::registry::Registry, trust_domain: &str) -> Self {
        Self::build_with(registry, trust_domain, |_, _| None)
    }

    /// [`PeerIndex::build`], taking the labels of endpoint `i` of a service from
    /// `made(service, i)` when it has them (the clusters made them already).
    pub fn build_with(
        registry: &mesh_config::registry::Registry,
        trust_domain: &str,
        made: impl Fn(&Arc<mesh_config::Service>, usize) -> Option<Arc<PeerLabels>>,
    ) -> Self {
        let mut index = PeerIndex::default();
        for service in registry.services() {
            for (i, e) in service.endpoints.iter().enumerate() {
                let Some(key) = &e.workload else {
                    continue;
                };
                if index.get(&key.name, &key.namespace).is_none() {
                    let peer = made(service, i)
                        .unwrap_or_else(|| Arc::new(PeerLabels::of_endpoint(e, trust_domain)));
                    index.add_peer(key, peer);
                }
            }
        }
        index
    }

    /// Adds the workload of endpoint `e` (one from a WorkloadEntry).
    fn add(&mut self, e: &mesh_config::registry::Endpoint, trust_domain: &str) {
        let Some(key) = &e.workload else {
            return;
        };
        self.add_peer(key, Arc::new(PeerLabels::of_endpoint(e, trust_domain)));
    }

    /// Adds workload `key` with its labels `peer`.
    fn add_peer(&mut self, key: &mesh_config::model::ResourceKey, peer: Arc<PeerLabels>) {
        self.by_baggage
            .insert(peer.baggage().into_bytes().into(), peer.clone());
        let mut entries = self
            .by_name
            .get(key.name.as_str())
            .cloned()
            .unwrap_or_default();
        entries.push((key.namespace.as_str().into(), peer));
        self.by_name.insert(key.name.as_str().into(), entries);
        self.len += 1;
    }

    /// Removes the workload `name` of `namespace`.
    fn remove(&mut self, name: &str, namespace: &str) {
        let Some(entries) = self.by_name.get(name) else {
            return;
        };
        let mut entries = entries.clone();
        let Some(at) = entries.iter().position(|(ns, _)| &**ns == namespace) else {
            return;
        };
        let (_, peer) = entries.remove(at);
        self.by_baggage.remove(peer.baggage().as_bytes());
        if entries.is_empty() {
            self.by_name.remove(name);
        } else {
            self.by_name.insert(name.into(), entries);
        }
        self.len -= 1;
    }

    /// The index after the endpoints of `registry`'s services `changed` changed (see
    /// [`mesh_config::registry::Registry::with_workloads`]; `before` is the registry
    /// `self` was built from): the workloads of those services' endpoints, before and
    /// after, are looked up again; all others are shared. A workload whose entry changed
    /// is an endpoint of changed services only, and every endpoint of one entry is the
    /// same, so the first among the changed services is the one [`PeerIndex::build`]
    /// would find.
    pub fn with_services(
        &self,
        registry: &mesh_config::registry::Registry,
        changed: &[usize],
        before: &mesh_config::registry::Registry,
        trust_domain: &str,
    ) -> Self {
        type First<'a> = std::collections::BTreeMap<
            &'a mesh_config::model::ResourceKey,
            &'a mesh_config::registry::Endpoint,
        >;
        // Each workload's first endpoint among the changed services, before and after.
        fn first<'a>(r: &'a mesh_config::registry::Registry, changed: &[usize]) -> First<'a> {
            let mut out = First::new();
            for s in changed.iter().filter_map(|&i| r.services().get(i)) {
                for e in s.endpoints.iter() {
                    if let Some(k) = &e.workload {
                        out.entry(k).or_insert(e);
                    }
                }
            }
            out
        }
        let (old, new) = (first(before, changed), first(registry, changed));
        let mut next = self.clone();
        for (key, was) in &old {
            if new.get(key) != Some(was) {
                next.remove(&key.name, &key.namespace);
            }
        }
        for (key, is) in &new {
            if old.get(key) != Some(is) {
                next.remove(&key.name, &key.namespace);
                next.add(is, trust_domain);
            }
        }
        next
    }

    /// The workload `name` in `namespace`, when the configuration has it.
    pub fn get(&self, name: &str, namespace: &str) -> Option<&Arc<PeerLabels>> {
        self.by_name
            .get(name)?
            .iter()
            .find(|(ns, _)| &**ns == namespace)
            .map(|(_, p)| p)
    }

    /// The workload whose baggage is exactly `value` (what the mesh's clients send).
    pub fn by_baggage(&self, value: &[u8]) -> Option<&Arc<PeerLabels>> {
        self.by_baggage.get(value)
    }

    /// How many workloads it knows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it knows none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Istio's labels of its request metrics, in the order its proxies write them.
pub const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The Telemetry API's metrics provider the mesh reports to (Prometheus' text on
/// `/stats/prometheus`, Istio's default provider).
pub const PROMETHEUS_PROVIDER: &str = "prometheus";

/// The request metrics, as the Telemetry API names them: the first four of
/// [`MetricProfile::shapes`].
pub const REQUEST_METRICS: [IstioMetric; 4] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
];

/// The gRPC message counts (`istio_request_messages_total`,
/// `istio_response_messages_total`), as the Telemetry API names them: the last two of
/// [`MetricProfile::shapes`].
pub const GRPC_METRICS: [IstioMetric; 2] = [
    IstioMetric::GrpcRequestMessages,
    IstioMetric::GrpcResponseMessages,
];

/// Every metric a [`MetricProfile`] shapes, in the order of its shapes:
/// [`REQUEST_METRICS`], then [`GRPC_METRICS`].
pub const PROFILE_METRICS: [IstioMetric; 6] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
    IstioMetric::GrpcRequestMessages,
    IstioMetric::GrpcResponseMessages,
];

/// How many of [`ISTIO_LABELS`] the gRPC message counts carry: the first 20, from
/// `reporter` to `destination_cluster` — the two ends and the service, not the outcome.
/// Istio's proxies report the counts while a stream is open, before its outcome is
/// known, so a tag override of one of the other five changes nothing on them.
pub const GRPC_LABELS: usize = 20;

/// The shape of one metric for one side of a workload: reported or not, and its labels
/// after the Telemetry API's `tagOverrides`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricShape {
    /// The metric is reported.
    pub enabled: bool,
    /// Istio labels removed (bit `i`: [`ISTIO_LABELS`]`[i]`).
    pub removed: u32,
    /// Istio labels whose value is replaced, by index, with the value.
    pub replaced: Vec<(usize, Box<str>)>,
    /// Labels added after Istio's, with their values.
    pub added: Vec<(Box<str>, Box<str>)>,
}

impl Default for MetricShape {
    fn default() -> Self {
        MetricShape {
            enabled: true,
            removed: 0,
            replaced: Vec::new(),
            added: Vec::new(),
        }
    }
}

/// How one side of a workload reports its request metrics (the Telemetry API's
/// `metrics` for the Prometheus provider, merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricProfile {
    /// `istio_requests_total`, `istio_request_duration_milliseconds`,
    /// `istio_request_bytes`, `istio_response_bytes`, `istio_request_messages_total`,
    /// `istio_response_messages_total`, in the order of [`PROFILE_METRICS`].
    pub shapes: [MetricShape; 6],
    digest: u64,
}

impl Hash for MetricProfile {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

impl Default for MetricProfile {
    fn default() -> Self {
        MetricProfile::new(Default::default())
    }
}

impl MetricProfile {
    fn new(shapes: [MetricShape; 6]) -> Self {
        MetricProfile {
            digest: foldhash::fast::FixedState::with_seed(0x7072_6f66).hash_one(&shapes),
            shapes,
        }
    }

    /// Every metric with Istio's labels (no Telemetry changes them).
    pub fn standard() -> Self {
        MetricProfile::default()
    }

    /// True when it reports a gRPC message count (either of [`GRPC_METRICS`]): only
    /// then are a gRPC request's messages counted.
    pub fn counts_messages(&self) -> bool {
        self.shapes
            .get(REQUEST_METRICS.len()..)
            .is_some_and(|grpc| grpc.iter().any(|s| s.enabled))
    }

    /// The profile of one side, `None` when it reports nothing: the Prometheus provider
    /// is not configured, or the side's metrics are all disabled.
    pub fn of(
        metrics: &std::collections::BTreeMap<String, MetricsConfig>,
        mode: WorkloadMode,
    ) -> Option<Self> {
        let side = metrics.get(PROMETHEUS_PROVIDER)?.side(mode);
        if side.disabled {
            return None;
        }
        let shapes = PROFILE_METRICS.map(|m| {
            let Some(o) = side.override_for(m.as_str()) else {
                return MetricShape::default();
            };
            let mut shape = MetricShape {
                enabled: !o.disabled,
                ..MetricShape::default()
            };
            for (tag, change) in &o.tags {
                let index = ISTIO_LABELS.iter().position(|l| l == tag);
                match (change, index) {
                    (TagChange::Remove, Some(i)) => shape.removed |= 1 << i,
                    (TagChange::Remove, None) => {}
                    (TagChange::Upsert(e), Some(i)) => shape.replaced.push((
                        i,
                        mesh_config::model::telemetry::string_literal(e)
                            .unwrap_or(UNKNOWN)
                            .into(),
                    )),
                    (TagChange::Upsert(e), None) => shape.added.push((
                        tag.as_str().into(),
                        mesh_config::model::telemetry::string_literal(e)
                            .unwrap_or(UNKNOWN)
                            .into(),
                    )),
                }
            }
            shape
        });
        if shapes.iter().all(|s| !s.enabled) {
            return None;
        }
        Some(MetricProfile::new(shapes))
    }
}

/// The Telemetry API's access log provider the mesh writes: Istio's built-in `envoy`
/// (Istio's default format, the MeshConfig's `accessLogEncoding`).
pub const ENVOY_LOG_PROVIDER: &str = "envoy";

/// How one side of a workload writes access logs.
#[derive(Debug, Clone)]
pub struct AccessLogSettings {
    /// Text or JSON.
    pub encoding: mesh_config::model::AccessLogEncoding,
    /// Only requests it matches are logged (the Telemetry's `filter`, compiled once);
    /// a filter Envoy's runtime would not build logs nothing (validation warns).
    pub filter: Option<Filter>,
}

/// A side's access log filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// The compiled expression.
    Cel(Arc<mesh_config::cel::Filter>),
    /// An expression that does not compile: nothing is logged.
    Invalid,
}

impl AccessLogSettings {
    /// The access logs of side `mode`: on when a Telemetry turns the `envoy` provider on
    /// for it, or — when no Telemetry configures access logging — when the MeshConfig
    /// sets `accessLogFile`, as Istio's proxies do.
    pub fn of(
        effective: &EffectiveTelemetry,
        settings: &mesh_config::model::MeshSettings,
        mode: WorkloadMode,
    ) -> Option<Self> {
        let on = match &effective.access_logging {
            Some(logging) => logging.logs(mode, ENVOY_LOG_PROVIDER),
            None => !settings.access_log_file.is_empty(),
        };
        let filter = effective
            .access_logging
            .as_ref()
            .and_then(|l| l.side(mode).get(ENVOY_LOG_PROVIDER))
            .and_then(|spec| spec.filter.as_ref())
            .map(|f| match mesh_config::cel::Filter::compile(&f.expression) {
                Ok(compiled) => Filter::Cel(Arc::new(compiled)),
                Err(_) => Filter::Invalid,
            });
        on.then_some(AccessLogSettings {
            encoding: settings.access_log_encoding,
            filter,
        })
    }
}

/// Where a span tag's value comes from (the Telemetry API's `customTags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanTagValue {
    /// The same value on every span (a literal, or an environment variable read when the
    /// configuration was compiled).
    Fixed(Arc<str>),
    /// A request header, or `default` when the request does not carry it (no tag without
    /// a default).
    Header {
        /// The header.
        name: http::HeaderName,
        /// The value without the header.
        default: Option<Arc<str>>,
    },
}

/// How one side of a workload traces the requests it handles (the Telemetry API's
/// `tracing`, merged; the mesh's defaults when no Telemetry configures tracing).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Spans are reported (a provider is set and `disableSpanReporting` is not).
    pub report: bool,
    /// The sampling rule: `randomSamplingPercentage` (Istio's default 1 %) and
    /// `useRequestIdForTraceSampling`.
    pub sampler: crate::trace::Sampler,
    /// Tags added to every span, sorted by name.
    pub custom_tags: Vec<(&'static str, SpanTagValue)>,
    /// Istio's own tags (`istio.canonical_service`, …) are added.
    pub istio_tags: bool,
    /// The trace context is written on forwarded requests.
    pub propagate: bool,
}

impl Default for TraceSettings {
    /// The mesh's own tracing, without a Telemetry: reported, 1 % sampled.
    fn default() -> Self {
        TraceSettings {
            report: true,
            sampler: crate::trace::Sampler::default(),
            custom_tags: Vec::new(),
            istio_tags: true,
            propagate: true,
        }
    }
}

impl TraceSettings {
    /// The tracing of side `mode`; environment variables of `customTags` are read through
    /// `env`. Any provider name stands for the process's OTLP exporter (see the README);
    /// a side without a provider reports nothing. `formatter` tags are not applied (the
    /// validator reports them).
    pub fn of(
        effective: &EffectiveTelemetry,
        mode: WorkloadMode,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let Some(config) = &effective.tracing else {
            return TraceSettings::default();
        };
        let spec = config.side(mode);
        let sampler = crate::trace::Sampler::new(
            spec.random_sampling_percentage
                .unwrap_or(crate::trace::DEFAULT_RANDOM_SAMPLING_PERCENTAGE),
        )
        .use_request_id(spec.use_request_id_for_trace_sampling);
        let custom_tags = spec
            .custom_tags
            .iter()
            .filter_map(|(name, tag)| {
                let value = if let Some(l) = &tag.literal {
                    SpanTagValue::Fixed(Arc::from(l.value.as_str()))
                } else if let Some(e) = &tag.environment {
                    SpanTagValue::Fixed(Arc::from(
                        env(&e.name).or_else(|| e.default_value.clone())?.as_str(),
                    ))
                } else if let Some(h) = &tag.header {
                    SpanTagValue::Header {
                        name: http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                            .ok()?,
                        default: h.default_value.as_deref().map(Arc::from),
                    }
                } else {
                    return None;
                };
                Some((intern(name), value))
            })
            .collect();
        TraceSettings {
            report: !spec.disabled,
            sampler,
            custom_tags,
            istio_tags: spec.enable_istio_tags,
            propagate: !spec.disable_context_propagation,
        }
    }
}

/// What a workload's telemetry needs, picked once per configuration: its own labels
/// (as the source of its requests and the destination of those it serves), the baggage
/// its requests carry, and the services it serves.
#[derive(Debug, Clone)]
pub struct WorkloadTelemetry {
    /// Its labels.
    pub me: Arc<PeerLabels>,
    /// How the requests it sends are reported (`None`: not at all).
    pub client_metrics: Option<Arc<MetricProfile>>,
    /// How the requests it serves are reported (`None`: not at all).
    pub server_metrics: Option<Arc<MetricProfile>>,
    /// Whether and how the requests it sends are logged (`None`: not at all).
    pub client_log: Option<Arc<AccessLogSettings>>,
    /// Whether and how the requests it serves are logged (`None`: not at all).
    pub server_log: Option<Arc<AccessLogSettings>>,
    /// How the requests it sends are traced.
    pub client_trace: Arc<TraceSettings>,
    /// How the requests it serves are traced.
    pub server_trace: Arc<TraceSettings>,
    /// Its Telemetry configuration, merged.
    pub effective: EffectiveTelemetry,
    /// The `baggage` of its outbound requests.
    pub baggage: http::HeaderValue,
    /// The services it serves: those whose endpoints include its WorkloadEntry.
    pub services: Vec<Arc<ServiceLabels>>,
}

/// `value` as a header value with a `'static` buffer, interned: cloning it per request
/// then touches no shared reference count. The distinct values are bounded by the
/// workloads (and label values) a process has seen; past [`MAX_INTERNED`] of them, or for a
/// value `from_static` would refuse (anything but visible ASCII), the value is an ordinary
/// shared one. A value no header can hold gives an empty one.
fn static_header_value(value: String) -> http::HeaderValue {
    let visible = value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    match visible
        .then(|| interned(&value, Some(MAX_INTERNED)))
        .flatten()
    {
        // Checked above: visible ASCII only, so `from_static` cannot panic.
        Some(v) => http::HeaderValue::from_static(v),
        None => http::HeaderValue::from_str(&value)
            .unwrap_or_else(|_| http::HeaderValue::from_static("")),
    }
}

/// `value` with the `'static` lifetime span attribute names take, interned once per
/// process: for names from configuration (custom span tag names), which are few.
pub fn intern(value: &str) -> &'static str {
    interned(value, None).unwrap_or_default()
}

/// The process's interned copy of `value`, made on first sight unless `bound` strings are
/// interned already (`None`: no bound).
fn interned(value: &str, bound: Option<usize>) -> Option<&'static str> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static INTERNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(v) = set.get(value) {
        return Some(v);
    }
    if bound.is_some_and(|b| set.len() >= b) {
        return None;
    }
    let leaked: &'static str = Box::leak(value.to_string().into_boxed_str());
    set.insert(leaked);
    Some(leaked)
}

/// How many distinct baggage values [`static_header_value`] keeps for the process's life.
const MAX_INTERNED: usize = 4096;

impl WorkloadTelemetry {
    /// The telemetry of `workload` in `mesh`.
    pub fn of(mesh: &crate::CompiledMesh, workload: &crate::Workload) -> Self {
        let trust_domain = &mesh.settings().trust_domain;
        let me = PeerLabels::of_workload(workload, trust_domain);
        let baggage = static_header_value(me.baggage());
        let services = mesh
            .registry()
            .services_of_workload(&workload.namespace, &workload.name)
            .into_iter()
            .map(|s| Arc::new(ServiceLabels::new(&s.host, &s.namespace)))
            .collect();
        let effective = EffectiveTelemetry::resolve(
            mesh.telemetries(),
            &mesh.settings().root_namespace,
            &workload.namespace,
            &workload.labels,
            &DefaultProviders::installed(),
        );
        let side = |mode| MetricProfile::of(&effective.metrics, mode).map(Arc::new);
        let log = |mode| AccessLogSettings::of(&effective, mesh.settings(), mode).map(Arc::new);
        let env = |name: &str| std::env::var(name).ok();
        let trace = |mode| Arc::new(TraceSettings::of(&effective, mode, &env));
        WorkloadTelemetry {
            client_trace: trace(WorkloadMode::Client),
            server_trace: trace(WorkloadMode::Server),
            client_log: log(WorkloadMode::Client),
            server_log: log(WorkloadMode::Server),
            client_metrics: side(WorkloadMode::Client),
            server_metrics: side(WorkloadMode::Server),
            effective,
            me: Arc::new(me),
            baggage,
            services,
        }
    }

    /// The service a request for `authority` (`Host`, `:authority`) arriving at the
    /// workload is for: the only one it serves, else the one the authority names (its
    /// host, or its short name as Kubernetes DNS resolves it), else the first; `None`
    /// when it serves none the configuration knows.
    pub fn service_for(&self, authority: &str) -> Option<&Arc<ServiceLabels>> {
        if self.services.len() <= 1 {
            return self.services.first();
        }
        let host = crate::route::split_authority(authority).0;
        self.services
            .iter()
            .find(|s| {
                &*s.host == host
                    || s.host
                        .strip_prefix(host)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .or_else(|| self.services.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn peer_labels_follow_istios_fallbacks() {
        // (name, labels) → (workload, canonical service, canonical revision, app, version)
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], [&'a str; 5]);
        let cases: &[Case<'_>] = &[
            (
                Some("reviews-v2"),
                &[("app", "reviews"), ("version", "v2")],
                ["reviews-v2", "reviews", "v2", "reviews", "v2"],
            ),
            (
                Some("reviews-v2"),
                &[],
                ["reviews-v2", "reviews-v2", "latest", "unknown", "unknown"],
            ),
            (
                None,
                &[],
                ["unknown", "unknown", "latest", "unknown", "unknown"],
            ),
            (
                Some("x"),
                &[
                    ("app.kubernetes.io/name", "shop"),
                    ("app.kubernetes.io/version", "1.2"),
                ],
                ["x", "shop", "1.2", "shop", "1.2"],
            ),
            (
                Some("x"),
                &[
                    ("service.istio.io/canonical-name", "cart"),
                    ("service.istio.io/canonical-revision", "r7"),
                    ("app", "shop"),
                    ("version", "v1"),
                ],
                ["x", "cart", "r7", "shop", "v1"],
            ),
            (
                Some("entry-10-0-0-1"),
                &[(WORKLOAD_NAME_LABEL, "vm-group"), ("app", "legacy")],
                ["vm-group", "legacy", "latest", "legacy", "unknown"],
            ),
        ];
        for (name, l, want) in cases {
            let p = PeerLabels::new(*name, "default", &labels(l), "spiffe://x", "Kubernetes");
            let got = [
                &*p.workload,
                &*p.canonical_service,
                &*p.canonical_revision,
                &*p.app,
                &*p.version,
            ];
            assert_eq!(got, *want, "{name:?} {l:?}");
            assert_eq!(&*p.namespace, "default");
        }
    }

    #[test]
    fn equal_labels_hash_alike_and_different_ones_differ() {
        let l = labels(&[("app", "reviews"), ("version", "v1")]);
        let a = PeerLabels::new(Some("reviews-v1"), "default", &l, "p", "c");
        let b = PeerLabels::new(Some("reviews-v1"), "default", &l, "p", "c");
        let c = PeerLabels::new(Some("reviews-v1"), "other", &l, "p", "c");
        assert_eq!(a, b);
        assert_eq!(a.digest, b.digest);
        assert_ne!(a, c);
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn service_labels_split_kubernetes_hosts_only() {
        let cases = [
            (
                "reviews.default.svc.cluster.local",
                "x",
                "reviews",
                "default",
            ),
            ("ratings.prod.svc", "x", "ratings", "prod"),
            ("httpbin.org", "egress", "httpbin.org", "egress"),
            ("a.b.c.d", "ns", "a.b.c.d", "ns"),
            ("*.example.com", "ns", "*.example.com", "ns"),
        ];
        for (host, ns, name, want_ns) in cases {
            let s = ServiceLabels::new(host, ns);
            assert_eq!((&*s.host, &*s.name, &*s.namespace), (host, name, want_ns));
        }
    }

    #[test]
    fn baggage_values_of_any_label_never_panic() {
        for value in [
            "app=caf\u{e9}",
            "k8s.deployment.name=a,b",
            "tab\there",
            "\u{7f}",
        ] {
            let v = static_header_value(value.to_string());
            if value.is_ascii() && !value.contains('\u{7f}') {
                assert_eq!(v.as_bytes(), value.as_bytes());
            }
        }
    }

    #[test]
    fn baggage_round_trips_and_tolerates_other_members() {
        let p = PeerLabels::new(
            Some("productpage-v1"),
            "default",
            &labels(&[("app", "productpage"), ("version", "v1")]),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            DEFAULT_CLUSTER_ID,
        );
        let b = p.baggage();
        assert_eq!(
            b,
            "k8s.deployment.name=productpage-v1,k8s.namespace.name=default,service.name=productpage,service.version=v1,app.name=productpage,app.version=v1,k8s.cluster.name=Kubernetes"
        );
        assert_eq!(baggage_peer(&b), Some(("productpage-v1", "default")));
        let cases = [
            (
                "userId=alice, k8s.deployment.name=a;p=1 ,k8s.namespace.name=ns",
                Some(("a", "ns")),
            ),
            ("k8s.deployment.name=a", None),
            ("k8s.namespace.name=ns", None),
            ("k8s.deployment.name=,k8s.namespace.name=ns", None),
            (
                "k8s.deployment.name=a,k8s.namespace.name=ns,k8s.deployment.name=b",
                Some(("b", "ns")),
            ),
            ("garbage,,=,", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(baggage_peer(value), want, "{value}");
        }
    }

    /// The metric profiles of `workload` under the Telemetries of `yaml`.
    fn profiles(
        yaml: &str,
        workload: &crate::Workload,
    ) -> (Option<Arc<MetricProfile>>, Option<Arc<MetricProfile>>) {
        let snapshot = crate::test_support::snapshot(yaml);
        let mesh = crate::CompiledMesh::compile(&snapshot);
        let t = WorkloadTelemetry::of(&mesh, workload);
        (t.client_metrics, t.server_metrics)
    }

    fn reviews() -> crate::Workload {
        crate::Workload::new("reviews-v1", "default").labels([("app", "reviews")])
    }

    #[test]
    fn the_telemetry_api_shapes_each_side_and_metric() {
        let standard = Some(Arc::new(MetricProfile::standard()));
        // No Telemetry: Istio's default provider reports everything on both sides.
        assert_eq!(
            profiles("", &reviews()),
            (standard.clone(), standard.clone())
        );

        let mesh_wide = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        response_code: {value: "'any'"}
        mesh: {value: "'mesh-rs'"}
        host: {value: request.host}
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
"#;
        let (client, server) = profiles(mesh_wide, &reviews());
        let (client, server) = (client.unwrap(), server.unwrap());
        let count = &client.shapes[0];
        let protocol = ISTIO_LABELS
            .iter()
            .position(|l| *l == "request_protocol")
            .unwrap();
        let code = ISTIO_LABELS
            .iter()
            .position(|l| *l == "response_code")
            .unwrap();
        assert!(count.enabled);
        assert_eq!(count.removed, 1 << protocol);
        assert_eq!(count.replaced, vec![(code, "any".into())]);
        assert_eq!(
            count.added,
            vec![
                ("host".into(), "unknown".into()),
                ("mesh".into(), "mesh-rs".into())
            ]
        );
        // The other metrics keep Istio's labels; the duration is off on the server side only.
        assert_eq!(client.shapes[1], MetricShape::default());
        assert_eq!(server.shapes[0], *count);
        assert!(!server.shapes[1].enabled);
        assert!(server.shapes[2].enabled && server.shapes[3].enabled);
        assert_ne!(client, server);

        // A workload's own Telemetry turns its server side off; another provider only
        // reports nothing to Prometheus.
        let details_off = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - match: {mode: SERVER}
      disabled: true
"#;
        let (client, server) = profiles(details_off, &reviews());
        assert_eq!((client, server), (standard.clone(), None));
        let other = crate::Workload::new("ratings-v1", "default").labels([("app", "ratings")]);
        assert_eq!(profiles(details_off, &other), (standard.clone(), standard));
        let elsewhere = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: stackdriver}]
"#;
        assert_eq!(profiles(elsewhere, &reviews()), (None, None));
    }

    #[test]
    fn the_grpc_message_counts_are_shaped_and_disabled_like_the_others() {
        let grpc = REQUEST_METRICS.len();
        assert_eq!(PROFILE_METRICS[..grpc], REQUEST_METRICS);
        assert_eq!(PROFILE_METRICS[grpc..], GRPC_METRICS);
        assert_eq!(ISTIO_LABELS[GRPC_LABELS - 1], "destination_cluster");
        assert!(MetricProfile::standard().counts_messages());

        // (Telemetry, client side: request messages / response messages enabled,
        // server side: the same; whether each side counts messages at all)
        type Case<'a> = (&'a str, [bool; 2], [bool; 2], [Option<bool>; 2]);
        let header = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  metrics:\n  - overrides:\n";
        let cases: &[Case<'_>] = &[
            ("", [true, true], [true, true], [Some(true), Some(true)]),
            (
                "    - match: {metric: GRPC_REQUEST_MESSAGES, mode: CLIENT}\n      disabled: true\n",
                [false, true],
                [true, true],
                [Some(true), Some(true)],
            ),
            (
                "    - match: {metric: GRPC_RESPONSE_MESSAGES, mode: SERVER}\n      disabled: true\n    - match: {metric: GRPC_REQUEST_MESSAGES, mode: SERVER}\n      disabled: true\n",
                [true, true],
                [false, false],
                [Some(true), Some(false)],
            ),
            // ALL_METRICS covers them.
            (
                "    - match: {metric: ALL_METRICS, mode: SERVER}\n      disabled: true\n",
                [true, true],
                [false, false],
                [Some(true), None],
            ),
            // Only the request metrics off: the side still reports (its message counts).
            (
                "    - match: {metric: REQUEST_COUNT}\n      disabled: true\n    - match: {metric: REQUEST_DURATION}\n      disabled: true\n    - match: {metric: REQUEST_SIZE}\n      disabled: true\n    - match: {metric: RESPONSE_SIZE}\n      disabled: true\n",
                [true, true],
                [true, true],
                [Some(true), Some(true)],
            ),
        ];
        for (overrides, client_on, server_on, counts) in cases {
            let yaml = if overrides.is_empty() {
                String::new()
            } else {
                format!("{header}{overrides}")
            };
            let (client, server) = profiles(&yaml, &reviews());
            for (side, on, count) in [
                (&client, client_on, counts[0]),
                (&server, server_on, counts[1]),
            ] {
                let enabled = side
                    .as_ref()
                    .map(|p| [p.shapes[grpc].enabled, p.shapes[grpc + 1].enabled]);
                assert_eq!(enabled.unwrap_or([false, false]), *on, "{overrides}");
                assert_eq!(
                    side.as_ref().map(|p| p.counts_messages()),
                    count,
                    "{overrides}"
                );
            }
        }

        // Tags: removed, replaced and added per message metric, as for the others.
        let tagged = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: GRPC_RESPONSE_MESSAGES}
      tagOverrides:
        source_app: {operation: REMOVE}
        destination_version: {value: "'any'"}
        stream: {value: "'yes'"}
"#;
        let (client, _) = profiles(tagged, &reviews());
        let client = client.unwrap();
        let at = |name: &str| ISTIO_LABELS.iter().position(|l| *l == name).unwrap();
        assert_eq!(client.shapes[grpc], MetricShape::default());
        let response = &client.shapes[grpc + 1];
        assert_eq!(response.removed, 1 << at("source_app"));
        assert_eq!(
            response.replaced,
            vec![(at("destination_version"), "any".into())]
        );
        assert_eq!(response.added, vec![("stream".into(), "yes".into())]);
    }
}
