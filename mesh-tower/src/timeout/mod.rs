//! The route's timeout: from the end of the request body (Envoy's starting point) to the
//! end of the response body, retries included.
//!
//! Istio's VirtualService `timeout` (disabled by default). When it expires before the
//! response headers, the caller gets Envoy's 504 `upstream request timeout`, with
//! [`MeshFailure::Timeout`](crate::MeshFailure) in the response's extensions. When it
//! expires while the body is being received, the body fails with
//! [`BodyTimeout`](crate::body::BodyTimeout) — Envoy resets the stream then.
//!
//! ```
//! use mesh_tower::timeout::TimeoutLayer;
//! let layer = TimeoutLayer;
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::TimeoutLayer;
pub use service::Timeout;
