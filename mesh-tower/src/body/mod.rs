//! Request and response bodies inside the mesh.
//!
//! [`ReqBody`] streams the caller's body to the upstream at once and keeps what retries
//! and mirrors need to send it again; [`ResBody`] carries what must last as long as the
//! response does — the route timeout (Envoy's covers the whole response, not only its
//! headers) and the endpoint's in-flight count used by the least-request balancers —
//! without wrapping the upstream's body in another box.

mod downstream;
mod request;
mod response;

pub use downstream::{BodyStalled, BodyTooLarge, DownstreamBody, DownstreamFault, Fault};
pub use request::{BodyError, DEFAULT_BUFFER_LIMIT, ReqBody};
pub use response::{BodyTimeout, ResBody, full};
