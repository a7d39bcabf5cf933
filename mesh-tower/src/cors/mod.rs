//! CORS: Istio's `corsPolicy`, answered in-process.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//! allowed origin is answered here, without reaching the upstream; a preflight from an
//! origin that is not allowed is forwarded (Istio's default) or answered without CORS
//! headers (`unmatchedPreflights: IGNORE`). Other requests from an allowed origin get the
//! `Access-Control-Allow-Origin` (and credentials, exposed headers) response headers.
//!
//! ```
//! use mesh_tower::cors::CorsLayer;
//! let layer = CorsLayer;
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::CorsLayer;
pub use service::Cors;
