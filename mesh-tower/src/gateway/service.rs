//! The gateway's request service: the headers an edge proxy sets, the gateway
//! workload's local rate limits (GATEWAY-context filters, with their per-route settings
//! for the virtual host and rule the request takes), its JWT rules and authorization,
//! the routing decision (mesh-core's, on the gateway workload's view), then the
//! workload's outbound layers with the decided route; upgrades (WebSocket) are bridged
//! once the upstream accepts them.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_config::model::envoy_filter::RouteAction;
use mesh_core::gateway::{
    Chain, GatewayRoutes, VirtualHost, require_tls_location, route_authority,
};
use mesh_core::ratelimit::RouteContext;
use mesh_core::route::split_authority;
use mesh_core::{Decision, Outcome, RequestHead, Upstream};
use tower::{Service, ServiceExt};

use super::Shared;
use super::headers::{
    Upgrade, is_upgrade_response, sanitize_request, strip_hop_by_hop, upgrade_of,
};
use crate::body::{DEFAULT_BUFFER_LIMIT, DownstreamBody, Fault};
use crate::inbound::{PeerAddr, RBAC_DENIED};
use crate::outbound::route::{answer, failure};
use crate::outbound::{Route, Routed};
use crate::ratelimit::filter::{GlobalChecks, QuotaHeaders};
use crate::ratelimit::local::{self, RequestInfo, RouteCluster, Verdict, XRateLimit};
use crate::telemetry::meter::{Metered, Outbound};
use crate::{BoxError, BoxFuture, MeshFailure, ReqBody, ResBody};

/// What the gateway knows of a TLS connection.
#[derive(Debug)]
pub(crate) struct TlsConn {
    /// The filter chain its SNI chose.
    pub(crate) chain: Chain,
    /// `x-forwarded-client-cert` for a MUTUAL connection (the verified client
    /// certificate), set on each of its requests.
    pub(crate) xfcc: Option<HeaderValue>,
}

/// Serves the requests of one gateway port (and, on a TLS port, of one connection).
#[derive(Clone)]
pub(crate) struct GatewayService {
    shared: Arc<Shared>,
    port: u32,
    tls: Option<Arc<TlsConn>>,
}

impl GatewayService {
    pub(crate) fn new(shared: Arc<Shared>, port: u32, tls: Option<Arc<TlsConn>>) -> Self {
        GatewayService { shared, port, tls }
    }

    /// What Envoy's HTTP connection manager does before any filter: the request is
    /// validated (an absolute URI's scheme, an authority), its URI made the authority
    /// and path routed on, its hop-by-hop headers removed and the headers an edge proxy
    /// vouches for set (so that no filter and no rule sees what an edge proxy would have
    /// removed or replaced). `Err` is the answer.
    fn edge<B>(&self, mut req: Request<B>) -> Result<(Request<B>, Edge), Box<Response<ResBody>>> {
        let tls = self.tls.is_some();
        // RFC 9112 3.2: a request with more than one `Host` is answered 400 (which one
        // would be routed is ambiguous: request smuggling's raw material).
        if req.headers().get_all(HOST).iter().nth(1).is_some() {
            return Err(Box::new(status(StatusCode::BAD_REQUEST)));
        }
        // A body announced larger than the ingress takes is refused before anything is
        // forwarded (one that grows past it on the way is refused then).
        if let Some(max) = self.shared.max_request_body
            && req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > max)
        {
            return Err(Box::new(bad_body(Fault::TooLarge)));
        }
        // An absolute URI is `http` (or `https` over TLS), as Envoy requires.
        match req.uri().scheme_str() {
            None | Some("http") => {}
            Some("https") if tls => {}
            Some(_) => return Err(Box::new(status(StatusCode::BAD_REQUEST))),
        }
        // The authority Envoy routes on and sends upstream: the URI's (absolute form,
        // HTTP/2 `:authority`), else `Host`.
        let written = match req.uri().authority() {
            Some(a) => a.as_str().to_owned(),
            None => match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
                Some(h) => h.trim().to_owned(),
                None => return Err(Box::new(status(StatusCode::BAD_REQUEST))),
            },
        };
        let Ok(host_value) = HeaderValue::from_str(&written) else {
            return Err(Box::new(status(StatusCode::BAD_REQUEST)));
        };
        if split_authority(&written).0.is_empty() {
            return Err(Box::new(status(StatusCode::BAD_REQUEST)));
        }
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let Ok(server_port) = u16::try_from(self.port) else {
            return Err(Box::new(status(StatusCode::NOT_FOUND)));
        };
        let Ok(uri) = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(route_authority(&written, server_port))
            .path_and_query(pq.clone())
            .build()
        else {
            return Err(Box::new(status(StatusCode::BAD_REQUEST)));
        };
        *req.uri_mut() = uri;
        // Upgrades: Istio's gateways proxy WebSocket; Envoy's HTTP/1 codec drops `h2c`
        // and refuses upgrade types (and CONNECT) it is not configured for.
        let upgrade = if req.version() == Version::HTTP_11 {
            upgrade_of(req.headers())
        } else {
            Upgrade::None
        };
        let websocket = upgrade == Upgrade::WebSocket;
        let peer: Option<IpAddr> = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let headers = req.headers_mut();
        strip_hop_by_hop(headers, websocket);
        sanitize_request(
            headers,
            peer,
            tls,
            self.tls.as_ref().and_then(|t| t.xfcc.as_ref()),
        );
        // The upstream sees the authority the gateway matched on, as behind Envoy.
        headers.insert(HOST, host_value);
        Ok((
            req,
            Edge {
                written,
                pq,
                server_port,
                upgrade,
            },
        ))
    }

    /// The gateway's local rate limits on `req` (after the edge, before JWT and
    /// authorization, as Envoy's local_ratelimit filter runs first in Istio's task):
    /// `Err` is the refusal; `Ok` carries the `x-ratelimit-*` headers of the response.
    fn limit_locally<B>(
        &self,
        req: &mut Request<B>,
        edge: &Edge,
    ) -> Result<Option<XRateLimit>, Box<Response<ResBody>>> {
        let mesh = &self.shared.mesh;
        let generation = mesh.runtime().generation();
        let Some(view) = generation.view(mesh.slot()) else {
            return Ok(None);
        };
        let limits = view.rate_limits();
        if limits.local().is_empty() {
            return Ok(None);
        }
        let port = edge.server_port;
        let needs_route = limits.route_dependent();
        // The route Envoy's filter sees: the virtual host and rule the request would
        // take now (routing proper happens after authentication, which may add claim
        // headers to match on).
        let head = RequestHead::from_request(req, port);
        let workload = mesh.workload();
        let chain = self.tls.as_ref().map(|t| &t.chain);
        let routed = if needs_route {
            view.gateway().and_then(|routes| {
                let vhost = routes.virtual_host(port, chain, &edge.written).ok()?;
                let decision = GatewayRoutes::route_in(
                    &generation.mesh,
                    vhost,
                    &head,
                    &workload.namespace,
                    &workload.labels,
                    &mut rand::rng(),
                )
                .ok()?;
                Some((vhost, decision))
            })
        } else {
            None
        };
        let (route, cluster) = match &routed {
            Some((vhost, d)) => route_context(port, vhost, d),
            None => (RouteContext::unrouted(port), RouteCluster::None),
        };
        let info = RequestInfo {
            route,
            port,
            cluster,
        };
        match local::check(mesh.runtime().local_rate_limits(), limits, &info, req) {
            Verdict::Pass(x) => Ok(x),
            Verdict::Refuse(refusal) => Err(Box::new(refusal.map(ResBody::full))),
        }
    }

    /// Routes a request that passed the edge (or answers it here). In Envoy's order:
    /// authorization, then the virtual host is chosen (404), `require_tls` answered
    /// (301), upgrades other than WebSocket refused (403), and only then the rules
    /// matched.
    fn prepare<B>(&self, mut req: Request<B>, edge: Edge, admitted: bool) -> Prepared<B> {
        let Edge {
            written,
            pq,
            server_port,
            upgrade,
        } = edge;
        let websocket = upgrade == Upgrade::WebSocket;
        let tls = self.tls.is_some();
        // The gateway is a workload: the AuthorizationPolicies that select it apply
        // after the edge's header sanitizing and before routing, as Envoy's RBAC
        // filter runs between the two (requests that
        // needed waiting for were admitted before).
        if !admitted && !crate::inbound::authorize(&self.shared.mesh, &req) {
            let grpc = crate::inbound::is_grpc(req.headers());
            return Prepared::Answer(
                crate::inbound::local_reply(grpc, StatusCode::FORBIDDEN, RBAC_DENIED)
                    .map(ResBody::full),
            );
        }

        let mesh = &self.shared.mesh;
        let generation = mesh.runtime().generation();
        let Some(routes) = generation.view(mesh.slot()).and_then(|v| v.gateway()) else {
            return Prepared::Answer(status(StatusCode::NOT_FOUND));
        };
        let head = RequestHead::from_request(&req, server_port);
        let chain = self.tls.as_ref().map(|t| &t.chain);
        // Envoy answers 404 with an empty body when no virtual host matches.
        let vhost = match routes.virtual_host(server_port, chain, &written) {
            Ok(v) => v,
            Err(e) => return Prepared::Answer(failure(&e).into_response()),
        };
        if vhost.require_tls && !tls {
            // Envoy's `require_tls` redirect: the host as received, port included.
            let location = require_tls_location(&written, pq.path(), pq.query());
            return Prepared::Answer(match HeaderValue::from_str(&location) {
                Ok(location) => {
                    let mut resp = status(StatusCode::MOVED_PERMANENTLY);
                    resp.headers_mut().insert(LOCATION, location);
                    resp
                }
                Err(_) => status(StatusCode::BAD_REQUEST),
            });
        }
        if upgrade == Upgrade::Other || req.method() == Method::CONNECT {
            return Prepared::Answer(status(StatusCode::FORBIDDEN));
        }
        let workload = mesh.workload();
        let decision = match GatewayRoutes::route_in(
            &generation.mesh,
            vhost,
            &head,
            &workload.namespace,
            &workload.labels,
            &mut rand::rng(),
        ) {
            Ok(d) => d,
            Err(e) => return Prepared::Answer(failure(&e).into_response()),
        };
        if let Some(resp) = answer(&decision, &head) {
            return Prepared::Answer(resp);
        }
        // The global rate limit filters need the route the request takes; Envoy's
        // filter skips a route whose cluster does not exist (answered 503 `NC`).
        let cluster_exists = !matches!(
            decision.outcome,
            Outcome::Forward {
                upstream: Upstream::Missing { .. },
                ..
            }
        );
        let global = generation
            .view(mesh.slot())
            .filter(|v| cluster_exists && !v.rate_limits().global().is_empty())
            .and_then(|view| {
                let (route, cluster) = route_context(server_port, vhost, &decision);
                let info = RequestInfo {
                    route,
                    port: server_port,
                    cluster,
                };
                GlobalChecks::plan(view, &info, &req).map(Box::new)
            });
        let Some(route) =
            Route::forward(generation.clone(), mesh.slot(), &decision, head.authority)
        else {
            return Prepared::Answer(status(StatusCode::NOT_FOUND));
        };
        let downstream = websocket.then(|| hyper::upgrade::on(&mut req));
        Prepared::Forward(req, route, downstream, global)
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
        let mesh = &self.shared.mesh;
        let mut req = req;
        // At the edge every request is external: Envoy gives it a request ID of its own.
        req.headers_mut().insert(
            crate::telemetry::X_REQUEST_ID,
            crate::telemetry::access_log::request_id(),
        );
        let meter = mesh.view().and_then(|v| {
            let span =
                crate::telemetry::spans::client(mesh.runtime(), v.telemetry(), &mut req, true);
            Outbound::start(mesh.runtime(), v.telemetry(), &req, span)
        });
        let answer = move |resp: Response<ResBody>, meter: Option<Outbound>| match meter {
            Some(m) => m.answer(resp),
            None => resp,
        };
        let (mut req, edge) = match self.edge(req) {
            Ok(x) => x,
            Err(resp) => return Box::pin(async move { Ok(answer(*resp, meter)) }),
        };
        let x = match self.limit_locally(&mut req, &edge) {
            Ok(x) => x,
            Err(refusal) => return Box::pin(async move { Ok(answer(*refusal, meter)) }),
        };
        // The gateway's RequestAuthentications run next (their keys may have to be
        // fetched), as Envoy's jwt_authn filter runs before its RBAC filter and router.
        let waits = self
            .shared
            .mesh
            .view()
            .is_some_and(|v| !v.request_authn().is_empty() || v.authorizer().has_custom());
        if waits {
            let mut this = self.clone();
            return Box::pin(async move {
                let mut req = req;
                if let Err(refusal) = crate::inbound::admit(&this.shared.mesh, &mut req).await {
                    return Ok(answer(with_x(refusal.map(ResBody::full), x), meter));
                }
                this.route(req, edge, true, x, meter).await
            });
        }
        self.route(req, edge, false, x, meter)
    }
}

/// The route rate limits see of a request `vhost` and `decision` route at server
/// `port`, and the cluster it is forwarded to.
fn route_context<'a>(
    port: u16,
    vhost: &'a VirtualHost,
    d: &'a Decision<'a>,
) -> (RouteContext<'a>, RouteCluster<'a>) {
    let action = match &d.outcome {
        Outcome::Forward { .. } => RouteAction::Route,
        Outcome::Redirect(_) | Outcome::RequireTls => RouteAction::Redirect,
        Outcome::Direct(_) => RouteAction::DirectResponse,
    };
    let cluster = match &d.outcome {
        Outcome::Forward {
            upstream: Upstream::Cluster(c),
            ..
        } => RouteCluster::Named(&c.name),
        _ => RouteCluster::None,
    };
    let name = d
        .rule
        .and_then(|(_, r)| r.origin.name.as_deref())
        .unwrap_or("");
    (
        RouteContext::gateway(port, &vhost.domain, d.gateway.map(|g| &**g), name, action),
        cluster,
    )
}

/// The `x-ratelimit-*` headers of the local rate limits, if any, on `resp`.
fn with_x(mut resp: Response<ResBody>, x: Option<XRateLimit>) -> Response<ResBody> {
    if let Some(x) = x {
        x.apply(resp.headers_mut());
    }
    resp
}

/// What the edge learnt of a request, for routing.
struct Edge {
    /// The authority as the client wrote it.
    written: String,
    /// Path and query.
    pq: PathAndQuery,
    /// The server's port.
    server_port: u16,
    /// The upgrade asked for.
    upgrade: Upgrade,
}

impl GatewayService {
    /// Routes `req`, which passed the edge (and, `admitted`, its JWT and CUSTOM
    /// provider), or answers it here; `x` goes on the response.
    fn route<B>(
        &mut self,
        req: Request<B>,
        edge: Edge,
        admitted: bool,
        x: Option<XRateLimit>,
        meter: Option<Outbound>,
    ) -> BoxFuture<Result<Response<ResBody>, Infallible>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match self.prepare(req, edge, admitted) {
            Prepared::Answer(resp) => Box::pin(async move {
                let resp = with_x(resp, x);
                Ok(match meter {
                    Some(m) => m.answer(resp),
                    None => resp,
                })
            }),
            Prepared::Forward(mut req, route, downstream, global) => {
                let mut meter = meter;
                if let Some(m) = &mut meter {
                    m.routed(&route);
                    m.decorate(req.headers_mut());
                }
                if let Some(view) = self.shared.mesh.view() {
                    crate::outbound::route::add_baggage(
                        req.headers_mut(),
                        &view.telemetry().baggage,
                    );
                }
                let span = crate::outbound::telemetry::span_of(&req);
                {
                    let _entered = span.enter();
                    crate::outbound::telemetry::record_route(&route);
                }
                let (parts, body) = req.into_parts();
                let (body, fault) = DownstreamBody::new(body, self.shared.body_idle);
                let body = body.with_max(self.shared.max_request_body);
                let mut request =
                    Request::from_parts(parts, ReqBody::streaming(body, DEFAULT_BUFFER_LIMIT));
                if let Some(m) = &meter {
                    m.count_request(request.body_mut());
                }
                let forward = self.shared.forward.clone();
                let runtime = global.as_ref().map(|_| self.shared.mesh.runtime().clone());
                Box::pin(async move {
                    let mut quota = QuotaHeaders::default();
                    if let (Some(checks), Some(runtime)) = (global, runtime) {
                        match checks.run(&runtime).await {
                            Ok(q) => quota = q,
                            Err(refusal) => {
                                let resp = with_x(refusal.map(ResBody::full), x);
                                return Ok(match meter {
                                    Some(m) => m.answer(resp),
                                    None => resp,
                                });
                            }
                        }
                    }
                    // Made once the request is forwarded: dropped unanswered, it records
                    // that the client went away.
                    let forwarded = forward.oneshot(Routed::new(request, route));
                    let checked = async move {
                        let result = forwarded.await;
                        // A request whose body the client broke (a malformed chunk),
                        // left unfinished or made too large is the client's fault:
                        // Envoy's 400 flagged DPE, 408 flagged SI or 413, not the
                        // upstream's 503.
                        match fault.get() {
                            Some(f)
                                if result
                                    .as_ref()
                                    .map_or(true, |r| r.status().is_server_error()) =>
                            {
                                Ok(bad_body(f))
                            }
                            _ => result,
                        }
                    };
                    let fut = Metered::new(
                        crate::outbound::telemetry::TelemetryFuture::new(checked, span),
                        meter,
                    );
                    let mut resp = with_x(
                        match fut.await {
                            Ok(resp) => respond(resp, downstream),
                            Err(e) => failed(e),
                        },
                        x,
                    );
                    quota.apply(resp.headers_mut());
                    Ok(resp)
                })
            }
        }
    }
}

/// What to do with a request.
enum Prepared<B> {
    /// Send it through the workload's outbound layers — after the global rate limit
    /// checks, if any; with the client's side of a WebSocket upgrade.
    Forward(
        Request<B>,
        Route,
        Option<OnUpgrade>,
        Option<Box<GlobalChecks>>,
    ),
    /// Answer it here.
    Answer(Response<ResBody>),
}

/// The upstream's response, as the client gets it: without hop-by-hop headers; a `101`
/// to a WebSocket upgrade is passed on, and the two upgraded connections are bridged.
fn respond(mut resp: Response<ResBody>, downstream: Option<OnUpgrade>) -> Response<ResBody> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(resp.headers_mut(), false);
        return resp;
    }
    let Some(downstream) = downstream else {
        tracing::debug!("gateway: a 101 to a request that asked for no upgrade");
        return status(StatusCode::BAD_GATEWAY);
    };
    if !is_upgrade_response(resp.status(), resp.headers())
        || resp.extensions().get::<OnUpgrade>().is_none()
    {
        tracing::debug!("gateway: the upstream's 101 cannot be upgraded");
        return status(StatusCode::BAD_GATEWAY);
    }
    let upstream = hyper::upgrade::on(&mut resp);
    strip_hop_by_hop(resp.headers_mut(), true);
    tokio::spawn(tunnel(downstream, upstream));
    resp
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections
/// until both sides are done.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    let (client, server) = tokio::join!(downstream, upstream);
    match (client, server) {
        (Ok(client), Ok(server)) => {
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((up, down)) => {
                    tracing::debug!(up, down, "gateway: upgraded connection closed");
                }
                Err(e) => tracing::debug!(error = %e, "gateway: upgraded connection failed"),
            }
        }
        (client, server) => tracing::debug!(
            client = ?client.err(),
            upstream = ?server.err(),
            "gateway: the upgrade did not complete"
        ),
    }
}

/// A response with `status` and an empty body.
fn status(status: StatusCode) -> Response<ResBody> {
    let mut resp = Response::new(ResBody::empty());
    *resp.status_mut() = status;
    resp
}

/// Envoy's answer to a request whose body could not be read: `400` flagged `DPE` when
/// it was malformed, `408` flagged `SI` when it stopped arriving, `413` (Envoy's
/// "Payload Too Large", no flag) when it was larger than the ingress takes.
fn bad_body(fault: Fault) -> Response<ResBody> {
    let (code, flag) = match fault {
        Fault::Malformed => (
            StatusCode::BAD_REQUEST,
            Some(crate::ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR),
        ),
        Fault::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            Some(crate::ResponseFlags::STREAM_IDLE_TIMEOUT),
        ),
        Fault::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, None),
    };
    let mut resp = match fault {
        Fault::TooLarge => {
            let mut r = Response::new(ResBody::full(Bytes::from_static(b"Payload Too Large")));
            *r.status_mut() = code;
            r
        }
        _ => status(code),
    };
    if let Some(flag) = flag {
        resp.extensions_mut().insert(flag);
    }
    resp
}

/// The answer to a request the outbound layers failed.
fn failed(e: BoxError) -> Response<ResBody> {
    if let Some(f) = e.downcast_ref::<MeshFailure>() {
        return f.clone().into_response();
    }
    tracing::debug!(error = %e, "gateway: the mesh client failed");
    status(StatusCode::BAD_GATEWAY)
}
