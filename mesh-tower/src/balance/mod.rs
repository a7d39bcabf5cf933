//! Balancing: the endpoint of each attempt.
//!
//! [`BalanceLayer`] turns the routed destination into a concrete endpoint with the
//! cluster's load balancer (consistent hashing on the configured header, cookie, source or
//! query parameter; a cookie with a `ttl` is generated when the request has none), writes
//! the endpoint's address into the URI (the caller's authority stays in `Host`), counts
//! the request as outstanding on that endpoint while it runs, and turns connection
//! failures into Envoy's answers: 503 `no healthy upstream` without endpoints, 503
//! `upstream connect error or disconnect/reset before headers` when connecting fails.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_tower::balance::BalanceLayer;
//! use mesh_tower::upstream::UpstreamService;
//! use mesh_tower::Workload;
//! use tower::Layer;
//!
//! let dispatch = BalanceLayer::new(Arc::new(Workload::new("productpage-v1", "default")))
//!     .layer(UpstreamService::new());
//! # let _ = dispatch;
//! ```

mod layer;
mod service;

pub use layer::BalanceLayer;
pub use service::{Attempts, Balance, protocol_for, reset_reason};
