//! Telemetry: Istio's standard metrics ([`metrics`]), measured per request by a meter
//! that travels with the response body and records once the body ends.
//!
//! Both sides report, as Istio's proxies do: the caller's stack (`mesh.client()` and the
//! ingress gateway) with `reporter="source"`, the server's inbound layer
//! (`mesh.inbound()`) with `reporter="destination"`. The caller names itself to the
//! server with Istio's peer metadata baggage (`k8s.deployment.name=…`), which the server
//! trusts only for a workload the configuration knows — and, over mutual TLS, only when
//! the workload's identity is the connection's.

pub(crate) mod meter;
pub mod metrics;

pub use metrics::{Labels, Metrics, Reporter, Sample, Security};
