//! Retries, with Envoy's semantics as Istio configures them.
//!
//! [`RetryLayer`] re-sends a request whose attempt ended in a condition of the route's
//! `retryOn` (or the mesh's default retry policy when the route has none), up to
//! `attempts` more times, each attempt bounded by `perTryTimeout`, waiting Envoy's
//! jittered exponential backoff in between, and avoiding the endpoints already tried. The
//! attempt being replaced is abandoned (its copy of the body fails, so its connection
//! resets the request, as Envoy resets it). A request whose body outgrew the replay bound
//! is sent once — never retried, never corrupted. When the last attempt timed out, the
//! answer is 504 `upstream request timeout`. `perTryTimeout` bounds each attempt until its
//! response headers.
//!
//! ```
//! use mesh_tower::retry::RetryLayer;
//! let layer = RetryLayer;
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::RetryLayer;
pub use service::Retry;
