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
