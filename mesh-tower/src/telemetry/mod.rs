//! Telemetry: Istio's standard metrics ([`metrics`]), access logs ([`access_log`]) and
//! traces ([`spans`]), measured per request by a meter that travels with the response
//! body and records once the body ends; OTLP export of spans and metrics ([`otlp`]); the
//! live mesh graph drawn from the metrics ([`graph`]).
//!
//! Both sides report, as Istio's proxies do: the caller's stack (`mesh.client()` and the
//! ingress gateway) with `reporter="source"`, the server's inbound layer
//! (`mesh.inbound()`) with `reporter="destination"`. The caller names itself to the
//! server with Istio's peer metadata baggage (`k8s.deployment.name=…`), which the server
//! trusts only for a workload the configuration knows — and, over mutual TLS, only when
//! the workload's identity is the connection's.

use http::HeaderName;

/// `baggage`: the peer metadata Istio's proxies exchange.
pub(crate) const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `x-request-id`.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `grpc-status`.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A request's authority as Envoy reads it for telemetry: its `Host` header, else its
/// URI's authority; empty without either.
pub(crate) fn authority<B>(req: &http::Request<B>) -> &str {
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

pub mod access_log;
pub mod graph;
pub(crate) mod messages;
pub(crate) mod meter;
pub mod metrics;
pub mod otlp;
pub mod spans;

pub use access_log::{AccessLogSink, dropped_entries};
pub use meter::Metered;
pub use metrics::{
    HistogramReading, Labels, MessageReading, MessageSeries, Metrics, Reporter, Sample, Security,
    SeriesReading,
};
