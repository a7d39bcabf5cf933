//! The inbound side of a workload: its application (any tower service — axum, tonic, a
//! hyper `service_fn`) served on a listener, HTTP/1.1 and HTTP/2, with graceful shutdown.
//!
//! Plaintext today. This is where mutual TLS (decided by PeerAuthentication, on the
//! transport's TLS handshake) and the inbound policies (authorization, rate limits,
//! telemetry, selected for the workload in its [`WorkloadView`](mesh_core::WorkloadView))
//! wrap the application. Each request carries its connection's
//! [`PeerAddr`] extension. HTTP/1.1 upgrades (`101 Switching Protocols`) are served: the
//! application takes the upgraded connection with `hyper::upgrade::on`.
//!
//! ```no_run
//! # type App = tower::util::BoxCloneService<http::Request<hyper::body::Incoming>, http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible>;
//! # async fn demo(app: App) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
//! mesh_tower::inbound::serve(listener, app, std::future::pending::<()>()).await
//! # }
//! ```

pub use crate::transport::accept::{PeerAddr, serve};
