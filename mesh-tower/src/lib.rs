//! Where the mesh meets the wire: tower layers, the `Mesh` handle and connection pools.
//!
//! Each concern is one tower `Layer` + `Service` in a module of its own: [`route`]
//! decides, [`cors`] answers preflights, [`fault`] injects delays and aborts,
//! [`headers`] rewrites and edits headers, [`mirror`] sends copies, [`timeout`] bounds
//! the request, [`retry`] tries again, [`balance`] picks the endpoint of each attempt,
//! and [`upstream`] sends it over pooled HTTP/1.1 or HTTP/2 connections (hyper-util).
//! [`telemetry`] wraps it all in one `tracing` span per request. [`Mesh::client`]
//! composes them into one `Clone` tower `Service`, usable wherever a hyper-util client
//! or a tonic channel is.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use mesh_config::ConfigSet;
//! use mesh_tower::{MeshConfig, Workload};
//! use tower::ServiceExt;
//!
//! let snapshot = ConfigSet::load(&["examples/bookinfo/config"])?.check().snapshot.expect("valid");
//! let config = MeshConfig::from_snapshot(&snapshot);
//! let mesh = config.workload(
//!     Workload::new("productpage-v1", "default")
//!         .labels([("app", "productpage"), ("version", "v1")])
//!         .service_account("bookinfo-productpage"),
//! );
//! let req = http::Request::get("http://reviews:9080/reviews/0").body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let resp = mesh.client().oneshot(req).await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```
//!
//! Services box their response futures: one small allocation per layer per request,
//! measured in the benchmarks, in exchange for readable middleware.

pub mod balance;
pub mod body;
pub mod cors;
pub mod error;
pub mod fault;
pub mod gateway;
pub mod headers;
pub mod mirror;
pub mod retry;
pub mod route;
pub mod server;
pub mod telemetry;
pub mod timeout;
pub mod upstream;

mod mesh;

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};
use tower::Service;

pub use body::{ReqBody, ResBody};
pub use error::{MeshFailure, ResetReason, UnsupportedScheme};
pub use gateway::{GatewayError, GatewaySource, IngressGateway};
pub use mesh::{Mesh, MeshClient, MeshConfig, OutboundStack, Workload};

/// The error type of the mesh's services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, `Send` response future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A service of the mesh's outbound stack.
pub trait MeshService:
    Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> MeshService for S where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// The associated types and `poll_ready` every layer of the stack shares: it answers
/// `Response<ResBody>`, fails with `BoxError`, boxes its future and is ready when its
/// inner service is.
#[macro_export]
#[doc(hidden)]
macro_rules! mesh_service_types {
    () => {
        type Response = ::http::Response<$crate::ResBody>;
        type Error = $crate::BoxError;
        type Future =
            $crate::BoxFuture<Result<::http::Response<$crate::ResBody>, $crate::BoxError>>;

        fn poll_ready(
            &mut self,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<Result<(), $crate::BoxError>> {
            self.inner.poll_ready(cx)
        }
    };
}

/// Takes the ready service out of `slot`, leaving a clone (tower's usual pattern).
pub(crate) fn take<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
