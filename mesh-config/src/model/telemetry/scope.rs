//! Which Telemetries apply to a workload, and the configuration they make together.
//!
//! Istio's control plane (`pilot/pkg/model/telemetry.go`) takes, in this order, the
//! mesh-wide Telemetry (the first one without a selector in the root namespace), the
//! namespace-wide one (the first one without a selector in the workload's namespace) and
//! every Telemetry of the workload's namespace that selects it, in creation order; the
//! load order stands for the creation order here. It then merges their lists — later
//! entries, the more specific ones, override earlier ones field by field:
//!
//! - tracing: each entry sets, for the sides it matches, the fields it writes (the first
//!   provider, sampling, span reporting, custom tags as a whole, ...); a side left without
//!   a provider is disabled;
//! - metrics: the providers of the most specific entry that names any are the ones
//!   configured; overrides of each metric accumulate (`disabled` and each tag replaced
//!   by later ones), and `ALL_METRICS` disabled drops a side's metrics until a later
//!   override of that side turns metrics back on;
//! - access logging: the providers of the most specific level that names any are the ones
//!   configured; an entry without providers applies to its predecessor's; the last entry
//!   matching a side decides whether a provider logs, with the filter given last with
//!   the provider.
//!
//! These functions are pure: they take the Telemetries and the workload and return plain
//! data, once per configuration and workload, never per request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{AccessLogFilter, AccessLogging, CustomTag, IstioMetric, Telemetry, WorkloadMode};
use super::{Metrics, MetricsOverrides, TagOperation, TagOverride, Tracing};
use crate::duration::Duration;
use crate::model::{Labels, Resource};
use crate::registry::selects;

/// The label naming the Gateway API `Gateway` a workload is an instance of; such a
/// workload is selected by `targetRefs` to its gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The API group of Gateway API resources.
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// The Telemetries that apply to one workload, least specific first.
#[derive(Debug, Clone, Default)]
pub struct Applicable<'a> {
    /// The mesh-wide Telemetry: the first without a selector in the root namespace.
    pub root: Option<&'a Arc<Resource<Telemetry>>>,
    /// The namespace-wide Telemetry: the first without a selector in the workload's
    /// namespace (none for a workload of the root namespace, whose namespace-wide
    /// Telemetry is the mesh-wide one).
    pub namespace: Option<&'a Arc<Resource<Telemetry>>>,
    /// The Telemetries of the workload's namespace that select it, in load order.
    pub workload: Vec<&'a Arc<Resource<Telemetry>>>,
}

impl<'a> Applicable<'a> {
    /// Every applicable Telemetry, least specific first: the order of the merge.
    pub fn iter(&self) -> impl Iterator<Item = &'a Arc<Resource<Telemetry>>> + '_ {
        self.root
            .into_iter()
            .chain(self.namespace)
            .chain(self.workload.iter().copied())
    }

    /// True when no Telemetry applies.
    pub fn is_empty(&self) -> bool {
        self.root.is_none() && self.namespace.is_none() && self.workload.is_empty()
    }
}

/// The Telemetries of `telemetries` that apply to a workload of `namespace` with
/// `labels`, `root_namespace` being the mesh's root namespace (`istio-system` unless the
/// MeshConfig says otherwise).
///
/// A Telemetry with a selector applies to the workloads of its own namespace whose labels
/// include the selector's; one with target references applies only to Gateway API
/// gateways (workloads labelled [`GATEWAY_NAME_LABEL`]) of its namespace that it
/// targets (`kind: Gateway`); a gateway is also selected by selectors, as Istio does by
/// default. A selector in the root namespace selects workloads of the root namespace
/// only.
pub fn applicable<'a>(
    telemetries: &'a [Arc<Resource<Telemetry>>],
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Applicable<'a> {
    let namespace_wide = |ns: &str| {
        telemetries
            .iter()
            .find(|t| t.namespace() == ns && t.spec.is_namespace_wide())
    };
    let root = if root_namespace.is_empty() {
        None
    } else {
        namespace_wide(root_namespace)
    };
    let own = if namespace == root_namespace {
        None
    } else {
        namespace_wide(namespace)
    };
    let workload = telemetries
        .iter()
        .filter(|t| {
            t.namespace() == namespace
                && !t.spec.is_namespace_wide()
                && attaches(&t.spec, namespace, labels)
        })
        .collect();
    Applicable {
        root,
        namespace: own,
        workload,
    }
}

/// Istio's `ShouldAttachPolicy` for a workload that is not a waypoint, the Telemetry
/// being in the workload's namespace.
fn attaches(spec: &Telemetry, namespace: &str, labels: &Labels) -> bool {
    let selected = || {
        spec.selector
            .as_ref()
            .is_none_or(|s| selects(&s.match_labels, labels))
    };
    let refs = spec.target_refs();
    match labels.get(GATEWAY_NAME_LABEL) {
        None => refs.is_empty() && selected(),
        Some(_) if refs.is_empty() => selected(),
        Some(gateway) => refs.iter().any(|r| {
            (r.namespace.is_empty() || r.namespace == namespace)
                && r.group == GATEWAY_API_GROUP
                && r.kind == "Gateway"
                && r.name == *gateway
        }),
    }
}

/// The providers used where a Telemetry names none (the MeshConfig's
/// `defaultProviders`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultProviders {
    /// Tracing providers (the first is used).
    pub tracing: Vec<String>,
    /// Metrics providers.
    pub metrics: Vec<String>,
    /// Access logging providers.
    pub access_logging: Vec<String>,
}

impl DefaultProviders {
    /// What Istio's installation configures (the chart's default values): `prometheus`
    /// for metrics, no tracing or access logging provider.
    pub fn installed() -> Self {
        DefaultProviders {
            metrics: vec!["prometheus".to_string()],
            ..DefaultProviders::default()
        }
    }
}

/// The telemetry configuration of one workload: the applicable Telemetries merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectiveTelemetry {
    /// Tracing; `None` when no Telemetry configures tracing and there is no default
    /// provider (the mesh's own tracing settings apply).
    pub tracing: Option<TracingConfig>,
    /// Metrics, by provider; empty when no provider is configured.
    pub metrics: BTreeMap<String, MetricsConfig>,
    /// Access logging; `None` when no Telemetry configures access logging and there is
    /// no default provider (the mesh's own access log settings apply).
    pub access_logging: Option<AccessLoggingConfig>,
}

/// Tracing of both sides of a workload's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Requests the workload sends.
    pub client: TracingSpec,
    /// Requests the workload serves.
    pub server: TracingSpec,
}

impl TracingConfig {
    /// The side `mode` (`Client`, or `Server`; `ClientAndServer` reads as `Client`).
    pub fn side(&self, mode: WorkloadMode) -> &TracingSpec {
        match mode {
            WorkloadMode::Server => &self.server,
            _ => &self.client,
        }
    }
}

/// Tracing of one side.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSpec {
    /// The provider; `None` leaves the side disabled.
    pub provider: Option<String>,
    /// No spans are reported (no provider, or `disableSpanReporting`).
    pub disabled: bool,
    /// Sampling percentage; `None` leaves the mesh's default.
    pub random_sampling_percentage: Option<f64>,
    /// Tags added to spans, by name.
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Sample by `x-request-id` (true unless set to false).
    pub use_request_id_for_trace_sampling: bool,
    /// Add Istio's tags (true unless set to false).
    pub enable_istio_tags: bool,
    /// Do not propagate trace context.
    pub disable_context_propagation: bool,
}

impl Default for TracingSpec {
    fn default() -> Self {
        TracingSpec {
            provider: None,
            disabled: false,
            random_sampling_percentage: None,
            custom_tags: BTreeMap::new(),
            use_request_id_for_trace_sampling: true,
            enable_istio_tags: true,
            disable_context_propagation: false,
        }
    }
}

/// The metrics of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Metrics of requests the workload sends.
    pub client: MetricConfig,
    /// Metrics of requests the workload serves.
    pub server: MetricConfig,
    /// The reporting interval, when one was set.
    pub reporting_interval: Option<Duration>,
}

impl MetricsConfig {
    /// The side `mode` (`Client`, or `Server`; `ClientAndServer` reads as `Client`).
    pub fn side(&self, mode: WorkloadMode) -> &MetricConfig {
        match mode {
            WorkloadMode::Server => &self.server,
            _ => &self.client,
        }
    }
}

/// The metrics of one side for one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricConfig {
    /// No metric is reported (`ALL_METRICS` disabled).
    pub disabled: bool,
    /// Overrides, one per metric, sorted by metric name.
    pub overrides: Vec<MetricOverride>,
}

impl MetricConfig {
    /// The override of metric `name` (an [`IstioMetric`] name such as `REQUEST_COUNT`, or
    /// a custom metric's name).
    pub fn override_for(&self, name: &str) -> Option<&MetricOverride> {
        self.overrides
            .binary_search_by(|o| o.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.overrides.get(i))
    }
}

/// The merged overrides of one metric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricOverride {
    /// The metric: an [`IstioMetric`] name (`REQUEST_COUNT`) or a custom metric's name.
    pub name: String,
    /// The metric is not reported.
    pub disabled: bool,
    /// Changed tags, by tag name.
    pub tags: BTreeMap<String, TagChange>,
}

impl MetricOverride {
    /// The standard metric, when it is one.
    pub fn istio_metric(&self) -> Option<IstioMetric> {
        IstioMetric::from_name(&self.name)
    }
}

/// What happens to one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// The tag is added or replaced, with this value expression.
    Upsert(String),
    /// The tag is removed.
    Remove,
}

/// Access logging of both sides, by provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLoggingConfig {
    /// Requests the workload sends.
    pub client: BTreeMap<String, LoggingSpec>,
    /// Requests the workload serves.
    pub server: BTreeMap<String, LoggingSpec>,
}

impl AccessLoggingConfig {
    /// The side `mode` (`Client`, or `Server`; `ClientAndServer` reads as `Client`).
    pub fn side(&self, mode: WorkloadMode) -> &BTreeMap<String, LoggingSpec> {
        match mode {
            WorkloadMode::Server => &self.server,
            _ => &self.client,
        }
    }

    /// True when `provider` writes access logs for side `mode`.
    pub fn logs(&self, mode: WorkloadMode, provider: &str) -> bool {
        self.side(mode).get(provider).is_some_and(|s| !s.disabled)
    }
}

/// Access logging of one side by one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggingSpec {
    /// Nothing is logged.
    pub disabled: bool,
    /// Only requests the filter accepts are logged.
    pub filter: Option<AccessLogFilter>,
}

impl EffectiveTelemetry {
    /// The configuration of a workload of `namespace` with `labels`: [`applicable`], then
    /// [`EffectiveTelemetry::merge`].
    pub fn resolve(
        telemetries: &[Arc<Resource<Telemetry>>],
        root_namespace: &str,
        namespace: &str,
        labels: &Labels,
        defaults: &DefaultProviders,
    ) -> Self {
        Self::merge(
            &applicable(telemetries, root_namespace, namespace, labels),
            defaults,
        )
    }

    /// Merges the applicable Telemetries as Istio does (see the module documentation).
    pub fn merge(applicable: &Applicable<'_>, defaults: &DefaultProviders) -> Self {
        let tracing: Vec<&Tracing> = applicable
            .iter()
            .flat_map(|t| t.spec.tracing.iter())
            .collect();
        let metrics: Vec<&Metrics> = applicable
            .iter()
            .flat_map(|t| t.spec.metrics.iter())
            .collect();
        let logging: Vec<&[AccessLogging]> = applicable
            .iter()
            .map(|t| t.spec.access_logging.as_slice())
            .filter(|l| !l.is_empty())
            .collect();
        EffectiveTelemetry {
            tracing: merge_tracing(&tracing, defaults),
            metrics: merge_metrics(&metrics, defaults),
            access_logging: (!logging.is_empty() || !defaults.access_logging.is_empty()).then(
                || AccessLoggingConfig {
                    client: merge_logs(&logging, defaults, WorkloadMode::Client),
                    server: merge_logs(&logging, defaults, WorkloadMode::Server),
                },
            ),
        }
    }
}

fn names(providers: &[super::ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

/// Istio's `Telemetries.Tracing`.
fn merge_tracing(tracing: &[&Tracing], defaults: &DefaultProviders) -> Option<TracingConfig> {
    let default_provider = defaults.tracing.first();
    if tracing.is_empty() && default_provider.is_none() {
        return None;
    }
    let start = TracingSpec {
        provider: default_provider.cloned(),
        ..TracingSpec::default()
    };
    let mut client = start.clone();
    let mut server = start;
    for m in tracing {
        let first = m.providers.first().map(|p| p.name.clone());
        for (side, spec) in [
            (WorkloadMode::Client, &mut client),
            (WorkloadMode::Server, &mut server),
        ] {
            if !m.mode().applies_to(side) {
                continue;
            }
            if first.is_some() {
                spec.provider.clone_from(&first);
            }
            if let Some(d) = m.disable_span_reporting {
                spec.disabled = d;
            }
            if let Some(tags) = &m.custom_tags {
                spec.custom_tags.clone_from(tags);
            }
            if let Some(p) = m.random_sampling_percentage {
                spec.random_sampling_percentage = Some(p);
            }
            if let Some(b) = m.use_request_id_for_trace_sampling {
                spec.use_request_id_for_trace_sampling = b;
            }
            if let Some(b) = m.enable_istio_tags {
                spec.enable_istio_tags = b;
            }
            if let Some(b) = m.disable_context_propagation {
                spec.disable_context_propagation = b;
            }
        }
    }
    for spec in [&mut client, &mut server] {
        if spec.provider.is_none() {
            spec.disabled = true;
        }
    }
    Some(TracingConfig { client, server })
}

/// The sides a mode names.
fn sides(mode: WorkloadMode) -> &'static [WorkloadMode] {
    match mode {
        WorkloadMode::Client => &[WorkloadMode::Client],
        WorkloadMode::Server => &[WorkloadMode::Server],
        WorkloadMode::ClientAndServer => &[WorkloadMode::Client, WorkloadMode::Server],
    }
}

/// Every standard metric but `ALL_METRICS`, by name, sorted (Istio's `allMetrics`).
fn all_metrics() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = IstioMetric::ALL
        .iter()
        .filter(|m| **m != IstioMetric::AllMetrics)
        .map(|m| m.as_str())
        .collect();
    all.sort_unstable();
    all
}

/// True when an override applies to every metric (no match, no metric, or
/// `ALL_METRICS`).
fn is_all_metrics(o: &MetricsOverrides) -> bool {
    match &o.match_ {
        None => true,
        Some(m) if m.custom_metric.is_some() => false,
        Some(m) => m.metric.is_none_or(|x| x == IstioMetric::AllMetrics),
    }
}

/// The metric names an override applies to.
fn matched_metrics(o: &MetricsOverrides) -> Vec<String> {
    match &o.match_ {
        Some(m) if m.custom_metric.is_some() => m.custom_metric.iter().cloned().collect(),
        Some(m) if m.metric.is_some_and(|x| x != IstioMetric::AllMetrics) => {
            m.metric.iter().map(|x| x.as_str().to_string()).collect()
        }
        _ => all_metrics().into_iter().map(str::to_string).collect(),
    }
}

#[derive(Default)]
struct PendingOverride {
    disabled: Option<bool>,
    tags: BTreeMap<String, TagOverride>,
}

/// Istio's `mergeMetrics`.
fn merge_metrics(
    metrics: &[&Metrics],
    defaults: &DefaultProviders,
) -> BTreeMap<String, MetricsConfig> {
    type ByMetric = BTreeMap<String, PendingOverride>;
    let mut providers: BTreeMap<String, BTreeMap<WorkloadMode, ByMetric>> = BTreeMap::new();
    if metrics.is_empty() {
        for p in &defaults.metrics {
            providers.entry(p.clone()).or_default();
        }
    }
    let mut in_scope = defaults.metrics.clone();
    for m in metrics {
        if !m.providers.is_empty() {
            in_scope = names(&m.providers);
        }
    }
    let in_scope: BTreeSet<String> = in_scope.into_iter().collect();
    let mut parent = defaults.metrics.clone();
    let mut disabled_all: BTreeSet<(String, WorkloadMode)> = BTreeSet::new();
    let mut intervals: BTreeMap<String, Duration> = BTreeMap::new();
    for m in metrics {
        let mut these = names(&m.providers);
        if these.is_empty() {
            these.clone_from(&parent);
        }
        parent.clone_from(&these);
        for provider in these {
            if !in_scope.contains(&provider) {
                continue;
            }
            if let Some(i) = m.reporting_interval {
                intervals.insert(provider.clone(), i);
            }
            let modes = providers.entry(provider.clone()).or_insert_with(|| {
                BTreeMap::from([
                    (WorkloadMode::Client, ByMetric::new()),
                    (WorkloadMode::Server, ByMetric::new()),
                ])
            });
            for o in &m.overrides {
                let mode = o.match_.as_ref().map(|s| s.mode).unwrap_or_default();
                if is_all_metrics(o) && o.disabled == Some(true) {
                    for side in sides(mode) {
                        disabled_all.insert((provider.clone(), *side));
                    }
                    continue;
                }
                let matched = matched_metrics(o);
                for side in sides(mode) {
                    disabled_all.remove(&(provider.clone(), *side));
                    let by_metric = modes.entry(*side).or_default();
                    for name in &matched {
                        let pending = by_metric.entry(name.clone()).or_default();
                        if o.disabled.is_some() {
                            pending.disabled = o.disabled;
                        }
                        for (tag, to) in &o.tag_overrides {
                            pending.tags.insert(tag.clone(), to.clone());
                        }
                    }
                }
            }
        }
    }
    providers
        .into_iter()
        .map(|(provider, modes)| {
            let mut cfg = MetricsConfig {
                reporting_interval: intervals.get(&provider).copied(),
                ..MetricsConfig::default()
            };
            for (mode, by_metric) in modes {
                let side = if mode == WorkloadMode::Client {
                    &mut cfg.client
                } else {
                    &mut cfg.server
                };
                if disabled_all.contains(&(provider.clone(), mode)) {
                    side.disabled = true;
                    continue;
                }
                side.overrides = by_metric
                    .into_iter()
                    .map(|(name, p)| MetricOverride {
                        name,
                        disabled: p.disabled.unwrap_or(false),
                        tags: p
                            .tags
                            .into_iter()
                            .map(|(tag, to)| {
                                let change = match to.operation() {
                                    TagOperation::Remove => TagChange::Remove,
                                    TagOperation::Upsert => {
                                        TagChange::Upsert(to.value.unwrap_or_default())
                                    }
                                };
                                (tag, change)
                            })
                            .collect(),
                    })
                    .collect();
            }
            (provider, cfg)
        })
        .collect()
}

/// Istio's `mergeLogs` for one side: each element of `levels` is one Telemetry's
/// `accessLogging` list, least specific first.
fn merge_logs(
    levels: &[&[AccessLogging]],
    defaults: &DefaultProviders,
    side: WorkloadMode,
) -> BTreeMap<String, LoggingSpec> {
    let mut providers = BTreeMap::new();
    if levels.is_empty() {
        for p in &defaults.access_logging {
            providers.insert(p.clone(), LoggingSpec::default());
        }
        return providers;
    }
    let mut in_scope: BTreeSet<String> = defaults.access_logging.iter().cloned().collect();
    let mut filters: HashMap<String, LoggingSpec> = HashMap::new();
    for level in levels {
        let mut named = BTreeSet::new();
        for entry in level.iter().filter(|e| e.mode().applies_to(side)) {
            for p in &entry.providers {
                named.insert(p.name.clone());
                filters.insert(
                    p.name.clone(),
                    LoggingSpec {
                        disabled: false,
                        filter: entry.filter.clone(),
                    },
                );
            }
        }
        if !named.is_empty() {
            in_scope = named;
        }
    }
    let mut parent = defaults.access_logging.clone();
    for entry in levels.iter().flat_map(|l| l.iter()) {
        let mut these = names(&entry.providers);
        if these.is_empty() {
            these.clone_from(&parent);
        }
        parent.clone_from(&these);
        if !entry.mode().applies_to(side) {
            continue;
        }
        for provider in these {
            if !in_scope.contains(&provider) {
                continue;
            }
            let spec = if entry.disabled == Some(true) {
                LoggingSpec {
                    disabled: true,
                    filter: None,
                }
            } else {
                filters.get(&provider).cloned().unwrap_or_default()
            };
            providers.insert(provider, spec);
        }
    }
    providers
}
