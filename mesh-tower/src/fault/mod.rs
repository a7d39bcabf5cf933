//! Fault injection: Istio's `fault.delay` and `fault.abort`.
//!
//! The delay and the abort are drawn independently with their percentages (a fault
//! without a percentage applies to no request, as Istio documents). The delay happens
//! before the request goes anywhere, so it counts against the caller's own timeout, as
//! in Istio's Bookinfo fault-injection task; an abort answers with its HTTP status (body
//! `fault filter abort`) or, for `grpcStatus`, with a gRPC status.
//!
//! ```
//! use mesh_tower::fault::FaultLayer;
//! let layer = FaultLayer;
//! # let _ = layer;
//! ```

mod layer;
mod service;

pub use layer::FaultLayer;
pub use service::Fault;
