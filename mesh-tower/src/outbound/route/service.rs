use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use mesh_core::{Decision, Outcome, RequestHead, RouteError};
use tower::{Layer, Service};

use std::sync::Arc;

use mesh_core::Upstream;
use mesh_core::telemetry::{ServiceLabels, UNKNOWN};

use super::super::{ResponseFuture, Route, Routed};
use crate::telemetry::meter::{Metered, Outbound, Target};
use crate::{BoxError, Mesh, MeshFailure, ReqBody, ResBody};

/// Routes the requests of one workload with the configuration in force (see the module
/// documentation).
#[derive(Clone, Debug)]
pub struct RouteLayer {
    mesh: Mesh,
}

impl RouteLayer {
    /// Routes the requests of `mesh`'s workload.
    pub fn new(mesh: Mesh) -> Self {
        RouteLayer { mesh }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            mesh: self.mesh.clone(),
        }
    }
}

/// See [`RouteLayer`].
#[derive(Clone, Debug)]
pub struct RouteService<S> {
    inner: S,
    mesh: Mesh,
}

impl<S> Service<Request<ReqBody>> for RouteService<S>
where
    S: Service<Routed, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Metered<ResponseFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let generation = self.mesh.runtime().generation();
        let slot = self.mesh.slot();
        let Some(view) = generation.view(slot) else {
            return Metered::new(
                ResponseFuture::ready(MeshFailure::NoRoute.into_response()),
                None,
            );
        };
        let telemetry = view.telemetry();
        add_baggage(request.headers_mut(), &telemetry.baggage);
        // The request ID (the current request's, or a new one) and the trace context.
        let span =
            crate::telemetry::spans::client(self.mesh.runtime(), telemetry, &mut request, false);
        let outbound = Outbound::start(self.mesh.runtime(), telemetry, &request, span);
        if let Some(o) = &outbound {
            o.count_request(request.body_mut());
        }
        let default_port = if request.uri().scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let head = RequestHead::from_request(&request, default_port);
        let decision = view.route(&head, &mut rand::rng());
        let route = match decision {
            Ok(d) => {
                if let Some(resp) = answer(&d, &head) {
                    return Metered::new(ResponseFuture::ready(resp), outbound);
                }
                match Route::forward(generation.clone(), slot, &d, head.authority) {
                    Some(route) => {
                        crate::outbound::telemetry::record_route(&route);
                        route
                    }
                    // Workload traffic is never redirected to https.
                    None => {
                        return Metered::new(
                            ResponseFuture::ready(MeshFailure::NoRoute.into_response()),
                            outbound,
                        );
                    }
                }
            }
            Err(e) => {
                return Metered::new(ResponseFuture::ready(failure(&e).into_response()), outbound);
            }
        };
        let mut outbound = outbound;
        if let Some(o) = &mut outbound {
            o.routed(&route);
            o.decorate(request.headers_mut());
        }
        Metered::new(
            ResponseFuture::inner(self.inner.call(Routed::new(request, route))),
            outbound,
        )
    }
}

/// Where a routed request goes, for its metrics.
pub(crate) fn target_of(route: &Route) -> Target {
    match route.upstream() {
        Upstream::Cluster(c) => Target::Cluster(c.clone()),
        Upstream::Passthrough { .. } => Target::Service(route.mesh().passthrough_labels().clone()),
        Upstream::Missing { host, .. } => {
            Target::Service(Arc::new(ServiceLabels::new(&host, UNKNOWN)))
        }
    }
}

/// Adds the workload's peer metadata to an outbound request's `baggage`: after the
/// application's own members, if it set any.
pub(crate) fn add_baggage(headers: &mut http::HeaderMap, ours: &HeaderValue) {
    match headers.entry(crate::telemetry::BAGGAGE) {
        http::header::Entry::Vacant(slot) => {
            slot.insert(ours.clone());
        }
        http::header::Entry::Occupied(mut theirs) => {
            let theirs = theirs.get_mut();
            let mut joined = Vec::with_capacity(theirs.len() + 1 + ours.len());
            joined.extend_from_slice(theirs.as_bytes());
            joined.push(b',');
            joined.extend_from_slice(ours.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                *theirs = v;
            }
        }
    }
}

/// The failure answered for a request that could not be routed.
pub(crate) fn failure(e: &RouteError) -> MeshFailure {
    match e {
        RouteError::NoRouteMatched | RouteError::NoVirtualHost => MeshFailure::NoRoute,
        RouteError::RegistryOnly(_) => MeshFailure::RegistryOnly,
        RouteError::NoAuthority => MeshFailure::NoAuthority,
    }
}

/// The answer to a request whose rule answers rather than forwards: a redirect or a
/// direct response, with the rule's response header operations; `None` for the others.
pub(crate) fn answer(d: &Decision<'_>, head: &RequestHead<'_>) -> Option<Response<ResBody>> {
    let mut resp = match &d.outcome {
        Outcome::Redirect(r) => {
            let mut resp = Response::new(ResBody::empty());
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let matched_uri = d.block.and_then(|(_, b)| b.uri());
            if let Ok(v) = HeaderValue::from_str(&r.location(head, matched_uri)) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Outcome::Direct(dr) => {
            let mut resp = Response::new(ResBody::full(bytes::Bytes::from_owner(dr.body.clone())));
            *resp.status_mut() = StatusCode::from_u16(dr.status).unwrap_or(StatusCode::OK);
            if !dr.body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            resp
        }
        Outcome::RequireTls | Outcome::Forward { .. } => return None,
    };
    if let Some((_, rule)) = d.rule {
        rule.headers.response.apply(resp.headers_mut());
    }
    Some(resp)
}
