//! The client side of `helloworld.Greeter`: [`GreeterClient`], what `tonic-build`
//! generates, written by hand over [`tonic::client::Grpc`] and
//! [`tonic_prost::ProstCodec`].
//!
//! It runs over any tower service of HTTP requests whose bodies are `Bytes` — in
//! particular over the mesh's outbound client, with no adapter: `mesh.client()` takes
//! tonic's request body (`tonic::body::Body`, a `Body<Data = Bytes>` whose errors are
//! `Status`) as it takes any body, and tonic decodes the mesh's response body
//! (`mesh_tower::ResBody`) as it would hyper's. [`GreeterClient::over_mesh`] puts the
//! service's address in every request (`http://greeter.default.svc.cluster.local:50051`
//! by default): the mesh routes on that host and the method's path, balances, retries,
//! and speaks HTTP/2 (the ServiceEntry's port is `GRPC`) with mutual TLS to the
//! endpoint it picked.

use bytes::Bytes;
use http::Uri;
use http::uri::PathAndQuery;
use mesh_tower::{BoxError, Mesh, MeshClient};
use tonic::client::GrpcService;
use tonic::{GrpcMethod, IntoRequest, Response, Status};
use tonic_prost::ProstCodec;

use crate::pb::{HelloReply, HelloRequest, SetGreetingRequest};
use crate::server::SERVICE;

/// The greeter's address in the mesh (its ServiceEntry's host and port).
pub const GREETER_ORIGIN: &str = "http://greeter.default.svc.cluster.local:50051";

/// A client of `helloworld.Greeter` over the tower service `T`.
#[derive(Debug, Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl GreeterClient<MeshClient> {
    /// A client calling the greeter at [`GREETER_ORIGIN`] through `mesh`, the calling
    /// workload's handle: its requests go through the workload's outbound stack, with
    /// its identity.
    pub fn over_mesh(mesh: &Mesh) -> Self {
        GreeterClient::with_origin(mesh.client(), Uri::from_static(GREETER_ORIGIN))
    }
}

impl<T> GreeterClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    /// A client sending its requests through `inner` to `origin` (scheme and authority;
    /// each request's path is the method's).
    pub fn with_origin(inner: T, origin: Uri) -> Self {
        GreeterClient {
            inner: tonic::client::Grpc::with_origin(inner, origin),
        }
    }

    /// `SayHello`.
    pub async fn say_hello(
        &mut self,
        request: impl IntoRequest<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.unary(request.into_request(), "SayHello").await
    }

    /// `SayGoodbye`.
    pub async fn say_goodbye(
        &mut self,
        request: impl IntoRequest<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.unary(request.into_request(), "SayGoodbye").await
    }

    /// `SetGreeting`.
    pub async fn set_greeting(
        &mut self,
        request: impl IntoRequest<SetGreetingRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.unary(request.into_request(), "SetGreeting").await
    }

    async fn unary<M1, M2>(
        &mut self,
        mut request: tonic::Request<M1>,
        method: &'static str,
    ) -> Result<Response<M2>, Status>
    where
        M1: prost::Message + Send + Sync + 'static,
        M2: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the service is not ready: {}", e.into())))?;
        let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}"))
            .map_err(|e| Status::internal(format!("bad method path: {e}")))?;
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, method));
        self.inner
            .unary(request, path, ProstCodec::<M1, M2>::default())
            .await
    }
}
