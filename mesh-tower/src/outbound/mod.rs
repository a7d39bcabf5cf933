//! The outbound stack: what `mesh.client()` does to a request, one tower layer per
//! concern, in this order:
//!
//! [`telemetry`] (one span) → [`route`] (decide, hand down a [`Route`]) → [`cors`] →
//! [`fault`] → [`headers`] (rewrites, header operations) → [`mirror`] (copies, through
//! the balancer) → [`timeout`] → [`retry`] → [`balance`] (endpoint, codec) → the transport
//! ([`crate::transport::pool`]).
//!
//! Below the route stage every layer is a `Service<`[`Routed`]`>`: the request travels
//! with its typed [`Route`], from which each layer reads its parameters. A layer that
//! calls its inner service right away wraps the inner future in a future of its own.
//! What is boxed: the routed request itself (one allocation per request, so that the
//! layers move a pointer, not the request), a per-try timer, and the rare cases — a
//! delayed fault, the attempts after the first one, a route timeout waiting for a
//! request body still streaming. The layers are public: a stack can be composed differently with `tower::ServiceBuilder` (see each
//! module's example).

pub mod balance;
pub mod cors;
pub mod fault;
mod future;
pub mod headers;
pub mod mirror;
pub(crate) mod outlier;
pub mod retry;
pub mod route;
mod routed;
pub mod telemetry;
pub mod timeout;

use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use balance::{Balance, BalanceLayer};
pub use cors::{Cors, CorsLayer};
pub use fault::{Fault, FaultLayer};
pub use future::ResponseFuture;
pub use headers::{Headers, HeadersLayer};
pub use mirror::{Mirror, MirrorLayer};
pub use retry::{Retry, RetryLayer};
pub use route::{RouteLayer, RouteService};
pub use routed::{Route, Routed, RoutedParts};
pub use telemetry::{Telemetry, TelemetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

use crate::transport::pool::{Outgoing, Pools};
use crate::{BoxError, Mesh, ReqBody, ResBody, UnsupportedScheme};

/// A transport the outbound stack can end in: the connection pools ([`Pools`]), or a
/// stub or custom transport given to [`Mesh::client_over`].
pub trait Transport:
    Service<Outgoing, Response = Response<ResBody>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<U> Transport for U where
    U: Service<Outgoing, Response = Response<ResBody>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// The layers below the route stage, over transport `U`.
pub type Forward<U = Pools> = Cors<Fault<Headers<Mirror<Timeout<Retry<Balance<U>>>, Balance<U>>>>>;

/// The whole outbound stack of a workload over transport `U`, outermost first.
pub type Stack<U = Pools> = Telemetry<RouteService<Forward<U>>>;

/// The layers below the route stage for `mesh`'s workload, over `transport`.
pub(crate) fn forward<U: Transport>(mesh: &Mesh, transport: U) -> Forward<U> {
    let dispatch = BalanceLayer::new(mesh.identity().cloned()).layer(transport);
    let mirror = MirrorLayer::with_slots(dispatch.clone(), mesh.runtime().mirror_slots().clone());
    CorsLayer.layer(
        FaultLayer.layer(
            HeadersLayer.layer(mirror.layer(TimeoutLayer.layer(RetryLayer.layer(dispatch)))),
        ),
    )
}

impl<U: Transport> Stack<U> {
    /// The stack of `mesh`'s workload over `transport`.
    pub(crate) fn new(mesh: &Mesh, transport: U) -> Self {
        TelemetryLayer.layer(RouteLayer::new(mesh.clone()).layer(forward(mesh, transport)))
    }
}

/// The outbound client of a workload (see [`Mesh::client`]): a `Clone` tower
/// `Service<http::Request<B>>` for any body `B` of `Bytes`.
#[derive(Clone)]
pub struct MeshClient<U = Pools> {
    stack: Stack<U>,
    buffer_limit: usize,
}

impl<U> std::fmt::Debug for MeshClient<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").finish_non_exhaustive()
    }
}

impl<U> MeshClient<U> {
    pub(crate) fn new(stack: Stack<U>) -> Self {
        MeshClient {
            stack,
            buffer_limit: crate::body::DEFAULT_BUFFER_LIMIT,
        }
    }

    /// Sets how much of a request body is kept for retries and mirrors (64 KiB by
    /// default); longer bodies are sent once, never retried.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }
}

impl<B, U> Service<Request<B>> for MeshClient<U>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    U: Transport,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ClientFuture<<Stack<U> as Service<Request<ReqBody>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // `https://` asks for TLS: the balancer originates it (never plaintext).
        if let Some(scheme) = req.uri().scheme()
            && *scheme != Scheme::HTTP
            && *scheme != Scheme::HTTPS
        {
            let e = UnsupportedScheme {
                scheme: scheme.as_str().into(),
            };
            return ClientFuture::from(ClientFutureState::Refused {
                error: Some(e.into()),
            });
        }
        // The request goes out at once; its body streams (see `crate::body`).
        let grpc = crate::inbound::is_grpc(req.headers());
        let (parts, body) = req.into_parts();
        let body = ReqBody::streaming(body, self.buffer_limit);
        ClientFuture::from(ClientFutureState::Sent {
            fut: self.stack.call(Request::from_parts(parts, body)),
            grpc,
        })
    }
}

pin_project! {
    /// The response future of [`MeshClient`].
    #[project = ClientFutureStateProj]
    enum ClientFutureState<F> {
        /// On its way; a gRPC request gets the mesh's own failures as gRPC statuses.
        Sent {
            #[pin]
            fut: F,
            grpc: bool,
        },
        /// Refused before anything was sent.
        Refused {
            error: Option<BoxError>,
        },
    }
}

pin_project! {
    /// The response future of [`MeshClient`].
    pub struct ClientFuture<F> {
        #[pin]
        state: ClientFutureState<F>,
    }
}

impl<F> From<ClientFutureState<F>> for ClientFuture<F> {
    fn from(state: ClientFutureState<F>) -> Self {
        ClientFuture { state }
    }
}

/// A failure the mesh answered itself, as Envoy answers a gRPC request: trailers-only
/// with a `grpc-status` (see [`MeshFailure::into_grpc_response`]); other responses as
/// they are.
fn grpc_local_reply(resp: Response<ResBody>) -> Response<ResBody> {
    match resp.extensions().get::<crate::MeshFailure>() {
        Some(failure) if !resp.headers().contains_key("grpc-status") => {
            failure.clone().into_grpc_response()
        }
        _ => resp,
    }
}

impl<F> std::future::Future for ClientFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ClientFutureStateProj::Sent { fut, grpc } => match fut.poll(cx) {
                Poll::Ready(Ok(resp)) if *grpc => Poll::Ready(Ok(grpc_local_reply(resp))),
                other => other,
            },
            ClientFutureStateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}
