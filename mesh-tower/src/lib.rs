//! Where the mesh meets the wire: the runtime of a process, the outbound stack as tower
//! layers, the inbound side, the ingress gateway, and the transport they share.
//!
//! - [`MeshRuntime`] holds the configuration in force for the whole process, compiled
//!   once and swapped atomically; [`Mesh`] is one workload's handle on it.
//! - [`outbound`]: what `mesh.client()` does — route, CORS, faults, headers, mirrors,
//!   timeout, retries, balancing — one tower layer per concern, over
//!   [`transport::pool`].
//! - [`inbound`]: serving the workload's application.
//! - [`gateway`]: listeners for Istio Gateways, routing with mesh-core's engine.
//! - [`transport`]: TLS material, the accept loop, the connection pools.
//! - [`state`]: what outlives a configuration (endpoint load, connections).
//! - [`telemetry`]: Istio's standard metrics, Envoy's access logs and spans, recorded once
//!   per request and side when the response ends; OTLP export; the mesh graph.
//! - [`admin`]: the clusters as Envoy's admin `/clusters` shows them.
//! - [`source`]: where the configuration comes from (a watched directory, etcd) and the
//!   loop that checks and swaps each change in.
//! - [`etcd`]: a small etcd v3 client, the configuration's keys in etcd, and workloads
//!   registering themselves under leases.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use mesh_config::ConfigSet;
//! use mesh_tower::{MeshRuntime, Workload};
//! use tower::ServiceExt;
//!
//! let snapshot = ConfigSet::load(&["examples/bookinfo/config"])?.check().snapshot.expect("valid");
//! let runtime = MeshRuntime::from_snapshot(&snapshot);
//! let mesh = runtime.workload(
//!     Workload::new("productpage-v1", "default")
//!         .labels([("app", "productpage"), ("version", "v1")])
//!         .service_account("bookinfo-productpage"),
//! );
//! let req = http::Request::get("http://reviews:9080/reviews/0").body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let resp = mesh.client().oneshot(req).await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```

pub mod admin;
pub mod body;
pub mod error;
pub mod etcd;
pub mod flags;
pub mod gateway;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod ratelimit;
mod runtime;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod transport;

use std::future::Future;
use std::pin::Pin;

pub use body::{ReqBody, ResBody};
pub use error::{MeshFailure, ResetReason, UnsupportedScheme};
pub use flags::ResponseFlags;
pub use gateway::{GatewayError, IngressGateway};
pub use mesh_core::Workload;
pub use outbound::MeshClient;
pub use runtime::{Mesh, MeshRuntime, RuntimeOptions};
pub use state::set_worker_index;

/// The error type of the mesh's services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, `Send` response future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
