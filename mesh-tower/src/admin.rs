//! The admin view of the clusters: Envoy's `/clusters`, in spirit.
//!
//! [`MeshRuntime::clusters`](crate::MeshRuntime::clusters) takes a snapshot of every
//! cluster of the configuration in force: its circuit breakers' gauges and overflows, its
//! outlier detection (ejections active, made, refused by `maxEjectionPercent`, panic),
//! and per endpoint the requests in flight, the open connections, and what outlier
//! detection knows of it — ejected and until when, how often, its consecutive failures,
//! its successes and errors. It renders as JSON (serde) or as Envoy's text lines,
//! `cluster::endpoint::stat::value`.
//!
//! Requests in flight and connections are the endpoint's, shared by every cluster that
//! has it (Envoy counts them per cluster); outlier detection and the success and error
//! counts are the cluster's own, kept for clusters with an `outlierDetection` only.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut set = mesh_config::ConfigSet::new();
//! set.add_str("se.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.7}]\n");
//! let runtime = mesh_tower::MeshRuntime::from_snapshot(&set.check().snapshot.ok_or("invalid")?);
//! let clusters = runtime.clusters();
//! assert!(clusters.text().contains("outbound|80||api.example.com::10.0.0.7:80::rq_active::0\n"));
//! assert_eq!(clusters.json()["cluster_statuses"][0]["host_statuses"][0]["health_flags"], "healthy");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mesh_core::cluster::Cluster;
use serde::Serialize;

use crate::outbound::outlier::{HostOutlier, OutlierState, host_view};
use crate::runtime::Generation;

/// Every cluster of the configuration in force (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clusters {
    /// The version of the configuration.
    pub version: u64,
    /// The clusters, by name.
    pub cluster_statuses: Vec<ClusterStatus>,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// Envoy's name, `outbound|port|subset|host`.
    pub name: String,
    /// Its circuit breakers' gauges and overflow counters.
    pub circuit_breakers: CircuitBreakers,
    /// Its outlier detection, when it has one.
    pub outlier_detection: Option<OutlierDetectionStatus>,
    /// Its endpoints.
    pub host_statuses: Vec<HostStatus>,
}

/// A cluster's circuit breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    /// Requests in flight (counted when the cluster has a circuit breaker).
    pub rq_active: u32,
    /// Requests waiting for a connection.
    pub rq_pending_active: u32,
    /// Connections counted against `maxConnections`.
    pub cx_active: u32,
    /// Retries in flight.
    pub rq_retry_active: u32,
    /// Requests refused (`UO`).
    pub rq_overflow: u64,
    /// Connections not made because of `maxConnections`.
    pub cx_overflow: u64,
    /// Retries not made because of `maxRetries` or the retry budget.
    pub rq_retry_overflow: u64,
}

/// A cluster's outlier detection: its counters and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierDetectionStatus {
    /// Endpoints ejected now.
    pub ejections_active: u32,
    /// Ejections made.
    pub ejections_enforced_total: u64,
    /// Detections not enforced because of `maxEjectionPercent`.
    pub ejections_overflow: u64,
    /// Below `minHealthPercent` healthy: ejections are ignored.
    pub panic: bool,
    /// `consecutive5xxErrors` in force (0: off).
    pub consecutive_5xx: u32,
    /// `consecutiveGatewayErrors` in force (0: off).
    pub consecutive_gateway_failure: u32,
    /// `consecutiveLocalOriginFailures` in force (0: off, or not split).
    pub consecutive_local_origin_failure: u32,
    /// `interval`, in milliseconds.
    pub interval_ms: u64,
    /// `baseEjectionTime`, in milliseconds.
    pub base_ejection_time_ms: u64,
    /// `maxEjectionPercent` in force.
    pub max_ejection_percent: u32,
    /// `minHealthPercent` (the panic threshold).
    pub min_health_percent: u32,
}

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    /// `address:port`.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// Requests in flight to it.
    pub rq_active: u32,
    /// Its open connections.
    pub cx_active: u32,
    /// Envoy's health flags: `healthy`, or `/failed_outlier_check` while ejected.
    pub health_flags: String,
    /// Ejected by outlier detection now.
    pub failed_outlier_check: bool,
    /// While ejected: milliseconds until it returns (the first sweep after its
    /// ejection time).
    pub ejected_for_ms: Option<u64>,
    /// Times ejected (clusters with outlier detection).
    pub num_ejections: Option<u32>,
    /// Attempts answered below 500 (clusters with outlier detection).
    pub rq_success: Option<u64>,
    /// Attempts answered 5xx, failed to connect, reset or timed out (clusters with
    /// outlier detection).
    pub rq_error: Option<u64>,
    /// Consecutive 5xx now.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway errors now.
    pub consecutive_gateway_failure: Option<u32>,
    /// Consecutive local-origin failures now (split only).
    pub consecutive_local_origin_failure: Option<u32>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Clusters {
    /// The snapshot of `g`. Outlier detection's sweeps due run first (an endpoint whose
    /// ejection is over shows as back).
    pub(crate) fn of(g: &Generation) -> Self {
        // Clusters of one name (with and without the DestinationRule that shapes it, as
        // callers' namespaces see it) share a state: the one its rule shapes is shown.
        let mut by_name: BTreeMap<&str, &Cluster> = BTreeMap::new();
        for c in g.mesh.clusters() {
            let Some(state) = g.clusters.get(c.id as usize) else {
                continue;
            };
            let shown = by_name.entry(state.name()).or_insert(c);
            if shown.rule.is_none() && c.rule.is_some() {
                *shown = c;
            }
        }
        let mut cluster_statuses = Vec::new();
        for c in by_name.into_values() {
            let Some(state) = g.clusters.get(c.id as usize) else {
                continue;
            };
            let endpoints = g.endpoints.get(c.id as usize);
            let outlier = c.outlier.as_ref().and_then(|s| {
                OutlierState::table_for(state, c, s, g.mesh.version())?;
                state.outlier.view()
            });
            let b = state.breakers();
            let host_statuses = c
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let load = endpoints.and_then(|t| t.get(i));
                    let o: Option<HostOutlier> =
                        outlier.as_ref().and_then(|(t, ej)| host_view(t, ej, i));
                    let ejected = o.is_some_and(|o| o.ejection.ejected_at.is_some());
                    HostStatus {
                        address: e.id.to_string(),
                        weight: e.weight,
                        rq_active: load.map_or(0, |l| l.load().outstanding()),
                        cx_active: load.map_or(0, |l| l.connections()),
                        health_flags: if ejected {
                            "/failed_outlier_check".into()
                        } else {
                            "healthy".into()
                        },
                        failed_outlier_check: ejected,
                        ejected_for_ms: o.and_then(|o| o.returns_in).map(ms),
                        num_ejections: o.map(|o| o.ejection.ejections),
                        rq_success: o.map(|o| o.successes),
                        rq_error: o.map(|o| o.errors),
                        consecutive_5xx: o.map(|o| o.consecutive_5xx),
                        consecutive_gateway_failure: o.map(|o| o.consecutive_gateway),
                        consecutive_local_origin_failure: o.map(|o| o.consecutive_local_origin),
                    }
                })
                .collect();
            cluster_statuses.push(ClusterStatus {
                name: state.name().to_string(),
                circuit_breakers: CircuitBreakers {
                    rq_active: b.requests(),
                    rq_pending_active: b.pending(),
                    cx_active: b.connections(),
                    rq_retry_active: b.retries(),
                    rq_overflow: b.request_overflow(),
                    cx_overflow: b.connection_overflow(),
                    rq_retry_overflow: b.retry_overflow(),
                },
                outlier_detection: outlier.as_ref().map(|(t, ej)| {
                    let s = &t.settings;
                    OutlierDetectionStatus {
                        ejections_active: ej.active(),
                        ejections_enforced_total: ej.enforced(),
                        ejections_overflow: ej.overflow(),
                        panic: ej.in_panic(s),
                        consecutive_5xx: s.consecutive_5xx,
                        consecutive_gateway_failure: s.consecutive_gateway,
                        consecutive_local_origin_failure: s.consecutive_local_origin,
                        interval_ms: ms(s.interval),
                        base_ejection_time_ms: ms(s.base_ejection_time),
                        max_ejection_percent: s.max_ejection_percent,
                        min_health_percent: s.panic_threshold,
                    }
                }),
                host_statuses,
            });
        }
        Clusters {
            version: g.mesh.version(),
            cluster_statuses,
        }
    }

    /// As JSON (`/clusters?format=json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// As Envoy's text lines (`/clusters`): `cluster::stat::value` for the cluster's
    /// counters (`circuit_breakers::…`, `outlier::…`), `cluster::address::stat::value`
    /// for each endpoint's.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.cluster_statuses {
            let n = &c.name;
            let b = &c.circuit_breakers;
            for (stat, v) in [
                ("rq_active", u64::from(b.rq_active)),
                ("rq_pending_active", u64::from(b.rq_pending_active)),
                ("cx_active", u64::from(b.cx_active)),
                ("rq_retry_active", u64::from(b.rq_retry_active)),
                ("rq_overflow", b.rq_overflow),
                ("cx_overflow", b.cx_overflow),
                ("rq_retry_overflow", b.rq_retry_overflow),
            ] {
                let _ = writeln!(out, "{n}::circuit_breakers::{stat}::{v}");
            }
            if let Some(o) = &c.outlier_detection {
                for (stat, v) in [
                    ("ejections_active", u64::from(o.ejections_active)),
                    ("ejections_enforced_total", o.ejections_enforced_total),
                    ("ejections_overflow", o.ejections_overflow),
                ] {
                    let _ = writeln!(out, "{n}::outlier::{stat}::{v}");
                }
                let _ = writeln!(out, "{n}::outlier::panic::{}", o.panic);
            }
            for h in &c.host_statuses {
                let a = &h.address;
                let _ = writeln!(out, "{n}::{a}::cx_active::{}", h.cx_active);
                let _ = writeln!(out, "{n}::{a}::rq_active::{}", h.rq_active);
                let optional = [
                    ("rq_success", h.rq_success),
                    ("rq_error", h.rq_error),
                    ("num_ejections", h.num_ejections.map(u64::from)),
                    ("ejected_for_ms", h.ejected_for_ms),
                    ("consecutive_5xx", h.consecutive_5xx.map(u64::from)),
                    (
                        "consecutive_gateway_failure",
                        h.consecutive_gateway_failure.map(u64::from),
                    ),
                    (
                        "consecutive_local_origin_failure",
                        h.consecutive_local_origin_failure.map(u64::from),
                    ),
                ];
                for (stat, v) in optional {
                    if let Some(v) = v {
                        let _ = writeln!(out, "{n}::{a}::{stat}::{v}");
                    }
                }
                let _ = writeln!(out, "{n}::{a}::health_flags::{}", h.health_flags);
                let _ = writeln!(out, "{n}::{a}::weight::{}", h.weight);
            }
        }
        out
    }
}
