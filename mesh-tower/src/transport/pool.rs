//! Connection pools: one hyper-util client per endpoint and protocol.
//!
//! The request keeps its logical authority (`reviews:9080`) in its URI, so HTTP/2's
//! `:authority` and HTTP/1.1's `Host` say what the caller (or a rewrite) asked for; the
//! endpoint to dial travels beside it in [`Outgoing`]. Each endpoint keeps, in its
//! [`EndpointState`], one client per protocol whose connector
//! always dials that endpoint, so its connection pool is the endpoint's pool — and a
//! request reaches it without a lookup. The codec is the one the balancer chose
//! ([`Protocol`]): the request's version is set to match it, as Envoy translates between
//! downstream and upstream codecs.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use crate::state::EndpointState;
use crate::{BoxError, BoxFuture, ReqBody, ResBody};

/// The protocol to speak to an endpoint, chosen by the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    /// The request version the codec speaks.
    pub fn version(self) -> Version {
        match self {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::Http2 => Version::HTTP_2,
        }
    }
}

/// A request on its way to one endpoint: what the connection pools (or another transport
/// given to [`Mesh::client_over`](crate::Mesh::client_over)) receive.
#[derive(Debug)]
pub struct Outgoing {
    /// The request, its URI absolute with the logical authority. Over HTTP/1.1 its
    /// `Host` header is set only when a rewrite set it: otherwise the URI's authority is
    /// the `Host` to send (the pools add it, as hyper's client does).
    pub request: Request<ReqBody>,
    /// The endpoint to send it to.
    pub endpoint: Arc<EndpointState>,
    /// The codec to speak.
    pub protocol: Protocol,
}

type EndpointClient = Client<FixedConnector, ReqBody>;

/// The clients of one endpoint, made on first use.
#[derive(Debug)]
pub(crate) struct EndpointPools {
    target: Option<Uri>,
    http1: OnceLock<EndpointClient>,
    http2: OnceLock<EndpointClient>,
}

impl EndpointPools {
    /// The pools of the endpoint `address:port`.
    pub(crate) fn new(id: &str) -> Self {
        EndpointPools {
            target: format!("http://{id}/").parse().ok(),
            http1: OnceLock::new(),
            http2: OnceLock::new(),
        }
    }

    fn client(&self, protocol: Protocol) -> Option<&EndpointClient> {
        let target = self.target.as_ref()?;
        let cell = match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        };
        Some(cell.get_or_init(|| {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new());
            if protocol == Protocol::Http2 {
                b.http2_only(true);
            }
            b.build(FixedConnector {
                http,
                target: target.clone(),
            })
        }))
    }
}

/// Sends each [`Outgoing`] request over its endpoint's pooled connections (Envoy's
/// default connect timeout, 10 s; idle connections kept 90 s).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pools;

impl Service<Outgoing> for Pools {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = PoolFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outgoing) -> PoolFuture {
        let Outgoing {
            mut request,
            endpoint,
            protocol,
        } = out;
        *request.version_mut() = protocol.version();
        match endpoint.pools.client(protocol) {
            Some(client) => PoolFuture::Sending(client.request(request)),
            None => {
                let id = endpoint.id().clone();
                PoolFuture::Failed(Some(format!("invalid endpoint address {id}").into()))
            }
        }
    }
}

/// The response future of [`Pools`].
pub enum PoolFuture {
    /// Waiting for the response.
    Sending(ResponseFuture),
    /// The endpoint could not be dialled.
    Failed(Option<BoxError>),
}

impl std::future::Future for PoolFuture {
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            PoolFuture::Sending(f) => std::pin::Pin::new(f).poll(cx).map(|r| match r {
                Ok(resp) => Ok(resp.map(ResBody::incoming)),
                Err(e) => Err(Box::new(e) as BoxError),
            }),
            PoolFuture::Failed(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}

/// A connector that dials one endpoint whatever the request's authority says.
#[derive(Clone)]
struct FixedConnector {
    http: HttpConnector,
    target: Uri,
}

impl Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<TokioIo<TcpStream>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _logical: Uri) -> Self::Future {
        let connecting = self.http.call(self.target.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}
