//! Authorization of inbound requests: the workload's AuthorizationPolicies of the
//! configuration in force, in Istio's order (CUSTOM → DENY → ALLOW), decided by
//! `mesh_core::authz` before the application sees the request.
//!
//! A denied request gets Envoy's answer, `403` with the body `RBAC: access denied`; the
//! deciding policy goes to the debug log. AUDIT policies that match are logged (target
//! `mesh::audit`) and change nothing; `istio.io/dry-run` policies are logged with what
//! they would have decided. A CUSTOM policy that matches needs its provider: none is
//! registered in-process yet, so the request is denied (Envoy's ext_authz fails closed).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use mesh_core::authz::AuthzRequest;
use tower::{Layer, Service};

use super::{LocalAddr, PeerAddr};
use crate::Mesh;
use crate::identity::PeerIdentity;

/// Envoy's body of a request its RBAC filter denied.
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// The body of a response of [`Inbound`]: the application's, or the mesh's own refusal.
pub type InboundBody<B> = Either<B, Full<Bytes>>;

/// The layer of a workload's inbound policies (see [`Mesh::inbound`]).
#[derive(Debug, Clone)]
pub struct InboundLayer {
    mesh: Mesh,
}

impl InboundLayer {
    pub(crate) fn new(mesh: Mesh) -> Self {
        InboundLayer { mesh }
    }
}

impl<S> Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Inbound<S> {
        Inbound {
            inner,
            mesh: self.mesh.clone(),
        }
    }
}

/// A workload's application behind its inbound policies (see the module documentation).
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    inner: S,
    mesh: Mesh,
}

fn denied<B>() -> Response<InboundBody<B>> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        RBAC_DENIED.as_bytes(),
    ))));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Whether the workload's policies let `req` through (the inbound layer's and the
/// ingress gateway's check).
pub(crate) fn authorize<B>(mesh: &Mesh, req: &Request<B>) -> bool {
    let Some(view) = mesh.view() else {
        return true;
    };
    let authorizer = view.authorizer();
    if authorizer.is_empty() {
        return true;
    }
    let ext = req.extensions();
    let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let identity = ext.get::<PeerIdentity>();
    let local = ext.get::<LocalAddr>().map(|l| l.0);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let request = AuthzRequest {
        peer: identity.map(|i| i.spiffe_id().as_str()),
        source_ip: ext.get::<PeerAddr>().map_or(unknown, |p| p.0.ip()),
        remote_ip: None,
        destination_ip: local.map_or(unknown, |l| l.ip()),
        destination_port: local.map_or(0, |l| l.port()),
        sni: identity.and_then(|i| i.sni()),
        method: req.method().as_str(),
        host,
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: req.headers(),
        auth: None,
    };
    let workload = mesh.workload();
    if let Some(policy) = authorizer.custom(&request) {
        tracing::debug!(
            workload = %workload.name,
            policy = %format_args!("{}/{}", policy.namespace(), policy.name()),
            provider = policy.provider().unwrap_or(""),
            method = request.method,
            path = request.path,
            "RBAC: access denied: CUSTOM policy matched and its provider is not registered"
        );
        return false;
    }
    if let Some(policy) = authorizer.audit(&request) {
        tracing::info!(
            target: "mesh::audit",
            workload = %workload.name,
            policy = %format_args!("{}/{}", policy.namespace(), policy.name()),
            method = request.method,
            path = request.path,
            principal = request.peer.unwrap_or(""),
            "request audited"
        );
    }
    if let Some(would) = authorizer.dry_run(&request) {
        tracing::debug!(
            workload = %workload.name,
            policy = would.policy.map(|p| format!("{}/{}", p.namespace(), p.name())),
            allowed = would.allowed,
            "dry-run policy decision (not enforced)"
        );
    }
    let verdict = authorizer.decide(&request);
    if !verdict.allowed {
        tracing::debug!(
            workload = %workload.name,
            policy = verdict.policy.map(|p| format!("{}/{}", p.namespace(), p.name())),
            rule = verdict.rule,
            method = request.method,
            path = request.path,
            principal = request.peer.unwrap_or(""),
            "RBAC: access denied"
        );
    }
    verdict.allowed
}

impl<S, B, ResB> Service<Request<B>> for Inbound<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<InboundBody<ResB>>;
    type Error = S::Error;
    type Future = InboundFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if authorize(&self.mesh, &req) {
            InboundFuture::App {
                inner: self.inner.call(req),
            }
        } else {
            InboundFuture::Denied {
                response: Some(denied()),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Inbound`].
    #[project = Proj]
    pub enum InboundFuture<F, B> {
        /// The application answers.
        App {
            #[pin]
            inner: F,
        },
        /// The request was refused.
        Denied {
            response: Option<Response<InboundBody<B>>>,
        },
    }
}

impl<F, B, E> Future for InboundFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<InboundBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::App { inner } => inner.poll(cx).map(|r| r.map(|resp| resp.map(Either::Left))),
            Proj::Denied { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
