//! The route's timeout: the whole request, retries included.
//!
//! Istio's VirtualService `timeout` (disabled by default). When it expires the caller gets
//! Envoy's 504 `upstream request timeout`, with [`MeshFailure::Timeout`](crate::MeshFailure)
//! in the response's extensions.
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
