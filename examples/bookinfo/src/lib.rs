//! Istio's Bookinfo, in-process: the four services in Rust ([`services`]), each workload
//! with its own mesh handle, an ingress gateway serving Istio's `bookinfo-gateway.yaml`,
//! and a watched configuration directory ([`live`]). [`run::start`] starts it all;
//! the `bookinfo` binary is a thin command line over it, and the end-to-end tests use
//! the same entry point with ephemeral ports.

pub mod live;
pub mod run;
pub mod services;
