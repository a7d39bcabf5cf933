use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use mesh_core::matcher::MatchBlock;
use mesh_core::mesh::VirtualHost;
use mesh_core::policy::RetryPolicy;
use mesh_core::route::{Action, Rule, Target};
use mesh_core::{CompiledMesh, Outcome, RequestHead, RouteError, Source, Upstream};
use tower::Service;

use crate::body::full;
use crate::gateway::{GatewayRoute, GatewaySource};
use crate::{MeshConfig, MeshFailure, MeshService, ReqBody, ResBody, Workload};

/// Where a request was routed: recorded by [`RouteService`] in the request's extensions.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The configuration the request started with.
    pub mesh: Arc<CompiledMesh>,
    /// The fully qualified host the authority resolved to.
    pub host: Arc<str>,
    /// The port the request was addressed to.
    pub port: u16,
    /// The authority as the caller wrote it (`reviews:9080`).
    pub authority: HeaderValue,
    /// The VirtualService that applied.
    pub virtual_host: Option<Arc<VirtualHost>>,
    rule: Option<usize>,
    block: Option<usize>,
    target: Option<usize>,
    /// Where the request goes.
    pub upstream: Upstream,
}

impl Routed {
    /// The rule that matched, if any.
    pub fn rule(&self) -> Option<&Rule> {
        self.virtual_host.as_ref()?.rules.get(self.rule?)
    }

    /// The match block that matched, if any.
    pub fn block(&self) -> Option<&MatchBlock> {
        self.rule()?.matches.get(self.block?)
    }

    /// The destination drawn from the rule's split, if any.
    pub fn target(&self) -> Option<&Target> {
        match &self.rule()?.action {
            Action::Route(split) => split.targets.get(self.target?),
            _ => None,
        }
    }

    /// The retry policy: the rule's, else the mesh's default.
    pub fn retry_policy(&self) -> &RetryPolicy {
        self.rule().map_or(self.mesh.default_retry(), |r| &r.retry)
    }
}

/// See [`RouteLayer`](super::RouteLayer).
#[derive(Clone, Debug)]
pub struct RouteService<S> {
    pub(super) inner: S,
    pub(super) config: MeshConfig,
    pub(super) workload: Arc<Workload>,
}

impl<S: MeshService> Service<Request<ReqBody>> for RouteService<S> {
    crate::mesh_service_types!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let mesh = self.config.current();
        let routed = decide(&mesh, &self.workload, &req);
        let mut inner = crate::take(&mut self.inner);
        Box::pin(async move {
            match routed {
                Decided::Forward(r) => {
                    tracing::Span::current()
                        .record("route", tracing::field::display(route_name(&r)));
                    crate::telemetry::record_destination(&r);
                    req.extensions_mut().insert(r);
                    inner.call(req).await
                }
                Decided::Answer(resp) => Ok(resp),
            }
        })
    }
}

fn route_name(r: &Routed) -> String {
    match r.rule() {
        Some(rule) => format!("{}#{}", rule.origin.virtual_service, rule.origin.index),
        None => "default".into(),
    }
}

enum Decided {
    Forward(Arc<Routed>),
    Answer(Response<ResBody>),
}

fn decide(mesh: &Arc<CompiledMesh>, w: &Workload, req: &Request<ReqBody>) -> Decided {
    // Through the ingress gateway: the configuration and the virtual host the gateway
    // chose, so that the request is admitted and routed on one configuration.
    let at_gateway = req.extensions().get::<GatewayRoute>();
    let mesh = at_gateway.map_or(mesh, |g| &g.mesh);
    let default_port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let head = RequestHead::from_request(req, default_port);
    let src = Source {
        namespace: &w.namespace,
        labels: &w.labels,
        gateway: req.extensions().get::<GatewaySource>().map(|g| &*g.0),
    };
    let decided = match at_gateway {
        Some(g) => g.route(&head, w, &mut rand::rng()),
        None => mesh.route(&head, &src, &mut rand::rng()),
    };
    let d = match decided {
        Ok(d) => d,
        Err(e) => {
            let f = match e {
                RouteError::NoRouteMatched => MeshFailure::NoRoute,
                RouteError::RegistryOnly(_) => MeshFailure::RegistryOnly,
                RouteError::NoAuthority => MeshFailure::NoAuthority,
            };
            return Decided::Answer(f.into_response());
        }
    };
    let authority = HeaderValue::from_str(head.authority).unwrap_or(HeaderValue::from_static(""));
    match d.outcome {
        Outcome::Redirect(r) => {
            let mut resp = Response::new(full(""));
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&r.location(&head)) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            if let Some((_, rule)) = d.rule {
                rule.headers.response.apply(resp.headers_mut());
            }
            Decided::Answer(resp)
        }
        Outcome::Direct(dr) => {
            let mut resp = Response::new(full(bytes::Bytes::copy_from_slice(&dr.body)));
            *resp.status_mut() = StatusCode::from_u16(dr.status).unwrap_or(StatusCode::OK);
            if !dr.body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            if let Some((_, rule)) = d.rule {
                rule.headers.response.apply(resp.headers_mut());
            }
            Decided::Answer(resp)
        }
        Outcome::Forward { target, upstream } => Decided::Forward(Arc::new(Routed {
            mesh: mesh.clone(),
            host: d.host.clone(),
            port: d.port,
            authority,
            virtual_host: d.virtual_host.cloned(),
            rule: d.rule.map(|(i, _)| i),
            block: d.block.map(|(i, _)| i),
            target: target.map(|(i, _)| i),
            upstream,
        })),
    }
}
