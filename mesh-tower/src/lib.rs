//! Where the mesh meets the wire.
//!
//! `mesh-tower` will hold one tower `Layer` + `Service` per concern (route, split, balance,
//! retry, timeout, fault, mirror, authz, rate limit, telemetry), the `Mesh` runtime handle
//! that owns the current compiled configuration, connection pools, TLS and the ingress
//! gateway. It asks `mesh-core` what to do and does it.
//!
//! This crate is a placeholder in this version (see the README's feature table).

pub use mesh_core::Snapshot;
