//! Telemetry: one `tracing` span per request.
//!
//! The span `mesh.request` carries the method, authority and path, and — recorded by the
//! layers below as they decide — the route (`namespace/name#rule` or `default`), the
//! destination host and subset, the endpoint of the last attempt, the number of
//! attempts, the final status and the mesh failure, if any.
//!
//! ```
//! use mesh_tower::telemetry::TelemetryLayer;
//! let layer = TelemetryLayer::new();
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::TelemetryLayer;
pub use service::Telemetry;
pub(crate) use service::record_destination;
