//! `Telemetry` (`telemetry.istio.io/v1`, `v1alpha1`): Istio's Telemetry API, which says
//! for the workloads it applies to how requests are traced, which metrics are reported
//! with which labels, and whether access logs are written.
//!
//! A Telemetry in the root namespace without a selector applies mesh-wide, one in another
//! namespace without a selector to every workload of that namespace, one with a selector to
//! the workloads it selects; the more specific settings override the less specific ones
//! field by field. [`scope`] finds the Telemetries that apply to a workload and merges them
//! as Istio's control plane does.
//!
//! ```yaml
//! apiVersion: telemetry.istio.io/v1
//! kind: Telemetry
//! metadata: {name: mesh-default, namespace: istio-system}
//! spec:
//!   tracing:
//!   - randomSamplingPercentage: 1.0
//!     customTags:
//!       team: {literal: {value: bookinfo}}
//!   metrics:
//!   - providers: [{name: prometheus}]
//!     overrides:
//!     - match: {metric: REQUEST_COUNT}
//!       tagOverrides:
//!         request_protocol: {operation: REMOVE}
//!   accessLogging:
//!   - providers: [{name: envoy}]
//!     filter: {expression: "response.code >= 400"}
//! ```

pub mod scope;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::common::{PolicyTargetReference, WorkloadSelector};
use crate::duration::Duration;

/// The spec of a `Telemetry`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Telemetry {
    /// The workloads it applies to (every workload of the namespace when absent; of the
    /// mesh for a Telemetry in the root namespace). Exclusive with `targetRef(s)`.
    pub selector: Option<WorkloadSelector>,
    /// A Gateway API resource it attaches to (the older, single form of `targetRefs`).
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API resources it attaches to (at most 16).
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing: the provider, sampling, custom tags.
    pub tracing: Vec<Tracing>,
    /// Metrics: the providers and per-metric overrides.
    pub metrics: Vec<Metrics>,
    /// Access logging: the providers, on or off, a filter.
    pub access_logging: Vec<AccessLogging>,
}

impl Telemetry {
    /// The target references, the older single `targetRef` when `targetRefs` is empty
    /// (Istio's `GetTargetRefs`).
    pub fn target_refs(&self) -> Vec<&PolicyTargetReference> {
        if self.target_refs.is_empty() {
            self.target_ref.iter().collect()
        } else {
            self.target_refs.iter().collect()
        }
    }

    /// The labels its selector selects workloads by, for a Telemetry that selects by
    /// labels (non-empty `matchLabels`, no target references).
    pub fn selector_labels(&self) -> Option<&crate::model::Labels> {
        if !self.target_refs().is_empty() {
            return None;
        }
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    /// True for a namespace-wide Telemetry (mesh-wide in the root namespace): no selector
    /// labels and no target references, as Istio decides it (`selector: {}` is
    /// namespace-wide too).
    pub fn is_namespace_wide(&self) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
            && self.target_refs().is_empty()
    }
}

/// A provider, by the name the mesh configuration gives it (`prometheus`, `envoy`,
/// `otel`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderRef {
    /// The provider's name (required).
    pub name: String,
}

/// The side of a request a setting applies to, relative to the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both: requests the workload sends and requests it serves (the default).
    #[default]
    ClientAndServer,
    /// Requests the workload sends (its outbound side; a gateway's traffic).
    Client,
    /// Requests the workload serves (its inbound side).
    Server,
}

impl WorkloadMode {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadMode::ClientAndServer => "CLIENT_AND_SERVER",
            WorkloadMode::Client => "CLIENT",
            WorkloadMode::Server => "SERVER",
        }
    }

    /// True when a setting with this mode applies to traffic of side `side` (`Client` or
    /// `Server`).
    pub fn applies_to(self, side: WorkloadMode) -> bool {
        self == WorkloadMode::ClientAndServer || self == side
    }
}

impl fmt::Display for WorkloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tracing settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// The side it applies to (both when absent).
    #[serde(rename = "match")]
    pub match_: Option<TracingSelector>,
    /// The provider (one is supported; the first is used).
    pub providers: Vec<ProviderRef>,
    /// Percentage (0-100) of requests without a prior sampling decision that are traced.
    pub random_sampling_percentage: Option<f64>,
    /// Spans are not reported (context is still propagated).
    pub disable_span_reporting: Option<bool>,
    /// Tags added to every span, by tag name.
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    /// Use the `x-request-id` to decide sampling (Istio's default: true).
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Add Istio's own tags to spans (Istio's default: true).
    pub enable_istio_tags: Option<bool>,
    /// Do not propagate trace context headers in forwarded requests.
    pub disable_context_propagation: Option<bool>,
}

impl Tracing {
    /// The side it applies to.
    pub fn mode(&self) -> WorkloadMode {
        self.match_.map(|m| m.mode).unwrap_or_default()
    }
}

/// Which side of the traffic tracing settings apply to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSelector {
    /// The side.
    pub mode: WorkloadMode,
}

/// A tag added to spans: one of a literal, an environment variable, a request header or
/// an access log formatter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomTag {
    /// The same value on every span.
    pub literal: Option<Literal>,
    /// The value of an environment variable of the workload.
    pub environment: Option<Environment>,
    /// The value of a request header.
    pub header: Option<RequestHeader>,
    /// The value of an access log formatter (`%REQ(x-user)%`).
    pub formatter: Option<Formatter>,
}

impl CustomTag {
    /// How many of `literal`, `environment`, `header` and `formatter` are set.
    pub fn set_count(&self) -> usize {
        [
            self.literal.is_some(),
            self.environment.is_some(),
            self.header.is_some(),
            self.formatter.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

/// A literal tag value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Literal {
    /// The value (required).
    pub value: String,
}

/// A tag value from an environment variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Environment {
    /// The variable (required).
    pub name: String,
    /// The value when the variable is not set.
    pub default_value: Option<String>,
}

/// A tag value from a request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestHeader {
    /// The header (required).
    pub name: String,
    /// The value when the request does not have the header.
    pub default_value: Option<String>,
}

/// A tag value from an access log formatter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Formatter {
    /// The formatter (required), as in access log formats.
    pub value: String,
}

/// Metrics settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// The providers (the parent level's when empty).
    pub providers: Vec<ProviderRef>,
    /// Overrides of metrics and their tags; later ones win.
    pub overrides: Vec<MetricsOverrides>,
    /// How often TCP metrics are reported (at least 1 ms).
    pub reporting_interval: Option<Duration>,
}

/// An override of some metrics: dropped, or with changed tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsOverrides {
    /// The metrics and side it applies to (all metrics, both sides, when absent).
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    /// The metrics are not reported.
    pub disabled: Option<bool>,
    /// Tags (labels) changed, by tag name.
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// Which metrics an override applies to: one of a standard metric or a custom one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSelector {
    /// One of Istio's standard metrics.
    pub metric: Option<IstioMetric>,
    /// A metric by name.
    pub custom_metric: Option<String>,
    /// The side (both when absent).
    pub mode: WorkloadMode,
}

/// Istio's standard metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every metric below.
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

impl IstioMetric {
    /// Every metric, `ALL_METRICS` first, in Istio's enumeration order.
    pub const ALL: [IstioMetric; 11] = [
        IstioMetric::AllMetrics,
        IstioMetric::RequestCount,
        IstioMetric::RequestDuration,
        IstioMetric::RequestSize,
        IstioMetric::ResponseSize,
        IstioMetric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections,
        IstioMetric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages,
    ];

    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            IstioMetric::AllMetrics => "ALL_METRICS",
            IstioMetric::RequestCount => "REQUEST_COUNT",
            IstioMetric::RequestDuration => "REQUEST_DURATION",
            IstioMetric::RequestSize => "REQUEST_SIZE",
            IstioMetric::ResponseSize => "RESPONSE_SIZE",
            IstioMetric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            IstioMetric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            IstioMetric::TcpSentBytes => "TCP_SENT_BYTES",
            IstioMetric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            IstioMetric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            IstioMetric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
        }
    }

    /// Looks a metric up by its written name.
    pub fn from_name(name: &str) -> Option<IstioMetric> {
        IstioMetric::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The Prometheus name without Istio's `istio_` prefix, as Istio's stats plugin names
    /// it (`requests_total`); `None` for `ALL_METRICS`.
    pub fn prometheus_name(self) -> Option<&'static str> {
        Some(match self {
            IstioMetric::AllMetrics => return None,
            IstioMetric::RequestCount => "requests_total",
            IstioMetric::RequestDuration => "request_duration_milliseconds",
            IstioMetric::RequestSize => "request_bytes",
            IstioMetric::ResponseSize => "response_bytes",
            IstioMetric::TcpOpenedConnections => "tcp_connections_opened_total",
            IstioMetric::TcpClosedConnections => "tcp_connections_closed_total",
            IstioMetric::TcpSentBytes => "tcp_sent_bytes_total",
            IstioMetric::TcpReceivedBytes => "tcp_received_bytes_total",
            IstioMetric::GrpcRequestMessages => "request_messages_total",
            IstioMetric::GrpcResponseMessages => "response_messages_total",
        })
    }
}

impl fmt::Display for IstioMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tag override does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Add the tag, or replace its value (the default).
    #[default]
    Upsert,
    /// Remove the tag.
    Remove,
}

/// A change to one tag (label) of some metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TagOverride {
    /// UPSERT (the default) or REMOVE.
    pub operation: Option<TagOperation>,
    /// The value, an expression over request attributes (`request.host`); required with
    /// UPSERT, not allowed with REMOVE.
    pub value: Option<String>,
}

impl TagOverride {
    /// The operation, UPSERT when absent.
    pub fn operation(&self) -> TagOperation {
        self.operation.unwrap_or_default()
    }
}

/// Access logging settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogging {
    /// The side it applies to (both when absent).
    #[serde(rename = "match")]
    pub match_: Option<LogSelector>,
    /// The providers (the parent level's when empty).
    pub providers: Vec<ProviderRef>,
    /// Access logs are not written.
    pub disabled: Option<bool>,
    /// Which requests are logged.
    pub filter: Option<AccessLogFilter>,
}

impl AccessLogging {
    /// The side it applies to.
    pub fn mode(&self) -> WorkloadMode {
        self.match_.map(|m| m.mode).unwrap_or_default()
    }
}

/// Which side of the traffic access logging settings apply to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LogSelector {
    /// The side.
    pub mode: WorkloadMode,
}

/// A filter of access logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogFilter {
    /// A CEL expression over request attributes (`response.code >= 400`): the request
    /// is logged when it is true.
    pub expression: String,
}

/// The text of a CEL string literal without escapes (`'v'` or `"v"`): the tag override
/// values the mesh evaluates; `None` for any other expression.
pub fn string_literal(expression: &str) -> Option<&str> {
    let e = expression.trim();
    ['\'', '"'].into_iter().find_map(|q| {
        e.strip_prefix(q)
            .and_then(|rest| rest.strip_suffix(q))
            .filter(|inner| !inner.contains(q) && !inner.contains('\\'))
    })
}
