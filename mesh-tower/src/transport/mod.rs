//! Transport: what every path of the mesh shares — TLS material and configurations,
//! certificates, the accept loop, and the connection pools.
//!
//! The outbound stack ends in [`pool`], which originates TLS with [`origination`] where
//! a DestinationRule (or an `https://` request) asks for it; the ingress gateway listens
//! with [`accept`] and terminates TLS with [`tls`]; the inbound side (mutual TLS between
//! workloads) builds on the same pieces.

pub mod accept;
pub mod origination;
pub mod pool;
pub mod tls;
pub(crate) mod x509;
