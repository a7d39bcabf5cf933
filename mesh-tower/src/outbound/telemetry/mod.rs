//! Telemetry: one `tracing` span per request around the whole stack.
//!
//! The span `mesh.request` carries the method, authority and path, and is filled in as
//! the request goes down the stack: the route (`namespace/name#rule`), the destination
//! and subset, the endpoint, the number of attempts, and the response status (or the
//! mesh failure, such as `no healthy upstream`). Without a subscriber it costs next to
//! nothing.
//!
//! ```
//! use mesh_tower::outbound::TelemetryLayer;
//! use tower::Layer;
//!
//! let service = TelemetryLayer.layer(tower::service_fn(|req: http::Request<mesh_tower::ReqBody>| async move {
//!     Ok::<_, mesh_tower::BoxError>(http::Response::new(mesh_tower::ResBody::empty()))
//! }));
//! # let _ = service;
//! ```

mod service;

pub use service::{Telemetry, TelemetryFuture, TelemetryLayer};
pub(crate) use service::{current, record_route, span_of};
