//! The gateway's request service: which server answers the host, then the gateway
//! workload's mesh client with the Gateway recorded in the request.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use mesh_core::Source;
use mesh_core::route::split_authority;
use tower::{Service, ServiceExt};

use super::table::TlsKey;
use super::{GatewaySource, Shared};
use crate::body::full;
use crate::{BoxError, BoxFuture, MeshFailure, ResBody};

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Serves the requests of one gateway port (and, on a TLS port, of connections that
/// negotiated one set of TLS settings).
#[derive(Clone)]
pub(crate) struct GatewayService {
    shared: Arc<Shared>,
    port: u32,
    tls: Option<Arc<TlsKey>>,
}

impl GatewayService {
    pub(crate) fn new(shared: Arc<Shared>, port: u32, tls: Option<Arc<TlsKey>>) -> Self {
        GatewayService { shared, port, tls }
    }

    /// Decides what to do with `req`: answer it here, or forward it (rewritten for the
    /// mesh client).
    fn prepare<B>(&self, mut req: Request<B>) -> Prepared<B> {
        let written = match req.uri().authority() {
            Some(a) => a.as_str().to_owned(),
            None => match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
                Some(h) => h.trim().to_owned(),
                None => return Prepared::Answer(status(StatusCode::BAD_REQUEST)),
            },
        };
        let name = split_authority(&written).0.to_ascii_lowercase();
        if name.is_empty() {
            return Prepared::Answer(status(StatusCode::BAD_REQUEST));
        }
        let table = self.shared.table.load();
        // Envoy answers 404 with an empty body when no virtual host matches.
        let Some(server) = table.find(self.port, &name, self.tls.as_deref()) else {
            return Prepared::Answer(status(StatusCode::NOT_FOUND));
        };
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if server.https_redirect {
            let mut resp = status(StatusCode::MOVED_PERMANENTLY);
            match HeaderValue::from_str(&format!("https://{name}{pq}")) {
                Ok(location) => {
                    resp.headers_mut().insert(LOCATION, location);
                }
                Err(_) => return Prepared::Answer(status(StatusCode::BAD_REQUEST)),
            }
            return Prepared::Answer(resp);
        }
        // Only VirtualServices bound to the Gateway route here, and only those the
        // server's `namespace/host` lets in; without one Envoy has no route: 404.
        let mesh = self.shared.config.current();
        let w = &self.shared.workload;
        let src = Source {
            namespace: &w.namespace,
            labels: &w.labels,
            gateway: Some(&server.gateway),
        };
        match mesh.virtual_host(&name, &src) {
            Some(vh) if server.admits(&vh.namespace, &name) => {}
            _ => return Prepared::Answer(status(StatusCode::NOT_FOUND)),
        }
        let gateway = server.gateway.clone();
        drop(table);
        // The mesh client routes absolute `http://` URIs; the port is the server's, so
        // that VirtualService `port` matches see the Gateway's port, not the local one.
        let authority = if self.port == 80 {
            name
        } else {
            format!("{name}:{}", self.port)
        };
        let Ok(uri) = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(pq)
            .build()
        else {
            return Prepared::Answer(status(StatusCode::BAD_REQUEST));
        };
        *req.uri_mut() = uri;
        // The upstream sees the authority the client wrote, as behind Envoy.
        if !req.headers().contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(&written)
        {
            req.headers_mut().insert(HOST, v);
        }
        let proto = if self.tls.is_some() { "https" } else { "http" };
        req.headers_mut()
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        req.extensions_mut().insert(GatewaySource(gateway));
        Prepared::Forward(req)
    }
}

impl<B> Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.prepare(req) {
            Prepared::Answer(resp) => Box::pin(async move { Ok(resp) }),
            Prepared::Forward(req) => {
                let client = self.shared.client.clone();
                Box::pin(async move {
                    Ok(match client.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(e) => failure(e),
                    })
                })
            }
        }
    }
}

/// What to do with a request.
enum Prepared<B> {
    /// Send it through the mesh client.
    Forward(Request<B>),
    /// Answer it here.
    Answer(Response<ResBody>),
}

/// A response with `status` and an empty body.
fn status(status: StatusCode) -> Response<ResBody> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = status;
    resp
}

/// The answer to a request the mesh client failed.
fn failure(e: BoxError) -> Response<ResBody> {
    if let Some(f) = e.downcast_ref::<MeshFailure>() {
        return f.clone().into_response();
    }
    tracing::debug!(error = %e, "gateway: the mesh client failed");
    status(StatusCode::BAD_GATEWAY)
}
