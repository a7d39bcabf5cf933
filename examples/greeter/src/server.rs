//! The server side of `helloworld.Greeter`: the [`Greeter`] trait an implementation
//! provides, and [`GreeterServer`], the tower service that decodes requests into it —
//! what `tonic-build` generates, written by hand over [`tonic::server::Grpc`] and
//! [`tonic_prost::ProstCodec`] (no `protoc`, no tonic transport).
//!
//! [`GreeterServer`] is a plain `Service<http::Request<B>>`, so the mesh serves it like
//! any other application: wrapped in `mesh.inbound()` (authorization) and handed to
//! `mesh.serve_with_shutdown` (plaintext or mutual TLS, HTTP/2).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::pb::{HelloReply, HelloRequest, SetGreetingRequest};

/// The gRPC service's full name.
pub const SERVICE: &str = "helloworld.Greeter";

/// The path of `SayHello`: what VirtualServices and AuthorizationPolicies match.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";
/// The path of `SayGoodbye`.
pub const SAY_GOODBYE: &str = "/helloworld.Greeter/SayGoodbye";
/// The path of `SetGreeting`.
pub const SET_GREETING: &str = "/helloworld.Greeter/SetGreeting";

/// The methods of `helloworld.Greeter`.
pub trait Greeter: Send + Sync + 'static {
    /// `SayHello`.
    fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;

    /// `SayGoodbye`.
    fn say_goodbye(
        &self,
        request: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;

    /// `SetGreeting`.
    fn set_greeting(
        &self,
        request: Request<SetGreetingRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;
}

/// A [`Greeter`] as a tower service over HTTP requests: dispatches on the request's path
/// (`/helloworld.Greeter/<Method>`); other paths get `UNIMPLEMENTED`. Cheap to clone.
#[derive(Debug)]
pub struct GreeterServer<T> {
    inner: Arc<T>,
}

impl<T> Clone for GreeterServer<T> {
    fn clone(&self) -> Self {
        GreeterServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Greeter> GreeterServer<T> {
    /// Serves `greeter`.
    pub fn new(greeter: T) -> Self {
        Self::from_arc(Arc::new(greeter))
    }

    /// Serves a shared `greeter`.
    pub fn from_arc(greeter: Arc<T>) -> Self {
        GreeterServer { inner: greeter }
    }
}

/// The response future of [`GreeterServer`].
pub type ServerFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

/// Decodes one unary call of `req`, runs `method` on it, and encodes its answer.
async fn unary<B, M1, M2, F, Fut>(
    req: http::Request<B>,
    method: F,
) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::BoxError> + Send,
    M1: prost::Message + Default + Send + 'static,
    M2: prost::Message + Send + 'static,
    F: FnMut(Request<M1>) -> Fut,
    Fut: Future<Output = Result<Response<M2>, Status>>,
{
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<M2, M1>::default());
    grpc.unary(tower::service_fn(method), req).await
}

impl<T, B> tower::Service<http::Request<B>> for GreeterServer<T>
where
    T: Greeter,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::BoxError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ServerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> ServerFuture {
        let greeter = self.inner.clone();
        match req.uri().path() {
            SAY_HELLO => Box::pin(async move {
                Ok(unary(req, |r| {
                    let g = greeter.clone();
                    async move { g.say_hello(r).await }
                })
                .await)
            }),
            SAY_GOODBYE => Box::pin(async move {
                Ok(unary(req, |r| {
                    let g = greeter.clone();
                    async move { g.say_goodbye(r).await }
                })
                .await)
            }),
            SET_GREETING => Box::pin(async move {
                Ok(unary(req, |r| {
                    let g = greeter.clone();
                    async move { g.set_greeting(r).await }
                })
                .await)
            }),
            path => {
                let status = Status::unimplemented(format!("{SERVICE} has no method at {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
