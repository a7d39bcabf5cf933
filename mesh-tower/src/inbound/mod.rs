//! The inbound side of a workload: its application (any tower service — axum, tonic, a
//! hyper `service_fn`) served on a listener, HTTP/1.1 and HTTP/2, with graceful shutdown.
//!
//! Two pieces, as Istio's sidecar puts them in front of a pod:
//!
//! - [`Mesh::serve`](crate::Mesh::serve): the transport. Each connection is plaintext or
//!   mutual TLS as the workload's PeerAuthentication says for its port (PERMISSIVE tells
//!   them apart from the first byte); requests carry [`PeerAddr`], [`LocalAddr`] and, over
//!   mutual TLS, the peer's verified [`PeerIdentity`](crate::identity::PeerIdentity).
//! - [`Mesh::inbound`](crate::Mesh::inbound): the policies, a tower layer around the
//!   application — authorization (CUSTOM → DENY → ALLOW, Envoy's `403 RBAC: access
//!   denied`), with the workload's policies of the configuration in force.
//!
//! ```no_run
//! # async fn demo(mesh: mesh_tower::Mesh, app: tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
//! let app = tower::ServiceBuilder::new().layer(mesh.inbound()).service(app);
//! mesh.serve(listener, app).await
//! # }
//! ```
//!
//! [`serve`] alone serves an application in plaintext, outside any policy. HTTP/1.1
//! upgrades (`101 Switching Protocols`) are served: the application takes the upgraded
//! connection with `hyper::upgrade::on`.

mod authz;
pub mod ext_authz;
pub(crate) mod jwt;
pub(crate) mod serve;

pub use crate::telemetry::messages::{GrpcMessages, GrpcMessagesBody, GrpcMessagesLayer};
pub use crate::transport::accept::{LocalAddr, PeerAddr, serve, serve_admin};
pub use authz::{Inbound, InboundBody, InboundLayer, RBAC_DENIED};
pub(crate) use authz::{admit, authorize, is_grpc, local_reply};
