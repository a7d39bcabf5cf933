//! Sending a request to the endpoint the balancer chose, over pooled connections.
//!
//! hyper-util's client pools connections by scheme and authority; the balancer writes the
//! endpoint's address into the request URI (keeping the caller's authority in `Host`), so
//! each endpoint gets its own pool. Services whose port protocol is HTTP2 or GRPC are
//! spoken to in HTTP/2 (prior knowledge), others in HTTP/1.1.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::{BoxError, BoxFuture, ReqBody, ResBody};

/// The protocol to speak to an endpoint, set by the balancer as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// The pooled HTTP/1.1 and HTTP/2 clients of the process.
#[derive(Clone, Debug)]
pub struct UpstreamService {
    http1: Client<HttpConnector, ReqBody>,
    http2: Client<HttpConnector, ReqBody>,
}

impl Default for UpstreamService {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamService {
    /// New pools (Envoy's default connect timeout, 10 s; idle connections kept 90 s).
    pub fn new() -> Self {
        let connector = || {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c.set_connect_timeout(Some(Duration::from_secs(10)));
            c
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90));
        let http1 = b.build(connector());
        let mut b2 = Client::builder(TokioExecutor::new());
        b2.pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true);
        let http2 = b2.build(connector());
        UpstreamService { http1, http2 }
    }
}

impl Service<Request<ReqBody>> for UpstreamService {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let client = match req.extensions().get::<Protocol>() {
            Some(Protocol::Http2) => self.http2.clone(),
            _ => self.http1.clone(),
        };
        Box::pin(async move {
            let resp = client.request(req).await?;
            Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()))
        })
    }
}
