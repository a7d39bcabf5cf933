//! ServiceEntry and WorkloadEntry (`networking.istio.io`): the service registry.
//!
//! Istio uses these two kinds to describe services and workloads outside Kubernetes;
//! the mesh uses them as its registry, so no invented format is needed.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{LabelSelector, Labels};

/// Where a service lives relative to the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceLocation {
    /// Outside the mesh (no mTLS).
    #[default]
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the address the caller asked for.
    #[default]
    None,
    /// The endpoints' IP addresses.
    Static,
    /// Resolve the endpoints' (or the hosts') names, use all addresses.
    Dns,
    /// Resolve names, use the first address.
    DnsRoundRobin,
    /// Resolve wildcard hosts' names on demand.
    DynamicDns,
}

/// The spec of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Host names of the service (taken as written, not qualified).
    pub hosts: Vec<String>,
    /// Virtual IPs.
    pub addresses: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    pub location: Option<ServiceLocation>,
    /// How endpoints are found.
    pub resolution: Option<Resolution>,
    /// Inline endpoints.
    pub endpoints: Vec<WorkloadEntry>,
    /// Select WorkloadEntries (of the same namespace) as endpoints.
    pub workload_selector: Option<LabelSelector>,
    /// Namespaces the service is visible to.
    pub export_to: Vec<String>,
    /// Accepted identities of the endpoints.
    pub subject_alt_names: Vec<String>,
}

/// A port of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// Protocol (HTTP, HTTPS, GRPC, HTTP2, TCP, TLS, ...; case-insensitive).
    pub protocol: Option<String>,
    /// Port name, matched by endpoints' `ports` maps.
    pub name: String,
    /// Port on the endpoints, when not the same.
    pub target_port: Option<u32>,
}

/// The spec of a WorkloadEntry (also the form of a ServiceEntry's inline endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address, host name or `unix://` socket.
    pub address: String,
    /// Port name to port number on this workload.
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    pub labels: Labels,
    /// Network.
    pub network: Option<String>,
    /// Locality (`region/zone/subzone`).
    pub locality: Option<String>,
    /// Load balancing weight.
    pub weight: Option<u32>,
    /// Service account (identity) of the workload.
    pub service_account: Option<String>,
}

/// The spec of a WorkloadGroup: what the instances of one workload have in common — the
/// template of the WorkloadEntry each instance registers (its address aside), the
/// metadata every such entry gets, and how its readiness is probed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadGroup {
    /// Labels and annotations of every instance's WorkloadEntry.
    pub metadata: Option<WorkloadGroupMetadata>,
    /// The WorkloadEntry of an instance, without its address (required).
    pub template: Option<WorkloadEntry>,
    /// How the instances' readiness is probed (read and checked; not run).
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadGroupMetadata {
    /// Labels of every instance (over the template's).
    pub labels: Labels,
    /// Annotations of every instance.
    pub annotations: BTreeMap<String, String>,
}

/// `WorkloadGroup.probe`: Istio's `ReadinessProbe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadinessProbe {
    /// Seconds after start before the first probe.
    pub initial_delay_seconds: i64,
    /// Seconds after which a probe times out.
    pub timeout_seconds: i64,
    /// Seconds between probes.
    pub period_seconds: i64,
    /// Successes in a row that make the workload ready.
    pub success_threshold: i64,
    /// Failures in a row that make it not ready.
    pub failure_threshold: i64,
    /// An HTTP GET.
    pub http_get: Option<HttpHealthCheck>,
    /// A TCP connection.
    pub tcp_socket: Option<TcpHealthCheck>,
    /// A command run on the workload's machine.
    pub exec: Option<ExecHealthCheck>,
}

/// `ReadinessProbe.httpGet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path.
    pub path: String,
    /// Port.
    pub port: u32,
    /// Host to connect to (the workload's address when empty).
    pub host: String,
    /// `HTTP` or `HTTPS`.
    pub scheme: String,
    /// Headers sent.
    pub http_headers: Vec<HealthCheckHeader>,
}

/// A header of an HTTP health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `ReadinessProbe.tcpSocket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpHealthCheck {
    /// Host to connect to.
    pub host: String,
    /// Port.
    pub port: u32,
}

/// `ReadinessProbe.exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecHealthCheck {
    /// The command and its arguments.
    pub command: Vec<String>,
}
