//! Local rate limits, authentication and authorization of inbound requests: the
//! workload's local rate limits first (see [`ratelimit::local`](crate::ratelimit::local):
//! `429 local_rate_limited`), then the JWT rules of the workload's
//! RequestAuthentications (see [`jwt`](super::jwt): `401` for a present but invalid
//! token), then its AuthorizationPolicies of the configuration in force, in Istio's
//! order (CUSTOM → DENY → ALLOW), decided by `mesh_core::authz` before the application
//! sees the request. The token's claims reach the application as a
//! [`RequestAuth`](mesh_core::authz::RequestAuth) extension.
//!
//! A denied request gets Envoy's answer, `403` with the body `RBAC: access denied`; the
//! deciding policy goes to the debug log. AUDIT policies that match are logged (target
//! `mesh::audit`) and change nothing; `istio.io/dry-run` policies are logged with what
//! they would have decided. A CUSTOM policy that matches asks its provider (see
//! [`ext_authz`](super::ext_authz)); without a registered provider the request is
//! denied (Envoy's ext_authz fails closed).
//!
//! An HTTP/1.1 request in absolute form whose `Host` differs from its URI's authority
//! has its `Host` set to the authority, as Envoy does, so that the host authorization
//! saw is the host the application sees.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use mesh_core::authz::{AuthzRequest, RequestAuth};
use tower::{Layer, Service};

use mesh_core::ratelimit::RouteContext;

use super::{LocalAddr, PeerAddr};
use crate::Mesh;
use crate::identity::PeerIdentity;
use crate::ratelimit::filter::{GlobalChecks, QuotaHeaders};
use crate::ratelimit::local::{self, RequestInfo, RouteCluster, Verdict, XRateLimit};
use crate::telemetry::meter::{Arrival, Meter};

/// Envoy's body of a request its RBAC filter denied.
pub const RBAC_DENIED: &str = "RBAC: access denied";

pin_project_lite::pin_project! {
    /// The body of a response of [`Inbound`]: the application's, or the mesh's own
    /// refusal; the request's metrics are recorded when it ends.
    pub struct InboundBody<B> {
        #[pin]
        inner: Either<B, Full<Bytes>>,
        meter: Option<Box<Meter>>,
    }
}

impl<B> InboundBody<B> {
    /// The application's body.
    pub fn app(body: B) -> Self {
        InboundBody {
            inner: Either::Left(body),
            meter: None,
        }
    }

    /// The mesh's own answer.
    pub fn mesh(body: Full<Bytes>) -> Self {
        InboundBody {
            inner: Either::Right(body),
            meter: None,
        }
    }

    /// The body inside: the application's (`Left`) or the mesh's (`Right`).
    pub fn into_inner(self) -> Either<B, Full<Bytes>> {
        self.inner
    }
}

impl<B> std::fmt::Debug for InboundBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let which = match &self.inner {
            Either::Left(_) => "app",
            Either::Right(_) => "mesh",
        };
        f.debug_struct("InboundBody")
            .field("body", &which)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for InboundBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(m) = this.meter.as_mut() {
                    m.frame(frame);
                }
                if this.meter.is_some()
                    && this.inner.is_end_stream()
                    && let Some(mut m) = this.meter.take()
                {
                    m.end();
                }
            }
            None | Some(Err(_)) => {
                if let Some(mut m) = this.meter.take() {
                    m.end();
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp`, its metrics recorded by `arrival`'s meter when its body ends.
fn metered<B>(resp: Response<InboundBody<B>>, arrival: Option<Arrival>) -> Response<InboundBody<B>>
where
    B: http_body::Body,
{
    let Some(arrival) = arrival else {
        return resp;
    };
    let by_app = matches!(resp.body().inner, Either::Left(_));
    let mut meter = arrival.meter(&resp, by_app);
    let (parts, mut body) = resp.into_parts();
    let ended = match &body.inner {
        Either::Left(b) => b.is_end_stream(),
        Either::Right(b) => http_body::Body::is_end_stream(b),
    };
    if ended {
        meter.end();
    } else {
        body.meter = Some(Box::new(meter));
    }
    Response::from_parts(parts, body)
}

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

fn denied<B>(grpc: bool) -> Response<InboundBody<B>> {
    local_reply(grpc, StatusCode::FORBIDDEN, RBAC_DENIED)
        .map(|b| InboundBody::mesh(Full::new(Bytes::from_static(b.as_bytes()))))
}

/// True for a gRPC request (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Envoy's local reply: `status` with the text `body`; to a gRPC request, HTTP 200 with
/// the status mapped to `grpc-status` (403 → 7 PERMISSION_DENIED, 401 → 16
/// UNAUTHENTICATED) and the text as `grpc-message`, trailers-only.
pub(crate) fn local_reply(
    grpc: bool,
    status: StatusCode,
    body: &'static str,
) -> Response<&'static str> {
    if grpc {
        let code = crate::error::grpc_status(status);
        let mut resp = Response::new("");
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code));
        h.insert("grpc-message", HeaderValue::from_static(body));
        return resp;
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// What the workload's policies say of a request.
#[derive(Debug)]
pub(crate) enum Check {
    /// It may proceed.
    Allow,
    /// It is refused (`403 RBAC: access denied`).
    Deny,
    /// A CUSTOM policy matched: its provider decides first.
    Ask {
        /// The provider's name.
        provider: String,
        /// The policy (`namespace/name`).
        policy: String,
    },
}

/// The workload's policies on `req`; with `custom_done`, after its CUSTOM provider
/// allowed it (DENY and ALLOW policies still apply).
pub(crate) fn check<B>(mesh: &Mesh, req: &Request<B>, custom_done: bool) -> Check {
    let Some(view) = mesh.view() else {
        return Check::Allow;
    };
    let authorizer = view.authorizer();
    if authorizer.is_empty() {
        return Check::Allow;
    }
    let ext = req.extensions();
    let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let identity = ext.get::<PeerIdentity>();
    let local = ext.get::<LocalAddr>().map(|l| l.0);
    // `Host` (which the inbound layer and the gateway make the authority as received),
    // else the URI's authority (HTTP/2).
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
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
        auth: ext.get::<RequestAuth>(),
    };
    let workload = mesh.workload();
    if !custom_done && let Some(policy) = authorizer.custom(&request) {
        return Check::Ask {
            provider: policy.provider().unwrap_or("").to_string(),
            policy: format!("{}/{}", policy.namespace(), policy.name()),
        };
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
    if verdict.allowed {
        Check::Allow
    } else {
        Check::Deny
    }
}

/// Whether the workload's policies let `req` through, for a workload whose CUSTOM
/// policies need no provider (see [`Authorizer::has_custom`]): a CUSTOM match without
/// one denies.
///
/// [`Authorizer::has_custom`]: mesh_core::authz::Authorizer::has_custom
pub(crate) fn authorize<B>(mesh: &Mesh, req: &Request<B>) -> bool {
    match check(mesh, req, false) {
        Check::Allow => true,
        Check::Deny => false,
        Check::Ask { provider, policy } => {
            tracing::debug!(workload = %mesh.workload().name, %policy, %provider, "RBAC: access denied: CUSTOM policy matched and its provider is not registered");
            false
        }
    }
}

/// The whole inbound check, for requests that need waiting for (a JWT whose keys are
/// fetched, a CUSTOM provider): JWT, then CUSTOM, then DENY and ALLOW. `Err` is the
/// answer to refuse the request with.
pub(crate) async fn admit<B>(mesh: &Mesh, req: &mut Request<B>) -> Result<(), Response<Bytes>> {
    let grpc = is_grpc(req.headers());
    let refuse = |status, text: &'static str| {
        local_reply(grpc, status, text).map(|b| Bytes::from_static(b.as_bytes()))
    };
    if let Some(view) = mesh.view().filter(|v| !v.request_authn().is_empty()) {
        match super::jwt::authenticate(mesh, view.request_authn(), req).await {
            Err(reason) => return Err(refuse(StatusCode::UNAUTHORIZED, reason)),
            Ok(Some(auth)) => {
                req.extensions_mut().insert(auth);
            }
            Ok(None) => {}
        }
    }
    let mut custom_done = false;
    loop {
        match check(mesh, req, custom_done) {
            Check::Allow => return Ok(()),
            Check::Deny => return Err(refuse(StatusCode::FORBIDDEN, RBAC_DENIED)),
            Check::Ask { provider, policy } => {
                let Some(service) = mesh.runtime().authz_provider(&provider) else {
                    tracing::debug!(workload = %mesh.workload().name, %policy, %provider, "RBAC: access denied: CUSTOM policy matched and its provider is not registered");
                    return Err(refuse(StatusCode::FORBIDDEN, RBAC_DENIED));
                };
                super::ext_authz::ask(service, &policy, req).await?;
                custom_done = true;
            }
        }
    }
}

impl<S, B, ResB> Service<Request<B>> for Inbound<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: http_body::Body + Send + 'static,
{
    type Response = Response<InboundBody<ResB>>;
    type Error = S::Error;
    type Future = InboundFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(authority) = req.uri().authority()
            && req
                .headers()
                .get(HOST)
                .is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes())
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(HOST, v);
        }
        // Envoy gives a request without an ID one, before anything else sees it.
        let request_id = crate::telemetry::access_log::ensure_request_id(req.headers_mut(), None);
        let (arrival, current) = Arrival::of(&self.mesh, &mut req, request_id);
        let view = self.mesh.view();
        // Local rate limits first, as Envoy's local_ratelimit filter runs before
        // jwt_authn and RBAC in the chain Istio's task builds.
        let mut x_ratelimit = None;
        if let Some(v) = view
            .as_ref()
            .filter(|v| !v.rate_limits().local().is_empty())
        {
            let info = inbound_info(&req, v.rate_limits().route_dependent());
            match local::check(
                self.mesh.runtime().local_rate_limits(),
                v.rate_limits(),
                &info,
                &mut req,
            ) {
                Verdict::Refuse(refusal) => {
                    return InboundFuture::Denied {
                        response: Some(metered(
                            refusal.map(|b| InboundBody::mesh(Full::new(b))),
                            arrival,
                        )),
                    };
                }
                Verdict::Pass(x) => x_ratelimit = x,
            }
        }
        let global = view
            .as_ref()
            .is_some_and(|v| !v.rate_limits().global().is_empty());
        let waits = global
            || view
                .as_ref()
                .is_some_and(|v| !v.request_authn().is_empty() || v.authorizer().has_custom());
        drop(view);
        if waits {
            // JWT keys may have to be fetched, a CUSTOM provider or the global rate
            // limiter asked: the inner service is called after an await, so the ready
            // one goes with the request and a clone stays.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let mesh = self.mesh.clone();
            return InboundFuture::Authn {
                fut: Box::pin(async move {
                    let with_x = |mut r: Response<InboundBody<ResB>>, quota: &QuotaHeaders| {
                        if let Some(x) = x_ratelimit {
                            x.apply(r.headers_mut());
                        }
                        quota.apply(r.headers_mut());
                        r
                    };
                    let mut quota = QuotaHeaders::default();
                    if let Err(refusal) = admit(&mesh, &mut req).await {
                        return Ok(metered(
                            with_x(refusal.map(|b| InboundBody::mesh(Full::new(b))), &quota),
                            arrival,
                        ));
                    }
                    // The global rate limit filters, last before the application (Istio's
                    // task inserts Envoy's filter just before the router).
                    if global && let Some(view) = mesh.view() {
                        let info = inbound_info(&req, true);
                        if let Some(checks) = GlobalChecks::plan(&view, &info, &req) {
                            drop(view);
                            match checks.run(mesh.runtime()).await {
                                Ok(q) => quota = q,
                                Err(refusal) => {
                                    return Ok(metered(
                                        with_x(
                                            refusal.map(|b| InboundBody::mesh(Full::new(b))),
                                            &quota,
                                        ),
                                        arrival,
                                    ));
                                }
                            }
                        }
                    }
                    let answer = crate::telemetry::spans::in_scope(&current, || inner.call(req));
                    crate::telemetry::spans::scope(current, answer)
                        .await
                        .map(|r| metered(with_x(r.map(InboundBody::app), &quota), arrival))
                }),
            };
        }
        if authorize(&self.mesh, &req) {
            let inner = &mut self.inner;
            let answer = crate::telemetry::spans::in_scope(&current, || inner.call(req));
            InboundFuture::App {
                inner: crate::telemetry::spans::scope(current, answer),
                x_ratelimit,
                arrival,
            }
        } else {
            let mut response = denied(is_grpc(req.headers()));
            if let Some(x) = x_ratelimit {
                x.apply(response.headers_mut());
            }
            InboundFuture::Denied {
                response: Some(metered(response, arrival)),
            }
        }
    }
}

/// What rate limits read of an inbound request's route: its port (0 when nothing
/// depends on it, sparing the lookup), Istio's inbound route and cluster of that port.
fn inbound_info<B>(req: &Request<B>, route_dependent: bool) -> RequestInfo<'static> {
    let port = if route_dependent {
        req.extensions()
            .get::<LocalAddr>()
            .map_or(0, |l| l.0.port())
    } else {
        0
    };
    RequestInfo {
        route: RouteContext::inbound(port),
        port,
        cluster: RouteCluster::Inbound(port),
    }
}

/// The future of a request that is authenticated first.
type AuthnFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<InboundBody<B>>, E>> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// The response future of [`Inbound`].
    #[project = Proj]
    pub enum InboundFuture<F, B, E> {
        /// The application answers.
        App {
            // The application's answer, with the request it serves current while
            // it is polled.
            #[pin]
            inner: tokio::task::futures::TaskLocalFuture<crate::telemetry::spans::Current, F>,
            x_ratelimit: Option<XRateLimit>,
            arrival: Option<Arrival>,
        },
        /// The request was refused.
        Denied {
            response: Option<Response<InboundBody<B>>>,
        },
        /// The request's JWT is checked first.
        Authn {
            fut: AuthnFuture<B, E>,
        },
    }
}

impl<F, B, E> Future for InboundFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<InboundBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::App {
                inner,
                x_ratelimit,
                arrival,
            } => inner.poll(cx).map(|r| {
                r.map(|resp| {
                    let mut resp = resp.map(InboundBody::app);
                    if let Some(x) = x_ratelimit {
                        x.apply(resp.headers_mut());
                    }
                    metered(resp, arrival.take())
                })
            }),
            Proj::Denied { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            Proj::Authn { fut } => fut.as_mut().poll(cx),
        }
    }
}
